"""Near-duplicate benchmark on LFW people, and the search + grouping part at scale.

    python benchmarks/dedup_bench.py                       # full: 600 people (~3,600 files), scale 10k/100k/1M
    python benchmarks/dedup_bench.py --people 150 --scale 10000,100000   # quicker

Part 1 (real files). From ../shared/data/lfw/lfw-deepfunneled, seeded:
  - per chosen person (one with two or more photos): one original and 1-4 edited copies of it;
    each copy combines 1-3 edits drawn from: JPEG quality 25-80; downscale to 0.4-0.85; border
    crop of 3-12% on each side (drawn per side); brightness and contrast each x0.75-1.25;
    rotation +-6 degrees (corners filled black, or cropped away); grayscale. A copy without the
    JPEG edit is written as PNG.
  - 1-2 other photos of the same person, untouched: NOT duplicates of the original (telling
    them apart is what `--level identity` is for, not `near`). LFW itself holds a few copies
    of one picture under one name; those are left out (see lfw_same_picture) and listed;
  - unrelated photos: one photo each of people not otherwise used.
  The files are shuffled into a few folders under random names. Truth: the original and its
  copies form one group. Scored on pairs: a predicted pair is two files in one predicted group.
  "same-person merges" counts predicted pairs of two different pictures of one person.
  Methods, side by side in one run: siamese-index's near level (end to end: decode, describe,
  search, verify, group) and the usual baseline, ImageHash phash with Hamming distance <= 10
  (the default of imagededup), grouped by connected components as such tools do; and phash at
  a looser <= 16, to show where loosening it leads (chains: see the largest group).

Part 2 (synthetic vectors): the FAISS search and complete-linkage grouping of the dedup pipeline
(siamese_index/duplicates/search.py and linkage.py) on
N random descriptors with planted near-duplicates, for N in --scale; the approximate index's
recall of planted pairs and of the exact search's neighbours is reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(os.environ.get("SIAMESE_INDEX_SHARED", Path(__file__).resolve().parents[2] / "shared" / "data"))
LFW = SHARED / "lfw" / "lfw-deepfunneled"

EDITS = ("jpeg", "downscale", "crop", "tone", "rotate", "grayscale")
ORDER = ("crop", "rotate", "downscale", "tone", "grayscale", "jpeg")


# ---------------------------------------------------------------------------------------------
# Building the benchmark folder
# ---------------------------------------------------------------------------------------------
def edit_copy(im: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    """Apply 1-3 distinct edits; return (image, {edit: parameters}); 'jpeg' means save as JPEG."""
    chosen = rng.sample(EDITS, rng.randint(1, 3))
    done: dict = {}
    for edit in ORDER:
        if edit not in chosen:
            continue
        w, h = im.size
        if edit == "crop":
            l, t, r, b = (rng.uniform(0.03, 0.12) for _ in range(4))
            im = im.crop((round(l * w), round(t * h), round(w - r * w), round(h - b * h)))
            done[edit] = [round(v, 3) for v in (l, t, r, b)]
        elif edit == "rotate":
            angle = rng.uniform(2.0, 6.0) * rng.choice((-1, 1))
            fill_black = rng.random() < 0.5
            rot = im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
            if not fill_black:  # crop the black corners away (what "straighten" tools do)
                import math

                a = math.radians(abs(angle))
                f = 1.0 / (math.cos(a) + math.sin(a) * max(w, h) / min(w, h))
                cw, ch = w * f, h * f
                rot = rot.crop((round((w - cw) / 2), round((h - ch) / 2), round((w + cw) / 2), round((h + ch) / 2)))
            im = rot
            done[edit] = {"angle": round(angle, 2), "corners": "black" if fill_black else "cropped"}
        elif edit == "downscale":
            s = rng.uniform(0.4, 0.85)
            im = im.resize((max(8, round(w * s)), max(8, round(h * s))), Image.Resampling.LANCZOS)
            done[edit] = round(s, 3)
        elif edit == "tone":
            bf, cf = rng.uniform(0.75, 1.25), rng.uniform(0.75, 1.25)
            im = ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(bf)).enhance(cf)
            done[edit] = {"brightness": round(bf, 3), "contrast": round(cf, 3)}
        elif edit == "grayscale":
            im = ImageOps.grayscale(im)
            done[edit] = True
        elif edit == "jpeg":
            done[edit] = rng.randint(25, 80)
    return im, done


def lfw_same_picture(a: Path, b: Path) -> bool:
    """Are two LFW files one picture? Deep-funneled LFW photos are aligned, so one picture saved
    twice differs by almost nothing pixel for pixel: the mean absolute difference of 64x64 grey
    thumbnails after histogram matching, in units of contrast, is ~0.03 for such copies and
    above 0.14 for every other pair of photos of one person (bursts included) in a sample of
    400 people. Independent of siamese-index's near check; used only to clean the truth."""
    import cv2

    def thumb(p):
        g = np.asarray(Image.open(p).convert("L"), np.float32)
        return cv2.GaussianBlur(cv2.resize(g, (64, 64), interpolation=cv2.INTER_AREA), (0, 0), 1.0).ravel()

    x, y = thumb(a), thumb(b)
    matched = np.empty_like(y)
    matched[np.argsort(y)] = np.sort(x)
    return float(np.mean(np.abs(matched - x)) / max(float(x.std()), 5.0)) < 0.08


