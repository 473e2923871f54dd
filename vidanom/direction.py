"""Which way things move, place by place: the `direction` component, learned from no model.

A person who walks the wrong way along a path, or straight across it, moves as fast as everyone else
and looks like everyone else: only the direction is new; a cyclist goes the usual way, faster. The
β-VAE's motion plane is the magnitude of the change between frames, which grows with contrast as much
as with speed, and the LSTM-MDN's per-cell latents did not keep the direction (README, "0.6.0: which
way things move"). This component measures the optical flow of every frame and how surprising its
motion is at each place of the picture, given how the scene's training frames moved there: per
place, the speed-weighted surprise of each pixel's motion (its direction and its speed class) beyond
the place's own entropy, so that noise where anything goes counts nothing and motion the usual way
counts below zero; the frame's value is the mean of its `top_k` places.

Everything is the footage's: the speed classes are slower than the scene's usual speed, up to twice
it, up to four times, and faster (the usual speed: the speed-weighted median of its training frames'
motion); the
histograms of each place (speed-weighted, BINS directions × SPEEDS classes) are shrunk towards the
whole frame's as the place statistics are (`score.shrink_seconds`); the component counts beyond the
held-out frames by the threshold's rule (calibration.rule_offset). The flow is
Lucas-Kanade over a window, every pixel at once: its window sums are products with band matrices, and
the whole costs a fraction of the models' time (README, "Speed").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .data import band, motion_scale

if TYPE_CHECKING:
    from .zones import Zones

BINS = 8  # directions of motion told apart
WINDOW = 9  # pixels square of the window each pixel's flow is solved over (5 to 17 measured across cameras)
RIDGE = 1e-5  # added to the window's 2×2 system: no motion where the picture is flat (intensities in [0, 1])
# speed classes: below the scene's usual speed, up to FASTER times it, up to FASTER² times, and beyond (2 to 6
# classes, their edges fixed or from the footage, were measured across cameras: README, "How a default is chosen")
SPEEDS, FASTER = 4, 2.0
# while a scene's motion is counted its usual speed is not known yet: speeds are counted in FINE bins an
# octave from 2**LOWEST pixels a frame (the ends catch the rest), and merged into classes at the end
FINE, LOWEST, OCTAVES = 4, -8, 12


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
    rows, cols = band(mid.shape[-2], WINDOW), band(mid.shape[-1], WINDOW).T  # once for the five window sums
    xx, xy, yy, xt, yt = (rows @ p @ cols for p in (ix * ix, ix * iy, iy * iy, ix * it, iy * it))
    xx, yy = xx + RIDGE, yy + RIDGE
    return xy * yt - yy * xt, xy * xt - xx * yt, xx * yy - xy * xy


def polar(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 2, H, W) flow → its speed (n, H, W) and direction bin (n, H, W) in 0..BINS-1, counterclockwise
    from pointing left (the angle from -π)."""
    return torch.hypot(f[:, 0], f[:, 1]), _bins(f[:, 0], f[:, 1])


