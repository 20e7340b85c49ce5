"""ORL one-shot identification and the unknown-person behaviour, run through the CLI itself.

1. Enroll image 1 of all 40 ORL people (enroll-dir over a folder of links), identify the 360
   other images in ONE identify call, report rank-1 and how many were answered "known".
2. Enroll image 1 of s1-s20 only; query the other images of those 20 and every image of the 20
   never enrolled; count correct answers (known and right, or unknown for a stranger).

    python benchmarks/orl_cli.py [--model NAME]  (default: the default face tower)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _cli import SHARED, siamese

from siamese_index.config import DEFAULT_MODEL_NAME


def enroll_first_images(people: list[str], orl: Path, home: Path, model: str, work: Path) -> dict:
    staff = work / f"staff-{home.name}"
    for person in people:
        (staff / person).mkdir(parents=True)
        (staff / person / "1.pgm").symlink_to(orl / person / "1.pgm")
    out, _ = siamese("enroll-dir", str(staff), "--home", str(home), "--model", model, "--allow-no-face")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL_NAME)
    args = ap.parse_args()
    orl = SHARED / "orl_faces"
    everyone = [f"s{i}" for i in range(1, 41)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "all40"
        enroll_first_images(everyone, orl, home, args.model, work)
        probes = [(p, orl / p / f"{i}.pgm") for p in everyone for i in range(2, 11)]
        answers, seconds = siamese("identify", *[str(f) for _, f in probes], "--home", str(home), "--k", "5")
        rank1 = sum(a["candidates"][0]["id"] == p for a, (p, _) in zip(answers, probes)) / len(probes)
        rank5 = sum(any(c["id"] == p for c in a["candidates"][:5]) for a, (p, _) in zip(answers, probes)) / len(probes)
        known_right = sum(a["known"] and a["match"]["id"] == p for a, (p, _) in zip(answers, probes))
        known_wrong = sum(a["known"] and a["match"]["id"] != p for a, (p, _) in zip(answers, probes))
        print(
            f"ORL one-shot via the CLI: 40 enrolled (image 1 each), {len(probes)} probes in one identify call ({seconds:.1f} s)"
        )
        print(f"  rank-1 {rank1:.3f}   rank-5 {rank5:.3f}")
        print(
            f"  answered known and right {known_right}, known but wrong {known_wrong}, unknown {len(probes) - known_right - known_wrong}"
            f"   (threshold {answers[0]['threshold']:.4f})"
        )

        home20 = work / "first20"
        enrolled, strangers = everyone[:20], everyone[20:]
        enroll_first_images(enrolled, orl, home20, args.model, work)
        queries = [(p, orl / p / f"{i}.pgm") for p in enrolled for i in range(2, 11)]
        queries += [(None, orl / p / f"{i}.pgm") for p in strangers for i in range(1, 11)]
        answers, _ = siamese("identify", *[str(f) for _, f in queries], "--home", str(home20))
        right_known = sum(a["known"] and a["match"]["id"] == p for a, (p, _) in zip(answers, queries) if p)
        wrong_known = sum(a["known"] and a["match"]["id"] != p for a, (p, _) in zip(answers, queries) if p)
        refused = sum(not a["known"] for a, (p, _) in zip(answers, queries) if p is None)
        n_known, n_strange = sum(1 for p, _ in queries if p), sum(1 for p, _ in queries if p is None)
        print(f"Unknown-person behaviour: 20 enrolled, threshold {answers[0]['threshold']:.4f}")
        print(
            f"  photos of the 20 enrolled: {right_known}/{n_known} identified correctly, {wrong_known} given the wrong name, "
            f"{n_known - right_known - wrong_known} answered unknown"
        )
        print(
            f"  photos of the 20 never enrolled: {refused}/{n_strange} answered unknown, {n_strange - refused} wrongly accepted"
        )


if __name__ == "__main__":
    main()
