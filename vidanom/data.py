"""From cached uint8 frames to model inputs, and the samplers that feed training.

The VAE sees each frame together with a motion plane made from its difference to the frame
`motion_lag` steps earlier (see MotionPlane): on Ped1 a per-pixel statistic of motion alone reaches
0.75 AUROC where appearance reaches 0.69, because most anomalies (cyclists, skaters, carts) move
faster than walkers.

Where the frames' times are known, the difference can be scaled by the time it spans (see
motion_scale), so that a frame after a longer gap than usual (a variable-frame-rate source that
dropped frames) does not look like fast motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MIN_MOTION_SCALE = 1 / 8  # the most a difference over a long gap is scaled down
MOTION_KINDS = ("magnitude", "difference", "speed")
# "speed" divides by the local contrast plus this: a flat region's flicker (compression noise, light) must not
# read as speed
SPEED_FLOOR = 0.002


@dataclass(frozen=True)
class MotionPlane:
    """How the motion input is made from a frame and the one `lag` frames before it.

    "magnitude": the mean absolute difference over blur × blur pixels, times gain. The signed
    difference of two frames is a pattern of thin edges that a β-VAE with a few latent dimensions
    per cell cannot reconstruct at all (on Ped1 it explained none of its variance, so its
    "reconstruction error" was the raw motion energy); the local magnitude is a smooth map of where
    and how fast things move, which it learns (86% of its variance), and a frozen picture or a
    fast-forward then breaks what the model expects of a scene's motion.
    "difference": the signed difference, times gain (blur unused).
    "speed": the magnitude over the local contrast (the mean gradient magnitude over the same
    pixels, of the sharper of the two frames), at most 1, times gain. A moving edge's difference
    grows with its speed and with its contrast alike; divided by the contrast it is about the speed
    in pixels per frame, and a dark coat no longer looks faster than a light one.
    """

    lag: int = 1  # 0: no motion plane
    kind: str = "difference"
    gain: float = 1.0
    blur: int = 1

    @property
    def range(self) -> tuple[float, float]:
        """The values the plane can take."""
        return (-self.gain, self.gain) if self.kind == "difference" else (0.0, self.gain)

    def __call__(self, cur: torch.Tensor, prev: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """cur, prev: (n, C, H, W) frames in [0, 1], `lag` frames apart; scale: (n,) factors for the
        differences (motion_scale) or None → (n, C, H, W) the motion plane."""
        diff = cur - prev
        if scale is not None:
            diff.mul_(scale[:, None, None, None])
        if self.kind != "difference":
            diff = box_mean(diff.abs_(), self.blur)
        if self.kind == "speed":
            contrast = box_mean(torch.maximum(gradient(cur), gradient(prev)), self.blur)
            diff = diff.div_(contrast.add_(SPEED_FLOOR)).clamp_max_(1.0)
        return diff.mul_(self.gain) if self.gain != 1 else diff


def evenly(n: int, count: int) -> list[int]:
    """`count` of the indices 0..n-1, evenly spread (the middle of each of `count` equal parts)."""
    return sorted({int((k + 0.5) * n / count) for k in range(count)})


def box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """(..., H, W) → the mean over k × k pixels around each pixel (fewer at the border), k odd."""
    if k <= 1:
        return x
    # the window is separable even where the border clips it, so two band matrices give it exactly: on a
    # CPU, 4× faster than avg_pool2d's window (count_include_pad=False) at the model's 64×64
    return band(x.shape[-2], k, x.dtype) @ x @ band(x.shape[-1], k, x.dtype).T


def band(size: int, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(size, size) the matrix that takes the mean of the k values around each (fewer at the ends)."""
    at = torch.arange(size)
    near = ((at[:, None] - at[None, :]).abs() <= k // 2).to(dtype)
    return near / near.sum(1, keepdim=True)


def gradient(x: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) → (n, C, H, W) |x's difference to the next column| + |to the next row| (0 past the edge)."""
    across = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (0, 1))
    down = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
    return across + down


def as_plane(motion: MotionPlane | int) -> MotionPlane:
    """A lag alone is the plain difference at that lag."""
    return motion if isinstance(motion, MotionPlane) else MotionPlane(lag=motion)


def motion_scale(gaps: torch.Tensor | np.ndarray, ref_dt: float) -> torch.Tensor:
    """The factor for each frame's motion plane: clamp(ref_dt / gap, 1/8, 1), as a (n,) float32 tensor.

    gaps: (n,) seconds between each frame and the frame its difference is taken against; ref_dt:
    the usual such interval (for the training footage, its median). The same speed over a gap
    longer than usual makes a larger difference, so it is scaled down by as much (at most 8-fold);
    a gap shorter than usual is never scaled up, which would amplify noise. A zero gap (the start
    of a clip, or two frames with one time) scales by 1.

    For example ref_dt 0.04 and gaps (0.04, 0.1, 1.0, 0.02) → (1, 0.4, 0.125, 1).
    """
    ratio = ref_dt / torch.as_tensor(gaps, dtype=torch.float64)  # 0 gap → inf → 1
    return ratio.clamp(MIN_MOTION_SCALE, 1.0).float()


