"""Convolutional β-VAE with a spatial latent grid.

Modules only: no file access. The latent is a grid of cells (one per ``2**len(hidden)`` pixels
square), so reconstruction error, KL and the LSTM-MDN's surprise can all be read locally: Ped1's
anomalies cover a few percent of the frame and vanish in a frame-wide mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 2  # input planes: the frame, plus one difference to an earlier frame
    height: int = 64  # input height in pixels, divisible by 2**len(hidden)
    width: int = 64  # input width in pixels, divisible by 2**len(hidden)
    hidden: tuple[int, ...] = (8, 16, 64)  # channels of the stride-2 convolutions
    latent_channels: int = 8  # latent dimensions per grid cell
    beta: float = 1.0  # weight of the KL term in the loss
    coords: bool = True  # feed pixel coordinates so normality may depend on position

    @property
    def downsample(self) -> int:
        return 2 ** len(self.hidden)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the latent grid."""
        return self.height // self.downsample, self.width // self.downsample


def coordinates(n: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(n, 2, h, w) pixel coordinates in [-1, 1]."""
    ys = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))
    return grid.expand(n, 2, h, w)


class BetaVAE(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        if cfg.height % cfg.downsample or cfg.width % cfg.downsample:
            raise ValueError(f"frame size {cfg.width}x{cfg.height} not divisible by {cfg.downsample}")
        self.cfg = cfg
        extra = 2 if cfg.coords else 0
        enc: list[nn.Module] = []
        prev = cfg.in_channels + extra
        for ch in cfg.hidden:
            enc += [nn.Conv2d(prev, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            prev = ch
        self.encoder = nn.Sequential(*enc)
        self.to_stats: nn.Module = nn.Conv2d(prev + extra, 2 * cfg.latent_channels, 1)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels + extra, prev, 1), nn.LeakyReLU(0.2)]
        for ch in reversed((cfg.in_channels,) + cfg.hidden[:-1]):
            dec += [nn.ConvTranspose2d(prev, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            prev = ch
        self.decoder = nn.Sequential(*dec[:-1])  # the output is linear: differences are signed

    def _with_coords(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.coords:
            return x
        at = coordinates(x.shape[0], x.shape[2], x.shape[3], x)
        if x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last):
            # a channels-last batch (training on a CPU) stays channels-last: else each convolution converts it
            at = at.contiguous(memory_format=torch.channels_last)
        return torch.cat([x, at], 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, in_channels, H, W) → mu, logvar: (B, latent_channels, rows, cols)."""
        h = self.encoder(self._with_coords(x))
        mu, logvar = self.to_stats(self._with_coords(h)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_channels, rows, cols) → (B, in_channels, H, W)."""
        return self.decoder(self._with_coords(z))

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) → reconstruction (B, C, H, W), mu and logvar (B, latent_channels, rows, cols).

        With ``sample=False`` the mean latent is decoded, which makes scores deterministic. The
        sampling noise comes from `generator` (a CPU generator) if given, else torch's global one.
        """
        mu, logvar = self.encode(x)
        if not sample:
            return self.decode(mu), mu, logvar
        eps = (
            torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
            if generator is not None
            else torch.randn_like(mu)
        )
        return self.decode(mu + eps * (0.5 * logvar).exp()), mu, logvar

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples decoded from the prior N(0, I): (n, C, H, W)."""
        rows, cols = self.cfg.grid
        p = next(self.parameters())
        z = torch.randn(n, self.cfg.latent_channels, rows, cols, generator=generator, device=p.device)
        return self.decode(z)


def kl_map(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per cell: (B, Cz, rows, cols) → (B, rows, cols)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def error_map(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels: (B, C, H, W) → (B, H, W)."""
    return (x - recon).pow(2).sum(1)


def vae_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image loss = reconstruction + β·KL, averaged over the batch.

    Reconstruction is the summed squared error (a Gaussian likelihood with unit-free variance),
    KL is summed over every latent cell, so β keeps one meaning at any frame size. weight: (H, W)
    per-pixel weights of the squared error (zones to ignore: 0 inside), or None.
    Returns (loss, reconstruction, kl), each a scalar.
    """
    if weight is None:  # summed over all of an image at once: faster for a channels-last one than by channel
        rec = (x - recon).pow(2).sum((1, 2, 3)).mean()
    else:
        rec = (error_map(x, recon) * weight).flatten(1).sum(1).mean()
    kl = kl_map(mu, logvar).flatten(1).sum(1).mean()
    return rec + beta * kl, rec, kl


def patch_means(err: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """Mean of each patch×patch window, windows `stride` apart: (B, H, W) → (B, P) in row-major order."""
    return F.avg_pool2d(err.unsqueeze(1), patch, stride).flatten(1)