def build(out: Path, people: int, unrelated: int, seed: int) -> dict:
    """Write the benchmark folder; return the truth {"files": {rel: {...}}, "groups": [[rel...]]}."""
    if not LFW.is_dir():
        sys.exit(f"{LFW} is absent: this benchmark needs ../shared/data/lfw")
    rng = random.Random(seed)
    folders = sorted(p for p in LFW.iterdir() if p.is_dir())
    multi = [p for p in folders if len(list(p.glob("*.jpg"))) >= 2]
    single = [p for p in folders if len(list(p.glob("*.jpg"))) == 1]
    chosen = rng.sample(multi, min(people, len(multi)))
    others = rng.sample(single, min(unrelated, len(single)))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    entries: list[tuple[bytes, str, dict]] = []  # (data, suffix, info)
    excluded: list[str] = []
    for person in chosen:
        photos = sorted(person.glob("*.jpg"))
        original = photos[0] if len(photos) == 1 else rng.choice(photos)
        rest = [p for p in photos if p != original]
        pic = f"{person.name}/{original.name}"
        data = original.read_bytes()
        entries.append((data, ".jpg", {"person": person.name, "picture": pic, "role": "original"}))
        with Image.open(io.BytesIO(data)) as src:
            src.load()
            for _ in range(rng.randint(1, 4)):
                im, edits = edit_copy(src.copy(), rng)
                buf = io.BytesIO()
                if "jpeg" in edits:
                    im.convert("RGB" if im.mode != "L" else "L").save(buf, "JPEG", quality=edits["jpeg"])
                    suffix = ".jpg"
                else:
                    im.save(buf, "PNG")
                    suffix = ".png"
                entries.append(
                    (buf.getvalue(), suffix, {"person": person.name, "picture": pic, "role": "copy", "edits": edits})
                )
        others_here = rng.sample(rest, min(len(rest), rng.randint(1, 2)))
        for k, other in enumerate(others_here):
            if any(lfw_same_picture(p, other) for p in [original, *others_here[:k]]):
                # LFW holds a few copies of one picture under one name (e.g. the same agency
                # shot twice): such a photo is not "another photo", and is left out.
                excluded.append(f"{person.name}/{other.name}")
                continue
            entries.append(
                (
                    other.read_bytes(),
                    ".jpg",
                    {"person": person.name, "picture": f"{person.name}/{other.name}", "role": "other"},
                )
            )
    for person in others:
        photo = next(person.glob("*.jpg"))
        entries.append(
            (
                photo.read_bytes(),
                ".jpg",
                {"person": person.name, "picture": f"{person.name}/{photo.name}", "role": "unrelated"},
            )
        )
    rng.shuffle(entries)
    files = {}
    for i, (data, suffix, info) in enumerate(entries):
        rel = f"set{i % 4}/img_{i:05d}{suffix}"
        (out / rel).parent.mkdir(exist_ok=True)
        (out / rel).write_bytes(data)
        files[rel] = info
    by_pic: dict[str, list[str]] = {}
    for rel, info in files.items():
        by_pic.setdefault(info["picture"], []).append(rel)
    truth = {
        "seed": seed,
        "files": files,
        "groups": [sorted(v) for v in by_pic.values() if len(v) > 1],
        "excluded_lfw_copies": excluded,
    }
    return truth


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def pairs_of(groups) -> set[tuple[str, str]]:
    out = set()
    for g in groups:
        g = sorted(g)
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                out.add((g[i], g[j]))
    return out


