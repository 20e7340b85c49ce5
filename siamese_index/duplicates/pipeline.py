"""Batch duplicate grouping over image collections: the `dedup` function, step by step.

    report = dedup(["~/Photos"], level="near")          # nothing on disk changes
    for group in report.groups:
        print(group.keep, [(m.path, m.distance) for m in group.members])

Levels:
    exact     same bytes (sha256); distance 0.
    near      the same picture after edits (re-compression, resizing, border crops, tone
              changes, small rotations, grayscale): see near.py. Another photo of the same
              scene or person is NOT a near duplicate. Distance: near.py's aligned-picture
              difference (0 = identical pixels), default threshold near.THRESHOLD.
    identity  different photos of one person: the face tower's plain L2 distance, below the
              model's calibrated threshold (or --threshold).

The steps, one module each:
    scan.py      walk the sources: the image files, in argument then path order
    describe.py  read and hash each file, describe (near) or embed (identity) each distinct
                 content, in streamed batches; vectors cached by content hash (cache.py), so a
                 rerun reads no image again
    search.py    candidate pairs from FAISS k-nearest-neighbour search (exact below
                 EXACT_SEARCH_BELOW vectors, an inverted-file index above), never an N x N matrix
    verify.py    near: each candidate pair's pictures compared (near.near_distance)
    linkage.py   complete linkage: every two members of a group are within the threshold of each
                 other (A~B and B~C never drag in a C far from A)
    group.py     the levels' grouping of contents, and the kept file of each group
    report.py    the result types and the JSON / CSV / HTML report files
Files whose content is identical are treated as one picture (distance 0 to each other).
Applying a result (moving or deleting files) lives in quarantine.py; the enrollment warning on
one new photo against an index's photos in index/near_duplicates.py.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from siamese_index.duplicates.describe import Described, Describer
from siamese_index.duplicates.group import (
    Contents,
    Grouping,
    duplicate_groups,
    file_states,
    group_exact,
    group_identity,
    group_near,
    near_checker,
)
from siamese_index.duplicates.report import DedupReport, DedupStats, DuplicateGroup, FileState, Skipped, write_report
from siamese_index.duplicates.scan import ScanResult, scan
from siamese_index.duplicates.verify import Thumbnails
from siamese_index.errors import InvalidData, ModelError
from siamese_index.imaging import near
from siamese_index.storage.descriptor_cache import Store, open_cache

if TYPE_CHECKING:
    from siamese_index.towers.embedder import Embedder

# write_report is re-exported: callers that run a dedup usually write its report.
__all__ = ["KEEP_RULES", "LEVELS", "DedupReport", "dedup", "write_report"]

LEVELS = ("exact", "near", "identity")
KEEP_RULES = ("largest", "oldest", "first")
Progress = Callable[[str, int, int], None]
Sources = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


def dedup(
    sources: Sources,
    level: str = "near",
    threshold: float | None = None,
    keep: str = "largest",
    model: str | os.PathLike[str] | None = None,
    embedder: Embedder | None = None,
    cache: str | os.PathLike[str] | bool | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DedupReport:
    """Group duplicate images under `sources` (folders and files). Changes nothing on disk but
    the cache file (cache=False for none, a path for another one).

    level: exact | near | identity. threshold: below it two files are duplicates (near:
    near.THRESHOLD; identity: the model's calibrated threshold). keep: which file of a group
    to keep: largest (most pixels, then colour over grayscale, then bytes), oldest (modification
    time) or first (argument order, then path order). model / embedder: the face tower for the
    identity level (a model directory or name, see config.resolve_model_dir). progress(stage,
    done, total) is called as batches finish (stages: hash, describe or embed, search, verify).
    Unreadable files are listed in report.skipped with a reason, never raised."""
    check_arguments(level, keep, threshold)
    roots = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    t_start = time.perf_counter()
    scanned = scan(roots)
    workers = workers or min(4, os.cpu_count() or 1)
    store = open_cache(cache)
    try:
        embedder, threshold = level_setup(level, threshold, model, embedder)
        thumbnails = Thumbnails()
        t0 = time.perf_counter()
        kind = cache_kind(level, embedder)
        described = Describer(level, kind, store, embedder, thumbnails).run(scanned.files, progress, workers)
        timings = {"read_describe_s": time.perf_counter() - t0}
        contents = Contents.of(scanned.files)
        t0 = time.perf_counter()
        grouping = group_contents(level, contents, described, threshold, store, progress, workers, thumbnails)
        timings["search_group_s"] = time.perf_counter() - t0
        groups = duplicate_groups(grouping, contents, keep)
        files = file_states(grouping, contents)
        skipped = tuple(scanned.skipped + described.skipped)
        timings["total_s"] = time.perf_counter() - t_start
        stats = run_stats(scanned, described, contents, grouping, groups, files, skipped, store, timings)
        absolute = tuple(str(Path(s).expanduser().absolute()) for s in roots)
        return DedupReport(level, threshold, keep, groups, skipped, stats, tuple(described.warnings), files, absolute)
    finally:
        store.close()


def check_arguments(level: str, keep: str, threshold: float | None) -> None:
    """InvalidData for a level, keep rule or threshold dedup does not know."""
    if level not in LEVELS:
        raise InvalidData(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if keep not in KEEP_RULES:
        raise InvalidData(f"keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < math.inf):
        raise InvalidData(f"threshold must be a positive number, got {threshold!r}")


def level_setup(
    level: str, threshold: float | None, model: str | os.PathLike[str] | None, embedder: Embedder | None
) -> tuple[Embedder | None, float | None]:
    """(embedder, threshold) for the level: the identity level loads the face tower (unless one
    is given) and takes its calibrated threshold; near defaults to near.THRESHOLD."""
    if level == "near":
        return embedder, near.THRESHOLD if threshold is None else threshold
    if level != "identity":
        return embedder, threshold
    if embedder is None:
        from siamese_index.config import resolve_model_dir
        from siamese_index.towers.embedder import KerasEmbedder

        embedder = KerasEmbedder(resolve_model_dir(model))
    if threshold is None:
        threshold = embedder.threshold
    if not threshold:
        raise ModelError(f"model {embedder.model_id} has no calibrated threshold: pass --threshold")
    return embedder, float(threshold)


def cache_kind(level: str, embedder: Embedder | None) -> str | None:
    """The cache key of the level's vectors: the descriptor's version, or the tower's model id."""
    if level == "near":
        return near.VERSION
    if level == "identity" and embedder is not None:
        return f"identity:{embedder.model_id}"
    return None


def group_contents(
    level: str,
    contents: Contents,
    described: Described,
    threshold: float | None,
    store: Store,
    progress: Progress | None,
    workers: int,
    thumbnails: Thumbnails,
) -> Grouping:
    """The level's grouping of the distinct contents."""
    if level == "exact":
        return group_exact(contents)
    assert threshold is not None  # level_setup gave near and identity one
    if level == "near":
        checker = near_checker(contents, store, progress, workers, thumbnails)
        return group_near(contents, described.vectors, threshold, checker, progress)
    return group_identity(contents, described.vectors, threshold, progress)


def run_stats(
    scanned: ScanResult,
    described: Described,
    contents: Contents,
    grouping: Grouping,
    groups: tuple[DuplicateGroup, ...],
    files: dict[str, FileState],
    skipped: tuple[Skipped, ...],
    store: Store,
    timings: dict[str, float],
) -> DedupStats:
    return DedupStats(
        files=len(contents.files) + len(skipped),
        images=len(contents.files),
        distinct_contents=len(contents.members),
        skipped=len(skipped),
        ignored_not_images=scanned.not_images,
        ignored_links=scanned.links,
        computed=described.computed,
        from_cache=described.cached,
        cache=str(store.path) if store.path else None,
        index=grouping.index,
        candidate_pairs=grouping.candidate_pairs,
        checked_pairs=grouping.checked_pairs,
        checked_from_cache=grouping.checked_from_cache,
        groups=len(groups),
        duplicates=sum(len(g.members) - 1 for g in groups),
        bytes_in_duplicates=sum(files[p].size for g in groups for p in g.duplicates),
        seconds={k: round(v, 3) for k, v in timings.items()},
    )
