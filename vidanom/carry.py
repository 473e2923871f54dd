"""Old scenes' calibrations carried into the models an update made, without reading their frames.

A scene's calibration says what the models did on its footage: the error, KL and surprise of every
place on its training frames, and the scales, still floor and threshold of its held-out frames. An
update changes both models; a scene it did not learn (and whose frames were not kept, see kept.py)
keeps all of it, so that it is scored with all six components, and the means of its error and KL
statistics follow the β-VAE's drift: the previous and the new β-VAE read the same frames decoded from
the scene's latent Gaussian (what replay feeds the update), and each place's mean moves by as much as
it moved on them (`carried`).

Measured (README, "Scenes in the score"): after a replay update, whose distillation holds the old
scenes where they were, the statistics kept as they were score an old scene almost as well as
statistics measured anew on its frames; after a fine-tuning update, which moves the latent space, kept
means flag several times the false alarms, and moved ones half as many. Moving the spreads as well,
or the LSTM-MDN's surprise and stillness by their drift on clips the previous LSTM-MDN dreams of the
scene, did worse: a model's own samples are where it does best, so any change reads as a loss on them,
and the new LSTM-MDN, trained on such dreams, reads them better than the old one did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import cast

import torch

from .config import ProjectConfig
from .normality import Calibration
from .replay import LatentPrior, PriorReplay
from .scoring import make_scorer
from .vae import BetaVAE, error_map, kl_map, patch_means

DRIFT_SAMPLES, DRIFT_BATCH = 2048, 256  # frames decoded from an old scene's Gaussian that measure the drift


@dataclass(frozen=True)
class Models:
    """What carrying needs of one version: its β-VAE and each scene's latent Gaussian (None: N(0, I))."""

    vae: BetaVAE
    prior: LatentPrior | None


@dataclass(frozen=True)
class Drift:
    """How far an update moved one scene's statistics: per component carried, the mean over places
    of |shift| / spread."""

    scene: str
    moved: dict[str, float]


