"""`siamese-index demo`: the whole job end to end on synthetic people made on the spot.

No data set and no network: the "people" are procedurally drawn cartoon faces (each person
a fixed set of proportions, each photo moved, re-lit and noised). A small tower is trained
on 40 such people, then 8 others are enrolled, looked up one-shot, verified, and strangers
are refused as unknown.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .datasets import load_dataset
from .images import Preprocessing
from .index import SiameseIndex
from .synthetic import cartoon_face, make_face_folder
from .training import TrainOptions, train

TRAIN_PEOPLE, STAFF, STRANGERS = 60, 8, 4


def run_demo(workdir: Path, say: Callable[[str], None] = lambda _: None) -> dict:
    """Run the demo in workdir (created; must be empty or new). Returns a summary."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prep = Preprocessing(24, 24, 1)
    say(f"1. drawing {TRAIN_PEOPLE} synthetic cartoon-face people (5 photos each) in {workdir / 'train'}")
    train_root = make_face_folder(workdir / "train", identities=TRAIN_PEOPLE, per_identity=5, size=32)
    say("2. training a small facenet-s tower on them (contrastive loss; a quarter of them held out to calibrate)")
    options = TrainOptions(arch="facenet-s", epochs=15, seed=0, val_fraction=0.25, identities_per_batch=16,
                           images_per_identity=4, steps_per_epoch=15, learning_rate=3e-3, augmentation="none")
    config = train(load_dataset(train_root, prep), workdir / "tower", options, prep, source="demo synthetic people")
    say(f"   threshold {config.threshold:.3f}; held-out verification accuracy {config.metrics['validation']['accuracy']:.3f}")

    def photo(person: int, variant: int, folder: str) -> Path:
        path = workdir / folder / f"person{person}_{variant}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cartoon_face(person, variant, 32).save(path)
        return path

    staff = range(1000, 1000 + STAFF)  # people the tower never saw
    strangers = range(2000, 2000 + STRANGERS)
    summary = {"enrolled": 0, "known_right": 0, "known_queries": 0, "strangers_refused": 0, "strangers": STRANGERS}
    with SiameseIndex.open(workdir / "home", model=workdir / "tower") as index:
        say(f"3. enrolling {STAFF} new people, two photos each, into {workdir / 'home'}")
        for p in staff:
            index.enroll(f"E{p}", [photo(p, 0, "enroll"), photo(p, 4, "enroll")], name=f"Person {p}")
            summary["enrolled"] += 1
        say("4. identifying a new photo of each of them, and of strangers never enrolled")
        queries = [photo(p, 1, "queries") for p in staff] + [photo(p, 1, "strangers") for p in strangers]
        for answer, truth in zip(index.identify(queries, k=3), [f"E{p}" for p in staff] + [None] * STRANGERS):
            got = answer.match.id if answer.known else "unknown"
            dist = answer.candidates[0].distance if answer.candidates else float("nan")
            ok = (got == truth) if truth else not answer.known
            say(f"   {Path(answer.query).name:22} -> {got:8} (nearest distance {dist:.3f}) {'ok' if ok else 'WRONG'}")
            if truth:
                summary["known_queries"] += 1
                summary["known_right"] += int(ok)
            else:
                summary["strangers_refused"] += int(ok)
        same = index.verify(photo(1001, 2, "verify"), photo(1001, 3, "verify"))
        diff = index.verify(photo(1001, 2, "verify"), photo(1002, 2, "verify"))
        say(f"5. verify: two photos of one person -> {'same' if same.same else 'different'} ({same.distance:.3f}); "
            f"two people -> {'same' if diff.same else 'different'} ({diff.distance:.3f}); threshold {same.threshold:.3f}")
        summary["verify_same"], summary["verify_different"] = same.same, not diff.same
        summary["threshold"] = index.operating_point().threshold
    say(f"done: {summary['known_right']}/{summary['known_queries']} enrolled people identified, "
        f"{summary['strangers_refused']}/{STRANGERS} strangers refused")
    return summary
