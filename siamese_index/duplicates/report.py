"""What dedup answers (frozen result types) and the report files written from it (JSON, CSV, HTML).

    report = dedup(["~/Photos"])
    write_report(report, "dups.html")   # thumbnails, for a look before acting

The JSON of a report is `report.to_dict()`, made by siamese_index.jsonable.to_jsonable (the one
JSON cleaner): the CLI's --json, the .json report and the service print the same thing.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from siamese_index.errors import InvalidData
from siamese_index.jsonable import to_jsonable

REPORT_SUFFIXES = (".json", ".csv", ".html", ".htm")


@dataclass(frozen=True)
class Skipped:
    """A file that was not used or not acted on, and why (one line a user can act on)."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return to_jsonable(self)


@dataclass(frozen=True)
class DedupWarning:
    """A file that was used, with something worth knowing (e.g. no face found at --level identity)."""

    path: str
    warning: str

    def to_dict(self) -> dict:
        return to_jsonable(self)


@dataclass(frozen=True)
class FileState:
    """A file as the scan saw it: quarantine moves or deletes it only if it is still this."""

    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Member:
    path: str
    distance: float  # to the group's kept file (0 for the kept file itself)


@dataclass(frozen=True)
class DuplicateGroup:
    """One picture (near), one content (exact) or one person (identity): keep one file."""

    keep: str
    members: tuple[Member, ...]  # the kept file first, then the others by distance
    max_distance: float = 0.0  # the largest distance between any two members

    @property
    def duplicates(self) -> tuple[str, ...]:
        return tuple(m.path for m in self.members if m.path != self.keep)

    def to_dict(self) -> dict:
        return to_jsonable(self)


# Stats that only some levels (or only collections of two or more contents) have: left out of the
# JSON where they do not apply, as before the stats were typed.
_SEARCH_STATS = ("index", "candidate_pairs", "checked_pairs", "checked_from_cache")


@dataclass(frozen=True)
class DedupStats:
    """Counts and timings of one dedup run."""

    files: int  # readable images plus skipped entries
    images: int  # readable images
    distinct_contents: int
    skipped: int
    ignored_not_images: int
    ignored_links: int
    computed: int  # files hashed (exact) or contents described / embedded (near, identity)
    from_cache: int
    cache: str | None  # the cache file, None without one
    index: str | None  # the FAISS index searched (near, identity)
    candidate_pairs: int | None
    checked_pairs: int | None  # near: pairs whose pictures were compared
    checked_from_cache: int | None  # near: pairs whose comparison came from the cache
    groups: int
    duplicates: int
    bytes_in_duplicates: int
    seconds: dict[str, float]  # read_describe_s, search_group_s, total_s

    def to_dict(self) -> dict:
        out = to_jsonable(self)
        for key in _SEARCH_STATS:
            if out[key] is None:
                del out[key]
        return out


@dataclass(frozen=True)
class DedupReport:
    """The groups dedup found; nothing on disk was changed to find them."""

    level: str
    threshold: float | None
    keep_rule: str
    groups: tuple[DuplicateGroup, ...]
    skipped: tuple[Skipped, ...]
    stats: DedupStats
    warnings: tuple[DedupWarning, ...] = ()
    # The files in groups as the scan saw them: quarantine checks that a file is unchanged since
    # the scan before it moves or deletes anything. Not part of the JSON.
    files: dict[str, FileState] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # the scanned folders and files, absolute; not part of the JSON

    def to_dict(self) -> dict:
        out = {
            "level": self.level,
            "threshold": self.threshold,
            "keep_rule": self.keep_rule,
            "groups": to_jsonable(self.groups),
            "skipped": to_jsonable(self.skipped),
            "stats": self.stats.to_dict(),
        }
        if self.warnings:
            out["warnings"] = to_jsonable(self.warnings)
        return to_jsonable(out)


# ---------------------------------------------------------------------------------------------
# Report files
# ---------------------------------------------------------------------------------------------
def write_report(report: DedupReport, path: str | os.PathLike[str]) -> Path:
    """Write the report as .json, .csv or .html (by the file's suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in REPORT_SUFFIXES:
        raise InvalidData(f"{path}: a report is .json, .csv or .html")
    if suffix == ".json":
        text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
    elif suffix == ".csv":
        text = report_csv(report)
    else:
        text = report_html(report, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def report_csv(report: DedupReport) -> str:
    """One row per member: group number, path, whether it is kept, distance to the kept file."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "path", "keep", "distance"])
    for k, g in enumerate(report.groups, 1):
        for m in g.members:
            w.writerow([k, m.path, "yes" if m.path == g.keep else "no", f"{m.distance:.6f}"])
    return buf.getvalue()


def _image_src(path: str, where: Path) -> str:
    """An <img src> for `path` from a page in `where`: relative when possible, else a file URI."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), where.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).resolve().as_uri()


def _group_html(k: int, group: DuplicateGroup, where: Path) -> str:
    cells = "".join(
        f'<figure class="{"keep" if m.path == group.keep else "dup"}">'
        f'<img loading="lazy" src="{html.escape(_image_src(m.path, where))}">'
        f"<figcaption>{'KEEP ' if m.path == group.keep else ''}{html.escape(m.path)}<br>distance {m.distance:.3f}"
        f"</figcaption></figure>"
        for m in group.members
    )
    return f"<section><h2>group {k} ({len(group.members)} files)</h2>{cells}</section>"


def report_html(report: DedupReport, where: Path) -> str:
    """A page of thumbnails, one section per group, the kept file outlined; images linked from `where`."""
    rows = "".join(_group_html(k, g, where) for k, g in enumerate(report.groups, 1))
    skipped = "".join(f"<li>{html.escape(s.path)}: {html.escape(s.reason)}</li>" for s in report.skipped)
    stats = html.escape(json.dumps(report.stats.to_dict(), indent=1))
    return f"""<!doctype html><meta charset="utf-8"><title>siamese-index dedup: {report.level}</title>
<style>body{{font-family:sans-serif}} figure{{display:inline-block;margin:4px;width:180px;vertical-align:top}}
img{{max-width:176px;max-height:176px}} .keep{{outline:3px solid #2a2}}
figcaption{{font-size:11px;word-break:break-all}}</style>
<h1>{len(report.groups)} groups at level {report.level} (threshold {report.threshold})</h1>
{rows}<h2>skipped ({len(report.skipped)})</h2><ul>{skipped}</ul><pre>{stats}</pre>
"""
