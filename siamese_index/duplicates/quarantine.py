"""Acting on a dedup report: move duplicates to a quarantine folder (undoable) or delete them.

    result = move_duplicates(report, "~/quarantine")   # writes ~/quarantine/manifest.json first
    print(result.moved, result.skipped)
    undo("~/quarantine/manifest.json")                   # puts every file back

Safety rules:
- The kept file of a group is never moved, deleted or written. Before a group's duplicates are
  touched, the kept file must still be there, unchanged since the scan; each duplicate must be
  unchanged too (else it is left alone and reported).
- A move writes its manifest (flushed and fsynced, through a temporary file and a rename)
  BEFORE it touches any file. Each move is a rename, or, across file systems, a copy that is
  fsynced and checked before the original is removed. So whenever the process stops, every
  file is at its place, at its quarantine place, or (across file systems) at both: none is
  lost, and undo sorts out each case from the file system itself.
- delete cannot be undone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from siamese_index.duplicates.report import DedupReport, FileState, Skipped
from siamese_index.errors import InvalidData, NotFound
from siamese_index.jsonable import to_jsonable
from siamese_index.storage.durable import atomic_write, fsync_dir

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT = 1
KIND = "siamese-index dedup quarantine"
Progress = Callable[[str, int, int], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_durably(path: Path, data: dict) -> None:
    """Write JSON through a temporary file, fsync it, rename it into place, fsync the folder."""
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))


@dataclass(frozen=True)
class MoveResult:
    """What move_duplicates did: files moved (and their bytes), files left in place and why."""

    manifest: str  # the manifest `undo` takes
    moved: int
    skipped: tuple[Skipped, ...]
    bytes: int

    def to_dict(self) -> dict:
        return to_jsonable(self)


@dataclass(frozen=True)
class DeleteResult:
    """What delete_duplicates did: files deleted (and their bytes), files left in place and why."""

    deleted: int
    skipped: tuple[Skipped, ...]
    bytes: int

    def to_dict(self) -> dict:
        return to_jsonable(self)


@dataclass(frozen=True)
class UndoResult:
    """What undo did: files put back, files already in place, and the ones it could not sort out."""

    manifest: str
    restored: int
    already_in_place: int
    problems: tuple[Skipped, ...]

    def to_dict(self) -> dict:
        return to_jsonable(self)


def _unchanged(path: Path, scanned: FileState | None) -> tuple[bool, str]:
    """Is the file still what the scan saw? (size and mtime, else its sha256)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False, "no longer exists"
    except OSError as e:
        return False, f"cannot read ({e.strerror or e})"
    if scanned is None:
        return False, "not part of the scan"
    if st.st_size == scanned.size and st.st_mtime_ns == scanned.mtime_ns:
        return True, ""
    if st.st_size != scanned.size:
        return False, "changed since the scan"
    try:
        same = _sha256(path) == scanned.sha256
    except OSError as e:
        return False, f"cannot read ({e.strerror or e})"
    return (True, "") if same else (False, "changed since the scan")


class _SafetyCheck:
    """Whether a duplicate may be acted on: its kept file and itself unchanged since the scan
    (each kept file checked once)."""

    def __init__(self, report: DedupReport):
        self.report = report
        self.kept: dict[str, tuple[bool, str]] = {}

    def refusal(self, dup: Path, dup_name: str, kept: Path, kept_name: str) -> str | None:
        """Why the duplicate must stay where it is, or None. The names are the report's paths."""
        if kept_name not in self.kept:
            self.kept[kept_name] = _unchanged(kept, self.report.files.get(kept_name))
        ok, why = self.kept[kept_name]
        if not ok:
            return f"its kept file {kept_name} {why}; left in place"
        ok, why = _unchanged(dup, self.report.files.get(dup_name))
        return None if ok else f"{why}; left in place"


def _plan(report: DedupReport) -> list[tuple[str, str]]:
    """(duplicate, kept) for every duplicate of every group."""
    return [(m.path, g.keep) for g in report.groups for m in g.members if m.path != g.keep]


