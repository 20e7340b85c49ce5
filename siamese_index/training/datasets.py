"""Data sets of identities: a folder tree of images, or an .npz of vectors or images."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from siamese_index.errors import InvalidData, InvalidImage
from siamese_index.imaging.loading import Preprocessing, array_to_input, is_image_file, load_input, prepare


@dataclass
class Dataset:
    """Images (n, h, w, c) uint8 or vectors (n, d) float32, with integer identity labels."""

    x: np.ndarray
    labels: np.ndarray
    names: list[str]  # identity name per label
    groups: list[str]  # group per label (Omniglot alphabet; "" when flat)
    paths: list[str]  # source of each row
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_identities(self) -> int:
        return len(self.names)

    def subset(self, identity_labels: Iterable[int]) -> Dataset:
        """Rows of the given identities, relabelled 0..k-1 in the given order."""
        keep = np.asarray(sorted(set(int(i) for i in identity_labels)))
        remap = {old: new for new, old in enumerate(keep)}
        rows = np.flatnonzero(np.isin(self.labels, keep))
        return Dataset(
            x=self.x[rows],
            labels=np.array([remap[int(l)] for l in self.labels[rows]], dtype=np.int64),
            names=[self.names[i] for i in keep],
            groups=[self.groups[i] for i in keep],
            paths=[self.paths[i] for i in rows],
            skipped=list(self.skipped),
        )


def scan_identity_folder(
    root: Path, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[tuple[str, list[Path]]]:
    """Every folder holding images is an identity named by its path under root, sorted.

    include/exclude are shell patterns on identity names (e.g. "s3[1-9]") to pick a split.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidData(f"{root}: not a folder of identities")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files = sorted(Path(dirpath) / f for f in filenames if is_image_file(Path(f)))
        if files:
            rel = Path(dirpath).relative_to(root).as_posix()
            name = "." if rel == "." else rel
            if include and not any(fnmatch(name, pat) for pat in include):
                continue
            if any(fnmatch(name, pat) for pat in exclude):
                continue
            found.append((name, files))
    if not found:
        raise InvalidData(
            f"{root}: no images found (expected one sub-folder of images per identity, matching any filter)"
        )
    return found


def load_dataset(
    source: Path | str,
    prep: Preprocessing | None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 4,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    detect_faces: bool = True,
) -> Dataset:
    """Load a folder of identities or an .npz (X, y). Bad image files are skipped and listed.

    Images are prepared as enrollment and lookup prepare them (face detection when the
    preprocessing asks for it); detect_faces=False uses the fixed crop only, for training on
    an already aligned set such as LFW deep-funneled.
    """
    source = Path(source)
    if source.suffix == ".npz":
        return _load_npz(source, prep)
    identities = scan_identity_folder(source, include, exclude)
    if prep is None:
        raise InvalidData("a folder of images needs the model's preprocessing")
    return _load_folder(source, identities, prep, progress, workers, detect_faces and prep.face_crop)


def _load_folder(
    source: Path,
    identities: list[tuple[str, list[Path]]],
    prep: Preprocessing,
    progress: Callable[[int, int], None] | None,
    workers: int,
    detect: bool,
) -> Dataset:
    """Prepare every image of the scanned identities in a thread pool, in their sorted order."""
    jobs = [(label, path) for label, (_, files) in enumerate(identities) for path in files]

    def load(job: tuple[int, Path]) -> tuple[int, str, np.ndarray | None, str | None]:
        label, path = job
        try:
            if detect:
                return label, str(path), prepare(path, prep, name=str(path))[0], None
            return label, str(path), load_input(path, prep), None
        except InvalidImage as e:
            return label, str(path), None, e.reason

    xs: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (label, path, arr, err) in enumerate(pool.map(load, jobs), 1):
            if arr is None:
                skipped.append((path, err or "unreadable"))
            else:
                xs.append(arr)
                labels.append(label)
                paths.append(path)
            if progress and (i % 200 == 0 or i == len(jobs)):
                progress(i, len(jobs))
    if not xs:
        raise InvalidData(f"{source}: none of the {len(jobs)} image files could be read")
    names = [name for name, _ in identities]
    groups = [str(Path(name).parent) if "/" in name else "" for name in names]
    return Dataset(np.stack(xs), np.asarray(labels, dtype=np.int64), names, groups, paths, skipped)


def read_npz(path: Path, required: tuple[str, ...], what: str = ".npz") -> dict[str, np.ndarray]:
    """The arrays of an .npz holding the required ones (read, file closed); anything else is one
    InvalidData naming the file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except Exception as e:  # zip errors, bad headers, a plain .npy: one clear message
        raise InvalidData(f"{path}: not a readable {what} ({e})") from e
    for key in required:
        if key not in data:
            raise InvalidData(f"{path}: missing array {key!r} (need {' and '.join(required)})")
    return data


def _load_npz(path: Path, prep: Preprocessing | None) -> Dataset:
    data = read_npz(path, ("X", "y"))
    x, y = data["X"], data["y"]
    if y.ndim != 1 or len(y) != len(x):
        raise InvalidData(f"{path}: y must have shape (n,) matching X's first axis; got X {x.shape}, y {y.shape}")
    values, labels = np.unique(y, return_inverse=True)
    if x.ndim == 2:
        x = x.astype(np.float32)
    elif x.ndim in (3, 4):
        if prep is None:
            raise InvalidData(f"{path}: image arrays need the model's preprocessing")
        x = np.stack([array_to_input(img, prep) for img in x])
    else:
        raise InvalidData(f"{path}: X must be (n, d) vectors or (n, h, w[, c]) images; got {x.shape}")
    names = [str(v) for v in values]
    return Dataset(x, labels.astype(np.int64), names, [""] * len(names), [f"{path.name}[{i}]" for i in range(len(x))])


def npz_feature_shape(path: Path) -> tuple[int, ...]:
    """The per-row shape of X in an .npz, without loading it all into memory."""
    with np.load(path, allow_pickle=False, mmap_mode="r") as data:
        if "X" not in data:
            raise InvalidData(f"{path}: missing array 'X'")
        return tuple(int(v) for v in data["X"].shape[1:])