def _scale(gaps: torch.Tensor | np.ndarray | None, ref_dt: float | None) -> torch.Tensor | None:
    """motion_scale(gaps, ref_dt), or None unless both are given."""
    return motion_scale(gaps, ref_dt) if gaps is not None and ref_dt is not None else None


def to_input(
    frames: torch.Tensor,
    motion: MotionPlane | int,
    context: torch.Tensor | None = None,
    gaps: torch.Tensor | np.ndarray | None = None,
    ref_dt: float | None = None,
) -> torch.Tensor:
    """frames: (n, H, W, C) uint8 → (n, C·(2 if lag else 1), H, W): the frames in [0, 1] and their
    motion planes (a plain lag: differences in [-1, 1]).

    context: the `lag` frames (lag, H, W, C) that precede frames, or None at the start of a clip,
    where the first frame stands in for the missing past (so the first differences are zero).
    gaps, ref_dt: (n,) seconds each frame's difference spans (to the frame `lag` before it), and
    the usual span: the differences are scaled by motion_scale(gaps, ref_dt); unscaled unless both
    are given.
    """
    plane = as_plane(motion)
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    if plane.lag == 0:
        return x
    if context is None:
        past = x[:1].expand(plane.lag, -1, -1, -1)
    else:
        past = context.permute(0, 3, 1, 2).float().div_(255.0)
    prev = torch.cat([past, x], 0)[: x.shape[0]]
    return torch.cat([x, plane(x, prev, _scale(gaps, ref_dt))], 1)


def gather(
    frames: np.ndarray,
    idx: np.ndarray,
    motion: MotionPlane | int,
    gaps: torch.Tensor | np.ndarray | None = None,
    ref_dt: float | None = None,
) -> torch.Tensor:
    """Model inputs for frames idx of one clip (memory-mapped): (len(idx), C_in, H, W).

    gaps, ref_dt: as for to_input, gaps (len(idx),) for the frames idx (e.g. times[idx] −
    times[max(idx − lag, 0)] with cache.load_times)."""
    plane = as_plane(motion)
    cur = torch.from_numpy(np.array(frames[idx]))
    x = cur.permute(0, 3, 1, 2).float().div_(255.0)
    if plane.lag == 0:
        return x
    prev = torch.from_numpy(np.array(frames[np.maximum(idx - plane.lag, 0)])).permute(0, 3, 1, 2).float().div_(255.0)
    return torch.cat([x, plane(x, prev, _scale(gaps, ref_dt))], 1)


