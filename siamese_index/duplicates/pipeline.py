"""Batch duplicate grouping over image collections.

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

How it scales: files are scanned, hashed and described (or embedded) in streamed batches, with
a progress callback; vectors are cached by content hash in a small SQLite file, so a rerun reads
no image again. Candidates come from FAISS k-nearest-neighbour search (exact below
EXACT_SEARCH_BELOW vectors, an inverted-file (IVF) index above), never an N x N
matrix. Groups are complete-linkage: every two members of a group are within the threshold
of each other (A~B and B~C never drag in a C far from A). Files whose content is identical
are treated as one picture (distance 0 to each other).

Applying a result (moving or deleting files) lives in quarantine.py.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siamese_index.duplicates import near
from siamese_index.duplicates.cache import VectorCache, default_cache_path, open_cache  # noqa: F401 - default_cache_path is public
from siamese_index.errors import InvalidData, InvalidImage, ModelError
from siamese_index.imaging.loading import is_image_file

log = logging.getLogger(__name__)

LEVELS = ("exact", "near", "identity")
KEEP_RULES = ("largest", "oldest", "first")
BATCH = 256
NEAR_DIM = near.DIM
NEAR_K = 5  # neighbours fetched per view in the near search
NEAR_CANDIDATE_RADIUS = near.CANDIDATE_RADIUS
IDENTITY_K = 16
EXACT_SEARCH_BELOW = 50_000  # vectors: exact FAISS search below, IVF above
IVF_NPROBE = 8
MAX_DENSE_COMPONENT = 300  # a linked component up to this size gets every missing pair measured
READ_CHUNK = 1 << 20
KEEP_THUMBNAILS = 2048
Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------
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
        return {
            "keep": self.keep,
            "members": [{"path": m.path, "distance": m.distance} for m in self.members],
            "max_distance": self.max_distance,
        }


@dataclass
class DedupReport:
    level: str
    threshold: float | None
    keep_rule: str
    groups: list[DuplicateGroup]
    skipped: list[dict]  # {"path", "reason"}
    stats: dict
    warnings: list[dict] = field(default_factory=list)
    # path -> {"sha256", "size", "mtime_ns"} for the files in groups: quarantine checks that a
    # file is unchanged since the scan before it moves or deletes anything.
    files: dict = field(default_factory=dict)
    sources: list = field(default_factory=list)  # the scanned folders and files, absolute

    def to_dict(self) -> dict:
        out = {
            "level": self.level,
            "threshold": self.threshold,
            "keep_rule": self.keep_rule,
            "groups": [g.to_dict() for g in self.groups],
            "skipped": list(self.skipped),
            "stats": dict(self.stats),
        }
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


# ---------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------
@dataclass
class _File:
    path: str
    size: int
    mtime_ns: int
    order: int
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    color: int | None = None  # 1 colour, 0 grayscale


def scan(sources: Sequence) -> tuple[list[_File], list[dict], dict]:
    """Image files under the given folders (recursively, hidden names skipped) and files, in
    argument order then path order; returns (files, skipped, counts of what was ignored)."""
    files: list[_File] = []
    skipped: list[dict] = []
    ignored = {"not_images": 0, "links": 0}
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key in seen:
            return
        seen.add(key)
        try:
            st = p.stat()
        except OSError as e:
            skipped.append({"path": str(p), "reason": f"cannot read ({e.strerror or e})"})
            return
        if st.st_size == 0:
            skipped.append({"path": str(p), "reason": "empty file"})
            return
        files.append(_File(str(p), int(st.st_size), int(st.st_mtime_ns), len(files)))

    for src in sources:
        root = Path(src).expanduser()
        if root.is_symlink() and root.is_file():
            ignored["links"] += 1
        elif root.is_file():
            add(root)
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    p = Path(dirpath) / name
                    if name.startswith("."):
                        continue
                    if p.is_symlink():
                        ignored["links"] += 1
                    elif not is_image_file(p):
                        ignored["not_images"] += 1
                    else:
                        add(p)
        else:
            skipped.append({"path": str(root), "reason": "no such file or folder"})
    return files, skipped, ignored


def _sha256_file(path: str) -> tuple[str, bytes]:
    h = hashlib.sha256()
    chunks = []
    with open(path, "rb") as f:
        while True:
            b = f.read(READ_CHUNK)
            if not b:
                break
            h.update(b)
            chunks.append(b)
    return h.hexdigest(), b"".join(chunks)


def _image_info(data: bytes) -> tuple[int | None, int | None, int | None]:
    """(width, height, colour) from the header, EXIF orientation applied: --keep largest's keys."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            color = int(im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "F"))
            orientation = im.getexif().get(0x0112, 1)
        return (h, w, color) if orientation in (5, 6, 7, 8) else (w, h, color)
    except Exception:  # noqa: BLE001 - a size is only a tie-breaker for --keep largest
        return None, None


