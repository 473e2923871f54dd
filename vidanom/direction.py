"""Which way things move, place by place: the `direction` component, learned from no model.

A person who walks the wrong way along a path, or straight across it, moves as fast as everyone else
and looks like everyone else: only the direction is new. The β-VAE's motion plane is the magnitude of
the change between frames, which has no direction, and the LSTM-MDN's per-cell latents did not keep
it (README, "0.6.0: which way things move"). This component measures the optical flow of
every frame and how surprising its directions are at each place of the picture, given the directions
the scene's training frames moved in there: per place, the speed-weighted surprise of each pixel's
direction beyond the place's own entropy, so that noise where anything goes counts nothing and motion
the usual way counts below zero; the frame's value is the mean of its `top_k` places.

Everything is the footage's: the direction histograms of each place (speed-weighted, BINS directions),
shrunk towards the whole frame's as the place statistics are (`score.shrink_seconds`); the component
counts beyond the held-out frames by the threshold's rule (calibration.rule_offset). The flow is
Lucas-Kanade over a window, every pixel at once: its window sums are products with band matrices, and
the whole costs a fraction of the models' time (README, "Speed").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .data import motion_scale

if TYPE_CHECKING:
    from .zones import Zones

BINS = 8  # directions of motion told apart
WINDOW = 9  # pixels square of the window each pixel's flow is solved over (5 to 17 measured across cameras)
RIDGE = 1e-5  # added to the window's 2×2 system: no motion where the picture is flat (intensities in [0, 1])


def flow(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Lucas-Kanade optical flow from prev to cur: (n, C, H, W) frames in [0, 1] → (n, 2, H, W) the
    motion (x, y) of each pixel in pixels a frame, solved by least squares over WINDOW × WINDOW pixels."""
    u, v, det = _flow_parts(cur, prev)
    return torch.stack([u / det, v / det], 1)


