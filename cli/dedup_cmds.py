"""The dedup command: find duplicate images in folders; optionally move or delete them; undo a move."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .output import emit_json, handle_errors, human_bytes, quiet_tensorflow, warn

# Literal copies of siamese_index.duplicates.pipeline's choices and report.py's suffixes, so that
# --help imports no library code (tests/test_dedup.py checks that they agree).
LEVELS = ("exact", "near", "identity")
KEEP_RULES = ("largest", "oldest", "first")
REPORT_SUFFIXES = (".json", ".csv", ".html", ".htm")


class _Progress:
    """Progress on stderr: one updating line on a terminal, a line per stage otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.stage: str | None = None
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if stage != self.stage or done >= total or now - self.last > 0.2:
                end = "\n" if done >= total else ""
                pct = 100 * done / total if total else 100
                click.echo(f"\r{stage:9} {done}/{total} ({pct:3.0f}%) {now - self.t0:6.1f}s", err=True, nl=False)
                if end:
                    click.echo("", err=True)
                self.last = now
        elif done >= total:
            click.echo(f"{stage}: {done}/{total} in {now - self.t0:.1f}s", err=True)
        self.stage = stage


@click.command()
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--level",
    type=click.Choice(LEVELS),
    default="near",
    show_default=True,
    help="exact: same bytes; near: the same picture after edits (re-compression, resizing, crops, "
    "tone, small rotations, grayscale); identity: photos of the same person (face tower).",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Distance below which two files are duplicates (near: 0.30; identity: the model's threshold).",
)
@click.option(
    "--keep",
    type=click.Choice(KEEP_RULES),
    default="largest",
    show_default=True,
    help="Which file of a group stays: most pixels (then colour over grayscale, then bytes), the oldest "
    "modification time, or the first "
    "in argument and path order.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the groups to FILE: .json, .csv or .html (thumbnails, for a look before acting).",
)
@click.option(
    "--apply",
    "action",
    type=click.Choice(["move", "delete"]),
    default=None,
    help="Act on the duplicates (never on kept files): move them --to a folder (undoable), or delete "
    "them (needs --yes; cannot be undone). Without --apply nothing on disk changes.",
)
@click.option(
    "--to",
    "to_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The quarantine folder for --apply move; its manifest.json is what --undo takes.",
)
@click.option("--yes", is_flag=True, help="Confirm --apply delete, and any --apply at the identity level.")
@click.option(
    "--undo",
    "undo_manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Put back every file a move took: pass the quarantine folder's manifest.json.",
)
@click.option(
    "--model",
    default=None,
    help="Face tower for --level identity: a model directory or a name under models/ "
    "(default: $SIAMESE_INDEX_MODEL, else the shipped face model).",
)
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Cache of descriptors by content hash, so reruns read no image again "
    "(default: $SIAMESE_INDEX_DEDUP_CACHE, else ~/.cache/siamese-index/dedup-cache.sqlite).",
)
@click.option("--no-cache", is_flag=True, help="Use no cache file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def dedup(
    sources,
    level,
    threshold,
    keep,
    report_path,
    action,
    to_dir,
    yes,
    undo_manifest,
    model,
    cache_path,
    no_cache,
    quiet,
    as_json,
):
    """Find duplicate images under SOURCES (folders and files) and group them.

    Each group keeps one file (--keep) and lists the others with the distance that put them
    in the group; every two members of a group are within the threshold of each other.
    Nothing on disk changes unless --apply is given.

    \b
    siamese-index dedup ~/Photos                          # near duplicates, a dry run
    siamese-index dedup ~/Photos --report dups.html       # look at them
    siamese-index dedup ~/Photos --apply move --to ~/quarantine
    siamese-index dedup --undo ~/quarantine/manifest.json
    """
    progress = _Progress(not quiet)
    if undo_manifest is not None:
        if sources or action or to_dir:
            raise click.UsageError("--undo takes only the manifest: no SOURCES, --apply or --to")
        _undo(undo_manifest, progress, as_json)
        return
    _check_options(sources, level, action, to_dir, yes, report_path)
    if level == "identity":
        quiet_tensorflow()
    from siamese_index import dedup as run_dedup
    from siamese_index import write_dedup_report as write_report

    report = run_dedup(
        list(sources),
        level=level,
        threshold=threshold,
        keep=keep,
        model=model,
        cache=False if no_cache else cache_path,
        progress=progress,
    )
    if report_path is not None:
        write_report(report, report_path)
    applied = _apply(report, action, to_dir, yes, progress)
    if as_json:
        out = report.to_dict()
        if applied is not None:
            out["applied"] = {"action": action, **applied.to_dict()}
        emit_json(out)
        return
    _print_report(report, report_path)
    _print_applied(report, action, to_dir, applied)


