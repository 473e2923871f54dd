"""Frames kept with a model to recalibrate their scene after later updates: opt-in (train.keep_frames,
`--keep-frames N`), since they are footage.

Without them an update carries an old scene's calibration through the drift of the models on its
dreamed clips (carry.py). With them it calibrates the scene anew on these frames, as `train` did on
its footage: a bounded sample of it, runs of RUN consecutive frames (the LSTM-MDN and the causal
mean need a past) spread evenly over the footage, training and held-out frames in the footage's
proportion. The cost is theirs: N frames of every scene at the model's frame size (4 KB a 64×64 gray
frame), in every version's folder (hard links where the disk allows), and pictures of the people
the camera saw, kept as long as the project is.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import fsutil
from .calibration import Footage
from .data import Split, Timing
from .fitting import load_checkpoint

KEPT_FILE = "kept.pt"
RUN = 64  # consecutive frames per kept run: a clip's first frames have no LSTM-MDN surprise yet


@dataclass(frozen=True)
class KeptScene:
    """A scene's kept frames: runs of consecutive frames, some held out as in its footage."""

    frames: np.ndarray  # (n, H, W, C) uint8, the runs one after the other
    times: np.ndarray  # (n,) float64, seconds within each run's clip
    runs: np.ndarray  # (k, 3) int64: start, end (in frames), held out (0 or 1)
    fps: float  # the footage's frame rate
    seconds: float  # the training footage these frames stand for: place statistics shrink by it

    def footage(self) -> Footage:
        """The kept runs as footage to calibrate on, one clip per run."""
        clips = [self.frames[a:b] for a, b, _ in self.runs]
        times = [self.times[a:b] - self.times[a] for a, b, _ in self.runs]
        split = Split(
            [len(c) for c in clips], [[(0, len(c))] if held else [] for c, (_, _, held) in zip(clips, self.runs)]
        )
        interval = float(np.median(np.concatenate([np.diff(t) for t in times]))) if len(self.frames) > 1 else None
        return Footage(clips, [self.fps] * len(clips), split, Timing(times, interval), represents=self.seconds)

    def counts(self) -> tuple[int, int]:
        """Kept training frames and held-out frames."""
        held = int(sum(b - a for a, b, h in self.runs if h))
        return len(self.frames) - held, held

    def to_dict(self) -> dict[str, object]:
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(self.frames)),
            "times": torch.from_numpy(self.times),
            "runs": torch.from_numpy(self.runs),
            "fps": self.fps,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> KeptScene:
        return cls(
            d["frames"].numpy(),  # type: ignore[attr-defined]
            d["times"].numpy(),  # type: ignore[attr-defined]
            d["runs"].numpy(),  # type: ignore[attr-defined]
            float(d["fps"]),  # type: ignore[arg-type]
            float(d["seconds"]),  # type: ignore[arg-type]
        )


def keep(footage: Footage, count: int) -> KeptScene | None:
    """About `count` frames of the footage, as runs of RUN frames spread evenly over its training and
    its held-out runs in their proportion (at least two held-out runs, for the threshold). None for 0."""
    if count <= 0:
        return None
    held_share = len(footage.split.index(True)) / max(1, sum(footage.split.lengths))
    runs_wanted = max(3, -(-count // RUN))
    held_runs = max(2, round(held_share * runs_wanted))
    picked = [(c, a, b, 0) for c, a, b in _spread(footage.split.runs(), runs_wanted - held_runs)]
    picked += [(c, a, b, 1) for c, a, b in _spread(footage.split.runs(held=True), held_runs)]
    frames, times, runs, at = [], [], [], 0
    clock = footage.timing.times
    for c, a, b, held in picked:
        frames.append(np.asarray(footage.clips[c][a:b]))
        times.append(clock[c][a:b] if clock is not None else np.arange(a, b) / footage.fps[c])
        runs.append((at, at + b - a, held))
        at += b - a
    return KeptScene(
        np.concatenate(frames),
        np.concatenate(times).astype(np.float64),
        np.array(runs, np.int64),
        float(np.median(footage.fps)),
        footage.training_seconds,
    )


def _spread(runs: list[tuple[int, int, int]], count: int) -> list[tuple[int, int, int]]:
    """`count` stretches of up to RUN frames, evenly spread over the frames of runs (clip, start, end)."""
    sizes = np.array([b - a for _, a, b in runs])
    total = int(sizes.sum())
    if total == 0 or count <= 0:
        return []
    ends = np.cumsum(sizes)
    out: list[tuple[int, int, int]] = []
    for k in range(count):
        pos = int((k + 0.5) * total / count)
        i = int(np.searchsorted(ends, pos, side="right"))
        c, a, b = runs[i]
        start = min(max(a, a + pos - int(ends[i] - sizes[i]) - RUN // 2), max(a, b - RUN))
        stretch = (c, start, min(b, start + RUN))
        if not out or out[-1] != stretch:
            out.append(stretch)
    return out


def save(folder: Path, kept: dict[str, KeptScene]) -> None:
    """Write the kept frames of every scene into a version folder (nothing when there are none)."""
    if kept:
        fsutil.save_torch(folder / KEPT_FILE, {s: k.to_dict() for s, k in kept.items()})


def load(folder: Path | None) -> dict[str, KeptScene]:
    """The kept frames of a version folder, by scene ({} where none were kept)."""
    if folder is None or not (folder / KEPT_FILE).is_file():
        return {}
    return {s: KeptScene.from_dict(d) for s, d in load_checkpoint(folder / KEPT_FILE).items()}


def link_or_copy(source: Path, target: Path) -> None:
    """target as a hard link to source where the file system allows one, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
