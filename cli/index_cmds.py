"""Commands on a home's index: enroll, identify, verify, people, backup, status, check.

Output conventions: results on stdout (one line per file or a short summary; --json for the
library's result as JSON), progress, warnings and per-file errors on stderr. Exit status: 0 when
everything asked for was done; 1 on an error (one line, no traceback), and also when some input
files of a batch failed (the others are still processed and reported), or when check finds
problems it did not repair; 2 for a usage error.
"""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, fmt, handle_errors, human_bytes, progress_line, quiet_tensorflow, warn

home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="The index's home folder (default: $SIAMESE_INDEX_HOME, else ~/.local/share/siamese-index).",
)
model_option = click.option(
    "--model",
    default=None,
    help="Model directory or name under models/ for a NEW home (default: the shipped face tower). "
    "An existing home keeps its recorded model; a different one is refused.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")

BATCH_EXIT_NOTE = "Exit status 1 when any file failed (the others are still processed)."


def open_index(home, model=None, create=False, **kwargs):
    quiet_tensorflow()
    from siamese_index import SiameseIndex

    return SiameseIndex.open(home=home, model=model, create=create, **kwargs)


def _home_exists(home) -> bool:
    from siamese_index import home_exists
    from siamese_index.config import resolve_home

    return home_exists(resolve_home(home))


def _exit(code: int) -> None:
    click.get_current_context().exit(code)


def _parse_meta(items) -> dict:
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--meta")
        meta[key.strip()] = value
    return meta


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _summary(results) -> dict:
    from siamese_index.types import EnrollSummary

    return EnrollSummary.of(results).to_dict()


def _report_enroll(results, as_json: bool) -> None:
    """Print enroll results; exit 1 when any file failed."""
    s = _summary(results)
    if as_json:
        emit_json({"results": [r.to_dict() for r in results], "summary": s})
    else:
        for r in results:
            for w in r.warnings:
                warn(w)
            if r.status == "failed":
                click.echo(f"error: {r.path}: {r.reason}", err=True)
            else:
                who = f" -> {r.identity}" if r.identity else ""
                click.echo(f"{r.status:7} {r.path}{who}")
        click.echo(f"{s['added']} added, {s['exists']} already enrolled, {s['failed']} failed")
    if s["failed"]:
        _exit(1)


@click.command(epilog=BATCH_EXIT_NOTE)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--id", "person_id", required=True, help="The person's external id (e.g. an employee number).")
@click.option("--name", default=None, help="Display name.")
@click.option("--meta", multiple=True, help="KEY=VALUE metadata (repeatable).")
@click.option("--allow-no-face", is_flag=True, help="Enroll photos even when no single clear face is found.")
@click.option(
    "--no-store-images",
    is_flag=True,
    help="When creating a home: keep no copy of enrolled photos (re-embedding by a later model then needs the originals).",
)
@home_option
@model_option
@json_option
@handle_errors
def enroll(files, person_id, name, meta, allow_no_face, no_store_images, home, model, as_json):
    """Enroll photos of one person under --id (creating the home on first use).

    Photos already enrolled for this id are reported as "exists" and left alone; --name and
    --meta update an existing id."""
    meta = _parse_meta(meta)
    new = not _home_exists(home)
    with open_index(home, model, create=True, keep_images=False if no_store_images else None) as index:
        if new:
            progress_line(f"created a new home at {index.home} (model {index.model_id})")
        results = index.enroll(person_id, list(files), name=name, meta=meta or None, allow_no_face=allow_no_face)
    _report_enroll(results, as_json)


