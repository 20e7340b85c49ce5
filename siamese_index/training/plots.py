"""PNG figures for evaluate: ROC curve with distance histograms, and a grid of sample pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from siamese_index.training.metrics import roc_curve


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def roc_and_histograms(distances: ArrayLike, labels: ArrayLike, threshold: float | None, path: Path) -> None:
    """ROC curve beside the genuine and impostor distance histograms, with the pair threshold."""
    plt = _pyplot()
    d, y = np.asarray(distances), np.asarray(labels).astype(bool)
    far, tar, _ = roc_curve(d, y)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(far, tar)
    ax1.plot([0, 1], [0, 1], ls=":", c="grey")
    ax1.set(xlabel="false accept rate", ylabel="true accept rate", title="ROC")
    bins = np.linspace(0, max(float(d.max()), 1e-6), 50)
    ax2.hist(d[y], bins=bins, alpha=0.6, label="genuine (same)")
    ax2.hist(d[~y], bins=bins, alpha=0.6, label="impostor (different)")
    if threshold is not None:
        ax2.axvline(threshold, c="k", ls="--", label=f"pair threshold {threshold:.3f}")
    ax2.set(xlabel="L2 distance", ylabel="pairs", title="distances")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pairs_grid(
    x: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    distances: np.ndarray,
    labels: np.ndarray,
    threshold: float | None,
    path: Path,
    n: int = 8,
) -> None:
    """Sample pairs side by side with their distance and the truth (the third seed's figure)."""
    plt = _pyplot()
    n = min(n, len(a))
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6))
    axes = np.asarray(axes).reshape(2, n)
    for j in range(n):
        for r, idx in enumerate((a[j], b[j])):
            img = x[idx]
            axes[r, j].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
            axes[r, j].axis("off")
        verdict = "same" if threshold is not None and distances[j] < threshold else "diff"
        axes[0, j].set_title(f"d={distances[j]:.2f}\n{verdict} / {'same' if labels[j] else 'diff'}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