def _check_level(report: DedupReport, allow_identity: bool) -> None:
    if report.level == "identity" and not allow_identity:
        raise InvalidData(
            "identity-level groups hold different photos of one person: acting on them keeps one "
            "photo per person; confirm explicitly (--yes) to do that"
        )


def _move_file(src: Path, dst: Path) -> None:
    """Move one file without ever having it nowhere: rename, or copy + fsync + check + unlink."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        raise FileExistsError(errno.EEXIST, "already exists", str(dst))
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dst.with_name(f".{dst.name}.partial")
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
        if _sha256(dst) != _sha256(src):
            dst.unlink()
            raise OSError(errno.EIO, "the copy does not match the original", str(src)) from e
        src.unlink()
    fsync_dir(dst.parent)
    fsync_dir(src.parent)


def _layout(sources: list[Path], folder: Path) -> dict[Path, Path]:
    """Where each duplicate goes: folder/files/<its path below the sources' common folder>."""
    if not sources:
        return {}
    common = Path(os.path.commonpath([str(p.parent) for p in sources]))
    return {p: folder / "files" / p.relative_to(common) for p in sources}


def _check_folder(folder: Path, roots: list[Path]) -> None:
    """The quarantine folder: a folder (or nothing yet), unused, outside the photos."""
    if folder.exists() and not folder.is_dir():
        raise InvalidData(f"{folder}: exists and is not a folder")
    manifest_path = folder / MANIFEST_NAME
    if manifest_path.exists():
        raise InvalidData(f"{manifest_path} already exists: undo it first, or move to a new folder")
    for root in roots:
        if folder == root or root in folder.parents or folder in root.parents:
            raise InvalidData(
                f"{folder}: the quarantine folder must be outside the photos ({root}), or the next "
                f"scan finds the moved files again"
            )


def _manifest(report: DedupReport, folder: Path, plan: list[tuple[Path, Path, str, str]]) -> dict:
    """The manifest of a move, before any file is touched ("status": "moving")."""
    where = _layout([p[0] for p in plan], folder)
    moves = []
    for dup, kept, name, _ in plan:
        scanned = report.files.get(name)
        moves.append(
            {
                # "to" is relative to the manifest's folder, so a quarantine folder can itself be moved.
                "from": str(dup),
                "to": where[dup].relative_to(folder).as_posix(),
                "sha256": scanned.sha256 if scanned else None,
                "size": scanned.size if scanned else None,
                "keep": str(kept),
            }
        )
    return {
        "format": FORMAT,
        "kind": KIND,
        "created_at": _now(),
        "level": report.level,
        "threshold": report.threshold,
        "status": "moving",
        "moves": moves,
    }


def move_duplicates(
    report: DedupReport, to: str | os.PathLike[str], allow_identity: bool = False, progress: Progress | None = None
) -> MoveResult:
    """Move every group's duplicates into the folder `to` (created if needed), keeping each kept
    file where it is. Writes to/manifest.json before the first move; `undo` reverses it."""
    _check_level(report, allow_identity)
    folder = Path(to).expanduser().absolute()
    plan = [(Path(d).absolute(), Path(k).absolute(), d, k) for d, k in _plan(report)]
    _check_folder(folder, [Path(r) for r in report.sources] + [p[0].parent for p in plan])
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST_NAME
    manifest = _manifest(report, folder, plan)
    write_json_durably(manifest_path, manifest)  # before any file is touched
    moved, skipped, total_bytes = 0, [], 0
    check = _SafetyCheck(report)
    for n, ((dup, kept, name, kept_name), entry) in enumerate(zip(plan, manifest["moves"]), 1):
        why = check.refusal(dup, name, kept, kept_name)
        if why is None:
            try:
                _move_file(dup, folder / entry["to"])
                moved += 1
                total_bytes += int(entry["size"] or 0)
            except OSError as e:
                why = f"could not move ({e.strerror or e}); left in place"
        if why is not None:
            skipped.append(Skipped(name, why))
        if progress:
            progress("move", n, len(plan))
    manifest.update(status="moved", finished_at=_now(), moved=moved, skipped=to_jsonable(skipped))
    write_json_durably(manifest_path, manifest)
    return MoveResult(str(manifest_path), moved, tuple(skipped), total_bytes)


