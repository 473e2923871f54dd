"""Timeline plots (matplotlib's Agg backend: files only, never a window).

The score over time with its threshold; under it, lanes that show the detected segments (and the
ground truth, when labels are given) as bars, so neither hides the curve. A clip with many more
frames than the plot has pixels is drawn as the range (min to max) of the score per pixel column
with its mean, which keeps short spikes visible instead of a solid block of line.

The time axis is each frame's own time (from its timestamp), so a variable-frame-rate clip is
drawn as it happened; the frame numbers along the top follow those times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIDTH, DPI = 10.0, 100  # inches, dots per inch
ENVELOPE_ABOVE = 2  # frames per pixel column above which the score is drawn as a range


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[0], flags.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _bins(scores: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frames split into `columns` consecutive bins → first frame, min, max and mean of each (columns,)."""
    starts = np.linspace(0, len(scores), columns + 1).astype(np.int64)[:-1]
    starts = np.unique(starts)
    return (
        starts,
        np.minimum.reduceat(scores, starts),
        np.maximum.reduceat(scores, starts),
        np.add.reduceat(scores, starts) / np.diff(np.append(starts, len(scores))),
    )


def _curve(ax, scores: np.ndarray, times: np.ndarray) -> None:
    """The score: a line, or a min-max band with its mean when frames outnumber pixels."""
    columns = int(WIDTH * DPI * 0.85)  # about the width of the axes in pixels
    if len(scores) <= ENVELOPE_ABOVE * columns:
        ax.plot(times, scores, color="tab:blue", lw=1, label="anomaly score")
        return
    starts, lo, hi, mean = _bins(scores.astype(np.float64), columns)
    t = times[starts]
    ax.fill_between(
        t,
        lo,
        hi,
        step="post",
        color="tab:blue",
        alpha=0.35,
        lw=0,
        label=f"score range ({len(scores) / columns:.0f} frames per pixel)",
    )
    ax.step(t, mean, where="post", color="tab:blue", lw=0.8, label="mean score")


def _lanes(ax, edges: np.ndarray, detected: list[tuple[int, int]], truth: np.ndarray | None) -> None:
    """Bars of the detected segments (and ground truth) in lanes of their own, under the curve.
    edges: (n + 1,) the time of each frame, then of the clip's end."""
    lanes = [("detected", detected, "tab:red")]
    if truth is not None:
        lanes.append(("ground truth", _runs(truth), "tab:orange"))
    for y, (name, runs, colour) in enumerate(lanes):
        # a segment of a frame or two is still a visible bar: at least 0.2% of the clip wide
        bars = [(edges[a], max(edges[b] - edges[a], edges[-1] * 0.002)) for a, b in runs]
        ax.broken_barh(bars, (y - 0.35, 0.7), color=colour, label=name)
    ax.set_yticks(range(len(lanes)), [name for name, _, _ in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", alpha=0.3)


def _end(times: np.ndarray) -> float:
    """A clip's end when not given: its last frame's time plus the median step between frames."""
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    return float(times[-1]) + (step if step > 0 else 1.0) if len(times) else 1.0


def _increasing(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times, frame numbers) of the frames whose time is later than every one before: a strictly
    increasing map between the two (frames that share a time are one point)."""
    frames = np.arange(len(edges), dtype=np.float64)
    keep = np.concatenate([[True], np.diff(edges) > 0])
    xs, fs = edges[keep], frames[keep]
    if len(xs) < 2:  # one point: one frame per second around it
        xs, fs = np.append(xs, xs[-1] + 1.0), np.append(fs, fs[-1] + 1.0)
    return xs, fs


def _interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """np.interp that goes on linearly beyond both ends (as the axis may show)."""
    scalar = np.ndim(x) == 0
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    y[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    y[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return y[0] if scalar else y


def timeline(
    path: Path,
    scores: np.ndarray,
    threshold: float,
    times: np.ndarray,
    detected: list[tuple[int, int]],
    truth: np.ndarray | None = None,
    title: str = "",
    duration: float | None = None,
) -> Path:
    """Score over time with the threshold, detected segments and (optionally) ground truth.

    times: (n,) each frame's time in seconds, non-decreasing; duration: the clip's end in seconds
    (default: the last time plus the median step)."""
    from matplotlib.figure import Figure  # imported here: matplotlib is slow to import

    from . import fsutil

    n = len(scores)
    times = np.asarray(times, dtype=np.float64)
    if len(times) != n:
        raise ValueError(f"{n} scores but {len(times)} times")
    end = _end(times) if duration is None else max(float(duration), float(times[-1]) if n else 0.0)
    edges = np.append(times, end)  # frame i starts at edges[i]; frame n is the clip's end
    lanes = 1 if truth is None else 2
    height = 3.4 + 0.25 * lanes
    fig = Figure(figsize=(WIDTH, height), dpi=DPI)
    # fixed margins (in inches) rather than a layout engine: constrained layout was 40% of a PNG's cost
    fig.subplots_adjust(
        left=0.8 / WIDTH, right=1 - 0.2 / WIDTH, top=1 - 0.75 / height, bottom=0.85 / height, hspace=0.12
    )
    ax, bars = fig.subplots(2, 1, sharex=True, height_ratios=[6, 0.9 * lanes])
    if truth is not None:  # also faintly behind the curve, to compare with its shape
        for a, b in _runs(truth):
            ax.axvspan(edges[a], edges[b], color="tab:orange", alpha=0.15, lw=0)
    _curve(ax, np.asarray(scores), times)
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_ylabel("score")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(0, end if end > 0 else 1.0)
    # frame numbers by the times, linear between frames (and before the first, after the end)
    xs, fs = _increasing(edges)
    sec = ax.secondary_xaxis("top", functions=(lambda x: _interp(x, xs, fs), lambda f: _interp(f, fs, xs)))
    sec.set_xlabel("frame", fontsize=9)
    _lanes(bars, edges, detected, truth)
    bars.set_xlabel("time (s)")
    peak = int(np.nanargmax(scores)) if n and not np.isnan(scores).all() else 0
    what = f"{len(detected)} detected segment{'s' if len(detected) != 1 else ''}"
    # a figure text at the fixed top margin, not an axes title: placing a title above the secondary axis
    # measures every tick label's extent at each draw
    fig.text(
        0.8 / WIDTH,
        1 - 0.12 / height,
        f"{title}   {what}, peak {scores[peak]:.2f} at {edges[peak]:.1f} s (frame {peak})" if n else title,
        fontsize=10,
        va="top",
    )
    handles, labels = ax.get_legend_handles_labels()
    more = bars.get_legend_handles_labels()
    fig.legend(handles + more[0], labels + more[1], loc="lower center", ncols=5, fontsize=8, frameon=False)
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", pil_kwargs={"compress_level": 1})  # zlib level 6: 30% of the time
    return path