def _bins(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The direction bin of each motion (x, y), as polar's: (n, H, W) each → (n, H, W)."""
    bins = torch.atan2(y, x).add_(math.pi).mul_(BINS / (2 * math.pi)).to(torch.int64)
    return bins.masked_fill_(bins == BINS, 0)  # π is -π, pointing left


def speed_classes(speed: torch.Tensor, usual: float) -> torch.Tensor:
    """(n, H, W) speeds in pixels a frame → their class (n, H, W) in 0..SPEEDS-1 against a scene's usual
    speed: how many of usual·FASTER**k (k < SPEEDS − 1) they reach. A NaN usual speed (directions
    alone: a calibration made before 0.6.2, see widen) puts every speed in class 0."""
    if math.isnan(usual):
        return torch.zeros_like(speed, dtype=torch.int64)
    steps = speed.div(usual).log2_().div_(math.log2(FASTER))  # FASTER-fold steps above the usual speed
    # an unknown speed (a frame of unknown interval: NaN) takes class 0 and still counts NaN by its speed
    return steps.floor_().add_(1).clamp_(0, SPEEDS - 1).nan_to_num_(0.0).long()


def _fine(speed: torch.Tensor) -> torch.Tensor:
    """(n, H, W) speeds → their FINE bin (n, H, W) in 0..FINE·OCTAVES-1, from 2**LOWEST pixels a frame."""
    octaves = speed.clamp_min(2.0**LOWEST).log2_().sub_(LOWEST).mul_(FINE)
    return octaves.floor_().clamp_(0, FINE * OCTAVES - 1).long()


def widen(logp: torch.Tensor) -> torch.Tensor:
    """(..., BINS) directions' log-probabilities (a calibration made before 0.6.2) → (..., BINS·SPEEDS),
    each direction's spread evenly over the speed classes: the same surprise for every speed as before."""
    return (logp - math.log(SPEEDS)).repeat_interleave(SPEEDS, -1)


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


def _places(h: int, w: int, cell: int) -> tuple[torch.Tensor, int]:
    """(H·W,) the place of each pixel of an (H, W) frame, and the number of places."""
    rows, cols = torch.arange(h) // cell, torch.arange(w) // cell
    return (rows[:, None] * (w // cell) + cols[None, :]).flatten(), (h // cell) * (w // cell)


class DirectionCounts:
    """Each place's speed-weighted histogram of directions and speeds over a scene's training frames:
    feed every clip's chunks in order (`clip()` before each clip), then `usual_speed` and
    `log_probabilities`."""

    def __init__(self, places: int, interval: float | None) -> None:
        """places: of the latent grid, whose cells the places are; interval: as DirectionSurprise's."""
        self.interval = interval
        self.fine = torch.zeros(BINS, FINE * OCTAVES, places, dtype=torch.float64)  # direction, fine speed, place
        self._motion = _Motion(interval)

    def clip(self) -> None:
        self._motion = _Motion(self.interval)

    def add(self, frames: torch.Tensor, dt: torch.Tensor | None, size: tuple[int, ...], keep: torch.Tensor) -> None:
        """The next chunk's frame planes (n, C·H·W) of size (H, W), its (n,) dt, and which of its
        frames are training frames (n,) bool."""
        speed, bins = self._motion(frames, dt, size)
        speed = speed[keep].nan_to_num(0.0, posinf=0.0)  # a speed not measured counts nothing
        bins = bins[keep] * FINE * OCTAVES + _fine(speed)
        place, places = _places(size[0], size[1], cell_of(size, self.fine.shape[2]))
        index = (bins.flatten(1) * places + place[None]).flatten()  # summed over the frames at once
        self.fine += torch.bincount(index, speed.flatten().double(), self.fine.numel()).view_as(self.fine)

    def usual_speed(self) -> float:
        """The speed-weighted median of the motion counted, in pixels a frame (the lower edge of its
        fine bin, so that the classes merge whole bins); the lowest bin's where nothing moved."""
        per_bin = self.fine.sum((0, 2))
        above = (per_bin.cumsum(0) >= per_bin.sum() / 2).nonzero()
        at = int(above[0]) if per_bin.sum() > 0 else 0
        return 2.0 ** (LOWEST + at / FINE)

    @property
    def counts(self) -> torch.Tensor:
        """(BINS·SPEEDS, places) the speed counted per direction and speed class at each place."""
        at = round((math.log2(self.usual_speed()) - LOWEST) * FINE)
        step = round(math.log2(FASTER) * FINE)
        edges = [0, *(max(0, at + k * step) for k in range(SPEEDS - 1)), self.fine.shape[1]]
        classes = [self.fine[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:])]
        return torch.stack(classes, 1).flatten(0, 1)

    def log_probabilities(self, weight: float) -> torch.Tensor:
        """(places, BINS·SPEEDS) log-probability of each direction and speed class (at direction·SPEEDS +
        class) at each place: its own histogram by `weight` (calibration.shrink_weight), the whole
        frame's by the rest."""
        eps, counts = 1e-6, self.counts
        kinds = len(counts)
        own = (counts + eps) / (counts.sum(0, keepdim=True) + kinds * eps)
        frame = (counts.sum(1, keepdim=True) + eps) / (counts.sum() + kinds * eps)
        return (weight * own + (1.0 - weight) * frame).T.log().float()


class DirectionSurprise:
    """The `direction` component of a stream of one clip's frames, per scene (a new one for a new clip)."""

    def __init__(
        self, logp: torch.Tensor | None, usual: torch.Tensor | None, top_k: int, interval: float | None
    ) -> None:
        """logp: (S, places, BINS·SPEEDS) each scene's log_probabilities, or None (a calibration made
        before 0.6.0); usual: (S,) each scene's usual speed (NaN: directions alone, see widen);
        interval: the usual seconds between frames, which the speeds are scaled to."""
        self.top_k = top_k
        self.usual = [math.nan] * (0 if logp is None else len(logp)) if usual is None else usual.tolist()
        entropy = None if logp is None else -(logp.exp() * logp).sum(2, keepdim=True)  # (S, places, 1)
        # per scene, place and kind of motion, what a pixel's unit of speed counts: its surprise beyond the
        # place's entropy, (S, places, BINS·SPEEDS)
        self.table = None if logp is None or entropy is None else -(logp + entropy)
        self._motion = _Motion(interval)

    def __call__(
        self, frames: torch.Tensor | None, dt: torch.Tensor | None, size: tuple[int, ...], zones: Zones | None = None
    ) -> torch.Tensor | None:
        """The next chunk's frame planes (n, C·H·W) of size (H, W) and (n,) dt → (n, S) the mean of
        the top_k places' speed-weighted surprise beyond their entropy, per pixel; None without
        histograms or frames."""
        if self.table is None or frames is None:
            return None
        speed, bins = self._motion(frames, dt, size)
        cell = cell_of(size, self.table.shape[1])
        # each pixel's place and direction in a scene's table: where its speed class is added, scene by scene
        rows = _places(size[0], size[1], cell)[0].view(*size[:2]) * self.table.shape[2] + bins * SPEEDS
        outside = None if zones is None else zones.windows(WINDOW)  # a zone's motion reaches as far as a window
        # per scene and place, Σ over its pixels of speed · (−log p(direction, speed class) − entropy): (n, S, places)
        surprise = torch.stack([self._surprise(s, speed, rows, cell, outside) for s in range(len(self.table))], 1)
        return surprise.topk(min(self.top_k, surprise.shape[-1]), dim=-1).values.mean(-1)

    def _surprise(
        self, scene: int, speed: torch.Tensor, rows: torch.Tensor, cell: int, outside: torch.Tensor | None
    ) -> torch.Tensor:
        """One scene's surprise per place (n, places), per pixel, from speeds (n, H, W) and `rows`, each
        pixel's place and direction in the table (n, H, W): each scene has its own usual speed, so its
        own classes. Where zones are drawn, a pixel's surprise above zero counts by its window's share
        outside them, (H, W) `outside`."""
        assert self.table is not None
        at = rows + speed_classes(speed, self.usual[scene])
        per_pixel = speed * self.table[scene].take(at)
        if outside is not None:
            per_pixel = torch.where(per_pixel > 0, per_pixel * outside, per_pixel)
        return F.avg_pool2d(per_pixel[:, None], cell)[:, 0].flatten(1)  # the mean of each place's pixels
