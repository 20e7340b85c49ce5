"""Teacher embeddings for distillation: compute them with dlib, match them to training rows.

A teacher file is an .npz with `paths` (image paths relative to the data folder, posix) and
`vectors` (n, d). `train --teacher FILE` pulls each training image's embedding towards its
teacher vector (unit length) beside the contrastive loss. The teacher is needed only at
training time: the saved tower is our own Keras model and runs without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from siamese_index.errors import InvalidData, InvalidImage
from siamese_index.imaging.loading import open_image
from siamese_index.training.datasets import read_npz, scan_identity_folder

TEACHER_EXTRA = 'pip install -e ".[teacher]"'


class DlibTeacher:
    """dlib's ResNet face descriptor (128-d), on faces aligned by its 5-point landmarks."""

    name = "dlib_face_recognition_resnet_model_v1"

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as files
        except ImportError as e:
            raise InvalidData(f"the dlib teacher needs dlib and its model files: {TEACHER_EXTRA} ({e})") from e
        self._dlib = dlib
        self._detect = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(files.pose_predictor_five_point_model_location())
        self._describe = dlib.face_recognition_model_v1(files.face_recognition_model_location())

    def _face_box(self, rgb: np.ndarray) -> tuple[Any, bool]:
        """The detected face nearest the centre; without one, the frame a face usually fills.

        Wide photos (LFW's 250x250) hold the face in their middle half; small ones (ORL's
        92x112, ID photos) are mostly face.
        """
        h, w = rgb.shape[:2]
        boxes = self._detect(rgb, 1)
        if boxes:
            return min(boxes, key=lambda b: (b.center().x - w / 2) ** 2 + (b.center().y - h / 2) ** 2), True
        if w > 200:
            return self._dlib.rectangle(w // 4, h // 4, 3 * w // 4, 3 * h // 4), False
        return self._dlib.rectangle(0, h // 10, w - 1, 9 * h // 10), False

    def embed(self, path: Path | str) -> tuple[np.ndarray, bool]:
        """One image's descriptor, and whether a face was detected (else a default frame)."""
        rgb = np.asarray(open_image(path).convert("RGB"))
        box, found = self._face_box(rgb)
        shape = self._landmarks(rgb, box)
        return np.asarray(self._describe.compute_face_descriptor(rgb, shape), dtype=np.float32), found


@dataclass(frozen=True)
class TeacherFile:
    """What compute_teacher_file wrote: how many images, faces found, vector size, files skipped."""

    out: str
    images: int
    faces_detected: int
    dim: int
    skipped: tuple[dict[str, str], ...] = ()  # {"path", "reason"}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skipped": [dict(s) for s in self.skipped]}


class TeacherModel(Protocol):
    """What compute_teacher_file needs of a teacher (DlibTeacher; a fake in tests)."""

    def embed(self, path: Path) -> tuple[np.ndarray, bool]:
        """One image's descriptor, and whether a face was detected."""


def compute_teacher_file(
    root: Path,
    out: Path,
    teacher: TeacherModel | None = None,
    progress: Callable[[int, int], None] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> TeacherFile:
    """Embed every image of a folder of identities with the teacher; write the .npz atomically.

    Unreadable images are skipped and listed (training skips them too).
    """
    teacher = teacher or DlibTeacher()
    root = Path(root)
    files = [f for _, fs in scan_identity_folder(root, include, exclude) for f in fs]
    paths: list[str] = []
    vectors: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    detected = 0
    for i, f in enumerate(files, 1):
        try:
            vec, found = teacher.embed(f)
        except InvalidImage as e:
            skipped.append({"path": str(f), "reason": e.reason})
        else:
            paths.append(f.relative_to(root).as_posix())
            vectors.append(vec)
            detected += found
        if progress and (i % 100 == 0 or i == len(files)):
            progress(i, len(files))
    if not vectors:
        raise InvalidData(f"{root}: none of the {len(files)} images could be read")
    _write_teacher_npz(Path(out), paths, np.stack(vectors), getattr(teacher, "name", ""))
    return TeacherFile(str(Path(out)), len(paths), detected, int(vectors[0].shape[0]), tuple(skipped))


def _write_teacher_npz(out: Path, paths: list[str], vectors: np.ndarray, name: str) -> None:
    """Write through a temporary file and rename it into place, so a crash leaves no half file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, paths=np.array(paths), vectors=vectors, teacher=np.array(name))
    tmp.replace(out)


def teacher_targets(teacher_file: Path, data_root: Path, row_paths: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """Unit-length teacher vectors for each training row, and a mask of the rows that have one.

    Rows are matched by their path relative to the data folder. Returns (targets, mask, name).
    """
    teacher_file = Path(teacher_file)
    data = read_npz(teacher_file, ("paths", "vectors"), "teacher .npz")
    paths, vectors = data["paths"], data["vectors"]
    name = str(data["teacher"]) if "teacher" in data else ""
    if vectors.ndim != 2 or len(vectors) != len(paths):
        raise InvalidData(
            f"{teacher_file}: vectors must be (n, d) with one row per path; got {vectors.shape} for {len(paths)} paths"
        )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise InvalidData(f"{teacher_file}: vectors must be finite and non-zero")
    unit = (vectors / norms).astype(np.float32)
    where = {str(p): i for i, p in enumerate(paths)}
    root = Path(data_root).resolve()
    rows = [where.get(_relative(p, root), -1) for p in row_paths]
    mask = np.array([r >= 0 for r in rows])
    if not mask.any():
        raise InvalidData(
            f"{teacher_file}: none of its {len(paths)} paths is an image of {data_root} "
            f"(paths must be relative to the data folder, e.g. {_relative(row_paths[0], root)})"
        )
    targets = np.zeros((len(row_paths), vectors.shape[1]), np.float32)
    targets[mask] = unit[[r for r in rows if r >= 0]]
    return targets, mask, name


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()
