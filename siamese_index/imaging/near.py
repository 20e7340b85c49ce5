"""The near-duplicate signal: "is this the same picture, after edits?"

Two stages, both cheap on a CPU and independent of any trained tower:

1. A descriptor for the FAISS search (`describe`): the grayscale picture shrunk to 32x32,
   blurred, mean removed, its 8x8 lowest DCT frequencies (less the constant term), unit length.
   Two views per image: the whole picture, and its centre 85% (so a copy with its borders
   cropped finds its original). L2 distance between views; candidates are nearest neighbours
   within CANDIDATE_RADIUS. It is tolerant (recall), not decisive: on aligned face photos,
   different photos of one person are as close as edited copies.

2. A check on each candidate pair (`near_distance`), which decides: ORB keypoints matched and
   a similarity transform (scale, rotation, shift) fitted with RANSAC align the two pictures;
   both are compared on a 64-pixel grid after histogram matching (so brightness, contrast and
   gamma changes do not count), as mean absolute differences in 8x8 blocks, in units of the
   picture's contrast, leaving out the padding a rotation put in the corners. The near
   distance is the 90th percentile of the block differences: an edited copy of one picture
   differs only by noise everywhere (JPEG blocks, resampling), while another photo of the same
   scene or person differs somewhere (a face, an expression, the background) in more than a
   tenth of the picture. 0 means identical pixels; THRESHOLD is the default cut.

Tuned on benchmarks/dedup_bench.py's folder built with --seed 7 (3,484 LFW files; the figures
reported for the issue come from --seed 0): over the candidate pairs, edited copies of one picture
scored at most 0.29 (99% under 0.15), other photos of the same person at least 0.44, photos of
other people at least 0.36.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from siamese_index.imaging.loading import open_image, to_mode

VERSION = "near-v1"  # part of cache keys: change it whenever the descriptor or check changes
THUMB = 160  # longest side of the grayscale thumbnail everything works from
DESC_SIZE = 32
DESC_FREQS = 8
DIM = DESC_FREQS * DESC_FREQS - 1  # 63
WINDOWS = (1.0, 0.85)  # views described: the whole picture, and its centre
CANDIDATE_RADIUS = 1.0  # descriptor L2 within which a pair is checked (edited copies: <= ~0.9)
NEAR_K = 5  # neighbours fetched per view when searching for near duplicates
THRESHOLD = 0.30  # default near distance below which two files are the same picture
GRID = 64  # longest side of the grid the aligned pictures are compared on
BLOCKS = 8
PERCENTILE = 90
MIN_INLIERS = 8
ORB_FEATURES = 300
FILL_LEVEL = 60  # a corner at most this grey may be rotation padding (black, or lifted by contrast)
FILL_TOLERANCE = 6  # grey levels a padding region may vary by
MIN_CONTRAST = 5.0  # grey levels: a flat picture's differences are not blown up by its tiny spread
_FAR = float("inf")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_gray(source, name: str | None = None, max_side: int = THUMB) -> np.ndarray:
    """Decode a path or bytes into a grayscale uint8 thumbnail (longest side `max_side`).

    The same safety rules as images.open_image (pixel cap, decompression bombs, InvalidImage
    naming the file, EXIF orientation applied), but JPEGs are decoded at a reduced scale
    (draft mode), which makes large photos several times cheaper."""
    im = to_mode(open_image(source, name, draft_gray=max_side), 1)
    return fit(np.asarray(im, dtype=np.uint8), max_side)


def fit(gray: np.ndarray, max_side: int = THUMB) -> np.ndarray:
    """Resize a grayscale array so its longest side is `max_side` (aspect kept)."""
    import cv2

    h, w = gray.shape[:2]
    f = max_side / max(h, w)
    if abs(f - 1.0) < 1e-9:
        return np.ascontiguousarray(gray)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------
# Stage 1: the descriptor
# ---------------------------------------------------------------------------------------------
def describe(gray: np.ndarray) -> np.ndarray:
    """(len(WINDOWS), DIM) float32 unit vectors: one per view (whole picture, centre)."""
    import cv2

    h, w = gray.shape
    out = np.zeros((len(WINDOWS), DIM), np.float32)
    for k, frac in enumerate(WINDOWS):
        cw, ch = w * frac, h * frac
        x0, y0 = round((w - cw) / 2), round((h - ch) / 2)
        view = gray[y0 : y0 + max(1, round(ch)), x0 : x0 + max(1, round(cw))].astype(np.float32)
        t = cv2.resize(view, (DESC_SIZE, DESC_SIZE), interpolation=cv2.INTER_AREA)
        t = cv2.GaussianBlur(t, (0, 0), 1.0)
        t -= t.mean()
        d = cv2.dct(t)[:DESC_FREQS, :DESC_FREQS].flatten()[1:]
        norm = float(np.linalg.norm(d))
        out[k] = d / norm if norm > 1e-6 else d
    return out


# ---------------------------------------------------------------------------------------------
# Stage 2: the check on a candidate pair
# ---------------------------------------------------------------------------------------------
@dataclass
class Features:
    gray: np.ndarray  # the THUMB thumbnail
    points: np.ndarray  # (n, 2) float32 keypoint positions
    descriptors: np.ndarray | None  # (n, 32) uint8 ORB descriptors
    fill: np.ndarray | None = None  # float32 1.0 where the thumbnail is padding (rotation corners)


_local = threading.local()  # OpenCV detectors and matchers are not shared between threads


def _orb():
    import cv2

    if getattr(_local, "orb", None) is None:
        _local.orb = cv2.ORB_create(nfeatures=ORB_FEATURES, fastThreshold=10, edgeThreshold=15, patchSize=15)
        _local.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    return _local.orb, _local.matcher


def features(gray: np.ndarray) -> Features:
    """Keypoints, descriptors and padding mask of a THUMB thumbnail (see load_gray)."""
    kps, desc = _orb()[0].detectAndCompute(gray, None)
    pts = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    return Features(gray, pts, desc, fill_mask(gray))


def fill_mask(gray: np.ndarray) -> np.ndarray | None:
    """Padding that a rotation left in the corners: a flat, dark region grown from a corner
    (black, or grey after a later contrast change). None when there is none, or when it would
    cover more than a quarter of the picture (then it is the picture's own background)."""
    import cv2

    h, w = gray.shape
    if h < 8 or w < 8:
        return None
    smooth = cv2.medianBlur(gray, 3)
    fill = np.zeros((h + 2, w + 2), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    for x, y in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        if smooth[y, x] <= FILL_LEVEL and not fill[y + 1, x + 1]:
            cv2.floodFill(smooth, fill, (x, y), 0, FILL_TOLERANCE, FILL_TOLERANCE, flags)
    fill = fill[1:-1, 1:-1]
    if not fill.any() or fill.mean() > 0.25:
        return None
    return cv2.dilate(fill, np.ones((5, 5), np.uint8)).astype(np.float32)


def _similarity(a: Features, b: Features) -> np.ndarray | None:
    """A 2x3 similarity transform taking b's thumbnail onto a's, from matched keypoints."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.points) < 4 or len(b.points) < 4:
        return None
    matches = _orb()[1].knnMatch(b.descriptors, a.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
    if len(good) < MIN_INLIERS:
        return None
    src = b.points[[g.queryIdx for g in good]]
    dst = a.points[[g.trainIdx for g in good]]
    m, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if m is None or inliers is None or int(inliers.sum()) < MIN_INLIERS:
        return None
    scale = math.hypot(m[0, 0], m[1, 0])
    if not 1 / 3 < scale < 3:
        return None
    return m


def _view_transforms(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Fallback alignments when keypoints do not give one (flat or tiny pictures): same view,
    b the centre of a, a the centre of b."""
    ha, wa = a.shape
    hb, wb = b.shape
    out = []
    for frac_a, frac_b in ((1.0, 1.0), (WINDOWS[1], 1.0), (1.0, WINDOWS[1])):
        # b's view (its centre frac_b) maps onto a's view (its centre frac_a).
        sx = (wa * frac_a) / (wb * frac_b)
        sy = (ha * frac_a) / (hb * frac_b)
        tx = wa * (1 - frac_a) / 2 - sx * wb * (1 - frac_b) / 2
        ty = ha * (1 - frac_a) / 2 - sy * hb * (1 - frac_b) / 2
        out.append(np.array([[sx, 0, tx], [0, sy, ty]], dtype=np.float32))
    return out


def _invert(m: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.invertAffineTransform(m)


def _grid_size(shape) -> tuple[int, int]:
    h, w = shape
    f = GRID / max(h, w)
    return max(BLOCKS, round(w * f)), max(BLOCKS, round(h * f))


def _coverage(a_shape, b_shape, m: np.ndarray) -> float:
    """The share of a's frame that b, moved by m, covers (on the comparison grid)."""
    import cv2

    size = _grid_size(a_shape)
    sa = np.diag([size[0] / a_shape[1], size[1] / a_shape[0], 1.0])
    sb = np.diag([b_shape[1] / 8.0, b_shape[0] / 8.0, 1.0])  # an 8x8 mask stands for b
    m3 = sa @ np.vstack([m, [0, 0, 1]]) @ sb
    inside = cv2.warpAffine(
        np.ones((8, 8), np.uint8), m3[:2].astype(np.float32), size, flags=cv2.INTER_NEAREST, borderValue=0
    )
    return float(inside.mean())


def _compare(fa: Features, fb: Features, m: np.ndarray) -> float:
    """Near distance of b warped by m onto a, in a's frame."""
    import cv2

    a, b = fa.gray, fb.gray
    h, w = a.shape
    warped = cv2.warpAffine(b.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    valid_b = np.ones(b.shape, np.float32) if fb.fill is None else 1.0 - fb.fill
    inside = cv2.warpAffine(valid_b, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    if fa.fill is not None:
        inside = inside * (1.0 - fa.fill)
    size = _grid_size(a.shape)
    warped = cv2.resize(warped, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(inside, size, interpolation=cv2.INTER_AREA) > 0.99
    if mask.sum() < 64:
        return _FAR
    ref = cv2.resize(a.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    ref = cv2.GaussianBlur(ref, (0, 0), 1.0)
    warped = cv2.GaussianBlur(warped, (0, 0), 1.0)
    x = ref[mask]
    y = warped[mask]
    # Histogram matching: give b's pixels a's grey levels, rank for rank (tone changes vanish).
    matched = np.empty_like(y)
    matched[np.argsort(y, kind="stable")] = np.sort(x)
    spread = max(float(x.std()), MIN_CONTRAST)
    ww, hh = size  # the grid ref and mask were resized to
    diff = np.zeros((hh, ww), np.float32)
    diff[mask] = np.abs(matched - x) / spread
    ys = np.linspace(0, hh, BLOCKS + 1).astype(int)
    xs = np.linspace(0, ww, BLOCKS + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(diff, ys[:-1], axis=0), xs[:-1], axis=1)
    counts = np.add.reduceat(np.add.reduceat(mask.astype(np.float32), ys[:-1], axis=0), xs[:-1], axis=1)
    areas = np.outer(np.diff(ys), np.diff(xs))
    valid = counts >= 0.5 * areas
    if valid.sum() < BLOCKS * BLOCKS // 4:
        return _FAR
    return float(np.percentile(sums[valid] / counts[valid], PERCENTILE, method="higher"))


def _distance_with(a: Features, b: Features, m: np.ndarray) -> float:
    """Compare in the frame of the picture that the other covers most (the narrower view),
    requiring the pair to share at least 45% of the wider one."""
    inv = _invert(m)
    cov_a = _coverage(a.gray.shape, b.gray.shape, m)
    cov_b = _coverage(b.gray.shape, a.gray.shape, inv)
    if min(cov_a, cov_b) < 0.45:
        return _FAR
    return _compare(a, b, m) if cov_a >= cov_b else _compare(b, a, inv)


def near_distance(a: Features, b: Features) -> float:
    """How different two pictures are once aligned (0 = identical pixels; inf = no alignment)."""
    best = _FAR
    m = _similarity(a, b)
    if m is not None:
        best = _distance_with(a, b, m)
    if best >= THRESHOLD and min(len(a.points), len(b.points)) < 60:
        for m in _view_transforms(a.gray, b.gray):
            best = min(best, _distance_with(a, b, m))
    return best


class FeatureCache:
    """A bounded, thread-safe LRU of per-item features, loaded on demand by `load(key)` (which
    returns a THUMB thumbnail or None when the item cannot be read)."""

    def __init__(self, load, size: int = 2048):
        self._load = load
        self._size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key) -> Features | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        gray = self._load(key)
        feats = None if gray is None else features(gray)
        with self._lock:
            self._items[key] = feats
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return feats