@click.command("enroll-dir", epilog=BATCH_EXIT_NOTE)
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--allow-no-face", is_flag=True, help="Enroll photos even when no single clear face is found.")
@click.option("--no-store-images", is_flag=True, help="When creating a home: keep no copy of enrolled photos.")
@home_option
@model_option
@json_option
@handle_errors
def enroll_dir(root, allow_no_face, no_store_images, home, model, as_json):
    """Enroll ROOT: one sub-folder per person, the folder name being the id."""

    def progress(done, total, person):
        progress_line(f"[{done}/{total}] {person}")

    new = not _home_exists(home)
    with open_index(home, model, create=True, keep_images=False if no_store_images else None) as index:
        if new:
            progress_line(f"created a new home at {index.home} (model {index.model_id})")
        results = index.enroll_dir(root, progress=progress, allow_no_face=allow_no_face)
    _report_enroll(results, as_json)


def _who(m) -> str:
    return f"{m.id} ({m.name})" if m.name else m.id


@click.command(epilog="Exit status 1 when some query could not be read (the others are still answered).")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--k", default=5, show_default=True, type=click.IntRange(1), help="How many candidate identities to list."
)
@click.option("--threshold", type=float, default=None, help="Override the identification threshold (plain L2).")
@click.option("--margin", type=float, default=None, help="Also require this gap between the first and second identity.")
@home_option
@json_option
@handle_errors
def identify(files, k, threshold, margin, home, as_json):
    """Who is in each of FILES? The nearest enrolled identity, or unknown."""
    with open_index(home) as index:
        answers = index.identify(list(files), k=k, threshold=threshold, margin=margin)
    seen = set()
    for a in answers:
        for w in a.warnings:
            if w not in seen:  # "nobody is enrolled" once, not once per query
                seen.add(w)
                warn(w)
    if as_json:
        emit_json([a.to_dict() for a in answers])
    else:
        for a in answers:
            if a.error:
                click.echo(f"error: {a.query}: {a.error}", err=True)
            elif a.known:
                click.echo(f"{a.query}: {_who(a.match)}  distance {a.match.distance:.4f} < {a.threshold:.4f}")
            elif a.candidates:
                best = a.candidates[0]
                why = f">= {a.threshold:.4f}" if best.distance >= a.threshold else "but too close to the next identity"
                click.echo(f"{a.query}: unknown  (nearest {_who(best)} at {best.distance:.4f} {why})")
            else:
                click.echo(f"{a.query}: unknown")
    failed = sum(1 for a in answers if a.error)
    if failed:
        if not as_json:
            warn(f"{failed} of {len(answers)} queries could not be read")
        _exit(1)


@click.command()
@click.argument("image_a", type=click.Path(path_type=Path))
@click.argument("image_b", type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=None, help="Override the model's pair threshold (plain L2).")
@home_option
@click.option(
    "--model",
    default=None,
    help="Model directory or name to verify with (default: the home's model when the home exists, "
    "else the shipped face tower). With --home, it must be the home's model.",
)
@json_option
@handle_errors
def verify(image_a, image_b, threshold, home, model, as_json):
    """Do IMAGE_A and IMAGE_B show the same person? Nothing is enrolled."""
    quiet_tensorflow()
    from siamese_index import verify as verify_files

    result = verify_files(image_a, image_b, home=home, model=model, threshold=threshold)
    for w in result.warnings:
        warn(w)
    if as_json:
        emit_json(result.to_dict())
        return
    verdict = "same" if result.same else "different"
    click.echo(
        f"{verdict}: distance {result.distance:.4f} {'<' if result.same else '>='} threshold {result.threshold:.4f}"
    )


@click.group()
def people():
    """List, show, rename, remove and merge enrolled people."""


@people.command("list")
@home_option
@json_option
@handle_errors
def people_list(home, as_json):
    """List enrolled people with their photo counts."""
    with open_index(home, sync=False) as index:
        everyone = index.people()
    if as_json:
        emit_json([p.to_dict() for p in everyone])
        return
    if not everyone:
        click.echo("nobody is enrolled", err=True)
        return
    w_id = max(2, *(len(p.id) for p in everyone))
    w_name = max(4, *(len(p.name or "-") for p in everyone))
    click.echo(f"{'ID':{w_id}}  {'NAME':{w_name}}  PHOTOS")
    for p in everyone:
        click.echo(f"{p.id:{w_id}}  {p.name or '-':{w_name}}  {p.images}")
    click.echo(_plural(len(everyone), "person", "people"), err=True)