def delete_duplicates(
    report: DedupReport, allow_identity: bool = False, progress: Progress | None = None
) -> DeleteResult:
    """Delete every group's duplicates for good (this cannot be undone); kept files stay."""
    _check_level(report, allow_identity)
    deleted, skipped, total_bytes = 0, [], 0
    check = _SafetyCheck(report)
    plan = _plan(report)
    for n, (dup, kept) in enumerate(plan, 1):
        why = check.refusal(Path(dup), dup, Path(kept), kept)
        if why is None:
            try:
                size = Path(dup).stat().st_size
                Path(dup).unlink()
                deleted += 1
                total_bytes += size
            except OSError as e:
                why = f"could not delete ({e.strerror or e})"
        if why is not None:
            skipped.append(Skipped(dup, why))
        if progress:
            progress("delete", n, len(plan))
    return DeleteResult(deleted, tuple(skipped), total_bytes)


def read_manifest(path: str | os.PathLike[str]) -> dict:
    """A quarantine folder's manifest, checked to be one (NotFound, InvalidData otherwise)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound(f"{path}: no such manifest")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidData(f"{path}: not a readable manifest ({e})") from e
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("moves"), list):
        raise InvalidData(f"{path}: not a siamese-index dedup manifest")
    if int(data.get("format", 0)) > FORMAT:
        raise InvalidData(f"{path}: written by a newer siamese-index (format {data.get('format')})")
    return data


def _restore(entry: dict, folder: Path) -> tuple[str, Skipped | None]:
    """Put one moved file back: ("restored" | "in_place" | "problem", the problem or None)."""
    try:
        src, rel = Path(entry["from"]), Path(entry["to"])
    except (KeyError, TypeError):
        return "problem", Skipped(str(entry), "a malformed manifest entry")
    dst = folder / rel
    if not src.is_absolute() or rel.is_absolute() or ".." in rel.parts or folder not in dst.resolve().parents:
        return "problem", Skipped(str(src), f"the manifest points outside {folder}; not touched")
    src_there, dst_there = src.exists(), dst.exists()
    try:
        if src_there and not dst_there:
            return "in_place", None
        if dst_there and not src_there:
            _move_file(dst, src)
            return "restored", None
        if src_there and dst_there:
            # Interrupted between a cross-device copy and the removal of the original.
            if _sha256(src) == _sha256(dst):
                dst.unlink()
                return "in_place", None
            return "problem", Skipped(str(src), f"both {src} and {dst} exist and differ; left both")
        return "problem", Skipped(str(src), f"neither {src} nor {dst} exists")
    except OSError as e:
        return "problem", Skipped(str(src), f"could not restore ({e.strerror or e})")


def undo(manifest_path: str | os.PathLike[str], progress: Progress | None = None) -> UndoResult:
    """Put every file a move took back where it was. Safe to run again, and after a move that
    was interrupted."""
    manifest_path = Path(manifest_path).expanduser().absolute()
    data = read_manifest(manifest_path)
    folder = manifest_path.parent.resolve()
    restored, in_place, problems = 0, 0, []
    moves = data["moves"]
    for n, entry in enumerate(reversed(moves), 1):
        outcome, problem = _restore(entry, folder)
        restored += outcome == "restored"
        in_place += outcome == "in_place"
        if problem is not None:
            problems.append(problem)
        if progress:
            progress("restore", n, len(moves))
    _remove_empty_dirs(folder / "files")
    if not problems:
        data.update(status="undone", undone_at=_now())
        write_json_durably(manifest_path, data)
    return UndoResult(str(manifest_path), restored, in_place, tuple(problems))


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
