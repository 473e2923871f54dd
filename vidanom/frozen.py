"""Places of the picture frozen below the camera's own noise: the `frozen` component, learned from no model.

A stalled camera or encoder repeats its last picture exactly, and a pasted still over part of the
view repeats that part: the pixels stop changing by even the camera's noise. The LSTM-MDN's stillness
sees a whole frozen picture only after a few frames, and a frozen region not at all, since the rest of
the frame goes on. This component is, per frame, the seconds for which the frame's longest-frozen place
has both differed from the scene's usual picture (so that a background that never changes does not
count) and changed by less than a share of the footage's usual change from one frame to the next. It
counts in frame intervals beyond the runs of held-out normal frames (calibration.run_scale).

Every threshold comes from the scene's training footage: the usual picture is the per-pixel median of
its frames, "differs" is measured in the pixels' own spread (median absolute deviation), and "changes"
against the median change between consecutive frames. A person who stands still keeps the camera's
noise and is not frozen: counting a merely quiet place (twice the median change) would flag people who
stand, which on Ped1 is normal (README, "How a default is chosen").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .data import box_mean, inputs, spread

if TYPE_CHECKING:
    from .normality import PlaceStats
    from .zones import Zones

SPREADS = 3.0  # a pixel differs from the usual picture by more than this many of its spreads...
QUIET = 0.3  # ...and changed since the frame before by less than this share of the footage's median change
PLACE = 4  # pixels square of a place; the frame's longest-frozen place counts
BLUR = 3  # pixels square of the box blur that both differences are taken through
SAMPLE = 2000  # training frames (evenly spread) the usual picture and the usual change are measured on
MAD_TO_STD = 1.4826  # a normal distribution's std in median absolute deviations


def background(clips: list[np.ndarray], index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The usual picture of a scene from its training frames, rows (clip, frame) of `index`: the
    per-pixel median (C·H·W,), the pixels' spread (C·H·W,) and the median change of a pixel from one
    frame to the next (a scalar tensor), each on at most SAMPLE frames."""
    rows = spread(index, SAMPLE)
    frames = inputs(clips, rows, 0)  # (N, C, H, W) in [0, 1]
    median = frames.median(0).values
    mad = (frames - median).abs().median(0).values * MAD_TO_STD
    after = rows[rows[:, 1] > 0]
    if len(after) == 0:  # single frames only: nothing changes between them
        return median.flatten(), mad.flatten(), torch.tensor(0.0)
    # the same order of clips and frames for both: each frame against the one before it
    change = _change(inputs(clips, after, 0), inputs(clips, after - np.array([0, 1]), 0))
    return median.flatten(), mad.flatten(), change.median()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) → the mean over BLUR × BLUR pixels around each pixel (fewer at the border)."""
    return box_mean(x.reshape(-1, 1, *x.shape[-2:]), BLUR).reshape(x.shape)


def _change(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) frames and the frames before them → (n, H, W) the blurred change, over channels."""
    return _blur((cur - prev).abs().mean(1))


def _runs(counts: torch.Tensor, dt: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Seconds each pixel has counted without a break: (n, S, H, W) whether it counts in each frame,
    dt (n,) the seconds each frame adds, `before` (S, H, W) the seconds it had counted before the
    first → (n, S, H, W). All frames at once: since its last break a pixel has counted the time
    elapsed, the running sum of dt there and then."""
    flat = counts.flatten(1)
    runs = torch.zeros(flat.shape)
    active = flat.any(0)
    if not active.any():  # the usual case: nothing is frozen
        return runs.view(counts.shape)
    # where few pixels count in any frame, only those are followed (the others are 0 throughout): 4× faster
    cols: torch.Tensor | slice = active.nonzero()[:, 0] if active.float().mean() < 0.25 else slice(None)
    some = flat[:, cols]
    elapsed = dt.cumsum(0)[:, None].expand(some.shape)
    breaks = torch.where(some, torch.tensor(-math.inf, dtype=elapsed.dtype), elapsed).cummax(0).values
    since = torch.where(breaks == -math.inf, before.flatten()[cols].to(elapsed.dtype) + elapsed, elapsed - breaks)
    runs[:, cols] = torch.where(some, since, torch.zeros(()))
    return runs.view(counts.shape)


class FrozenRuns:
    """The `frozen` component of a stream of one clip's frames, per scene: feed it every chunk's
    frame planes in order (a new FrozenRuns for a new clip)."""

    def __init__(self, places: PlaceStats) -> None:
        self.median, self.spread, self.quiet = places.bg_median, places.bg_spread, places.bg_quiet
        self._prev: torch.Tensor | None = None  # (C, H, W) the last frame of the chunk before
        self._runs: torch.Tensor | None = None  # (S, H, W) seconds each pixel has been frozen
        self._limit: torch.Tensor | None = None  # (S, H, W) how far a pixel differs to count (set once: _differs)

    def __call__(
        self, frames: torch.Tensor | None, dt: torch.Tensor | None, size: tuple[int, ...], zones: Zones | None = None
    ) -> torch.Tensor | None:
        """The next chunk's frame planes (n, C·H·W) in [0, 1], of size (H, W), `dt` (n,) seconds after
        the frame before each (0 for a clip's first; None: one each) → (n, S) the seconds each frame's
        longest-frozen place outside the zones to ignore has been frozen, against each scene; None where
        the calibration has no usual picture (made before it had one)."""
        if self.median is None or self.spread is None or self.quiet is None or frames is None:
            return None
        n, s = len(frames), len(self.median)
        dt = dt if dt is not None else torch.ones(n)
        x = frames.float().view(n, -1, *size)
        differs = self._differs(x)  # (n, S, H, W)
        prev = torch.cat([x[:1] if self._prev is None else self._prev[None], x[:-1]])
        frozen = _change(x, prev)[:, None] < QUIET * self.quiet[None, :, None, None]  # (n, S, H, W)
        if self._prev is None:
            frozen[0] = False  # a clip's first frame has no frame before it
        self._prev = x[-1].clone()
        counts = differs & frozen
        if zones is not None:  # what happens inside a zone to ignore does not count
            counts &= zones.pixels[None, None] > 0.5
        runs = _runs(counts, dt.float(), torch.zeros(s, *size) if self._runs is None else self._runs)
        self._runs = runs[-1]
        return F.avg_pool2d(runs.flatten(0, 1)[:, None], PLACE, PLACE).flatten(1).amax(1).view(n, s)

    def _differs(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) frames → (n, S, H, W) whether each pixel differs from each scene's usual
        picture, once the frame's overall brightness offset (light, exposure) is taken out."""
        assert self.median is not None and self.spread is not None
        n, c, h, w = x.shape
        d = x[:, None] - self.median.view(1, -1, c, h, w)
        d = d - d.flatten(2).median(2).values[..., None, None, None]
        if self._limit is None:  # the same for every chunk
            spread = self.spread.view(-1, c, h, w).mean(1)  # (S, H, W)
            floor = spread.flatten(1).median(1).values[:, None, None]  # a pixel that never varied in training
            self._limit = SPREADS * torch.maximum(spread, floor)
        return _blur(d.abs().mean(2)) > self._limit[None]