def _apply(report, action, to_dir, yes, progress):
    """--apply: move the duplicates to the quarantine folder, or delete them; None without --apply."""
    if action == "move":
        from siamese_index import move_duplicates

        return move_duplicates(report, to_dir, allow_identity=yes, progress=progress)
    if action == "delete":
        from siamese_index import delete_duplicates

        return delete_duplicates(report, allow_identity=yes, progress=progress)
    return None


def _print_applied(report, action, to_dir, applied) -> None:
    if applied is None:
        if report.groups:
            click.echo("dry run: nothing changed (--apply move --to FOLDER moves the duplicates, undoably)")
    elif action == "move":
        for s in applied.skipped:
            warn(f"not moved {s.path}: {s.reason}")
        click.echo(
            f"moved {applied.moved} files ({human_bytes(applied.bytes)}) to {to_dir}; "
            f"undo with: siamese-index dedup --undo {applied.manifest}"
        )
    else:
        for s in applied.skipped:
            warn(f"not deleted {s.path}: {s.reason}")
        click.echo(f"deleted {applied.deleted} files ({human_bytes(applied.bytes)}); this cannot be undone")


def _check_options(sources, level, action, to_dir, yes, report_path) -> None:
    """Usage errors (exit status 2) for option combinations that cannot go together."""
    if not sources:
        raise click.UsageError("give one or more folders or files (or --undo MANIFEST)")
    if action == "move" and to_dir is None:
        raise click.UsageError("--apply move needs --to QUARANTINE_FOLDER")
    if to_dir is not None and action != "move":
        raise click.UsageError("--to goes with --apply move")
    if action == "delete" and not yes:
        raise click.UsageError(
            "--apply delete removes the duplicates for good and cannot be undone: add --yes "
            "(or use --apply move --to FOLDER, which --undo reverses)"
        )
    if action and level == "identity" and not yes:
        raise click.UsageError(
            "--apply at --level identity keeps ONE photo per person: add --yes if that is what you want"
        )
    if report_path is not None and report_path.suffix.lower() not in REPORT_SUFFIXES:
        raise click.UsageError("--report must end in .json, .csv or .html")


def _undo(manifest, progress, as_json: bool) -> None:
    from siamese_index import undo_quarantine as undo

    result = undo(manifest, progress=progress)
    if as_json:
        emit_json(result.to_dict())
    else:
        for p in result.problems:
            warn(f"{p.path}: {p.reason}")
        click.echo(
            f"restored {result.restored} files, {result.already_in_place} already in place, "
            f"{len(result.problems)} problems"
        )
    if result.problems:
        raise SystemExit(1)


def _print_report(report, report_path) -> None:
    """The groups and a summary line, for people; warnings and skipped files on stderr."""
    for s in report.skipped:
        warn(f"skipped {s.path}: {s.reason}")
    for w in report.warnings:
        warn(f"{w.path}: {w.warning}")
    for k, g in enumerate(report.groups, 1):
        click.echo(f"group {k}: keep {g.keep}")
        for m in g.members:
            if m.path != g.keep:
                click.echo(f"  {m.distance:7.3f}  {m.path}")
    st = report.stats
    click.echo(
        f"{st.images} images, {st.groups} groups, {st.duplicates} duplicates "
        f"({human_bytes(st.bytes_in_duplicates)}), {st.skipped} skipped; level {report.level}"
        + (f", threshold {report.threshold:g}" if report.threshold else "")
    )
    if report_path is not None:
        click.echo(f"report written to {report_path}")


COMMANDS = [dedup]
