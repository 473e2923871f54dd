"""Inference-time settings for scoring: a faster copy of the β-VAE and the torch thread count.

On a CPU, PyTorch's oneDNN convolutions run faster on channels-last (NHWC) tensors than on the
default NCHW layout (the default 64×64 β-VAE: 1.3-2.5× on 2 AVX2 cores), and a model whose weights
are channels-last keeps every activation after its first convolution channels-last. The copy
computes the same function (to float rounding), so its scores match those of calibration.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vae import BetaVAE, coordinates

# FFmpeg threads for decoding beside inference (video.iter_chunks' `threads`): 0, FFmpeg's own choice.
# On 2 idle cores, 720p H.264 scored at 964-979 frames/s with it against 895-941 with one thread.
DECODING_THREADS = 0


class SubPixelConvTranspose(nn.Module):
    """ConvTranspose2d(kernel 4, stride 2, padding 1) as a 3×3 convolution to 4·C_out planes and a
    pixel shuffle: the same function, and on a CPU faster when C_out is small (the β-VAE's last
    layer, 32 → 2 planes: about 1.5×), where oneDNN's transposed convolution is inefficient.

    Output pixel (2i + ry, 2j + rx) sums input pixels (i + dy, j + dx) for dy, dx in {-1, 0, 1}
    through kernel tap (ry − 2·dy + 1, rx − 2·dx + 1) when that lies in 0..3.
    """

    def __init__(self, ct: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not can_subpixel(ct):
            raise ValueError(f"not a kernel-4, stride-2, padding-1 transposed convolution: {ct}")
        w = ct.weight.detach()  # (C_in, C_out, 4, 4)
        c_in, c_out = w.shape[:2]
        k = torch.zeros(c_out, 2, 2, c_in, 3, 3, dtype=w.dtype, device=w.device)
        for ry in range(2):
            for rx in range(2):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ky, kx = ry - 2 * dy + 1, rx - 2 * dx + 1
                        if 0 <= ky < 4 and 0 <= kx < 4:
                            k[:, ry, rx, :, dy + 1, dx + 1] = w[:, :, ky, kx].T
        # pixel_shuffle reads channel c·4 + ry·2 + rx as sub-pixel (ry, rx) of plane c
        self.weight = nn.Parameter(k.reshape(c_out * 4, c_in, 3, 3), requires_grad=False)
        bias = ct.bias.detach() if ct.bias is not None else torch.zeros(c_out, dtype=w.dtype, device=w.device)
        self.bias = nn.Parameter(bias.repeat_interleave(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, padding=1), 2)


def can_subpixel(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.ConvTranspose2d)
        and m.kernel_size == (4, 4)
        and m.stride == (2, 2)
        and m.padding == (1, 1)
        and m.output_padding == (0, 0)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


class CoordinatesFolded(nn.Module):
    """A convolution over [x, the pixel coordinates] as one over x alone plus a constant map: the
    coordinates' part of its output, computed once for the model's frame size. The same function,
    without building and converting the wider input for every batch."""

    def __init__(self, conv: nn.Conv2d, channels: int, height: int, width: int) -> None:
        super().__init__()
        w = conv.weight.detach()  # (out, channels + 2, k, k)
        self.conv = copy.deepcopy(conv)
        self.conv.weight = nn.Parameter(w[:, :channels].clone(), requires_grad=False)
        self.conv.bias, self.conv.in_channels = None, channels
        bias = conv.bias.detach() if conv.bias is not None else None
        at = coordinates(1, height, width, w)
        self.register_buffer("map", F.conv2d(at, w[:, channels:], bias, conv.stride, conv.padding), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, channels, height, width) → the convolution's output over [x, coordinates]."""
        return self.conv(x) + self.map


def fold_coordinates(vae: BetaVAE) -> None:
    """Fold the coordinate planes of vae (a copy for inference) into constant maps, in place."""
    cfg, first, stats, up = vae.cfg, vae.encoder[0], vae.to_stats, vae.decoder[0]
    if not (cfg.coords and isinstance(first, nn.Conv2d) and isinstance(stats, nn.Conv2d) and isinstance(up, nn.Conv2d)):
        return
    vae.encoder[0] = CoordinatesFolded(first, cfg.in_channels, cfg.height, cfg.width)
    vae.to_stats = CoordinatesFolded(stats, cfg.hidden[-1], *cfg.grid)
    vae.decoder[0] = CoordinatesFolded(up, cfg.latent_channels, *cfg.grid)
    vae.cfg = dataclasses.replace(cfg, coords=False)  # its modules add them: no planes to append


def for_inference(vae: BetaVAE, device: torch.device) -> BetaVAE:
    """A copy of vae for scoring on device: eval mode, channels-last weights, in-place activations,
    the coordinate planes folded into constant maps, and a transposed convolution with few output
    planes rewritten as a sub-pixel convolution."""
    fast = copy.deepcopy(vae).eval().requires_grad_(False)
    fold_coordinates(fast)
    if device.type == "cpu":
        for i, m in enumerate(fast.decoder):
            if isinstance(m, nn.ConvTranspose2d) and can_subpixel(m) and m.out_channels <= 8:
                fast.decoder[i] = SubPixelConvTranspose(m)
    fast = fast.to(device).to(memory_format=torch.channels_last)
    for m in fast.modules():
        if isinstance(m, (nn.LeakyReLU, nn.ReLU)):
            m.inplace = True  # no autograd under inference_mode: nothing needs the pre-activation
    return fast


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def scoring_threads(device: torch.device | None = None) -> int:
    """Torch threads while a decoder thread runs beside inference: leave the decoder a core.

    The decoder and the scaler take about one core at the speeds scoring reaches; intra-op threads
    beyond the remaining cores only contend with it (on 2 busy cores, 2 torch threads scored 1.1 to
    4 times slower than 1: OpenMP threads spin while they wait). torch's own setting still caps it,
    so a user's OMP_NUM_THREADS / torch.set_num_threads is respected.
    """
    if device is not None and device.type != "cpu":  # the work is on the GPU: leave torch's setting
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), usable_cores() - 1))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with n intra-op torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