@people.command("show")
@click.argument("person_id")
@home_option
@json_option
@handle_errors
def people_show(person_id, home, as_json):
    """Show one person's details and photos (image number, hash prefix, source file)."""
    with open_index(home, sync=False) as index:
        info = index.person(person_id)
    if as_json:
        emit_json(info.to_dict())
        return
    meta = ", ".join(f"{k}={v}" for k, v in info.meta.items()) or "-"
    click.echo(f"id:       {info.id}")
    click.echo(f"name:     {info.name or '-'}")
    click.echo(f"meta:     {meta}")
    click.echo(f"created:  {info.created}")
    click.echo(f"updated:  {info.updated}")
    click.echo(f"photos:   {len(info.images)}")
    for img in info.images:
        stored = "" if img.stored_path else "  (no stored copy)"
        click.echo(f"  {img.image_id:>5}  {img.sha256[:12]}  {img.source_name}{stored}")


@people.command("rename")
@click.argument("person_id")
@click.argument("name")
@home_option
@json_option
@handle_errors
def people_rename(person_id, name, home, as_json):
    """Give PERSON_ID a new display NAME."""
    with open_index(home, sync=False) as index:
        person = index.rename(person_id, name)
    if as_json:
        emit_json(person.to_dict())
        return
    click.echo(f"renamed {person.id} to {person.name!r}")


@people.command("remove")
@click.argument("person_id")
@home_option
@json_option
@handle_errors
def people_remove(person_id, home, as_json):
    """Remove a person: rows, vectors and stored photos, for good."""
    with open_index(home) as index:
        out = index.remove(person_id)
    if as_json:
        emit_json(out.to_dict())
        return
    click.echo(
        f"removed {out.id}: {_plural(out.images, 'photo')}, "
        f"{_plural(out.files_deleted, 'stored copy', 'stored copies')} deleted"
    )


@people.command("remove-image")
@click.argument("person_id")
@click.argument("image")
@home_option
@json_option
@handle_errors
def people_remove_image(person_id, image, home, as_json):
    """Remove one photo of a person: its image number, source file name or hash prefix (see `people show`)."""
    with open_index(home) as index:
        out = index.remove_image(person_id, image)
    if as_json:
        emit_json(out.to_dict())
        return
    click.echo(
        f"removed image {out.image_id} ({out.source_name}) of {out.id}; {_plural(out.remaining_images, 'photo')} left"
    )


@people.command("merge")
@click.argument("person_id")
@click.argument("into_id")
@home_option
@json_option
@handle_errors
def people_merge(person_id, into_id, home, as_json):
    """Move all photos of PERSON_ID to INTO_ID and remove PERSON_ID."""
    with open_index(home) as index:
        out = index.merge(person_id, into_id)
    if as_json:
        emit_json(out.to_dict())
        return
    click.echo(
        f"merged {out.id} into {out.into}: {_plural(out.moved, 'photo')} moved, "
        f"{_plural(out.duplicates_dropped, 'duplicate')} dropped"
    )


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@home_option
@json_option
@handle_errors
def backup(path, home, as_json):
    """Write a consistent copy of the home to the new folder PATH (safe while the index is in use).

    The copy is itself a home: open it with --home PATH."""
    with open_index(home, sync=False) as index:
        out = index.backup(path)
    if out.missing_images:
        warn(
            f"{_plural(out.missing_images, 'stored photo copy', 'stored photo copies')} "
            f"were missing and are not in the backup"
        )
    if as_json:
        emit_json(out.to_dict())
        return
    click.echo(
        f"backed up {_plural(out.identities, 'person', 'people')}, {_plural(out.images, 'photo')} "
        f"({out.stored_images} stored copies, {human_bytes(out.bytes)}) to {out.path}"
    )


