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

from .score import Calibration

COLORMAP = "inferno"
MAX_ALPHA = 0.8  # the hottest pixels still show a little of the frame beneath
SPAN = 16.0  # the colour scale spans lo … SPAN·lo, logarithmically (errors vary over orders of magnitude)


@dataclass(frozen=True)
class ErrorScale:
    """How error maps become colours: squared error lo is transparent, SPAN·lo full colour."""

    lo: float
    smooth: int  # the error map is averaged over smooth × smooth pixels (model frame size), odd
    lut: torch.Tensor  # (256, 3) float RGB of the colormap, 0..255

    @classmethod
    def from_calibration(cls, cal: Calibration, patch: int) -> ErrorScale:
        """lo: the mean error that normal patches rarely exceed (mean + 3 std, at the worst patch
        position, on the training frames). The map is smoothed over half a score patch, so what is
        shown is close to what the score measures, and single noisy pixels do not light up."""
        lo = float((cal.err_mean + 3 * cal.err_std).max())
        return cls(max(lo, 1e-8), max(1, patch // 2) | 1, colormap_lut())

    def levels(self, err: torch.Tensor) -> torch.Tensor:
        """err: (n, h, w) squared error → (n, h, w) display level in [0, 1], 0 up to lo."""
        k = self.smooth
        smooth = F.avg_pool2d(err[:, None].float(), k, 1, k // 2, count_include_pad=False)[:, 0]
        return (smooth.clamp_min(self.lo) / self.lo).log_().div_(math.log(SPAN)).clamp_(0, 1)


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