@torch.no_grad()
def sample_maps(vae: BetaVAE, inputs: torch.Tensor, cfg: ProjectConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The error's patch means (n, P) and the KL per cell (n, cells) of model inputs (n, C, H, W), as
    the score measures them."""
    scorer = make_scorer(vae, None, cfg, torch.device("cpu"))
    vae.eval()
    recon, mu, logvar = vae(inputs, sample=False)
    err = error_map(inputs[:, scorer.recon_from :], recon[:, scorer.recon_from :])
    return patch_means(err, cfg.score.patch, cfg.score.patch_stride), kl_map(mu, logvar).flatten(1)


def replayed(old: Models, scene: str, cfg: ProjectConfig, seed: int) -> torch.Tensor:
    """DRIFT_SAMPLES inputs of the scene as replay makes them: its Gaussian, decoded by the old β-VAE."""
    dim = old.vae.cfg.latent_channels * old.vae.cfg.grid[0] * old.vae.cfg.grid[1]
    prior = (old.prior if old.prior is not None else LatentPrior.standard([scene], dim)).only([scene])
    replay = PriorReplay(old.vae, cfg.frames.channels, prior, motion_range=cfg.frames.motion_plane().range)
    g = torch.Generator().manual_seed(seed)
    return torch.cat([replay(DRIFT_BATCH, g, scene=0) for _ in range(DRIFT_SAMPLES // DRIFT_BATCH)])


def carried(
    cal: Calibration, row: int, old: BetaVAE, new: BetaVAE, inputs: torch.Tensor, cfg: ProjectConfig
) -> tuple[dict[str, torch.Tensor], Drift]:
    """Scene `row`'s error and KL means moved by their shift from the old β-VAE to the new one on the
    inputs (its replayed frames); everything else of its calibration stays as it was measured."""
    before, after = sample_maps(old, inputs, cfg), sample_maps(new, inputs, cfg)
    out, moved = {}, {}
    for name, key, o, n in (("recon", "err", before[0], after[0]), ("kl", "kl", before[1], after[1])):
        shift = (n.double().mean(0) - o.double().mean(0)).to(cal.err_mean.dtype)
        out[f"{key}_mean"] = getattr(cal, f"{key}_mean")[row] + shift
        moved[name] = float((shift.abs() / getattr(cal, f"{key}_std")[row]).mean())
    return out, Drift(cal.scenes[row], moved)


def rows(cal: Calibration, scenes: list[str]) -> dict[str, object]:
    """The fields of cal for these scenes alone, in this order (as Calibration(**rows) takes them)."""
    index = [cal.scenes.index(s) for s in scenes]
    out: dict[str, object] = {}
    for key, value in cal.to_dict().items():
        per_scene = isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == len(cal.scenes)
        out[key] = value[index].clone() if per_scene else value
    out["scenes"] = list(scenes)
    return out


# optional per-scene fields a scene may lack while others have them: its rows are NaN, and it is scored
# without them (frozen, direction: their terms are 0); any other optional field lacked by one part is left out for all
PER_SCENE = ("bg_median", "bg_spread", "bg_quiet", "dir_logp", "dir_speed")


def stacked(parts: list[dict[str, object]]) -> Calibration:
    """One calibration of the scenes of several (rows of one calibration each, see rows); a part
    that lacks an optional field (a calibration from before it) leaves it out for all, or for
    itself alone where the field is one of PER_SCENE."""
    out: dict[str, object] = {"scenes": [s for p in parts for s in cast(list[str], p["scenes"])]}
    for key in parts[0]:
        values = [p.get(key) for p in parts]
        known = [v for v in values if isinstance(v, torch.Tensor) and v.dim() > 0]
        if key == "scenes":
            continue
        if key in PER_SCENE and known:
            values = [_nan_rows(p, known[0]) if v is None else v for p, v in zip(parts, values)]
        if not known:
            out[key] = values[0]
        else:
            out[key] = None if any(v is None for v in values) else torch.cat(cast(list[torch.Tensor], values))
    return Calibration(**out)  # type: ignore[arg-type]


def _nan_rows(part: dict[str, object], like: torch.Tensor) -> torch.Tensor:
    """NaN rows of `like`'s shape for every scene of `part`."""
    return torch.full((len(cast(list[str], part["scenes"])), *like.shape[1:]), math.nan)


def after_update(
    old: Models | None, new: BetaVAE, old_cal: Calibration, fresh: Calibration, scenes: list[str], cfg: ProjectConfig
) -> tuple[Calibration, list[Drift]]:
    """The calibration of every scene in `scenes`, in that order: fresh's rows for the scenes this run
    measured on frames, the others' carried from old_cal from the old β-VAE to `new` (kept as they
    are where old is None: the models did not change)."""
    parts, drifts = [], []
    for i, scene in enumerate(scenes):
        if scene in fresh.scenes:
            parts.append(rows(fresh, [scene]))
        elif scene in old_cal.scenes:
            row = rows(old_cal, [scene])
            if old is not None:
                moved, drift = carried(
                    old_cal,
                    old_cal.scenes.index(scene),
                    old.vae,
                    new,
                    replayed(old, scene, cfg, cfg.train.seed + i),
                    cfg,
                )
                row.update({k: v[None] for k, v in moved.items()})
                drifts.append(drift)
            parts.append(row)
    scalars = {"has_mdn": fresh.has_mdn, "frame_interval": fresh.frame_interval}  # the run's models and footage
    return stacked([{**p, **scalars} for p in parts]), drifts


def without_surprise(cal: Calibration, scenes: list[str]) -> Calibration:
    """cal with the LSTM-MDN's components (nll, still) of these scenes standardised away (an infinite
    scale: they add nothing to the score): their statistics belonged to an LSTM-MDN that a run replaced
    by one fitted anew on another scene (train --stage mdn), which never saw them."""
    index = [cal.scenes.index(s) for s in scenes if s in cal.scenes]
    if not index:
        return cal
    comp_std, comp_low = cal.comp_std.clone(), cal.comp_low.clone()
    comp_std[index, 2] = float("inf")
    comp_low[index, 3] = float("inf")
    return replace(cal, comp_std=comp_std, comp_low=comp_low)


def measured(on: str, frames: int, held_out: int) -> dict[str, object]:
    """What a scene's calibration rests on when it was measured in this run, on "footage" or "kept frames"."""
    return {"on": on, "frames": frames, "held_out": held_out, "updates": 0}


def carried_basis(previous: dict[str, object] | None, drift: Drift, parent: str | None) -> dict[str, object]:
    """What a scene's calibration rests on once carried through one more update: where it was last
    measured (the parent's record; "footage" of an unknown count for a model from before records),
    how many updates carried it since, this update's drift and the drifts' sum, per component."""
    base = dict(previous or {"on": "footage", "frames": None, "held_out": None, "updates": 0})
    if base.get("on") == "carried":  # carried before: what it was measured on stays
        base["on"] = base.get("measured_on", "footage")
    total = dict(base.get("drift_total") or {})  # type: ignore[call-overload]
    for name, moved in drift.moved.items():
        total[name] = round(float(total.get(name, 0.0)) + moved, 3)
    return {
        **base,
        "measured_on": base["on"],
        "on": "carried",
        "updates": int(base.get("updates") or 0) + 1,  # type: ignore[call-overload]
        "since": base.get("since") or parent,
        "drift": {k: round(v, 3) for k, v in drift.moved.items()},
        "drift_total": total,
    }
