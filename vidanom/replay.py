"""Continual learning for the β-VAE: generative replay of old scenes, and EWC as the baseline to beat.

Replay (Wiewel & Yang, ICASSP 2019): before learning a new scene, freeze a copy of the current VAE
and mix its prior samples into every batch, so the new model keeps reconstructing what the old one
could. Chained from scene to scene, each frozen copy speaks for all the scenes before it.
`ReplayDistillation` adds the frozen copy's own outputs on those samples as targets, so the old
scenes also keep their place in latent space.

EWC (Kirkpatrick et al., 2017) instead anchors the weights that mattered, weighted by the diagonal
of the Fisher information. Both plug into `vidanom.fitting.fit_vae` (`extra=` and `penalty=`).
No file access here: checkpoints store `EWCPenalty.to_dict()`, the caller writes it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

from .vae import BetaVAE, vae_loss


@dataclass
class LatentPrior:
    """Where each learned scene lives in latent space: one Gaussian per scene over the whole latent
    grid, fitted to the encoder's mean latents of that scene (an "ex-post" density, Ghosh et al. 2020).

    A β-VAE's latents do not fill N(0, I): on Ped1 (β = 0.1) they spread with std 0.49, so decoded
    N(0, I) samples are smeared scenes, and replaying those taught the new model noise instead of the
    old scene. Sampling each old scene's own Gaussian replays frames that look like that scene, and
    gives every old scene an equal share of the replay however many came before.
    """

    scenes: list[str]
    mean: torch.Tensor  # (S, D) with D = latent_channels · rows · cols, flattened as the grid is
    chol: torch.Tensor  # (S, D, D) lower Cholesky factor of each scene's covariance

    @classmethod
    def standard(cls, scenes: list[str], dim: int) -> LatentPrior:
        """N(0, I) for every scene: the VAE's own prior, for models fitted before priors were kept."""
        return cls(list(scenes), torch.zeros(len(scenes), dim), torch.eye(dim).expand(len(scenes), dim, dim).clone())

    def sample(self, n: int, generator: torch.Generator | None = None, scene: int | None = None) -> torch.Tensor:
        """n latents (n, D): each from a uniformly chosen scene, or all from scene index `scene`."""
        s, d = self.mean.shape
        c = torch.randint(s, (n,), generator=generator) if scene is None else torch.full((n,), scene)
        eps = torch.randn(n, d, 1, generator=generator)
        return self.mean[c] + (self.chol[c] @ eps)[..., 0]

    def only(self, names: list[str]) -> LatentPrior:
        """A copy with the scenes in `names` alone."""
        keep = [i for i, s in enumerate(self.scenes) if s in names]
        return LatentPrior([self.scenes[i] for i in keep], self.mean[keep], self.chol[keep])

    def with_scene(self, name: str, mean: torch.Tensor, chol: torch.Tensor) -> LatentPrior:
        """A copy in which scene `name` is (re)placed last with this Gaussian."""
        keep = [i for i, s in enumerate(self.scenes) if s != name]
        return LatentPrior(
            [self.scenes[i] for i in keep] + [name],
            torch.cat([self.mean[keep], mean[None]]),
            torch.cat([self.chol[keep], chol[None]]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"scenes": list(self.scenes), "mean": self.mean.cpu(), "chol": self.chol.cpu()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentPrior:
        return cls(list(d["scenes"]), d["mean"], d["chol"])


@torch.no_grad()
def fit_gaussian(
    vae: BetaVAE, batches: Iterable[torch.Tensor], ridge: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and Cholesky factor (D, D) of the mean latents of batches of inputs (B, C, H, W),
    accumulated in float64 batch by batch. The ridge (relative to the average variance) keeps the
    factor defined when there are fewer samples than dimensions or a latent never moves."""
    n, s1, s2 = 0, None, None
    for x in batches:
        mu = vae.encode(x)[0].flatten(1).double().cpu()
        s1 = mu.sum(0) if s1 is None else s1 + mu.sum(0)
        s2 = mu.T @ mu if s2 is None else s2 + mu.T @ mu
        n += len(mu)
    if n < 2 or s1 is None or s2 is None:
        raise ValueError("fit_gaussian needs at least two samples")
    mean = s1 / n
    cov = (s2 - n * torch.outer(mean, mean)) / (n - 1)
    cov += torch.eye(len(mean), dtype=cov.dtype) * ridge * max(float(cov.diagonal().mean()), 1e-6)
    return mean.float(), torch.linalg.cholesky(cov).float()


class PriorReplay:
    """Replayed inputs decoded by a frozen copy of a trained VAE: `fit_vae(extra=...)`.

    Latents come from `prior` (the old scenes' fitted Gaussians) or, without one, from N(0, I).
    frame_channels: how many leading input channels are frames in [0, 1] (the rest are motion
    planes in motion_range); samples are clipped to those ranges, since the decoder's linear output
    can overshoot what real inputs ever hold. None leaves samples as decoded.
    """

    def __init__(
        self,
        vae: BetaVAE,
        frame_channels: int | None = None,
        prior: LatentPrior | None = None,
        generator: torch.Generator | None = None,
        out_device: torch.device | str = "cpu",
        motion_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        self.vae = copy.deepcopy(vae).eval().requires_grad_(False)
        self.frame_channels = frame_channels
        self.motion_range = motion_range
        self.prior = prior
        # the default generator of sample() and __call__ (None: torch's global one); fit_vae passes one per step
        self.generator = generator
        self.out_device = torch.device(out_device)  # fit_vae joins replay to CPU batches before moving them

    @torch.no_grad()
    def sample(
        self, n: int, scene: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n latents (n, latent_channels, rows, cols) and the frozen decoder's raw output for them
        (n, C, H, W), both on the frozen model's device (all of prior scene index `scene`, if given)."""
        p = next(self.vae.parameters())
        g = generator if generator is not None else self.generator
        if self.prior is None:
            z = torch.randn(n, self.vae.cfg.latent_channels, *self.vae.cfg.grid, generator=g)
        else:
            z = self.prior.sample(n, g, scene).view(n, self.vae.cfg.latent_channels, *self.vae.cfg.grid)
        z = z.to(p.device)
        return z, self.vae.decode(z)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded samples clipped to the range of real inputs (see the class docstring)."""
        if self.frame_channels is None:
            return x
        k = self.frame_channels
        return torch.cat([x[:, :k].clamp(0.0, 1.0), x[:, k:].clamp(*self.motion_range)], 1)

    def __call__(self, n: int, generator: torch.Generator | None = None, scene: int | None = None) -> torch.Tensor:
        """n samples (n, C, H, W) on out_device (all of prior scene index `scene`, if given)."""
        return self.clip(self.sample(n, scene, generator)[1]).to(self.out_device)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, mu_ref: torch.Tensor, logvar_ref: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(mu_ref, exp(logvar_ref))) summed over all but the first dim: (B, ...) → (B,)."""
    kl = 0.5 * (logvar_ref - logvar + (logvar.exp() + (mu - mu_ref).pow(2)) / logvar_ref.exp() - 1.0)
    return kl.flatten(1).sum(1)


class ReplayDistillation:
    """Keep the new VAE doing what the frozen one did on the old scenes: `fit_vae(penalty=...)`.

    Replaying decoded samples as training inputs teaches the new model to reconstruct them, but
    through whatever latents it likes, so the latent space, and with it the next replay, drifts a
    little with every update, and a scene learned many updates ago comes back blurred. This term
    pins both halves in function space (as Ramapuram et al.'s "consistency" term does for the
    encoder) on n fresh replayed samples per step:
      decoder: the new decoder must turn the old scene's latent z into the old decoder's output, and
      encoder: its posterior on that output must match the old encoder's, KL(q_new || q_old),
    each summed per image like `vae_loss`, so a weight of 1 counts a replayed image like a real one.
    `update` weighs the encoder's half train.replay_distill_encoder times the decoder's (< 1): with
    the decoder held, a replayed frame's latent stays near where the old decoder made it from, and
    tying the new posterior to the old one at full weight cost replay on the MNIST digits.
    """

    def __init__(self, replay: PriorReplay, vae: BetaVAE, n: int, decoder: float = 1.0, encoder: float = 1.0) -> None:
        self.replay, self.vae, self.n = replay, vae, n
        self.decoder, self.encoder = float(decoder), float(encoder)

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        z, target = self.replay.sample(self.n, generator=generator)
        x = self.replay.clip(target)  # the encoders see what replay feeds them
        with torch.no_grad():
            mu_old, logvar_old = self.replay.vae.encode(x)
        dev = next(self.vae.parameters()).device  # the frozen copy may live elsewhere (fit_vae moves the live one)
        z, target, x, mu_old, logvar_old = (t.to(dev) for t in (z, target, x, mu_old, logvar_old))
        loss = self.decoder * (self.vae.decode(z) - target).pow(2).flatten(1).sum(1).mean()
        if self.encoder:
            mu, logvar = self.vae.encode(x)
            loss = loss + self.encoder * gaussian_kl(mu, logvar, mu_old, logvar_old).mean()
        return loss


def carry_prior(
    replay: PriorReplay,
    new_vae: BetaVAE,
    samples: int = 2048,
    batch: int = 256,
    generator: torch.Generator | None = None,
) -> LatentPrior:
    """The old scenes' Gaussians mapped into the latent space of `new_vae` (trained from the old one):
    each scene's samples, decoded by the old decoder in `replay`, are encoded by the new encoder."""
    if replay.prior is None:
        raise ValueError("carry_prior needs the old scenes' prior")
    device = next(new_vae.parameters()).device
    was_training = new_vae.training
    new_vae.eval()
    fits = [
        fit_gaussian(
            new_vae, (replay(min(batch, samples - s), generator, scene=i).to(device) for s in range(0, samples, batch))
        )
        for i in range(len(replay.prior.scenes))
    ]
    new_vae.train(was_training)
    return LatentPrior(list(replay.prior.scenes), torch.stack([m for m, _ in fits]), torch.stack([c for _, c in fits]))


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


def replayed_count(new: int, share: float) -> int:
    """How many replayed samples to put beside `new` new ones so that they make up `share` of the
    whole: round(new·s/(1−s)). Also the count of frames dreamed beside a new scene's frames."""
    return int(round(new * share / (1.0 - share))) if share > 0 else 0


def batch_parts(batch_size: int, share: float) -> tuple[int, int]:
    """(new, replayed) frames of a batch of `batch_size` of which replayed samples make up `share`.

    The batch keeps its size. A batch of B new frames with B·s/(1−s) replayed ones beside them, as
    updates had it before, grows (k+1)-fold with k old scenes: each optimiser step then carries every
    old scene at once, and the old scenes got k+1 times fewer steps than joint training gives them
    (on the MNIST digits benchmark, replay fell 0.11 AUROC below joint training after seven tasks).
    """
    new = max(1, round(batch_size * (1.0 - share))) if share > 0 else batch_size
    return new, batch_size - new if share > 0 else 0


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

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The penalty on the live weights (generator: unused; fit_vae hands every penalty one)."""
        p = next(self.vae.parameters())
        total = torch.zeros((), device=p.device, dtype=p.dtype)
        for k, v in self.vae.named_parameters():
            if k in self.fisher:
                a, f = self.anchor[k].to(v), self.fisher[k].to(v)
                total = total + (f * (v - a).pow(2)).sum()
        return 0.5 * self.strength * total

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers on the CPU, loadable with torch.load(weights_only=True)."""
        return {
            "strength": self.strength,
            "accumulate": self.accumulate,
            "tasks": self.tasks,
            "anchor": {k: v.cpu() for k, v in self.anchor.items()},
            "fisher": {k: v.cpu() for k, v in self.fisher.items()},
        }

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