@click.command()
@home_option
@json_option
@handle_errors
def status(home, as_json):
    """Model, counts, index stamp, operating point and consistency of the home."""
    with open_index(home) as index:
        info = index.status()
    if as_json:
        emit_json(info.to_dict())
        return
    for key, value in _status_lines(info):
        click.echo(f"{key + (':' if key else ''):13}{value}")
    for p in info.consistency.problems:
        click.echo(f"  - {p}")


def _status_lines(info) -> list[tuple[str, str]]:
    """status's human output: (label, text) lines."""
    m, c, ix, op, cons = info.model, info.counts, info.index, info.operating_point, info.consistency
    sync = ix.last_sync or {}
    loaded = (
        ("rebuilt from SQLite: " + str(sync.get("reason")))
        if sync.get("source") == "rebuilt"
        else "loaded from its file"
    )
    copies = "kept" if info.keep_images else "not kept"
    return [
        ("home", f"{info.home} (schema {info.schema_version}, photo copies {copies})"),
        ("model", f"{m.model_id} (embedding size {m.dim}) from {m.model_dir or 'an injected embedder'}"),
        ("people", f"{c.identities} ({c.images} photos, {c.embeddings} embeddings, {c.stored_images} stored copies)"),
        ("index", f"{ix.vectors} vectors, generation {ix.generation}; {loaded}"),
        (
            "identify",
            f"threshold {fmt(op.threshold, 4)} for {op.gallery_size} people (target: "
            f"{op.target_far * 100:g}% of strangers wrongly accepted"
            + (f", margin {op.margin:g})" if op.margin else ")"),
        ),
        ("", op.method),
        (
            "verify",
            f"pair threshold {fmt(m.threshold, 4)}" + (f" ({m.threshold_method})" if m.threshold_method else ""),
        ),
        ("consistency", "ok" if cons.ok else f"{_plural(len(cons.problems), 'problem')} (run check)"),
    ]


@click.command(epilog="Exit status 1 when problems are found and not (all) repaired.")
@click.option(
    "--repair", is_flag=True, help="Fix what is found: rebuild the FAISS index from SQLite, drop orphan files."
)
@home_option
@json_option
@handle_errors
def check(repair, home, as_json):
    """Verify that SQLite, the FAISS index and the stored photos agree (changes nothing without --repair)."""
    # sync=False: look at the FAISS file as it is on disk; a normal open would quietly rebuild it.
    with open_index(home, sync=False) as index:
        report = index.check(repair=repair)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_check(report, repair)
    if report.unrepaired:
        _exit(1)


def _print_check(report, repair: bool) -> None:
    n = report.checked
    click.echo(
        f"checked {_plural(n.images, 'photo')}, {_plural(n.embeddings, 'embedding')}, "
        f"{_plural(n.stored_files, 'stored copy', 'stored copies')}"
    )
    for p in report.problems:
        click.echo(f"problem: {p.kind}: {p.detail}")
    for r in report.repaired:
        click.echo(f"repaired: {r}")
    if report.ok:
        click.echo("ok")
    elif repair:
        for u in report.unrepaired:
            click.echo(f"not repaired: {u}")
        click.echo("repaired" if not report.unrepaired else "some problems need a person (see above)")
    else:
        click.echo(f"{_plural(len(report.problems), 'problem')} found; run check --repair to fix them")


COMMANDS = [enroll, enroll_dir, identify, verify, people, backup, status, check]


@click.command()
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the demo's files here (default: a temporary folder, deleted after).",
)
@json_option
@handle_errors
def demo(workdir, as_json):
    """Train, enroll, identify, verify and refuse a stranger on synthetic people (no data needed)."""
    quiet_tensorflow()
    import tempfile

    from siamese_index import run_demo

    say = (lambda _: None) if as_json else click.echo
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="siamese-demo-") as tmp:
            summary = run_demo(Path(tmp), say)
    else:
        summary = run_demo(workdir, say)
    if as_json:
        emit_json(summary)


COMMANDS.append(demo)
