"""The per-pixel reconstruction error as a colour overlay on the frames a person watches.

The model works on small frames (e.g. 64×64); its error map is smoothed at about the scale of the
patches the score is taken over, upsampled to the frame's own size, and blended in: transparent
where the error is what normal footage shows, more opaque and hotter where it is larger. The
colour scale comes from the model's calibration, not from the frame, so a colour means the same
error in every frame (and every clip scored by the same model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ProjectConfig
from .normality import Calibration

COLORMAP = "inferno"
MAX_ALPHA = 0.8  # the hottest pixels still show a little of the frame beneath
SPAN = 16.0  # the colour scale spans lo … SPAN·lo, logarithmically (errors vary over orders of magnitude)


@dataclass(frozen=True)
class ErrorScale:
    """How error maps become colours: squared error lo is transparent, SPAN·lo full colour, where lo
    is a map: every place is measured against what is normal there, as the score does."""

    lo: torch.Tensor  # (h, w) at the model's frame size
    smooth: int  # the error map is averaged over smooth × smooth pixels (model frame size), odd
    lut: torch.Tensor  # (256, 3) float RGB of the colormap, 0..255

    @classmethod
    def from_calibration(cls, cal: Calibration, cfg: ProjectConfig) -> ErrorScale:
        """lo per pixel: the mean error the patches over it rarely exceed on normal frames (mean + 3 std
        of each patch position, averaged over the patches covering the pixel; the highest of the
        scenes). One level for the whole frame, from its busiest place, left the unusual motion that
        scores highest in a quiet place as dark as the normal bustle of a walkway. The map is
        smoothed over half a score patch, so single noisy pixels do not light up."""
        sc, size = cfg.score, (cfg.frames.height, cfg.frames.width)
        per_patch = (cal.err_mean + 3 * cal.err_std).amax(0).float()  # (P,)
        cover = F.fold(torch.ones(1, sc.patch**2, len(per_patch)), size, sc.patch, stride=sc.patch_stride)
        total = F.fold(per_patch.expand(1, sc.patch**2, -1), size, sc.patch, stride=sc.patch_stride)
        lo = torch.where(cover > 0, total / cover.clamp_min(1), per_patch.max())[0, 0]
        return cls(lo.clamp_min(1e-8), max(1, sc.patch // 2) | 1, colormap_lut())

    def levels(self, err: torch.Tensor) -> torch.Tensor:
        """err: (n, h, w) squared error → (n, h, w) display level in [0, 1], 0 up to lo."""
        k = self.smooth
        smooth = F.avg_pool2d(err[:, None].float(), k, 1, k // 2, count_include_pad=False)[:, 0]
        return torch.maximum(smooth, self.lo).div_(self.lo).log_().div_(math.log(SPAN)).clamp_(0, 1)


def colormap_lut(name: str = COLORMAP) -> torch.Tensor:
    """(256, 3) float RGB 0..255 of a matplotlib colormap: looked up per pixel without matplotlib."""
    from matplotlib import colormaps  # imported here: matplotlib is slow to import

    rgb = colormaps[name](torch.linspace(0, 1, 256).numpy())[:, :3]
    return torch.from_numpy(rgb * 255).float()


def overlay(frame: torch.Tensor, level: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Blend the colour of each pixel's level onto the frame.

    frame: (H, W, 3) uint8; level: (h, w) in [0, 1] at the model's size → (H, W, 3) uint8. Alpha
    grows with the level, so normal areas stay as they were. Colour and alpha are looked up at the
    model's size and upsampled together (bilinear, premultiplied): the same picture as looking up
    every full-size pixel, at a fraction of the cost on a large frame.
    """
    level = level.clamp(0, 1)
    alpha = level.sqrt() * MAX_ALPHA  # (sqrt: a faint level still shows a tint)
    colour = lut[(level * 255).round_().long()] * alpha[..., None]  # (h, w, 3), premultiplied
    small = torch.cat([colour, alpha[..., None]], -1).permute(2, 0, 1)[None].contiguous()  # (1, 4, h, w)
    up = F.interpolate(small, size=frame.shape[:2], mode="bilinear", align_corners=False)[0]  # (4, H, W)
    out = frame.float().mul_((1 - up[3])[..., None]).add_(up[:3].permute(1, 2, 0))
    return out.round_().clamp_(0, 255).to(torch.uint8)