def score(pred_groups, truth: dict) -> dict:
    true_pairs = pairs_of(truth["groups"])
    pred = pairs_of(pred_groups)
    tp = len(pred & true_pairs)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(true_pairs) if true_pairs else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    files = truth["files"]
    same_person = sum(1 for a, b in pred - true_pairs if files[a]["person"] == files[b]["person"])
    largest = max((len(g) for g in pred_groups), default=0)
    return {
        "precision": p,
        "recall": r,
        "f1": f1,
        "pairs": len(pred),
        "true_pairs": len(true_pairs),
        "tp": tp,
        "same_person_merges": same_person,
        "largest_group": largest,
    }


def connected_components(n: int, edges) -> list[list[int]]:
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return [c for c in comps.values() if len(c) > 1]


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------
def run_near(root: Path, cache: Path | None, threshold: float | None) -> tuple[list[list[str]], float, dict]:
    from siamese_index.duplicates.pipeline import dedup

    t0 = time.perf_counter()
    report = dedup([root], level="near", threshold=threshold, cache=cache if cache else False)
    seconds = time.perf_counter() - t0
    groups = [[str(Path(m.path).relative_to(root)) for m in g.members] for g in report.groups]
    return groups, seconds, report.stats.to_dict()


def run_phash(root: Path, max_distances=(10,)) -> list[tuple[int, list[list[str]], float]]:
    """ImageHash phash per file, pairs within each Hamming distance, connected components (as
    imagededup groups them). Returns [(max_distance, groups, seconds)]."""
    try:
        import imagehash
    except ImportError:
        sys.exit("the phash baseline needs ImageHash: pip install -e '.[bench]'")
    import faiss

    t0 = time.perf_counter()
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    hashes = []
    for p in paths:
        with Image.open(p) as im:
            hashes.append(np.packbits(imagehash.phash(im).hash.flatten()))
    codes = np.stack(hashes).astype(np.uint8)
    t_hash = time.perf_counter() - t0
    out = []
    for max_distance in max_distances:
        t0 = time.perf_counter()
        # Hamming range search over the 64-bit hashes (what imagededup's BK-tree does, faster).
        index = faiss.IndexBinaryFlat(64)
        index.add(codes)
        lims, _, ids = index.range_search(codes, max_distance + 1)
        edges = [(i, int(j)) for i in range(len(paths)) for j in ids[lims[i] : lims[i + 1]] if int(j) > i]
        comps = connected_components(len(paths), edges)
        seconds = t_hash + time.perf_counter() - t0
        out.append((max_distance, [[str(paths[i].relative_to(root)) for i in c] for c in comps], seconds))
    return out


