"""`siamese-index demo`: the whole job end to end on synthetic people made on the spot.

No data set and no network: the "people" are procedurally drawn cartoon faces (each person
a fixed set of proportions, each photo moved, re-lit and noised). They are looked up with
the small tower shipped in models/demo-cartoon-v1, which was trained on 400 *other* such
people: 8 new people are enrolled, looked up one-shot, verified, and strangers are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from siamese_index.config import MODELS_DIR
from siamese_index.imaging.synthetic import DEMO_FIRST_PERSON, cartoon_face
from siamese_index.index.facade import SiameseIndex

DEMO_MODEL = MODELS_DIR / "demo-cartoon-v1"
STAFF, STRANGERS = 8, 4


def run_demo(workdir: Path, say: Callable[[str], None] = lambda _: None, model: Path | None = None) -> dict:
    """Run the demo in workdir (created; must be empty or new). Returns a summary."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = Path(model or DEMO_MODEL)

    def photo(person: int, variant: int, folder: str) -> Path:
        path = workdir / folder / f"person{person}_{variant}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cartoon_face(person, variant, 32).save(path)
        return path

    # People the tower never saw: its training people are numbered below DEMO_FIRST_PERSON.
    staff = range(DEMO_FIRST_PERSON, DEMO_FIRST_PERSON + STAFF)
    strangers = range(DEMO_FIRST_PERSON + 100, DEMO_FIRST_PERSON + 100 + STRANGERS)
    summary = {
        "model": str(model),
        "enrolled": 0,
        "known_right": 0,
        "known_queries": 0,
        "strangers_refused": 0,
        "strangers": STRANGERS,
    }
    say(f"1. drawing {STAFF} synthetic cartoon-face people (two photos each) and {STRANGERS} strangers in {workdir}")
    with SiameseIndex.open(workdir / "home", model=model) as index:
        say(f"2. enrolling the {STAFF} people into a new home at {workdir / 'home'} (tower: {model.name})")
        for p in staff:
            index.enroll(f"E{p}", [photo(p, 0, "enroll"), photo(p, 1, "enroll")], name=f"Person {p}")
            summary["enrolled"] += 1
        op = index.operating_point()
        say(
            f"3. identifying a new photo of each of them and of the strangers; unknown-person threshold "
            f"{op.threshold:.3f} ({op.target_far:.0%} of strangers accepted at {op.gallery_size} people)"
        )
        queries = [photo(p, 2, "queries") for p in staff] + [photo(p, 2, "strangers") for p in strangers]
        truths = [f"E{p}" for p in staff] + [None] * STRANGERS
        for answer, truth in zip(index.identify(queries, k=3), truths):
            got = answer.match.id if answer.known else "unknown"
            dist = answer.candidates[0].distance if answer.candidates else float("nan")
            ok = (got == truth) if truth else not answer.known
            who = "enrolled" if truth else "stranger"
            say(
                f"   {Path(answer.query).name:22} ({who}) -> {got:8} nearest distance {dist:.3f}  {'ok' if ok else 'WRONG'}"
            )
            if truth:
                summary["known_queries"] += 1
                summary["known_right"] += int(ok)
            else:
                summary["strangers_refused"] += int(ok)
        first, second = staff[0], staff[1]
        same = index.verify(photo(first, 3, "verify"), photo(first, 4, "verify"))
        diff = index.verify(photo(first, 3, "verify"), photo(second, 3, "verify"))
        say(
            f"4. verify: two photos of one person -> {'same' if same.same else 'different'} ({same.distance:.3f}); "
            f"two people -> {'same' if diff.same else 'different'} ({diff.distance:.3f}); pair threshold {same.threshold:.3f}"
        )
        summary["verify_same"], summary["verify_different"] = same.same, not diff.same
        summary["threshold"] = op.threshold
    say(
        f"done: {summary['known_right']}/{summary['known_queries']} enrolled people identified, "
        f"{summary['strangers_refused']}/{STRANGERS} strangers refused"
    )
    return summary
