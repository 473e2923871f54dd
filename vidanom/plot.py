"""Timeline plots (matplotlib's Agg backend: files only, never a window)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[0], flags.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def timeline(path: Path, scores: np.ndarray, threshold: float, dt: float, detected: list[tuple[int, int]],
             truth: np.ndarray | None = None, title: str = "") -> Path:
    """Score over time with the threshold, detected segments and (optionally) ground truth shaded."""
    from matplotlib.figure import Figure  # imported here: matplotlib is slow to import

    from . import fsutil
    t = np.arange(len(scores)) * dt
    fig = Figure(figsize=(10, 3.2), dpi=100)
    ax = fig.add_subplot()
    if truth is not None:
        for k, (a, b) in enumerate(_runs(truth)):
            ax.axvspan(a * dt, b * dt, color="tab:orange", alpha=0.25, lw=0,
                       label="ground truth" if k == 0 else None)
    for k, (a, b) in enumerate(detected):
        ax.axvspan(a * dt, b * dt, ymin=0, ymax=0.06, color="tab:red", lw=0,
                   label="detected" if k == 0 else None)
    ax.plot(t, scores, color="tab:blue", lw=1, label="anomaly score")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score")
    ax.set_xlim(0, max(t[-1] if len(t) else 0, dt))
    sec = ax.secondary_xaxis("top", functions=(lambda x: x / dt, lambda f: f * dt))
    sec.set_xlabel("frame")
    ax.set_title(title, loc="left", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