@dataclass(frozen=True)
class Split:
    """Which frames of each clip train the models and which are held out: for early stopping, the
    reconstruction's PSNR, the scale of the score's components and the threshold.

    The held-out frames are whole clips when there are enough of them, else time blocks spread over
    the footage, never only the tail of each clip: frames seconds away from training frames show the
    same people in the same places, and a threshold set on them promised 1% false alarms and gave
    6-67% on new footage of the same camera.
    """

    lengths: list[int]  # frames per clip
    held: list[list[tuple[int, int]]]  # per clip, held-out frame ranges [start, end), in order

    @classmethod
    def blocks(
        cls, lengths: list[int], fps: list[float], holdout: float, block_seconds: float, min_units: int = 5
    ) -> Split:
        """Hold out about `holdout` of the footage, as evenly spread units: whole clips when there
        are at least `min_units` clips, else blocks of `block_seconds` (shorter when the footage is
        short, so that there are at least `min_units` blocks). A clip of one frame is never split."""
        if len(lengths) >= min_units:
            units = [(i, 0, n) for i, n in enumerate(lengths)]
        else:
            seconds = sum(n / f for n, f in zip(lengths, fps))
            size = min(block_seconds, seconds / min_units)
            units = [
                (i, a, min(a + max(1, round(size * f)), n))
                for i, (n, f) in enumerate(zip(lengths, fps))
                for a in range(0, n, max(1, round(size * f)))
            ]
        count = max(1, round(holdout * len(units))) if len(units) > 1 else 0
        picked = evenly(len(units), count)
        held: list[list[tuple[int, int]]] = [[] for _ in lengths]
        for u in picked:
            clip, a, b = units[u]
            held[clip].append((a, b))
        return cls(list(lengths), held)

    @classmethod
    def none(cls, lengths: list[int]) -> Split:
        """Every frame trains (dreamed clips, tests)."""
        return cls(list(lengths), [[] for _ in lengths])

    def mask(self, clip: int) -> np.ndarray:
        """(frames,) bool: True where the frame of this clip is held out."""
        m = np.zeros(self.lengths[clip], bool)
        for a, b in self.held[clip]:
            m[a:b] = True
        return m

    def runs(self, held: bool = False) -> list[tuple[int, int, int]]:
        """(clip, start, end) of every maximal run of training (or held-out) frames."""
        out = []
        for clip in range(len(self.lengths)):
            m = np.concatenate([[False], self.mask(clip) == held, [False]]).astype(np.int8)
            edges = np.flatnonzero(np.diff(m))
            out += [(clip, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
        return out

    def index(self, held: bool = False) -> np.ndarray:
        """(N, 2) int64 rows of (clip, frame) for every training (or held-out) frame."""
        rows = [np.stack([np.full(b - a, c), np.arange(a, b)], 1) for c, a, b in self.runs(held)]
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)

    def train_index(self) -> np.ndarray:
        return self.index(False)

    def __add__(self, other: Split) -> Split:
        return Split(self.lengths + other.lengths, self.held + other.held)


def gaps_of(times: np.ndarray, idx: np.ndarray, lag: int) -> np.ndarray:
    """(len(idx),) seconds each frame's difference spans: times[idx] − times[max(idx − lag, 0)]."""
    return times[idx] - times[np.maximum(idx - lag, 0)]


@dataclass(frozen=True)
class Timing:
    """The frames' times of every clip and the usual interval between frames: what scales motion
    planes (see motion_scale). None of either leaves them as they are."""

    times: list[np.ndarray] | None = None  # (frames,) seconds per clip
    ref_dt: float | None = None

    def gaps(self, clip: int, idx: np.ndarray, lag: int) -> np.ndarray | None:
        return None if self.times is None or self.ref_dt is None else gaps_of(self.times[clip], idx, lag)


UNTIMED = Timing()  # frames whose times are not known: motion planes as they are


def inputs(
    clips: list[np.ndarray],
    rows: np.ndarray,
    motion: MotionPlane | int,
    timing: Timing = UNTIMED,
    made: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Model inputs (N, C_in, H, W) of the (clip, frame) rows, in an order of clips and frames.

    made: every frame's input of every clip (premade), to take them from instead of the frames."""
    parts, lag = [], as_plane(motion).lag
    for clip in np.unique(rows[:, 0]):
        idx = np.sort(rows[rows[:, 0] == clip, 1])  # sorted reads are kinder to the memmap
        if made is not None:
            parts.append(made[clip][torch.from_numpy(idx)])
        else:
            parts.append(gather(clips[clip], idx, motion, timing.gaps(clip, idx, lag), timing.ref_dt))
    return torch.cat(parts)


def premade(
    clips: list[np.ndarray], motion: MotionPlane | int, timing: Timing, most_bytes: int
) -> list[torch.Tensor] | None:
    """Every frame's model input of every clip, (n, C_in, H, W) per clip, made once: None when they
    would take more than most_bytes. Each input is made as `gather` makes it, so training draws
    the same batches either way, but no longer remakes the motion planes of the frames a short
    clip's steps draw again and again."""
    plane = as_plane(motion)
    per_frame = 4 * (2 if plane.lag else 1) * math.prod(clips[0].shape[1:]) if clips else 0
    if per_frame * sum(len(c) for c in clips) > most_bytes:
        return None
    made = []
    for i, c in enumerate(clips):
        idx = np.arange(len(c))
        made.append(gather(c, idx, plane, timing.gaps(i, idx, plane.lag), timing.ref_dt))
    return made


def sample_batch(
    clips: list[np.ndarray],
    index: np.ndarray,
    batch_size: int,
    motion: MotionPlane | int,
    rng: np.random.Generator,
    timing: Timing = UNTIMED,
    share: slice = slice(None),
    made: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """A random batch of model inputs (B, C_in, H, W) from the (clip, frame) rows of index.

    Drawn with replacement from a generator seeded per optimiser step, so a resumed run draws exactly
    the batches the uninterrupted one would have. share: the part of the batch wanted (a rank's,
    in distributed training); the batch is drawn whole all the same. made: as for `inputs`.
    """
    return inputs(clips, index[rng.integers(len(index), size=batch_size)][share], motion, timing, made)


def spread(index: np.ndarray, most: int) -> np.ndarray:
    """At most `most` rows of index, evenly spaced (a fixed validation set)."""
    if len(index) <= most:
        return index
    return index[np.linspace(0, len(index) - 1, most).round().astype(np.int64)]


def window_starts(lengths: list[int], seq_len: int) -> np.ndarray:
    """(N, 2) rows of (clip, start) for every window of seq_len + 1 latents inside the given lengths."""
    rows = [
        np.stack([np.full(n - seq_len, i), np.arange(n - seq_len)], 1) for i, n in enumerate(lengths) if n > seq_len
    ]
    if not rows:  # clips shorter than a window: use each whole clip once
        return np.array([[i, 0] for i, n in enumerate(lengths) if n > 1], dtype=np.int64).reshape(-1, 2)
    return np.concatenate(rows).astype(np.int64)