def _flow_parts(cur: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flow's x and y times the determinant of each window's 2×2 system, and that determinant (> 0,
    with the ridge): (n, H, W) each. Directions need no division."""
    a, b = (prev[:, 0], cur[:, 0]) if cur.shape[1] == 1 else (prev.mean(1), cur.mean(1))
    mid = (a + b) / 2
    ix = F.pad(mid[..., :, 2:] - mid[..., :, :-2], (1, 1)) / 2
    iy = F.pad(mid[..., 2:, :] - mid[..., :-2, :], (0, 0, 1, 1)) / 2
    it = b - a
    rows, cols = _band(mid.shape[-2]), _band(mid.shape[-1]).T  # once for the five window sums
    xx, xy, yy, xt, yt = (rows @ p @ cols for p in (ix * ix, ix * iy, iy * iy, ix * it, iy * it))
    xx, yy = xx + RIDGE, yy + RIDGE
    return xy * yt - yy * xt, xy * xt - xx * yt, xx * yy - xy * xy


def _band(size: int) -> torch.Tensor:
    """(size, size) the matrix that takes the mean of the WINDOW values around each (fewer at the ends):
    B_rows @ x @ B_cols.T is the mean over WINDOW × WINDOW pixels around each pixel of x (..., H, W),
    as data.box_mean, and far cheaper on a CPU than avg_pool2d's window."""
    at = torch.arange(size)
    near = ((at[:, None] - at[None, :]).abs() <= WINDOW // 2).float()
    return near / near.sum(1, keepdim=True)


def polar(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 2, H, W) flow → its speed (n, H, W) and direction bin (n, H, W) in 0..BINS-1, counterclockwise
    from pointing left (the angle from -π)."""
    return torch.hypot(f[:, 0], f[:, 1]), _bins(f[:, 0], f[:, 1])


def _bins(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The direction bin of each motion (x, y), as polar's: (n, H, W) each → (n, H, W)."""
    bins = torch.atan2(y, x).add_(math.pi).mul_(BINS / (2 * math.pi)).to(torch.int64)
    return bins.masked_fill_(bins == BINS, 0)  # π is -π, pointing left


class _Motion:
    """The flow of a stream of one clip's frame planes, chunk by chunk (a clip's first frame: none)."""

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self._prev: torch.Tensor | None = None

    def __call__(
        self, frames: torch.Tensor, dt: torch.Tensor | None, size: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C·H·W) frame planes in [0, 1] of size (H, W), (n,) seconds after the frame before →
        speed (n, H, W), scaled as the motion plane is when frames come late (data.motion_scale), and
        direction bins (n, H, W)."""
        x = frames.float().view(len(frames), -1, *size)
        prev = torch.cat([x[:1] if self._prev is None else self._prev[None], x[:-1]])
        self._prev = x[-1].clone()
        u, v, det = _flow_parts(x, prev)
        speed, bins = torch.hypot(u, v).div_(det), _bins(u, v)
        if dt is not None and self.interval:
            speed = speed * motion_scale(dt, self.interval)[:, None, None]
        return speed, bins


def cell_of(size: tuple[int, ...], places: int) -> int:
    """Pixels square of a place when a frame of size (H, W) has `places` of them."""
    return round(math.sqrt(size[0] * size[1] / places))


def _votes(speed: torch.Tensor, bins: torch.Tensor, cell: int) -> torch.Tensor:
    """Speed (n, H, W) and direction bins (n, H, W) → (n, BINS, places) each place's speed per direction."""
    n, h, w = speed.shape
    rows, cols = torch.arange(h) // cell, torch.arange(w) // cell
    place = (rows[:, None] * (w // cell) + cols[None, :]).flatten()  # (H·W,) each pixel's place
    places = (h // cell) * (w // cell)
    index = (torch.arange(n)[:, None] * BINS + bins.flatten(1)) * places + place[None]
    return torch.bincount(index.flatten(), speed.flatten(), n * BINS * places).view(n, BINS, places).float()


class DirectionCounts:
    """Each place's speed-weighted histogram of directions over a scene's training frames: feed every
    clip's chunks in order (`clip()` before each clip), then `log_probabilities`."""

    def __init__(self, places: int, interval: float | None) -> None:
        """places: of the latent grid, whose cells the places are; interval: as DirectionSurprise's."""
        self.interval = interval
        self.counts = torch.zeros(BINS, places, dtype=torch.float64)
        self._motion = _Motion(interval)

    def clip(self) -> None:
        self._motion = _Motion(self.interval)

    def add(self, frames: torch.Tensor, dt: torch.Tensor | None, size: tuple[int, ...], keep: torch.Tensor) -> None:
        """The next chunk's frame planes (n, C·H·W) of size (H, W), its (n,) dt, and which of its
        frames are training frames (n,) bool."""
        speed, bins = self._motion(frames, dt, size)
        self.counts += _votes(speed[keep], bins[keep], cell_of(size, self.counts.shape[1])).sum(0).double()

    def log_probabilities(self, weight: float) -> torch.Tensor:
        """(places, BINS) log-probability of each direction at each place: its own histogram by
        `weight` (calibration.shrink_weight), the whole frame's by the rest."""
        eps = 1e-6
        own = (self.counts + eps) / (self.counts.sum(0, keepdim=True) + BINS * eps)
        frame = (self.counts.sum(1, keepdim=True) + eps) / (self.counts.sum() + BINS * eps)
        return (weight * own + (1.0 - weight) * frame).T.log().float()


class DirectionSurprise:
    """The `direction` component of a stream of one clip's frames, per scene (a new one for a new clip)."""

    def __init__(self, logp: torch.Tensor | None, top_k: int, interval: float | None) -> None:
        """logp: (S, places, BINS) each scene's log_probabilities, or None (a calibration made before
        0.6.0); interval: the usual seconds between frames, which the speeds are scaled to."""
        self.logp, self.top_k = logp, top_k
        self.entropy = None if logp is None else -(logp.exp() * logp).sum(2)  # (S, places)
        self._motion = _Motion(interval)

    def __call__(
        self, frames: torch.Tensor | None, dt: torch.Tensor | None, size: tuple[int, ...], zones: Zones | None = None
    ) -> torch.Tensor | None:
        """The next chunk's frame planes (n, C·H·W) of size (H, W) and (n,) dt → (n, S) the mean of
        the top_k places' speed-weighted surprise beyond their entropy, per pixel; None without
        histograms or frames."""
        if self.logp is None or self.entropy is None or frames is None:
            return None
        speed, bins = self._motion(frames, dt, size)
        cell = cell_of(size, self.logp.shape[1])
        votes = _votes(speed, bins, cell)  # (n, BINS, places)
        # per place, Σ over its pixels of speed · (−log p(direction) − entropy), for every scene: (n, S, places)
        surprise = -torch.einsum("nbp,spb->nsp", votes, self.logp) - votes.sum(1)[:, None] * self.entropy[None]
        surprise = surprise / (cell * cell)
        if zones is not None:
            surprise = zones.places(surprise)
        return surprise.topk(min(self.top_k, surprise.shape[-1]), dim=-1).values.mean(-1)
