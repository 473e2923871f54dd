"""Dreamed clips: the temporal model's memory of old scenes, replayed to the LSTM-MDN on update.

The frozen previous LSTM-MDN rolls out latent sequences per cell (mixture sampling with a
temperature), the frozen previous decoder turns every step into a frame, and the result is an
ordinary uint8 clip. Because it is a clip, the *new* encoder maps it into the new latent space like
any real clip: the old dreams follow the latent space as it moves during an update. (They do not
recalibrate the threshold: too unlike real frames in their KL, they would set it wrong; old scenes
keep the statistics they were calibrated with, see carry.py.)
"""

from __future__ import annotations

import numpy as np
import torch

from .mdn import LSTMMDN
from .replay import LatentPrior
from .vae import BetaVAE


@torch.no_grad()
def dream_clip(
    vae: BetaVAE,
    mdn: LSTMMDN,
    frames: int,
    channels: int,
    prior: LatentPrior | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """One dreamed clip of `frames` frames: (frames, H, W, channels) uint8.

    The first latent grid is a sample of `prior` (an old scene's Gaussian; N(0, I) if None); from
    there every cell's rollout goes on together, each step read with its neighbours' (with
    mdn.context set). Only the frame planes of the decoded input are kept; the motion planes are recomputed
    from consecutive frames when the clip is used.
    """
    rows, cols = vae.cfg.grid
    cells = torch.arange(rows * cols)
    d = mdn.cfg.latent_dim
    first = (
        prior.sample(1, generator).view(d, rows * cols).T
        if prior is not None
        else torch.randn(rows * cols, d, generator=generator)
    )
    z = mdn.dream(first, cells, frames - 1, temperature, generator)  # (cells, frames, D)
    grid = z.permute(1, 2, 0).reshape(frames, mdn.cfg.latent_dim, rows, cols)
    out = []
    for s in range(0, frames, 64):
        x = vae.decode(grid[s : s + 64])[:, :channels].clamp(0.0, 1.0)
        out.append((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def dream_clips(
    vae: BetaVAE,
    mdn: LSTMMDN,
    total_frames: int,
    length: int,
    channels: int,
    prior: LatentPrior | None = None,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """Enough dreamed clips of `length` frames to hold about total_frames frames."""
    g = torch.Generator().manual_seed(seed)
    vae, mdn = vae.eval(), mdn.eval()
    count = max(1, -(-total_frames // length))
    return [dream_clip(vae, mdn, length, channels, prior, temperature, g) for _ in range(count)]