# ---------------------------------------------------------------------------------------------
# FAISS search and complete-linkage grouping (shared by the levels and the scale benchmark)
# ---------------------------------------------------------------------------------------------
def build_vector_index(x: np.ndarray, exact_below: int = EXACT_SEARCH_BELOW, seed: int = 0):
    """A FAISS L2 index over x: exact (flat) for small sets; for large ones an inverted file
    (IVF, about 4*sqrt(n) lists trained on a sample, IVF_NPROBE probed) whose recall of the
    exact k-NN is measured in benchmarks/dedup_bench.py."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if n < exact_below:
        index = faiss.IndexFlatL2(d)
        index.add(x)
        return index
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.cp.niter = 10
    sample = np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = IVF_NPROBE
    return index


def _l2(squared: np.ndarray) -> np.ndarray:
    """FAISS reports squared L2; users see plain L2. The one place the two meet."""
    return np.sqrt(np.maximum(squared, 0.0))


def candidate_pairs(
    index, queries: np.ndarray, radius: float, k: int, batch: int = 16384, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, distance), i < j, where one of i's query views has j among its k nearest
    neighbours within `radius` (plain L2), each pair once with its smallest distance.
    queries: (n, views, d) or (n, d); row i is item i. Returns three arrays (i, j, distance).
    Memory: the pairs found, never an n x n matrix."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 2:
        q = q[:, None, :]
    n, views, _ = q.shape
    k = min(k + 1, index.ntotal)
    keys_all, dist_all = [], []
    total = n * views
    done = 0
    for v in range(views):
        for start in range(0, n, batch):
            block = np.ascontiguousarray(q[start : start + batch, v])
            d2, ids = index.search(block, k)
            rows = np.broadcast_to(np.arange(start, start + len(block), dtype=np.int64)[:, None], ids.shape)
            dist = _l2(d2)
            ok = (ids >= 0) & (ids != rows) & (dist < radius)
            i, j = rows[ok], ids[ok].astype(np.int64)
            keys_all.append(np.minimum(i, j) * n + np.maximum(i, j))
            dist_all.append(dist[ok].astype(np.float32))
            done += len(block)
            if progress:
                progress("search", done, total)
    empty = np.zeros(0, np.int64)
    if not keys_all:
        return empty, empty, np.zeros(0, np.float32)
    keys = np.concatenate(keys_all)
    dist = np.concatenate(dist_all)
    order = np.lexsort((dist, keys))
    keys, dist = keys[order], dist[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, dist = keys[first], dist[first]
    return keys // n, keys % n, dist


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def complete_linkage(
    n: int,
    distances: dict[tuple[int, int], float],
    threshold: float,
    pair_distance: Callable[[int, int], float] | None = None,
    max_dense: int = MAX_DENSE_COMPONENT,
) -> list[tuple[list[int], dict[tuple[int, int], float]]]:
    """Groups of items in which EVERY two members are closer than `threshold`.

    distances: known (i, j) -> distance, i < j (the candidate pairs). Items linked by a pair
    under the threshold form components; inside a component of up to `max_dense` items, the
    missing pairs are measured with pair_distance (when given) and clusters are merged closest
    first while their farthest members stay under the threshold (complete linkage). Larger
    components use the known pairs only (a pair never measured counts as far).
    Returns [(members, {(i, j): distance for every pair of members})], members sorted."""
    uf = _UnionFind(n)
    close = [(i, j) for (i, j), d in distances.items() if d < threshold]
    for i, j in close:
        uf.union(i, j)
    comps: dict[int, list[int]] = {}
    for i, j in close:
        r = uf.find(i)
        comps.setdefault(r, set()).update((i, j))  # type: ignore[arg-type]
    out = []
    for nodes in comps.values():
        nodes = sorted(nodes)
        m = len(nodes)
        if m <= max_dense:
            mat = np.full((m, m), np.inf)
            for a in range(m):
                for b in range(a + 1, m):
                    key = (nodes[a], nodes[b])
                    d = distances.get(key)
                    if d is None and pair_distance is not None:
                        d = pair_distance(*key)
                        distances[key] = d
                    if d is not None:
                        mat[a, b] = mat[b, a] = d
            clusters = _complete_linkage_dense(mat, threshold)
        else:
            clusters = _complete_linkage_sparse(nodes, distances, threshold)
        for cl in clusters:
            if len(cl) < 2:
                continue
            members = sorted(nodes[c] for c in cl) if m <= max_dense else sorted(cl)
            pd = {}
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    pd[(members[a], members[b])] = distances[(members[a], members[b])]
            out.append((members, pd))
    out.sort(key=lambda g: g[0][0])
    return out


def _complete_linkage_dense(mat: np.ndarray, threshold: float) -> list[list[int]]:
    m = len(mat)
    d = mat.copy()
    np.fill_diagonal(d, np.inf)
    clusters: dict[int, list[int]] = {i: [i] for i in range(m)}
    while len(clusters) > 1:
        flat = int(np.argmin(d))
        a, b = divmod(flat, m)
        if not d[a, b] < threshold:
            break
        a, b = min(a, b), max(a, b)
        clusters[a].extend(clusters.pop(b))
        merged = np.maximum(d[a], d[b])
        d[a, :] = merged
        d[:, a] = merged
        d[a, a] = np.inf
        d[b, :] = np.inf
        d[:, b] = np.inf
    return list(clusters.values())


def _complete_linkage_sparse(nodes: list[int], distances: dict, threshold: float) -> list[list[int]]:
    """Closest pair first; two clusters merge only when every cross pair is known and close."""
    cluster_of = {v: v for v in nodes}
    members = {v: [v] for v in nodes}
    edges = sorted(
        (d, i, j) for (i, j), d in distances.items() if d < threshold and i in cluster_of and j in cluster_of
    )
    for _, i, j in edges:
        ca, cb = cluster_of[i], cluster_of[j]
        if ca == cb:
            continue
        if all(distances.get((min(x, y), max(x, y)), math.inf) < threshold for x in members[ca] for y in members[cb]):
            for v in members[cb]:
                cluster_of[v] = ca
            members[ca].extend(members.pop(cb))
    return list(members.values())


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------
def dedup(
    sources,
    level: str = "near",
    threshold: float | None = None,
    keep: str = "largest",
    model=None,
    embedder=None,
    cache=None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DedupReport:
    """Group duplicate images under `sources` (folders and files). Changes nothing on disk but
    the cache file (cache=False for none, a path for another one).

    level: exact | near | identity. threshold: below it two files are duplicates (near:
    near.THRESHOLD; identity: the model's calibrated threshold). keep: which file of a group
    to keep: largest (most pixels, then colour over grayscale, then bytes), oldest (modification
    time) or first (argument
    order, then path order). model / embedder: the face tower for the identity level (a model
    directory or name, see config.resolve_model_dir). progress(stage, done, total) is called
    as batches finish (stages: hash, describe or embed, search, verify).
    Unreadable files are listed in report.skipped with a reason, never raised."""
    if level not in LEVELS:
        raise InvalidData(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if keep not in KEEP_RULES:
        raise InvalidData(f"keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < math.inf):
        raise InvalidData(f"threshold must be a positive number, got {threshold!r}")
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    files, skipped, ignored = scan(list(sources))
    workers = workers or min(4, os.cpu_count() or 1)
    store = open_cache(cache)
    warnings: list[dict] = []
    try:
        if level == "identity":
            if embedder is None:
                from siamese_index.config import resolve_model_dir
                from siamese_index.towers.embedder import KerasEmbedder

                embedder = KerasEmbedder(resolve_model_dir(model))
            if threshold is None:
                threshold = embedder.threshold
            if not threshold:
                raise ModelError(f"model {embedder.model_id} has no calibrated threshold: pass --threshold")
            threshold = float(threshold)
        elif level == "near" and threshold is None:
            threshold = near.THRESHOLD
        t0 = time.perf_counter()
        kind = near.VERSION if level == "near" else f"identity:{embedder.model_id}" if level == "identity" else None
        thumbnails = _Thumbnails()
        vectors, shas_done = _hash_and_vectors(
            files, skipped, store, level, kind, embedder, progress, workers, warnings, thumbnails
        )
        timings["read_describe_s"] = time.perf_counter() - t0
        files = [f for f in files if f.sha256 is not None]
        # One node per distinct content; files with equal bytes share their node.
        node_of_sha: dict[str, int] = {}
        node_files: list[list[int]] = []
        for idx, f in enumerate(files):
            if f.sha256 not in node_of_sha:
                node_of_sha[f.sha256] = len(node_files)
                node_files.append([])
            node_files[node_of_sha[f.sha256]].append(idx)
        node_sha = list(node_of_sha)
        stats: dict = {
            "files": len(files) + len(skipped),
            "images": len(files),
            "distinct_contents": len(node_files),
            "skipped": len(skipped),
            "ignored_not_images": ignored["not_images"],
            "ignored_links": ignored["links"],
            "computed": shas_done["computed"],
            "from_cache": shas_done["cached"],
            "cache": str(store.path) if store.path else None,
        }
        t0 = time.perf_counter()
        if level == "exact":
            node_groups = [([k], {}) for k in range(len(node_files)) if len(node_files[k]) > 1]
        else:
            node_groups = _group_nodes(
                level,
                vectors,
                node_of_sha,
                node_sha,
                node_files,
                files,
                threshold,
                store,
                kind,
                progress,
                stats,
                workers,
                thumbnails,
            )
        timings["search_group_s"] = time.perf_counter() - t0
        groups = _make_groups(node_groups, node_files, files, keep)
        report_files = {
            files[i].path: {"sha256": files[i].sha256, "size": files[i].size, "mtime_ns": files[i].mtime_ns}
            for nodes, _ in node_groups
            for nd in nodes
            for i in node_files[nd]
        }
        stats.update(
            {
                "groups": len(groups),
                "duplicates": sum(len(g.members) - 1 for g in groups),
                "bytes_in_duplicates": sum(report_files[p]["size"] for g in groups for p in g.duplicates),
            }
        )
        timings["total_s"] = time.perf_counter() - t_start
        stats["seconds"] = {k: round(v, 3) for k, v in timings.items()}
        return DedupReport(
            level,
            threshold,
            keep,
            groups,
            skipped,
            stats,
            warnings,
            report_files,
            [str(Path(s).expanduser().absolute()) for s in sources],
        )
    finally:
        store.close()


class _Thumbnails(dict):
    """Near thumbnails kept from the scan for the pair checks, at most KEEP_THUMBNAILS (~50 MB)."""

    def keep(self, sha: str, gray: np.ndarray) -> None:
        if len(self) < KEEP_THUMBNAILS:
            self[sha] = gray


def _hash_and_vectors(
    files: list[_File],
    skipped: list[dict],
    store,
    level: str,
    kind: str | None,
    embedder,
    progress: Progress | None,
    workers: int,
    warnings: list[dict],
    thumbnails: _Thumbnails,
):
    """Fill each file's sha256 (and size in pixels); return {sha: vector} for near/identity.
    Files that cannot be read or decoded get sha256 None and a line in `skipped`."""
    vectors: dict[str, np.ndarray] = {}
    counts = {"computed": 0, "cached": 0}
    sizes: dict[str, tuple[int | None, int | None]] = {}
    stage = {"exact": "hash", "near": "describe", "identity": "embed"}[level]
    total = len(files)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for start in range(0, total, BATCH):
            batch = files[start : start + BATCH]
            known = store.sha_for([(os.path.abspath(f.path), f.size, f.mtime_ns) for f in batch])
            for f in batch:
                f.sha256 = known.get(os.path.abspath(f.path))
            cached = store.vectors_for({f.sha256 for f in batch if f.sha256}, kind) if kind else {}
            for sha, (blob, info) in cached.items():
                if sha not in vectors:
                    vectors[sha] = np.frombuffer(blob, dtype="<f4").copy()
                    sizes[sha] = info
            todo = [f for f in batch if f.sha256 is None or (kind and f.sha256 not in vectors)]

            def work(f: _File):
                try:
                    sha, data = _sha256_file(f.path)
                except OSError as e:
                    return f, None, None, f"cannot read ({e.strerror or e})", None
                if level == "exact" or (kind and sha in vectors):
                    return f, sha, None, None, None
                if level == "near":
                    try:
                        gray = near.load_gray(data, name=f.path)
                    except InvalidImage as e:
                        return f, sha, None, e.reason, None
                    thumbnails.keep(sha, gray)
                    return f, sha, near.describe(gray).reshape(-1), None, _image_info(data)
                return f, sha, data, None, _image_info(data)  # identity: embedded below, in order

            results = list(pool.map(work, todo)) if pool else [work(f) for f in todo]
            new_files, new_vecs = [], []
            to_embed = []
            for f, sha, payload, error, size in results:
                if sha is None:
                    skipped.append({"path": f.path, "reason": error})
                    continue
                f.sha256 = sha
                new_files.append((os.path.abspath(f.path), f.size, f.mtime_ns, sha))
                if level == "exact":
                    counts["computed"] += 1
                if error is not None:
                    skipped.append({"path": f.path, "reason": error})
                    f.sha256 = None
                    continue
                if level == "near" and payload is not None and sha not in vectors:
                    vectors[sha] = payload
                    sizes[sha] = size
                    new_vecs.append((sha, kind, np.ascontiguousarray(payload, "<f4").tobytes(), size))
                    counts["computed"] += 1
                elif level == "identity" and payload is not None and sha not in vectors:
                    to_embed.append((f, sha, payload, size))
            if to_embed:
                arrays, keys = [], []
                for f, sha, data, size in to_embed:
                    if sha in {k[0] for k in keys}:
                        continue
                    try:
                        arr, warns = embedder.prepare(data, name=f.path, strict_face=False)
                    except InvalidImage as e:
                        skipped.append({"path": f.path, "reason": e.reason})
                        f.sha256 = None
                        continue
                    for w in warns or []:
                        warnings.append({"path": f.path, "warning": w})
                    arrays.append(arr)
                    keys.append((sha, size))
                if arrays:
                    vecs = np.asarray(embedder.embed_batch(np.stack(arrays)), dtype=np.float32)
                    if vecs.shape[0] != len(arrays) or not np.isfinite(vecs).all():
                        raise ModelError("the model returned unusable embeddings")
                    for (sha, size), v in zip(keys, vecs):
                        vectors[sha] = v
                        sizes[sha] = size
                        new_vecs.append((sha, kind, np.ascontiguousarray(v, "<f4").tobytes(), size))
                        counts["computed"] += 1
            for f in batch:
                if f.sha256 is not None and kind and f.sha256 not in vectors:
                    # Same content as a file that failed to decode in this batch.
                    skipped.append({"path": f.path, "reason": "not a readable image"})
                    f.sha256 = None
            todo_ids = {id(f) for f in todo}
            counts["cached"] += sum(1 for f in batch if id(f) not in todo_ids and f.sha256 is not None)
            store.store(files=new_files, vectors=new_vecs)
            for f in batch:
                if f.sha256 is not None and f.sha256 in sizes:
                    f.width, f.height, f.color = sizes[f.sha256]
            if progress:
                progress(stage, min(start + BATCH, total), total)
    finally:
        if pool:
            pool.shutdown()
    return vectors, counts


def _group_nodes(
    level,
    vectors,
    node_of_sha,
    node_sha,
    node_files,
    files,
    threshold,
    store,
    kind,
    progress,
    stats,
    workers,
    thumbnails,
):
    n = len(node_sha)
    if n < 2:
        return [([k], {}) for k in range(n) if len(node_files[k]) > 1]
    x = np.stack([vectors[s] for s in node_sha]).astype(np.float32)
    if level == "near":
        x = x.reshape(n, len(near.WINDOWS), near.DIM)
        index = build_vector_index(x[:, 0])
        pi, pj, _ = candidate_pairs(index, x, radius=NEAR_CANDIDATE_RADIUS, k=NEAR_K, progress=progress)
        stats["index"] = type(index).__name__
        stats["candidate_pairs"] = len(pi)
        checker = _NearChecker(node_sha, node_files, files, store, kind, progress, workers, thumbnails)
        verified = checker.check(list(zip(pi.tolist(), pj.tolist())))

        def near_distance(i, j):
            d = verified.get((i, j))
            return checker.distance(i, j) if d is None else d

        close = {key: d for key, d in verified.items() if d < threshold}
        groups = complete_linkage(n, close, threshold, pair_distance=near_distance)
        checker.flush()
        stats["checked_pairs"] = checker.checked
        stats["checked_from_cache"] = checker.from_cache
    else:
        index = build_vector_index(x)
        pi, pj, pd = candidate_pairs(index, x, radius=threshold, k=IDENTITY_K, progress=progress)
        stats["index"] = type(index).__name__
        stats["candidate_pairs"] = len(pi)
        distances = dict(zip(zip(pi.tolist(), pj.tolist()), pd.tolist()))

        def exact_distance(i, j):
            return float(np.linalg.norm(x[i].astype(np.float64) - x[j]))

        groups = complete_linkage(n, distances, threshold, pair_distance=exact_distance)
    # Contents with several identical files but no partner are groups of their own.
    grouped = {v for nodes, _ in groups for v in nodes}
    groups += [([k], {}) for k in range(n) if len(node_files[k]) > 1 and k not in grouped]
    return groups


class _NearChecker:
    """Runs near.near_distance on candidate pairs: cached distances first, then pictures decoded
    on demand through a bounded LRU of thumbnails and keypoints, in a few threads."""

    def __init__(self, node_sha, node_files, files, store, kind, progress, workers: int = 1, thumbnails=None):
        self.node_sha, self.node_files, self.files = node_sha, node_files, files
        self.thumbnails = thumbnails if thumbnails is not None else {}  # sha -> thumbnail kept from the scan
        self.store, self.kind, self.progress = store, kind, progress
        self.features = near.FeatureCache(self._load)
        self.pending: list[tuple[str, str, str, float]] = []
        self.workers = max(1, workers)
        self.checked = 0
        self.from_cache = 0

    def _load(self, node: int):
        gray = self.thumbnails.pop(self.node_sha[node], None)
        if gray is not None:
            return gray
        for idx in self.node_files[node]:
            try:
                return near.load_gray(self.files[idx].path)
            except InvalidImage:
                continue
        return None

    def _key(self, i, j):
        a, b = self.node_sha[i], self.node_sha[j]
        return (a, b) if a < b else (b, a)

    def _measure(self, pair: tuple[int, int]) -> float:
        fa, fb = self.features.get(pair[0]), self.features.get(pair[1])
        return math.inf if fa is None or fb is None else near.near_distance(fa, fb)

    def _record(self, i: int, j: int, d: float) -> None:
        a, b = self._key(i, j)
        self.pending.append((a, b, self.kind, d))
        self.checked += 1
        if len(self.pending) >= 1024:
            self.flush()

    def distance(self, i: int, j: int) -> float:
        known = self.store.pair_distances([self._key(i, j)], self.kind)
        if known:
            self.from_cache += 1
            return next(iter(known.values()))
        d = self._measure((i, j))
        self._record(i, j, d)
        return d

    def check(self, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
        out: dict[tuple[int, int], float] = {}
        total = len(pairs)
        pairs = sorted(pairs)  # locality for the thumbnail cache
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        try:
            for start in range(0, total, 1024):
                chunk = pairs[start : start + 1024]
                known = self.store.pair_distances([self._key(i, j) for i, j in chunk], self.kind)
                todo = []
                for i, j in chunk:
                    d = known.get(self._key(i, j))
                    if d is None:
                        todo.append((i, j))
                    else:
                        out[(i, j)] = d
                        self.from_cache += 1
                measured = list(pool.map(self._measure, todo)) if pool else [self._measure(p) for p in todo]
                for (i, j), d in zip(todo, measured):
                    out[(i, j)] = d
                    self._record(i, j, d)
                if self.progress:
                    self.progress("verify", min(start + 1024, total), total)
        finally:
            if pool:
                pool.shutdown()
        return out

    def flush(self) -> None:
        if self.pending:
            self.store.store(pairs=self.pending)
            self.pending = []


def _make_groups(node_groups, node_files, files: list[_File], keep: str) -> list[DuplicateGroup]:
    out = []
    for nodes, dist in node_groups:
        idxs = [i for nd in nodes for i in node_files[nd]]
        node_of = {i: nd for nd in nodes for i in node_files[nd]}
        keeper = min(idxs, key=lambda i: _keep_key(files[i], keep))

        def d(i, j, node_of=node_of, dist=dist):
            a, b = node_of[i], node_of[j]
            if a == b:
                return 0.0
            return float(dist.get((min(a, b), max(a, b)), 0.0))

        members = sorted(idxs, key=lambda i: (i != keeper, d(keeper, i), files[i].order))
        max_d = max((d(a, b) for a in idxs for b in idxs if a < b), default=0.0)
        out.append(
            DuplicateGroup(
                files[keeper].path,
                tuple(Member(files[i].path, round(d(keeper, i), 6)) for i in members),
                round(max_d, 6),
            )
        )
    order = {f.path: f.order for f in files}
    out.sort(key=lambda g: min(order[m.path] for m in g.members))
    return out


def _keep_key(f: _File, rule: str):
    if rule == "largest":
        pixels = (f.width or 0) * (f.height or 0)
        return (-pixels, -(f.color or 0), -f.size, f.order)
    if rule == "oldest":
        return (f.mtime_ns, f.order)
    return (f.order,)


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def write_report(report: DedupReport, path) -> Path:
    """Write the report as .json, .csv or .html (by the file's suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv", ".html", ".htm"):
        raise InvalidData(f"{path}: a report is .json, .csv or .html")
    data = report.to_dict()
    if suffix == ".json":
        text = json.dumps(_finite(data), indent=2, ensure_ascii=False)
    elif suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["group", "path", "keep", "distance"])
        for k, g in enumerate(report.groups, 1):
            for m in g.members:
                w.writerow([k, m.path, "yes" if m.path == g.keep else "no", f"{m.distance:.6f}"])
        text = buf.getvalue()
    else:
        text = _html(report, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _html(report: DedupReport, where: Path) -> str:
    def src(p):
        try:
            return Path(os.path.relpath(Path(p).resolve(), where.resolve())).as_posix()
        except ValueError:
            return Path(p).resolve().as_uri()

    rows = []
    for k, g in enumerate(report.groups, 1):
        cells = "".join(
            f'<figure class="{"keep" if m.path == g.keep else "dup"}">'
            f'<img loading="lazy" src="{html.escape(src(m.path))}">'
            f"<figcaption>{'KEEP ' if m.path == g.keep else ''}{html.escape(m.path)}<br>distance {m.distance:.3f}"
            f"</figcaption></figure>"
            for m in g.members
        )
        rows.append(f"<section><h2>group {k} ({len(g.members)} files)</h2>{cells}</section>")
    skipped = "".join(f"<li>{html.escape(s['path'])}: {html.escape(str(s['reason']))}</li>" for s in report.skipped)
    stats = html.escape(json.dumps(_finite(report.stats), indent=1))
    return f"""<!doctype html><meta charset="utf-8"><title>siamese-index dedup: {report.level}</title>
<style>body{{font-family:sans-serif}} figure{{display:inline-block;margin:4px;width:180px;vertical-align:top}}
img{{max-width:176px;max-height:176px}} .keep{{outline:3px solid #2a2}}
figcaption{{font-size:11px;word-break:break-all}}</style>
<h1>{len(report.groups)} groups at level {report.level} (threshold {report.threshold})</h1>
{"".join(rows)}<h2>skipped ({len(report.skipped)})</h2><ul>{skipped}</ul><pre>{stats}</pre>
"""


# ---------------------------------------------------------------------------------------------
# One new photo against an index's enrolled photos (SiameseIndex.enroll's warning)
# ---------------------------------------------------------------------------------------------
NEAR_SIDECAR = "near-cache.sqlite"  # in an index's home: near descriptors and thumbnails by content


def enrolled_near_duplicates(
    home, new: Sequence[tuple[str, bytes, str]], enrolled: Sequence, threshold: float = near.THRESHOLD
) -> list[list[str]]:
    """For each new photo (label, bytes, sha256), warnings naming the ids under which a
    near-duplicate of it (the same picture, maybe edited) is already enrolled.

    enrolled: (sha256, stored_path relative to home or None, external_id) of the photos to check
    against (the caller passes those of OTHER ids). Their near descriptors and thumbnails live in
    home/NEAR_SIDECAR, filled in for each new photo and, for photos enrolled before, from their
    stored copy; an enrolled photo with neither is only matched by identical content."""
    home = Path(home)
    out: list[list[str]] = [[] for _ in new]
    if not new:
        return out
    kind = near.VERSION
    store = VectorCache(home / NEAR_SIDECAR)
    try:
        fresh = []
        for label, data, sha in new:
            try:
                gray = near.load_gray(data, name=label)
            except InvalidImage:
                fresh.append(None)
                continue
            vec = near.describe(gray)
            store.store(vectors=[(sha, kind, vec.astype("<f4").tobytes(), (None, None, None))])
            store.store_thumbnail(sha, kind, gray)
            fresh.append((gray, vec))
        ids_of: dict[str, set[str]] = {}
        stored_of: dict[str, str] = {}
        for sha, stored, external_id in enrolled:
            ids_of.setdefault(sha, set()).add(external_id)
            if stored:
                stored_of.setdefault(sha, stored)
        have = store.all_vectors(kind)
        for sha in ids_of:
            if sha not in have and sha in stored_of:
                try:
                    gray = near.load_gray(home / stored_of[sha])
                except InvalidImage:
                    continue
                blob = near.describe(gray).astype("<f4").tobytes()
                store.store(vectors=[(sha, kind, blob, (None, None, None))])
                store.store_thumbnail(sha, kind, gray)
                have[sha] = blob
        shas = [sha for sha in ids_of if sha in have]
        gallery = (
            np.stack([np.frombuffer(have[s], "<f4").reshape(len(near.WINDOWS), near.DIM)[0] for s in shas])
            if shas
            else np.zeros((0, near.DIM), np.float32)
        )
        for k, (label, _data, sha) in enumerate(new):
            hits: dict[str, float] = {}
            for other in ids_of.get(sha, ()):
                hits[other] = 0.0
            if fresh[k] is not None and len(shas):
                gray, vec = fresh[k]
                d = np.min(np.linalg.norm(gallery[None, :, :] - vec[:, None, :], axis=2), axis=0)
                order = [int(i) for i in np.argsort(d)[:NEAR_K] if d[i] < NEAR_CANDIDATE_RADIUS and shas[i] != sha]
                if order:
                    mine = near.features(gray)
                    for i in order:
                        thumb = store.thumbnail(shas[i], kind)
                        if thumb is None:
                            continue
                        dist = near.near_distance(mine, near.features(thumb))
                        if dist < threshold:
                            for other in ids_of[shas[i]]:
                                hits[other] = min(hits.get(other, math.inf), dist)
            for other, dist in sorted(hits.items(), key=lambda t: (t[1], t[0])):
                same_file = other in ids_of.get(sha, ())
                what = "the same file as" if same_file else f"a near-duplicate (near distance {dist:.3f})"
                out[k].append(f"{label} is {what}{'' if same_file else ' of'} a photo enrolled under {other}")
    finally:
        store.close()
    return out
