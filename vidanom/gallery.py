"""The gallery: one PNG of a clip's most anomalous frames, each as original, reconstruction and
error heatmap, labelled with frame number, time (the frame's own, as scoring stored it) and score.

The frames are chosen from the stored scores (the k highest, at least a gap apart, so that one
long event does not fill the gallery with near-copies of a frame); a second pass decodes the clip
until it has them all, keeping only those k frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import fsutil, zones
from .errors import VidanomError
from .heatmap import SPAN, ErrorScale, overlay
from .project import Project
from .revisit import ScoredClip, revisit, scored_clip
from .store import ScoreStore
from .progress import Progress, no_progress

MAX_K = 64


def pick_frames(scores: np.ndarray, k: int, gap: int) -> list[int]:
    """The frames of the k highest scores, each at least `gap` frames from every one picked before
    (greedily, highest first; ties go to the earlier frame). scores: (n,); NaN is never picked.
    Fewer than k when the clip has no more frames that far apart. In order of score, highest first.
    """
    free = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64))
    gap, picks = max(gap, 1), []
    for _ in range(k):
        best = int(np.argmax(free))
        if free[best] == -np.inf:
            break
        picks.append(best)
        free[max(0, best - gap + 1) : best + gap] = -np.inf  # everything closer than gap
    return picks


@dataclass
class Panel:
    """One frame of the gallery."""

    frame: int
    time: float  # seconds
    score: float
    anomalous: bool  # as scoring flagged it
    original: np.ndarray  # (H, W, 3) uint8 at the source's resolution
    reconstruction: np.ndarray  # (H, W, 3) uint8: the VAE's reconstruction (made at the model's size)
    heatmap: np.ndarray  # (H, W, 3) uint8: the original with the error overlaid


def _resized(planes: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float image in [0, 1], C = 1 or 3 → (H, W, 3) uint8 at size (H, W), bilinear."""
    up = F.interpolate(planes[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return up.clamp(0, 1).mul(255).round().to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0).numpy().copy()


def collect(
    project: Project,
    clip: ScoredClip,
    frames: list[int],
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> list[Panel]:
    """Decode the clip up to the last of `frames` and keep those frames' panels, in the given order."""
    scale = ErrorScale.from_calibration(clip.detector.calibration, clip.detector.config)
    channels, wanted, found = clip.detector.config.frames.channels, set(frames), {}
    mask = clip.detector.config.score.mask  # the zones to ignore, drawn on the original and the heatmap
    for chunk in revisit(project, clip, device, progress, "gallery", recon=True):
        assert chunk.maps.recon is not None
        hits = [i for i in range(len(chunk.full)) if chunk.start + i in wanted]
        if not hits:
            continue
        levels = scale.levels(chunk.maps.err[hits])
        for j, i in enumerate(hits):
            t = chunk.start + i
            recon = _resized(chunk.maps.recon[i, :channels], chunk.full.shape[1:3])  # the appearance planes
            heat = zones.draw(overlay(torch.from_numpy(chunk.full[i]), levels[j], scale.lut).numpy(), mask)
            original = zones.draw(chunk.full[i].copy(), mask)
            found[t] = Panel(t, float(clip.times[t]), float(clip.scores[t]), bool(clip.flags[t]), original, recon, heat)
        if len(found) == len(wanted):
            break  # the rest of the clip is not needed (closing revisit stops the decoder)
    return [found[f] for f in frames]


def render(path: Path, panels: list[Panel], clip: ScoredClip, model_size: str) -> Path:
    """Draw the panels as a grid, one row per frame, and write it as a PNG (atomically).
    model_size: what the model sees, e.g. '64×64 gray', for the reconstruction's title."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    from .heatmap import COLORMAP

    height, width = panels[0].original.shape[:2]
    row_h = 9.0 / 3 * height / width + 0.45  # inches: three panels across 9 inches, plus a title line
    fig = Figure(figsize=(9.6, row_h * len(panels) + 0.9), dpi=100, layout="constrained")
    axes = fig.subplots(len(panels), 3, squeeze=False)
    for r, (p, row) in enumerate(zip(panels, axes)):
        row[0].set_title(
            f"#{r + 1}  frame {p.frame}  ·  {p.time:.2f} s  ·  score {p.score:.2f}",
            loc="left",
            fontsize=10,
            fontweight="bold",
            color="tab:red" if p.anomalous else "black",
        )
        row[1].set_title(f"reconstruction (the model sees {model_size})", fontsize=9)
        row[2].set_title("error heatmap", fontsize=9)
        for ax, image in zip(row, (p.original, p.reconstruction, p.heatmap)):
            ax.imshow(image, interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
    bar = fig.colorbar(
        ScalarMappable(LogNorm(1, SPAN), COLORMAP),
        ax=axes[-1, :],
        shrink=0.6,
        aspect=40,
        orientation="horizontal",
        ticks=[1, 2, 4, 8, 16],
        format="{x:g}×",
    )
    bar.minorticks_off()
    bar.set_label("reconstruction error, in multiples of what normal footage reaches there", fontsize=8)
    fig.suptitle(f"{clip.key}: the {len(panels)} most anomalous frames (threshold {clip.threshold:.2f})", fontsize=11)
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


@dataclass
class Gallery:
    path: Path
    frames: list[int]
    times: list[float]
    scores: list[float]


def gallery(
    project: Project,
    path: Path,
    k: int = 8,
    out: Path | None = None,
    min_gap: float = 1.0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> Gallery:
    """The gallery of a scored clip's k most anomalous frames, at least min_gap seconds apart: to out,
    or scores/KEY.gallery.png. path: the clip's video, or its name or key."""
    if not 1 <= k <= MAX_K:
        raise VidanomError(f"-k must be between 1 and {MAX_K}, not {k}")
    if not min_gap >= 0:
        raise VidanomError(f"--min-gap must be zero or more seconds, not {min_gap}")
    if out is not None and out.suffix.lower() != ".png":
        raise VidanomError(f"the gallery is a PNG: name the output .png, not {out.name}")
    clip = scored_clip(project, path)
    frames = pick_frames(clip.scores, k, int(round(min_gap * clip.rate)))  # the gap in frames, as they come
    panels = collect(project, clip, frames, device, progress)
    fc = clip.detector.config.frames
    size = f"{fc.width}×{fc.height} {'gray' if fc.channels == 1 else 'RGB'}"
    target = render(out or ScoreStore.of(project).files(clip.key).gallery, panels, clip, size)
    return Gallery(target, frames, [p.time for p in panels], [p.score for p in panels])
