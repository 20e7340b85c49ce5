"""Commands on a home's index: enroll, identify, verify, people, backup, status, check."""
from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, fmt, handle_errors, progress_line, quiet_tensorflow, warn

home_option = click.option(
    "--home", type=click.Path(path_type=Path), default=None,
    help="The index's home folder (default: $SIAMESE_INDEX_HOME, else ~/.local/share/siamese-index).",
)
model_option = click.option(
    "--model", default=None,
    help="Model directory or name under models/ for a NEW home (default: the shipped face tower). An existing home keeps its recorded model.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def open_index(home, model=None, create=False, **kwargs):
    quiet_tensorflow()
    from siamese_index.index import SiameseIndex

    return SiameseIndex.open(home=home, model=model, create=create, **kwargs)


def _parse_meta(items) -> dict:
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--meta")
        meta[key.strip()] = value
    return meta


def _report_enroll(results, as_json: bool, person_id: str | None = None) -> None:
    if as_json:
        emit_json({"results": [r.__dict__ for r in results], "summary": _summary(results)})
        return
    for r in results:
        for w in r.warnings:
            warn(w)
        who = f" -> {r.identity}" if getattr(r, "identity", None) else (f" -> {person_id}" if person_id else "")
        if r.status == "failed":
            click.echo(f"failed  {r.path}: {r.reason}")
        else:
            click.echo(f"{r.status:7} {r.path}{who}")
    s = _summary(results)
    click.echo(f"{s['added']} added, {s['exists']} already enrolled, {s['failed']} failed")


def _summary(results) -> dict:
    return {k: sum(r.status == k for r in results) for k in ("added", "exists", "failed")}


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--id", "person_id", required=True, help="The person's external id (e.g. an employee number).")
@click.option("--name", default=None, help="Display name.")
@click.option("--meta", multiple=True, help="KEY=VALUE metadata (repeatable).")
@click.option("--allow-no-face", is_flag=True, help="Enroll photos even when no single clear face is found.")
@click.option("--no-store-images", is_flag=True, help="When creating a home: keep no copy of enrolled photos (re-embedding by a later model then needs the originals).")
@home_option
@model_option
@json_option
@handle_errors
def enroll(files, person_id, name, meta, allow_no_face, no_store_images, home, model, as_json):
    """Enroll photos of one person under --id (creating the home on first use)."""
    meta = _parse_meta(meta)
    with open_index(home, model, create=True, keep_images=False if no_store_images else None) as index:
        results = index.enroll(person_id, list(files), name=name, meta=meta or None, allow_no_face=allow_no_face)
    _report_enroll(results, as_json, person_id)
    if results and all(r.status == "failed" for r in results):
        raise SystemExit(1)


@click.command("enroll-dir")
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

    with open_index(home, model, create=True, keep_images=False if no_store_images else None) as index:
        results = index.enroll_dir(root, progress=None if as_json else progress, allow_no_face=allow_no_face)
    _report_enroll(results, as_json)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--k", default=5, show_default=True, type=click.IntRange(1), help="How many candidate identities to list.")
@click.option("--threshold", type=float, default=None, help="Override the unknown-person threshold (plain L2).")
@click.option("--margin", type=float, default=None, help="Also require this gap between the first and second identity.")
@home_option
@json_option
@handle_errors
def identify(files, k, threshold, margin, home, as_json):
    """Who is in each of FILES? The nearest enrolled identity, or unknown."""
    with open_index(home) as index:
        answers = index.identify(list(files), k=k, threshold=threshold, margin=margin)
    if as_json:
        emit_json([a.to_dict() for a in answers])
        return
    for a in answers:
        for w in a.warnings:
            warn(w)
        if getattr(a, "error", None):
            click.echo(f"{a.query}: error: {a.error}")
        elif a.known:
            click.echo(f"{a.query}: {a.match.id} ({a.match.name or '-'})  distance {a.match.distance:.4f} < {a.threshold:.4f}")
        else:
            best = a.candidates[0] if a.candidates else None
            near = f"; nearest {best.id} at {best.distance:.4f}" if best else ""
            click.echo(f"{a.query}: unknown (threshold {a.threshold:.4f}{near})")


@click.command()
@click.argument("image_a", type=click.Path(path_type=Path))
@click.argument("image_b", type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=None, help="Override the model's pair threshold (plain L2).")
@home_option
@model_option
@json_option
@handle_errors
def verify(image_a, image_b, threshold, home, model, as_json):
    """Do IMAGE_A and IMAGE_B show the same person?"""
    quiet_tensorflow()
    from siamese_index.index import verify_files

    result = verify_files(image_a, image_b, home=home, model=model, threshold=threshold)
    if as_json:
        emit_json(result.to_dict())
        return
    verdict = "same" if result.same else "different"
    click.echo(f"{verdict}: distance {result.distance:.4f} ({'<' if result.same else '>='} threshold {result.threshold:.4f})")


@click.group()
def people():
    """List, show, rename, remove and merge enrolled people."""


@people.command("list")
@home_option
@json_option
@handle_errors
def people_list(home, as_json):
    """List enrolled people with their photo counts."""
    with open_index(home) as index:
        everyone = index.people()
    if as_json:
        emit_json([p.__dict__ for p in everyone])
        return
    for p in everyone:
        click.echo(f"{p.id}\t{p.name or '-'}\t{p.images} photo(s)")
    click.echo(f"{len(everyone)} people", err=True)


@people.command("show")
@click.argument("person_id")
@home_option
@json_option
@handle_errors
def people_show(person_id, home, as_json):
    """Show one person's details and photos."""
    with open_index(home) as index:
        info = index.person(person_id)
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        if key != "images":
            click.echo(f"{key}: {value}")
    for img in info.get("images", []):
        click.echo(f"  image {img.get('image_id')}  {img.get('source_name')}  {str(img.get('sha256', ''))[:12]}")


@people.command("rename")
@click.argument("person_id")
@click.argument("name")
@home_option
@handle_errors
def people_rename(person_id, name, home):
    """Give PERSON_ID a new display NAME."""
    with open_index(home) as index:
        index.rename(person_id, name)
    click.echo(f"renamed {person_id} to {name!r}")


@people.command("remove")
@click.argument("person_id")
@home_option
@handle_errors
def people_remove(person_id, home):
    """Remove a person: rows, vectors and stored photos, for good."""
    with open_index(home) as index:
        index.remove(person_id)
    click.echo(f"removed {person_id}")


@people.command("remove-image")
@click.argument("person_id")
@click.argument("image")
@home_option
@handle_errors
def people_remove_image(person_id, image, home):
    """Remove one photo (its image id, file name or hash prefix) of a person."""
    with open_index(home) as index:
        index.remove_image(person_id, image)
    click.echo(f"removed image {image} of {person_id}")


@people.command("merge")
@click.argument("person_id")
@click.argument("into_id")
@home_option
@handle_errors
def people_merge(person_id, into_id, home):
    """Move all photos of PERSON_ID to INTO_ID and remove PERSON_ID."""
    with open_index(home) as index:
        index.merge(person_id, into_id)
    click.echo(f"merged {person_id} into {into_id}")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@home_option
@handle_errors
def backup(path, home):
    """Write a consistent copy of the home to PATH (safe while the index is in use)."""
    with open_index(home) as index:
        index.backup(path)
    click.echo(f"backed up to {path}")


@click.command()
@home_option
@json_option
@handle_errors
def status(home, as_json):
    """Model, counts, index stamp, operating point and consistency of the home."""
    with open_index(home) as index:
        info = index.status()
    if as_json:
        emit_json(info)
        return
    _print_tree(info)


@click.command()
@click.option("--repair", is_flag=True, help="Fix what is found: rebuild the FAISS index from SQLite, drop orphan files.")
@home_option
@json_option
@handle_errors
def check(repair, home, as_json):
    """Verify that SQLite, the FAISS index and the stored photos agree."""
    with open_index(home) as index:
        report = index.check(repair=repair)
    if as_json:
        emit_json(report)
    else:
        _print_tree(report)
    if report.get("problems") and not report.get("repaired"):
        raise SystemExit(1)


def _print_tree(obj, indent: int = 0) -> None:
    for key, value in obj.items():
        if isinstance(value, dict):
            click.echo(" " * indent + f"{key}:")
            _print_tree(value, indent + 2)
        elif isinstance(value, list):
            click.echo(" " * indent + f"{key}: " + (", ".join(str(v) for v in value) if value else "none"))
        else:
            click.echo(" " * indent + f"{key}: {fmt(value, 4)}")


COMMANDS = [enroll, enroll_dir, identify, verify, people, backup, status, check]


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="Keep the demo's files here (default: a temporary folder, deleted after).")
@json_option
@handle_errors
def demo(workdir, as_json):
    """Train, enroll, identify, verify and refuse a stranger on synthetic people (no data needed)."""
    quiet_tensorflow()
    import tempfile

    from siamese_index.demo import run_demo

    say = (lambda _: None) if as_json else click.echo
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="siamese-demo-") as tmp:
            summary = run_demo(Path(tmp), say)
    else:
        summary = run_demo(workdir, say)
    if as_json:
        emit_json(summary)


COMMANDS.append(demo)
