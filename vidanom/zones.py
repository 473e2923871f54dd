"""Zones to ignore: polygons in the camera's own pixels (the clock overlay, a flag in the wind, a
busy road beyond the fence) inside which nothing raises a frame's score.

The polygons live in vidanom.json (`score.mask`: the camera's frame size and the polygons drawn on
it). Scoring applies them as one separate step, at the model's frame size: the reconstruction error
map is weighted, pixel by pixel, by the share of the pixel outside every zone (so the worst patches
are taken of what lies outside), and each latent cell's KL and LSTM-MDN z-scores count, where they
lie above normal, by the cell's share outside (a cell wholly inside counts for nothing); the
stillness of a frame is read from the cells outside alone; `direction` counts each pixel's surprise by
the share outside of its flow window (Zones.windows). Set before training, the same pixel
weights weigh the β-VAE's reconstruction loss, so the model spends no capacity inside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import MaskConfig
from .errors import VidanomError
from .project import Project

SUPERSAMPLE = 8  # each model pixel's share inside a zone is counted on this many points square
SHIFT = 4  # OpenCV's fixed-point bits for the polygons' vertices when they are drawn
TINT, OUTLINE, TINT_ALPHA = (60, 200, 255), (60, 200, 255), 0.3  # how the zones are drawn on a frame


def coverage(mask: MaskConfig, height: int, width: int) -> np.ndarray:
    """(height, width) float32: the share of each pixel of a frame of that size inside any zone (of
    SUPERSAMPLE² points spread over the pixel, those inside a polygon)."""
    from matplotlib.path import Path as Polygon  # imported here: only masks need it

    s = SUPERSAMPLE
    ys, xs = np.mgrid[0 : height * s, 0 : width * s]
    points = np.stack(
        [(xs.ravel() + 0.5) * mask.width / (width * s), (ys.ravel() + 0.5) * mask.height / (height * s)], 1
    )
    inside = np.zeros(len(points), bool)
    for polygon in mask.polygons:
        inside |= Polygon(np.asarray(polygon, np.float64)).contains_points(points)
    return inside.reshape(height, s, width, s).mean((1, 3), dtype=np.float32)


def _scaled(mask: MaskConfig, height: int, width: int) -> list[np.ndarray]:
    """The polygons in OpenCV's fixed-point pixel coordinates of a frame of this size, to draw them
    (pixel centres at whole numbers: a zone's edge at x = 0 is the frame's left edge)."""
    sx, sy, one = width / mask.width, height / mask.height, 2**SHIFT
    return [
        np.round((np.asarray(p, np.float64) * (sx, sy) - 0.5) * one).astype(np.int32).reshape(-1, 1, 2)
        for p in mask.polygons
    ]


@dataclass(frozen=True)
class Zones:
    """The zones at a model's frame size: what scoring (and the β-VAE's training loss) weighs by."""

    pixels: torch.Tensor  # (H, W) the share of each pixel outside every zone
    cells: torch.Tensor  # (rows·cols,) the share of each latent cell outside every zone

    @classmethod
    def of(cls, mask: MaskConfig, height: int, width: int, downsample: int) -> Zones | None:
        """The zones of a mask at a model's frame size (height × width, latent cells of downsample
        pixels square); None without zones."""
        if not mask.polygons:
            return None
        pixels = torch.from_numpy(1.0 - coverage(mask, height, width))
        cells = F.avg_pool2d(pixels[None, None], downsample).flatten()
        return cls(pixels, cells)

    def errors(self, err: torch.Tensor) -> torch.Tensor:
        """(n, H, W) squared errors, weighted by each pixel's share outside the zones."""
        return err * self.pixels.to(err.device)

    def places(self, z: torch.Tensor) -> torch.Tensor:
        """(..., cells) z-scores of the latent cells: above normal (> 0), each counts by its share
        outside the zones; below, as it is (a zone never raises, nor lowers, what lies outside)."""
        share = self.cells.to(z.device)
        return torch.where(z > 0, z * share, z)

    def windows(self, size: int) -> torch.Tensor:
        """(H, W) per pixel, the least share outside the zones of any pixel within size × size of it:
        what a measure over such a window (the optical flow's) counts by, so that motion inside a zone
        does not spill out of it through the windows of the pixels around it."""
        return -F.max_pool2d(-self.pixels[None, None], size, 1, size // 2)[0, 0]

    def surprise(self, excess: torch.Tensor) -> torch.Tensor:
        """(..., cells) surprise over the most likely prediction (≥ 0; the stillness component): of
        the cells outside the zones, by their share outside (a cell wholly inside counts as still)."""
        return excess * self.cells.to(excess.device)


# -- drawing -----------------------------------------------------------------------------------------


def draw(frame: np.ndarray, mask: MaskConfig) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame of any size → a copy with the zones tinted and outlined (scaled
    from the size they were drawn on)."""
    if not mask.polygons:
        return frame
    import cv2

    height, width = frame.shape[:2]
    polygons = _scaled(mask, height, width)
    inside = np.zeros((height, width), np.uint8)
    cv2.fillPoly(inside, polygons, 1, cv2.LINE_8, SHIFT)
    out = frame.copy()
    tint = np.asarray(TINT, np.float32)
    hit = inside.astype(bool)
    out[hit] = (out[hit] * (1 - TINT_ALPHA) + tint * TINT_ALPHA).round().astype(np.uint8)
    thickness = max(1, round(min(height, width) / 240))
    cv2.polylines(out, polygons, True, OUTLINE, thickness, cv2.LINE_AA, SHIFT)
    return out


# -- setting them --------------------------------------------------------------------------------------


def parse_point(text: str) -> tuple[float, float]:
    """'X,Y' (pixels of the camera's frame) → (x, y); VidanomError otherwise."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise VidanomError(f"a zone's point is X,Y in the camera's pixels, e.g. 120,40; not '{text}'") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise VidanomError(f"a zone's point is X,Y in the camera's pixels, e.g. 120,40; not '{text}'")
    return x, y


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' → (width, height); VidanomError otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise VidanomError(f"--size is WIDTHxHEIGHT in pixels, e.g. 1280x720; not '{text}'") from None
    if w < 1 or h < 1:
        raise VidanomError(f"--size is WIDTHxHEIGHT in pixels, e.g. 1280x720; not '{text}'")
    return w, h


def with_zone(mask: MaskConfig, points: list[tuple[float, float]], size: tuple[int, int] | None) -> MaskConfig:
    """mask with one more polygon; size: the camera's (width, height), where the mask has none yet.
    VidanomError for fewer than three points, a point outside the frame, or another frame size."""
    if len(points) < 3:
        raise VidanomError(f"a zone is a polygon of at least 3 points X,Y, not {len(points)}")
    if mask.polygons and size is not None and size != (mask.width, mask.height):
        raise VidanomError(
            f"the zones already set were drawn on a {mask.width}x{mask.height} frame, not {size[0]}x{size[1]}: "
            "draw this one on the same frame, or clear them first ('vidanom mask clear')"
        )
    width, height = (mask.width, mask.height) if mask.polygons or size is None else size
    if not (width and height):
        raise VidanomError(
            "the camera's frame size is not known yet: pass --size WIDTHxHEIGHT, or extract or score a clip first"
        )
    for x, y in points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise VidanomError(
                f"the point {x:g},{y:g} lies outside the camera's {width}x{height} frame "
                f"(x from 0 to {width}, y from 0 to {height})"
            )
    polygon = tuple((_number(x), _number(y)) for x, y in points)
    return replace(mask, width=width, height=height, polygons=(*mask.polygons, polygon))


def _number(v: float) -> float:
    """A coordinate as vidanom.json keeps it: a whole number of pixels without a decimal point."""
    return int(v) if float(v).is_integer() else float(v)


def camera_size(sources: list[Path]) -> tuple[int, int] | None:
    """(width, height) of the first of these videos that still decodes (the project's clips), or None."""
    from .config import FrameConfig
    from .video import Source, find_sources, first_frame_size

    for path in sources:
        try:
            src: Source = find_sources([path])[0]
            return first_frame_size(src, FrameConfig())
        except (VidanomError, IndexError):
            continue
    return None


def add_zone(project: Project, points: list[tuple[float, float]], size: tuple[int, int] | None = None) -> MaskConfig:
    """Add a zone to ignore to the project's vidanom.json: a polygon of at least three (x, y) points
    in the camera's own pixels. size: the camera's (width, height) where no zone is set yet (default:
    that of the project's first cached or scored clip). Returns the mask now set; VidanomError (and
    nothing changed) for a polygon of fewer than three points or outside the frame."""
    mask = project.config.score.mask
    if size is None and not mask.polygons:
        size = camera_size(_clip_sources(project))
    with_zone(mask, points, size)  # refuse bad input before taking the file
    config = project.edit_config(
        lambda cfg: replace(cfg, score=replace(cfg.score, mask=with_zone(cfg.score.mask, points, size)))
    )
    return config.score.mask


def clear_zones(project: Project) -> int:
    """Remove every zone from the project's vidanom.json; how many there were."""
    count = len(project.config.score.mask.polygons)
    project.edit_config(lambda cfg: replace(cfg, score=replace(cfg.score, mask=MaskConfig())))
    return count


def _clip_sources(project: Project) -> list[Path]:
    """The videos of the project's cached clips, then of its scored clips: they show the camera's frame."""
    from . import cache
    from .store import ScoreStore

    store, scored = ScoreStore.of(project), []
    for key in store.keys()[:1]:
        try:
            scored.append(store.read(key).summary.get("source"))
        except VidanomError:
            continue
    cached = [m.source for m in cache.clips(project.cache_dir, project.config.frames)]
    return [Path(s) for s in cached + scored if isinstance(s, str)]
