"""Inference-time settings for scoring: a faster copy of the β-VAE and the torch thread count.

On a CPU, PyTorch's oneDNN convolutions run much faster on channels-last (NHWC) tensors than on
the default NCHW layout, for the transposed convolutions of the decoder most of all; a model whose
weights are channels-last makes every activation after the first convolution channels-last too.
The copy computes the same function (to float rounding), so scores match those of calibration.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from .vae import BetaVAE


def for_inference(vae: BetaVAE, device: torch.device) -> BetaVAE:
    """A copy of vae for scoring on device: eval mode, channels-last weights, in-place activations."""
    fast = copy.deepcopy(vae).eval().to(device)
    fast = fast.to(memory_format=torch.channels_last)
    for m in fast.modules():
        if isinstance(m, (nn.LeakyReLU, nn.ReLU)):
            m.inplace = True  # no autograd under inference_mode: nothing needs the pre-activation
    return fast


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def scoring_threads() -> int:
    """Torch threads while a decoder thread runs beside inference: leave the decoder a core.

    FFmpeg's frame-threaded decoding and the scaler take about one core at the speeds scoring
    reaches; intra-op threads beyond the remaining cores only contend with it (on 2 cores, 2 torch
    threads score slower than 1). torch's own setting still caps it, so a user's
    OMP_NUM_THREADS / torch.set_num_threads is respected.
    """
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
