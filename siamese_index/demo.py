"""`siamese-index demo`: the whole job end to end on synthetic people made on the spot.

No data set and no network: the "people" are procedurally drawn cartoon faces (each person
a fixed set of proportions, each photo moved, re-lit and noised). They are looked up with
the small tower shipped in models/demo-cartoon-v1, which was trained on 400 *other* such
people: 8 new people are enrolled, looked up one-shot, verified, and strangers are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from siamese_index.config import MODELS_DIR
from siamese_index.errors import ModelError
from siamese_index.imaging.synthetic import DEMO_FIRST_PERSON, cartoon_face
from siamese_index.index.facade import SiameseIndex

DEMO_MODEL = MODELS_DIR / "demo-cartoon-v1"
STAFF, STRANGERS = 8, 4


@dataclass(frozen=True)
class DemoResult:
    """How the demo went: people enrolled, lookups right, strangers refused, verify's answers."""

    model: str
    enrolled: int
    known_right: int
    known_queries: int
    strangers_refused: int
    strangers: int
    verify_same: bool
    verify_different: bool
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Photos:
    """Draws demo photos into the work folder on demand."""

    def __init__(self, workdir: Path):
        self.workdir = workdir

    def __call__(self, person: int, variant: int, folder: str) -> Path:
        path = self.workdir / folder / f"person{person}_{variant}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cartoon_face(person, variant, 32).save(path)
        return path


def run_demo(workdir: Path, say: Callable[[str], None] = lambda _: None, model: Path | None = None) -> DemoResult:
    """Run the demo in workdir (created; must be empty or new). Returns what happened."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = Path(model or DEMO_MODEL)
    photo = _Photos(workdir)
    # People the tower never saw: its training people are numbered below DEMO_FIRST_PERSON.
    staff = list(range(DEMO_FIRST_PERSON, DEMO_FIRST_PERSON + STAFF))
    strangers = list(range(DEMO_FIRST_PERSON + 100, DEMO_FIRST_PERSON + 100 + STRANGERS))
    say(f"1. drawing {STAFF} synthetic cartoon-face people (two photos each) and {STRANGERS} strangers in {workdir}")
    with SiameseIndex.open(workdir / "home", model=model) as index:
        say(f"2. enrolling the {STAFF} people into a new home at {workdir / 'home'} (tower: {model.name})")
        for p in staff:
            index.enroll(f"E{p}", [photo(p, 0, "enroll"), photo(p, 1, "enroll")], name=f"Person {p}")
        op = index.operating_point()
        if op.threshold is None:  # the shipped demo tower is calibrated; another one may not be
            raise ModelError(f"{model}: no identification threshold (the model is not calibrated)")
        say(
            f"3. identifying a new photo of each of them and of the strangers; unknown-person threshold "
            f"{op.threshold:.3f} ({op.target_far:.0%} of strangers accepted at {op.gallery_size} people)"
        )
        known_right, refused = _identify(index, photo, staff, strangers, say)
        same_ok, different_ok = _verify(index, photo, staff[0], staff[1], say)
    say(f"done: {known_right}/{STAFF} enrolled people identified, {refused}/{STRANGERS} strangers refused")
    return DemoResult(
        str(model), len(staff), known_right, len(staff), refused, len(strangers), same_ok, different_ok, op.threshold
    )


def _identify(
    index: SiameseIndex, photo: _Photos, staff: list[int], strangers: list[int], say: Callable[[str], None]
) -> tuple[int, int]:
    """Look up a new photo of each enrolled person and of each stranger: (known right, strangers refused)."""
    queries = [photo(p, 2, "queries") for p in staff] + [photo(p, 2, "strangers") for p in strangers]
    truths: list[str | None] = [f"E{p}" for p in staff] + [None] * len(strangers)
    known_right = refused = 0
    for answer, truth in zip(index.identify(queries, k=3), truths):
        got = answer.match.id if answer.known and answer.match is not None else "unknown"
        dist = answer.candidates[0].distance if answer.candidates else math.nan
        ok = (got == truth) if truth else not answer.known
        who = "enrolled" if truth else "stranger"
        say(
            f"   {Path(answer.query).name:22} ({who}) -> {got:8} nearest distance {dist:.3f}  {'ok' if ok else 'WRONG'}"
        )
        if truth:
            known_right += int(ok)
        else:
            refused += int(ok)
    return known_right, refused


def _verify(
    index: SiameseIndex, photo: _Photos, first: int, second: int, say: Callable[[str], None]
) -> tuple[bool, bool]:
    """Verify two photos of one person and two people: (said same, said different)."""
    same = index.verify(photo(first, 3, "verify"), photo(first, 4, "verify"))
    diff = index.verify(photo(first, 3, "verify"), photo(second, 3, "verify"))
    say(
        f"4. verify: two photos of one person -> {'same' if same.same else 'different'} ({same.distance:.3f}); "
        f"two people -> {'same' if diff.same else 'different'} ({diff.distance:.3f}); pair threshold {same.threshold:.3f}"
    )
    return same.same, not diff.same
