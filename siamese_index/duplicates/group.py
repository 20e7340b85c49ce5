"""The third step: contents into groups, and groups into DuplicateGroups with a kept file.

Files whose bytes are identical are one content (one node, distance 0 to each other); the
levels group nodes: exact by content alone, near by the descriptor search and the picture
check, identity by the face tower's distances. Every group is complete-linkage (linkage.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from siamese_index.duplicates.linkage import Linked, Pair, complete_linkage
from siamese_index.duplicates.report import DuplicateGroup, FileState, Member
from siamese_index.duplicates.scan import ScannedFile
from siamese_index.duplicates.search import IDENTITY_K, build_vector_index, candidate_pairs
from siamese_index.duplicates.verify import NearChecker, Thumbnails
from siamese_index.imaging import near
from siamese_index.storage.descriptor_cache import Store

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Contents:
    """One node per distinct content: files with equal bytes share their node."""

    files: list[ScannedFile]  # the readable files (sha256 set), in scan order
    shas: list[str]  # node -> content sha256
    members: list[list[int]]  # node -> indexes into files

    @classmethod
    def of(cls, files: Sequence[ScannedFile]) -> Contents:
        readable = [f for f in files if f.sha256 is not None]
        node_of: dict[str, int] = {}
        members: list[list[int]] = []
        for idx, f in enumerate(readable):
            assert f.sha256 is not None
            if f.sha256 not in node_of:
                node_of[f.sha256] = len(members)
                members.append([])
            members[node_of[f.sha256]].append(idx)
        return cls(readable, list(node_of), members)

    def paths(self, node: int) -> list[str]:
        return [self.files[i].path for i in self.members[node]]

    def lone_copies(self, grouped: Collection[int] = ()) -> list[Linked]:
        """Contents held by several files but in no group: each is a group of its own."""
        return [([k], {}) for k in range(len(self.members)) if len(self.members[k]) > 1 and k not in grouped]


@dataclass
class Grouping:
    """Groups of nodes, and what the search and check did to find them."""

    groups: list[Linked] = field(default_factory=list)
    index: str | None = None  # the FAISS index's class name
    candidate_pairs: int | None = None
    checked_pairs: int | None = None
    checked_from_cache: int | None = None

    def with_lone_copies(self, contents: Contents) -> Grouping:
        """Add the contents with several identical files but no partner, as groups of their own."""
        grouped = {v for nodes, _ in self.groups for v in nodes}
        self.groups += contents.lone_copies(grouped)
        return self


def group_exact(contents: Contents) -> Grouping:
    return Grouping(contents.lone_copies())


def group_near(
    contents: Contents,
    vectors: dict[str, np.ndarray],
    threshold: float,
    checker: NearChecker,
    progress: Progress | None = None,
) -> Grouping:
    """Candidates from the descriptor search (each view of each picture against the whole pictures),
    then the picture check on each, then complete linkage over the checked distances."""
    n = len(contents.shas)
    if n < 2:
        return Grouping(contents.lone_copies())
    x = np.stack([vectors[s] for s in contents.shas]).astype(np.float32).reshape(n, len(near.WINDOWS), near.DIM)
    index = build_vector_index(x[:, 0])
    pi, pj, _ = candidate_pairs(index, x, radius=near.CANDIDATE_RADIUS, k=near.NEAR_K, progress=progress)
    verified = checker.check(list(zip(pi.tolist(), pj.tolist())))

    def near_distance(i: int, j: int) -> float:
        d = verified.get((i, j))
        return checker.distance(i, j) if d is None else d

    close = {key: d for key, d in verified.items() if d < threshold}
    groups = complete_linkage(close, threshold, pair_distance=near_distance)
    checker.flush()
    found = Grouping(groups, type(index).__name__, len(pi), checker.checked, checker.from_cache)
    return found.with_lone_copies(contents)


def group_identity(
    contents: Contents, vectors: dict[str, np.ndarray], threshold: float, progress: Progress | None = None
) -> Grouping:
    """Candidates within the threshold from the embedding search, complete linkage on plain L2."""
    n = len(contents.shas)
    if n < 2:
        return Grouping(contents.lone_copies())
    x = np.stack([vectors[s] for s in contents.shas]).astype(np.float32)
    index = build_vector_index(x)
    pi, pj, pd = candidate_pairs(index, x, radius=threshold, k=IDENTITY_K, progress=progress)
    distances: dict[Pair, float] = dict(zip(zip(pi.tolist(), pj.tolist()), pd.tolist()))

    def exact_distance(i: int, j: int) -> float:
        return float(np.linalg.norm(x[i].astype(np.float64) - x[j]))

    groups = complete_linkage(distances, threshold, pair_distance=exact_distance)
    return Grouping(groups, type(index).__name__, len(pi)).with_lone_copies(contents)


def near_checker(
    contents: Contents,
    store: Store,
    progress: Progress | None = None,
    workers: int = 1,
    thumbnails: Thumbnails | None = None,
) -> NearChecker:
    """The pair check over these contents' nodes."""
    paths = [contents.paths(k) for k in range(len(contents.shas))]
    return NearChecker(contents.shas, paths, store, near.VERSION, progress, workers, thumbnails)


# ---------------------------------------------------------------------------------------------
# Node groups into DuplicateGroups
# ---------------------------------------------------------------------------------------------
def keep_key(f: ScannedFile, rule: str) -> tuple:
    """Sort key of the file a group keeps (the smallest): largest, oldest or first."""
    if rule == "largest":
        pixels = (f.width or 0) * (f.height or 0)
        return (-pixels, -(f.color or 0), -f.size, f.order)
    if rule == "oldest":
        return (f.mtime_ns, f.order)
    return (f.order,)


def _duplicate_group(linked: Linked, contents: Contents, keep: str) -> DuplicateGroup:
    nodes, dist = linked
    files = contents.files
    idxs = [i for nd in nodes for i in contents.members[nd]]
    node_of = {i: nd for nd in nodes for i in contents.members[nd]}
    keeper = min(idxs, key=lambda i: keep_key(files[i], keep))

    def d(i: int, j: int) -> float:
        a, b = node_of[i], node_of[j]
        return 0.0 if a == b else float(dist.get((min(a, b), max(a, b)), 0.0))

    members = sorted(idxs, key=lambda i: (i != keeper, d(keeper, i), files[i].order))
    max_d = max((d(a, b) for a in idxs for b in idxs if a < b), default=0.0)
    return DuplicateGroup(
        files[keeper].path,
        tuple(Member(files[i].path, round(d(keeper, i), 6)) for i in members),
        round(max_d, 6),
    )


def duplicate_groups(grouping: Grouping, contents: Contents, keep: str) -> tuple[DuplicateGroup, ...]:
    """One DuplicateGroup per node group: the kept file first, the others by distance to it;
    groups in the order of their first file in the scan."""
    out = [_duplicate_group(g, contents, keep) for g in grouping.groups]
    order = {f.path: f.order for f in contents.files}
    out.sort(key=lambda g: min(order[m.path] for m in g.members))
    return tuple(out)


def file_states(grouping: Grouping, contents: Contents) -> dict[str, FileState]:
    """The files in groups as the scan saw them (what quarantine checks before it acts)."""
    out = {}
    for nodes, _ in grouping.groups:
        for nd in nodes:
            for i in contents.members[nd]:
                f = contents.files[i]
                assert f.sha256 is not None
                out[f.path] = FileState(f.sha256, f.size, f.mtime_ns)
    return out
