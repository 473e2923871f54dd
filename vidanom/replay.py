"""Continual learning for the β-VAE: generative replay of old scenes, and EWC as the baseline it beats.

Replay (Wiewel & Yang, ICASSP 2019): before learning a new scene, freeze a copy of the current VAE
and mix its prior samples into every batch, so the new model keeps reconstructing what the old one
could. Chained from scene to scene, each frozen copy speaks for all the scenes before it.

EWC (Kirkpatrick et al., 2017) instead anchors the weights that mattered, weighted by the diagonal
of the Fisher information. Both plug into `vidanom.train.fit_vae` (`extra=` and `penalty=`).
No file access here: checkpoints store `EWCPenalty.to_dict()`, the caller writes it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

from .vae import BetaVAE, vae_loss


class PriorReplay:
    """Replayed inputs decoded from the prior of a frozen copy of a trained VAE: `fit_vae(extra=...)`.

    frame_channels: how many leading input channels are frames in [0, 1] (the rest are motion
    differences in [-1, 1]); samples are clipped to those ranges, since the decoder's linear output
    can overshoot what real inputs ever hold. None leaves samples as decoded.
    """

    def __init__(self, vae: BetaVAE, frame_channels: int | None = None,
                 generator: torch.Generator | None = None, out_device: torch.device | str = "cpu") -> None:
        self.vae = copy.deepcopy(vae).eval().requires_grad_(False)
        self.frame_channels = frame_channels
        # None draws from torch's global generator, which fit_vae reseeds every epoch: replay is reproducible
        self.generator = generator
        self.out_device = torch.device(out_device)  # fit_vae joins replay to CPU batches before moving them

    def __call__(self, n: int) -> torch.Tensor:
        """n samples (n, C, H, W) on out_device."""
        with torch.no_grad():
            x = self.vae.sample_prior(n, self.generator)
        if self.frame_channels is not None:
            k = self.frame_channels
            x = torch.cat([x[:, :k].clamp(0.0, 1.0), x[:, k:].clamp(-1.0, 1.0)], 1)
        return x.to(self.out_device)


def replay_share(scenes_learned: int, base: float = 0.5, cap: float = 0.9) -> float:
    """The share of every training batch given to replay, when `scenes_learned` scenes came before.

    The odds of replayed against new samples grow linearly with the number of old scenes:
    share = k·b / (k·b + 1 − b). With the default b = 0.5 that is k/(k+1), i.e. every scene, old or
    new, gets an equal part of each batch, so the oldest scene is not diluted away as scenes pile up
    (a constant share would leave scene 1 with b/k of the batch after k scenes). `base` is the share
    for one old scene. The cap bounds the cost, since fit_vae adds B·s/(1−s) replayed samples to a
    batch of B new ones (s = 0.9 already means 9 replayed for each new one).
    """
    if not 0.0 < base < 1.0 or not 0.0 < cap < 1.0:
        raise ValueError("base and cap must lie strictly between 0 and 1")
    if scenes_learned <= 0:
        return 0.0
    odds = scenes_learned * base / (1.0 - base)
    return min(odds / (1.0 + odds), cap)


def new_batch_size(batch_size: int, share: float) -> int:
    """How many new frames per batch, so that with fit_vae's B·s/(1−s) replayed ones the whole batch
    stays near `batch_size`. Without this, replay grows every batch instead, and an update takes as
    few optimiser steps as plain fine-tuning while seeing (k+1)× the images: on MNIST digits that
    alone cost replay 0.03–0.04 AUROC against joint training after nine tasks.
    """
    return max(1, round(batch_size * (1.0 - share)))


def fisher_diagonal(vae: BetaVAE, batches: Iterable[torch.Tensor], beta: float) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the VAE loss: the mean over all samples of (∂ loss_i / ∂θ)².

    The squares are taken per sample (vmap over per-sample gradients), not of each batch's mean
    gradient: squaring a mean of B gradients shrinks the noise part by B, which would make the
    estimate, and so the right EWC strength, depend on the batch size. loss_i is the per-image
    −ELBO of `vae_loss` (summed squared error = Gaussian NLL, + β·KL) at the mean latent, so the
    estimate is deterministic; without sampling, the encoder's variance head is still reached through KL.
    batches: (B, C, H, W) model inputs, on the model's device.
    """
    was_training = vae.training
    vae.eval()  # deterministic layers, should the model ever gain dropout or batch norm
    params = {k: v.detach() for k, v in vae.named_parameters()}

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        xb = x.unsqueeze(0)
        recon, mu, logvar = functional_call(vae, p, (xb,), {"sample": False})
        return vae_loss(xb, recon, mu, logvar, beta)[0]

    per_sample = vmap(grad(loss_one), in_dims=(None, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    n = 0
    try:
        for x in batches:
            for k, g in per_sample(params, x).items():
                total[k] += g.pow(2).sum(0)
            n += x.shape[0]
    finally:
        vae.train(was_training)
    if n == 0:
        raise ValueError("fisher_diagonal needs at least one sample")
    return {k: v / n for k, v in total.items()}


class EWCPenalty:
    """λ/2 · Σ F·(θ − θ*)² on a live model's weights: `fit_vae(penalty=...)`. Zero until consolidated.

    After each scene, `consolidate` moves the anchor θ* to the weights just learned and folds that
    scene's Fisher into F ("online EWC", Schwarz et al. 2018: one anchor, since the latest weights
    were themselves held near the older anchors). accumulate="sum" adds Fishers, so old scenes weigh
    more and more against a new one (what the posterior of all scenes so far asks for when λ = 1);
    "mean" averages them, so λ keeps one meaning however many scenes came before.
    """

    MODES = ("sum", "mean")

    def __init__(self, vae: BetaVAE, strength: float, accumulate: str = "sum") -> None:
        if accumulate not in self.MODES:
            raise ValueError(f"accumulate must be one of {self.MODES}, not {accumulate!r}")
        self.vae = vae
        self.strength = float(strength)
        self.accumulate = accumulate
        self.tasks = 0
        self.anchor: dict[str, torch.Tensor] = {}
        self.fisher: dict[str, torch.Tensor] = {}

    def consolidate(self, fisher: dict[str, torch.Tensor]) -> None:
        """Anchor at the model's current weights and add the Fisher of the scene it just learned."""
        self.anchor = {k: v.detach().clone() for k, v in self.vae.named_parameters()}
        if not self.fisher:
            self.fisher = {k: f.detach().clone() for k, f in fisher.items()}
        elif self.accumulate == "sum":
            self.fisher = {k: f + fisher[k].to(f) for k, f in self.fisher.items()}
        else:
            t = self.tasks
            self.fisher = {k: (f * t + fisher[k].to(f)) / (t + 1) for k, f in self.fisher.items()}
        self.tasks += 1

    def __call__(self) -> torch.Tensor:
        p = next(self.vae.parameters())
        total = torch.zeros((), device=p.device, dtype=p.dtype)
        for k, v in self.vae.named_parameters():
            if k in self.fisher:
                a, f = self.anchor[k].to(v), self.fisher[k].to(v)
                total = total + (f * (v - a).pow(2)).sum()
        return 0.5 * self.strength * total

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers on the CPU, loadable with torch.load(weights_only=True)."""
        return {"strength": self.strength, "accumulate": self.accumulate, "tasks": self.tasks,
                "anchor": {k: v.cpu() for k, v in self.anchor.items()},
                "fisher": {k: v.cpu() for k, v in self.fisher.items()}}

    @classmethod
    def from_dict(cls, vae: BetaVAE, data: dict[str, Any]) -> EWCPenalty:
        """Rebuild on `vae`, whose parameter names must be those the penalty was saved with."""
        pen = cls(vae, data["strength"], data["accumulate"])
        names = {k for k, _ in vae.named_parameters()}
        if set(data["fisher"]) - names or set(data["anchor"]) - names:
            raise ValueError("EWC state does not match the model's parameters")
        device = next(vae.parameters()).device
        pen.tasks = int(data["tasks"])
        pen.anchor = {k: v.to(device) for k, v in data["anchor"].items()}
        pen.fisher = {k: v.to(device) for k, v in data["fisher"].items()}
        return pen