# ---------------------------------------------------------------------------------------------
# Part 2: search + grouping at scale on synthetic descriptors
# ---------------------------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def scale_run(n: int, seed: int = 0) -> dict:
    """The near level's search and grouping on n synthetic items, each with the two views the near
    level queries with (whole picture, centre); 10% of items are planted near-duplicates."""
    import faiss

    from siamese_index.duplicates.linkage import complete_linkage
    from siamese_index.duplicates.search import build_vector_index, candidate_pairs
    from siamese_index.imaging import near

    rng = np.random.default_rng(seed)
    dim = near.DIM
    # Themes, like a photo library: items scattered around 1 centre per 100 items (two items of
    # one theme ~0.8 apart, of two themes ~1.4), and 10% planted near-duplicates (~0.3 from
    # their original). Each item also has the centre view the near level queries with.
    centres = _unit(rng.standard_normal((max(1, n // 100), dim)).astype(np.float32))
    theme = rng.integers(0, len(centres), n)
    x = _unit(centres[theme] + rng.standard_normal((n, dim)).astype(np.float32) * (0.6 / np.sqrt(dim)))
    n_dup = n // 10
    src = rng.choice(n - n_dup, n_dup, replace=True)
    x[n - n_dup :] = _unit(x[src] + rng.standard_normal((n_dup, dim)).astype(np.float32) * (0.3 / np.sqrt(dim)))
    views = np.stack([x, _unit(x + rng.standard_normal((n, dim)).astype(np.float32) * (0.2 / np.sqrt(dim)))], axis=1)
    planted = {(int(min(a, b)), int(max(a, b))) for a, b in zip(src, range(n - n_dup, n))}
    radius, k = near.CANDIDATE_RADIUS, near.NEAR_K
    t0 = time.perf_counter()
    index = build_vector_index(x)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    pi, pj, pd = candidate_pairs(index, views, radius=radius, k=k)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    # The grouping step as the near level runs it. The pair check here is the descriptor distance
    # itself (the picture check needs real files), cut at 0.5, between planted and theme pairs.
    cut = 0.5
    close = pd < cut
    dist = dict(zip(zip(pi[close].tolist(), pj[close].tolist()), pd[close].tolist()))
    groups = complete_linkage(dist, cut, pair_distance=lambda i, j: float(np.linalg.norm(x[i] - x[j])))
    t_group = time.perf_counter() - t0
    found = set(zip(pi.tolist(), pj.tolist()))
    planted_recall = len(found & planted) / max(1, len(planted))
    # Recall against exact search: the same k-NN-within-radius queries on a flat index, for a
    # sample of items.
    qi = np.sort(rng.choice(n, min(n, 2000), replace=False))
    if type(index).__name__ == "IndexFlatL2":
        exact_recall = 1.0
    else:
        flat = faiss.IndexFlatL2(dim)
        flat.add(x)
        want, got = set(), set()
        for v in range(views.shape[1]):
            d2, ids = flat.search(np.ascontiguousarray(views[qi, v]), k + 1)
            d2a, idsa = index.search(np.ascontiguousarray(views[qi, v]), k + 1)
            for row, q in enumerate(qi):
                want |= {(int(q), int(j)) for j, dd in zip(ids[row], d2[row]) if j != q and np.sqrt(dd) < radius}
                got |= {
                    (int(q), int(j)) for j, dd in zip(idsa[row], d2a[row]) if j >= 0 and j != q and np.sqrt(dd) < radius
                }
        exact_recall = len(want & got) / max(1, len(want))
    return {
        "n": n,
        "index": type(index).__name__,
        "build_s": t_build,
        "search_s": t_search,
        "group_s": t_group,
        "total_s": t_build + t_search + t_group,
        "pairs": len(pi),
        "groups": len(groups),
        "planted_recall": planted_recall,
        "recall_vs_exact": exact_recall,
    }


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=600, help="people with an original and its copies (default 600)")
    ap.add_argument("--unrelated", type=int, default=None, help="unrelated photos (default: as many as --people)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/siamese-dedup-bench"), help="where the folder is built")
    ap.add_argument("--threshold", type=float, default=None, help="near threshold (default: the library's)")
    ap.add_argument("--scale", default="10000,100000,1000000", help="sizes for part 2 ('' to skip)")
    ap.add_argument("--skip-files", action="store_true", help="only part 2")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    args = ap.parse_args(argv)
    results: dict = {}
    if not args.skip_files:
        root = args.work / "photos"
        truth = build(root, args.people, args.people if args.unrelated is None else args.unrelated, args.seed)
        n = len(truth["files"])
        print(
            f"benchmark: {n} files, {len(truth['groups'])} duplicate groups, "
            f"{len(pairs_of(truth['groups']))} duplicate pairs (seed {args.seed}); left out "
            f"{len(truth['excluded_lfw_copies'])} LFW photos that are copies of another chosen photo: "
            f"{', '.join(truth['excluded_lfw_copies']) or '-'}",
            flush=True,
        )
        rows = []
        groups, secs, stats = run_near(root, None, args.threshold)
        rows.append(("siamese-index near", score(groups, truth), secs))
        results["near_stats"] = stats
        for max_distance, groups, secs in run_phash(root, (10, 16)):
            rows.append((f"phash (Hamming <= {max_distance})", score(groups, truth), secs))
        print(
            f"\n{'method':24} {'precision':>9} {'recall':>7} {'F1':>6} {'seconds':>8} {'images/s':>9} "
            f"{'same-person':>11} {'largest':>7}"
        )
        for name, s, secs in rows:
            print(
                f"{name:24} {s['precision']:9.4f} {s['recall']:7.4f} {s['f1']:6.4f} {secs:8.1f} {n / secs:9.1f} "
                f"{s['same_person_merges']:11d} {s['largest_group']:7d}"
            )
        results["files"] = n
        results["methods"] = [
            {"method": name, **s, "seconds": secs, "images_per_s": n / secs} for name, s, secs in rows
        ]
    sizes = [int(float(s)) for s in args.scale.split(",") if s.strip()]
    if sizes:
        print("\nsearch + grouping on synthetic descriptors")
        print(
            f"{'N':>9} {'index':>22} {'build s':>8} {'search s':>9} {'group s':>8} {'total s':>8} "
            f"{'pairs':>9} {'planted recall':>14} {'recall vs exact':>15}"
        )
        results["scale"] = []
        for size in sizes:
            r = scale_run(size, args.seed)
            results["scale"].append(r)
            print(
                f"{r['n']:9d} {r['index']:>22} {r['build_s']:8.1f} {r['search_s']:9.1f} {r['group_s']:8.1f} "
                f"{r['total_s']:8.1f} {r['pairs']:9d} {r['planted_recall']:14.4f} {r['recall_vs_exact']:15.4f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
