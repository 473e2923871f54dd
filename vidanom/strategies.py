"""How `update` learns a new scene without forgetting the old ones: the three strategies, on models.

    replay    (Wiewel & Yang, ICASSP 2019) a frozen copy of the previous β-VAE decodes samples of each
              old scene's latent Gaussian into a share of every batch, and is distilled on them (the new
              model must do what the old one did there); clips dreamed by the previous LSTM-MDN join
              the new scene's clips for the LSTM-MDN
    ewc       the diagonal Fisher information of the scenes learned anchors the β-VAE's weights
    finetune  plain continued training (the lower bound)

`plan` gives the hooks the fitting loops take for the new scene; `consolidate`, once it is learned,
what the next update needs: every scene's latent Gaussian and the EWC state. No project, no files:
`vidanom update` and benchmarks/continual_digits.py run exactly this code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import ProjectConfig
from .dream import dream_clips
from .errors import NotTrainedError, VidanomError
from .fitting import Penalty
from .mdn import LSTMMDN
from .replay import (
    EWCPenalty,
    LatentPrior,
    PriorReplay,
    ReplayDistillation,
    carry_prior,
    fisher_diagonal,
    batch_parts,
    fit_gaussian,
    replay_share,
    replayed_count,
)
from .vae import BetaVAE

STRATEGIES = ("replay", "ewc", "finetune")
DREAM_LENGTH = 64  # frames per dreamed clip


@dataclass
class Hooks:
    """What the fitting of a new scene gets from the chosen strategy."""

    strategy: str
    old_scenes: PriorReplay | None = None  # a frozen copy of the previous β-VAE with the old scenes' Gaussians
    extra: PriorReplay | None = None  # replayed inputs for every β-VAE batch (fit_vae's `extra`)
    share: float = 0.0  # the share of every batch they make up
    penalty: Penalty | None = None  # EWC, or replay's distillation (fit_vae's `penalty`)
    keeps_latents: bool = False  # the penalty holds the old scenes where they were in latent space
    dreams: list[np.ndarray] = field(default_factory=list)  # dreamed clips of old scenes, for the LSTM-MDN
    lineage: dict[str, Any] = field(default_factory=dict)  # what version.json records of the strategy


def plan(
    strategy: str,
    vae: BetaVAE,
    *,
    mdn: LSTMMDN | None,
    prior: LatentPrior | None,
    ewc: dict[str, Any] | None,
    cfg: ProjectConfig,
    scene: str,
    new_frames: int,
    replay_ratio: float | None = None,
    dreams: bool = True,
) -> Hooks:
    """The hooks for learning `scene` from `new_frames` frames with the model (vae, mdn) of the
    scenes in `prior` (a scene learned again is not replayed). vae is the live model to be trained:
    the frozen copy is taken here, before it changes."""
    if strategy not in STRATEGIES:
        raise VidanomError(f"--strategy must be one of {', '.join(STRATEGIES)}, not '{strategy}'")
    if replay_ratio is not None and not 0 <= replay_ratio < 1:
        raise VidanomError("--replay-ratio must lie in [0, 1)")
    others = [s for s in (prior.scenes if prior is not None else []) if s != scene]
    hooks = Hooks(strategy)
    if others and prior is not None:
        hooks.old_scenes = PriorReplay(
            vae, cfg.frames.channels, prior.only(others), motion_range=cfg.frames.motion_plane().range
        )
    if strategy == "replay":
        share = 0.0 if not others else replay_ratio if replay_ratio is not None else replay_share(len(others))
        _plan_replay(hooks, vae, mdn, cfg, share, new_frames if dreams else 0)
    elif strategy == "ewc":
        if ewc is None:
            raise NotTrainedError("the model has no stored Fisher information; train it again first")
        hooks.penalty = ewc_penalty(vae, ewc, cfg)
    return hooks


def _plan_replay(
    hooks: Hooks, vae: BetaVAE, mdn: LSTMMDN | None, cfg: ProjectConfig, share: float, new_frames: int
) -> None:
    """Replay's hooks: the old scenes' samples in every batch, their distillation, and dreamed clips
    for the LSTM-MDN (as many frames beside the new scene's as the share asks)."""
    hooks.extra, hooks.share = hooks.old_scenes, share
    hooks.lineage["replay_share"] = share
    if share <= 0 or hooks.old_scenes is None:
        return
    w, w_enc = cfg.train.replay_distill, cfg.train.replay_distill * cfg.train.replay_distill_encoder
    if w > 0:
        n = max(1, batch_parts(cfg.train.batch_size, share)[1])  # as many as fit_vae replays
        hooks.penalty, hooks.keeps_latents = ReplayDistillation(hooks.old_scenes, vae, n, w, w_enc), True
        hooks.lineage["replay_distill"] = w
        hooks.lineage["replay_distill_encoder"] = cfg.train.replay_distill_encoder
    if new_frames and mdn is not None:
        hooks.dreams = dream_clips(
            vae,
            mdn,
            replayed_count(new_frames, share),
            DREAM_LENGTH,
            cfg.frames.channels,
            hooks.old_scenes.prior,
            cfg.train.dream_temperature,
            cfg.train.seed,
        )


def ewc_penalty(vae: BetaVAE, ewc: dict[str, Any] | None, cfg: ProjectConfig) -> EWCPenalty:
    """The EWC penalty on vae: the stored Fisher information and anchor (if any), at the config's strength."""
    pen = EWCPenalty.from_dict(vae, ewc) if ewc else EWCPenalty(vae, cfg.train.ewc_strength)
    pen.strength = float(cfg.train.ewc_strength)  # λ is a setting of this run, not of the model stored
    return pen


def consolidate(
    hooks: Hooks | None,
    vae: BetaVAE,
    inputs: Iterable[torch.Tensor],
    fisher_inputs: Iterable[torch.Tensor],
    scene: str,
    ewc: dict[str, Any] | None,
    cfg: ProjectConfig,
) -> tuple[LatentPrior, dict[str, Any]]:
    """After `scene` is learned: every scene's latent Gaussian (the new one fitted to the encoder's
    mean latents of `inputs`; the old ones kept where distillation held them, else carried into the
    moved latent space: decoded by the old model, encoded by the new), and the EWC state with this
    scene's Fisher information (estimated on `fisher_inputs`) folded in."""
    vae.eval()
    new = fit_gaussian(vae, inputs)
    old_scenes = hooks.old_scenes if hooks is not None else None
    if old_scenes is None or old_scenes.prior is None:
        old = LatentPrior.standard([], len(new[0]))
    else:
        generator = torch.Generator().manual_seed(cfg.train.seed)
        old = (
            old_scenes.prior
            if hooks is not None and hooks.keeps_latents
            else carry_prior(old_scenes, vae, generator=generator)
        )
    pen = ewc_penalty(vae, ewc, cfg)
    pen.consolidate(fisher_diagonal(vae, fisher_inputs, vae.cfg.beta))
    return old.with_scene(scene, *new), pen.to_dict()
