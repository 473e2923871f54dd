"""What the commands do, as library functions on a Project: extract, train, score, plot, evaluate.

They take paths and configs, report progress through a callback and return results; they raise
VidanomError subclasses and never print.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache, fsutil, metrics, plot
from .cache import ClipMeta
from .config import ProjectConfig
from .data import Split, Timing
from .dream import dream_clips
from .errors import ConfigError, LabelsError, NotTrainedError, ProjectError, VidanomError
from .inference import for_inference
from .mdn import LSTMMDN
from .project import Project
from .replay import (EWCPenalty, LatentPrior, PriorReplay, ReplayDistillation, carry_prior, fisher_diagonal,
                     fit_gaussian, replay_share, replayed_count)
from .calibration import Calibration, Footage, calibrate, patch_error_stats
from .scoring import iter_scores, make_scorer, segments
from .fitting import Progress, build_mdn, build_vae, encode, fit_mdn, fit_vae, load_checkpoint, no_progress
from .vae import BetaVAE, patch_means
from .video import DecodeReport, Source, find_sources, first_frame_size, iter_timed_chunks

DEFAULT_SCENE = "default"
EWC_SAMPLES = 256  # training frames the Fisher information is estimated on
PRIOR_SAMPLES = 4096  # training frames a scene's latent Gaussian is fitted to
DRIFT_SAMPLES, DRIFT_BATCH = 2048, 256  # replayed samples per old scene that measure how its errors moved
DREAM_LENGTH = 64  # frames per dreamed clip


# -- extract -----------------------------------------------------------------------------------------

def extract(project: Project, paths: list[Path], scene: str = DEFAULT_SCENE,
            progress: Progress = no_progress) -> list[tuple[ClipMeta, bool]]:
    """Cache the frames of every clip named by paths; clips already cached are not decoded again."""
    if not re.fullmatch(r"[\w.-]+", scene):  # it becomes a CSV field and a table cell
        raise VidanomError(f"scene name '{scene}' may hold only letters, digits, '_', '.' and '-'")
    out = []
    sources = find_sources(paths)
    if sources and not project.config.frames.width:  # the first clip sets the frame size from its aspect ratio
        project.set_frames(project.config.frames.resolved(*first_frame_size(sources[0], project.config.frames)))
    for i, src in enumerate(sources):
        done = [0]

        def on_frames(n: int, i: int = i, src: Source = src) -> None:
            done[0] += n
            progress("extract", i, len(sources), {"clip": src.name, "frames": done[0]})

        out.append(cache.extract(project.cache_dir, src, project.config.frames, scene, on_frames))
        progress("extract", i + 1, len(sources), {"clip": src.name, "frames": done[0]})
    return out


# -- train -------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    version: str
    clips: int
    frames: int
    seconds: float
    vae: dict[str, float] = field(default_factory=dict)
    mdn: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.0
    scene: str = ""
    psnr: float | None = None  # of the reconstructed held-out frames, in dB
    false_alarms: float | None = None  # the share of new normal frames expected over the threshold
    warnings: list[str] = field(default_factory=list)


def load_models(version_dir: Path) -> tuple[BetaVAE, LSTMMDN | None, Calibration]:
    """The VAE, LSTM-MDN (if fitted) and calibration of a model version."""
    try:
        vae = build_vae(load_checkpoint(version_dir / "vae.pt"))
        mdn = build_mdn(load_checkpoint(version_dir / "mdn.pt")) if (version_dir / "mdn.pt").exists() else None
        cal = Calibration.from_dict(load_checkpoint(version_dir / "calibration.pt"))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # readable files of the wrong content
        raise ProjectError(f"model {version_dir.name} is damaged ({type(exc).__name__}: {exc}); "
                           "train again") from exc
    return vae, mdn, cal


def current_models(project: Project) -> tuple[Path, tuple[BetaVAE, LSTMMDN | None, Calibration]]:
    """The current model version's folder and its models, checked against the project's config."""
    version = project.require_version()
    models = load_models(version)
    _check_arch(project, models[0])
    sc, cfg = project.config.score, project.config.frames
    positions = patch_means(torch.zeros(1, cfg.height, cfg.width), sc.patch, sc.patch_stride).shape[1]
    if models[2].err_mean.shape[-1] != positions:
        raise ConfigError(f"model {version.name} was calibrated on other patches than score.patch = {sc.patch}, "
                          f"score.patch_stride = {sc.patch_stride} give; set them back or train again")
    return version, models


def _check_arch(project: Project, vae: BetaVAE) -> None:
    if vae.cfg != project.config.vae_config():
        raise ConfigError("the project's config no longer matches its trained model (frame size, channels or "
                          "architecture changed); train from scratch with 'vidanom train --stage all'")


def _training_clips(project: Project, scene: str) -> list[ClipMeta]:
    metas = cache.clips(project.cache_dir, project.config.frames, scene)
    if not metas:
        raise VidanomError(f"no training clips for scene '{scene}'; pass videos: 'vidanom train VIDEO...'")
    return metas


@dataclass
class Plan:
    """What one train/update run fits, from what, and how (the hooks of the chosen strategy)."""

    stage: str  # vae, mdn or all
    lineage: dict[str, Any]
    vae: BetaVAE | None = None  # start from these weights (update), or None for a new model
    mdn: LSTMMDN | None = None
    vae_extra: Any = None  # replayed inputs for every VAE batch
    extra_share: float = 0.0
    penalty: Any = None  # EWC, or replay's distillation
    keeps_latents: bool = False  # the penalty holds old scenes' latents where they were: no need to carry them
    ewc_prior: dict[str, Any] | None = None  # the parent's EWC state, to fold this scene's Fisher into
    dreams: list[np.ndarray] = field(default_factory=list)  # dreamed clips of old scenes
    calibration: Calibration | None = None  # the parent's, whose old scenes' statistics carry over
    old_scenes: Any = None  # PriorReplay of the frozen parent: its old scenes' latents, to carry over


def _fit_vae_stage(project: Project, plan: Plan, footage: Footage, device: torch.device, resume: bool,
                   progress: Progress) -> tuple[BetaVAE, dict[str, float]]:
    cfg, part = project.config, project.partial_dir
    if plan.stage == "mdn":
        if plan.vae is None:
            raise NotTrainedError("no trained VAE to fit the LSTM-MDN on; run 'vidanom train --stage vae' first")
        return plan.vae, {}
    start = load_checkpoint(part / "vae.pt") if resume and (part / "vae.pt").exists() else None
    init = torch.Generator().manual_seed(cfg.train.seed)  # the initial weights, too, follow the seed
    vae = plan.vae if plan.vae is not None else _seeded(lambda: BetaVAE(cfg.vae_config()), init)
    stats = fit_vae(vae, footage.clips, footage.split, cfg, device, progress, part / "vae.pt", start,
                    plan.vae_extra, plan.penalty, plan.extra_share, timing=footage.timing)
    return vae, stats


def _seeded(make: Any, generator: torch.Generator) -> Any:
    """make(), with torch's global random state (which initialises weights) set from generator and
    restored afterwards: the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        return make()


def _fit_mdn_stage(project: Project, plan: Plan, vae: BetaVAE, footage: Footage, device: torch.device,
                   resume: bool, progress: Progress) -> tuple[LSTMMDN | None, dict[str, float]]:
    cfg, part = project.config, project.partial_dir
    if plan.stage == "vae":
        return None, {}
    init = torch.Generator().manual_seed(cfg.train.seed + 1)
    mdn = plan.mdn if plan.mdn is not None else _seeded(lambda: LSTMMDN(cfg.mdn_config()), init)
    start = load_checkpoint(part / "mdn.pt") if resume and (part / "mdn.pt").exists() else None
    # dreams are encoded by the new encoder, like real clips: that maps them into the new latent space
    fast = for_inference(vae, device)
    timing, motion = footage.timing, cfg.frames.motion_plane()
    latents = [encode(fast, c, motion, device, None if timing.times is None else timing.times[i], timing.ref_dt)
               for i, c in enumerate(footage.clips)]
    dreamed = [encode(fast, d, motion, device) for d in plan.dreams]
    train = [latents[c][:, a:b] for c, a, b in footage.split.runs()] + dreamed
    held = [latents[c][:, a:b] for c, a, b in footage.split.runs(held=True)]
    stats = fit_mdn(mdn, train, held, cfg, device, progress, part / "mdn.pt", start)
    return mdn, stats


def _follow_drift(cfg: ProjectConfig, plan: Plan, vae: BetaVAE, cal: Calibration) -> Calibration:
    """Move each old scene's reconstruction statistics by as much as the model's error on that scene's
    replayed samples moved from the previous model to this one.

    The stored statistics describe the previous model's errors; an update changes them even where it
    still reconstructs the old scene (on Ped1 → night plaza, scene-A statistics recomputed on real
    scene-A frames gave 0.805 AUROC where the stored ones gave 0.76-0.78; shifted this way, 0.79-0.80).
    """
    if plan.old_scenes is None:
        return cal
    for i, scene in enumerate(plan.old_scenes.prior.scenes):
        if scene not in cal.scenes:
            continue
        g = torch.Generator().manual_seed(cfg.train.seed + i)
        samples = [plan.old_scenes(DRIFT_BATCH, g, scene=i) for _ in range(DRIFT_SAMPLES // DRIFT_BATCH)]
        (old_mean, old_std), (new_mean, new_std) = (patch_error_stats(v, samples, cfg)
                                                    for v in (plan.old_scenes.vae, vae))
        row = cal.scenes.index(scene)
        cal.err_mean[row] += new_mean - old_mean
        cal.err_std[row] *= new_std / old_std
    return cal


def _sample_inputs(cfg: ProjectConfig, clips: list[np.ndarray], split: Split, count: int,
                   device: torch.device) -> Iterator[torch.Tensor]:
    """Model inputs of `count` random training frames, one batch per clip they fall in."""
    from .data import gather
    rng = np.random.default_rng(cfg.train.seed)
    index = split.train_index()
    rows = index[rng.permutation(len(index))[:count]]
    return (gather(clips[c], np.sort(rows[rows[:, 0] == c, 1]), cfg.frames.motion_plane()).to(device)
            for c in np.unique(rows[:, 0]))


def _ewc_state(project: Project, plan: Plan, vae: BetaVAE, clips: list[np.ndarray], split: Split,
               device: torch.device) -> dict[str, Any]:
    """Fold the diagonal Fisher of the scene just learned into the EWC state, for a later update."""
    cfg = project.config
    pen = (EWCPenalty.from_dict(vae, plan.ewc_prior) if plan.ewc_prior
           else EWCPenalty(vae, cfg.train.ewc_strength))
    pen.consolidate(fisher_diagonal(vae, _sample_inputs(cfg, clips, split, EWC_SAMPLES, device), vae.cfg.beta))
    return pen.to_dict()


def _latent_prior(project: Project, plan: Plan, vae: BetaVAE, clips: list[np.ndarray], split: Split,
                  device: torch.device) -> LatentPrior:
    """The scene just learned as a Gaussian in latent space, beside the old scenes' Gaussians: what
    the next update replays. Without distillation the latent space moved, so the old Gaussians are
    carried into it (decoded by the old model, encoded by the new); with it they stay where they were,
    which on the digits benchmark forgot less than carrying them through every update (each carry
    blurs the replayed scene a little more)."""
    vae.eval()
    new = fit_gaussian(vae, _sample_inputs(project.config, clips, split, PRIOR_SAMPLES, device))
    if plan.old_scenes is None:
        old = LatentPrior.standard([], len(new[0]))
    else:
        old = plan.old_scenes.prior if plan.keeps_latents else carry_prior(plan.old_scenes, vae)
    return old.with_scene(plan.lineage["scene"], *new)


def _stage_vae_state(project: Project, plan: Plan, vae: BetaVAE, clips: list[np.ndarray], split: Split,
                     device: torch.device, staging: Path) -> None:
    """Write the EWC state and the scenes' latent Gaussians of the new version."""
    if plan.stage != "mdn":
        fsutil.save_torch(staging / "ewc.pt", _ewc_state(project, plan, vae, clips, split, device))
        fsutil.save_torch(staging / "prior.pt", _latent_prior(project, plan, vae, clips, split, device).to_dict())
        return
    parent = project.require_version()  # the VAE is the parent's, and so are its Fisher and Gaussians
    for name in ("ewc.pt", "prior.pt"):
        if (parent / name).exists():
            fsutil.save_torch(staging / name, load_checkpoint(parent / name))


def _footage(project: Project, metas: list[ClipMeta], progress: Progress) -> Footage:
    """The cached clips of metas, with their frame rates and which frames are held out."""
    tc = project.config.train
    clips = [cache.load(project.cache_dir, m) for m in metas]
    times = [cache.load_times(project.cache_dir, m) for m in metas]
    fps = [m.fps / m.stride for m in metas]
    split = Split.blocks([len(c) for c in clips], fps, tc.holdout, tc.block_seconds)
    return Footage(clips, fps, split, Timing(times, usual_interval(times)), progress=progress)


def usual_interval(times: list[np.ndarray]) -> float | None:
    """The median of the intervals between consecutive frames over all clips (None if none)."""
    steps = np.concatenate([np.diff(t) for t in times]) if times else np.zeros(0)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else None


def _model_file(ckpt_path: Path, model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    """What a version keeps of a stage's checkpoint: the architecture and the final weights."""
    return {"config": load_checkpoint(ckpt_path)["config"] if ckpt_path.exists() else asdict(model.cfg),
            "model": {k: v.cpu() for k, v in model.state_dict().items()}, **extra}


def fit_and_publish(project: Project, metas: list[ClipMeta], plan: Plan, device: torch.device,
                    resume: bool, progress: Progress) -> TrainResult:
    """Fit the planned stages into models/.partial, calibrate, and publish as a new version.

    The VAE learns the real clips (plus replay); the LSTM-MDN also sees the dreamed clips of old
    scenes. The calibration of this scene comes from its real clips; old scenes keep theirs.
    """
    cfg, t0, part = project.config, time.time(), project.partial_dir
    project.begin_run({**{k: plan.lineage.get(k) for k in ("strategy", "scene", "parent", "replay_share")},
                       "stage": plan.stage, "clips": [m.key for m in metas], "seed": cfg.train.seed,
                       "train": asdict(cfg.train), "vae": asdict(cfg.vae_config()), "mdn": asdict(cfg.mdn_config())},
                      resume)
    footage = _footage(project, metas, progress)
    real, split = footage.clips, footage.split
    result = TrainResult("", len(metas), sum(m.frames for m in metas), 0.0, scene=plan.lineage["scene"])
    vae, result.vae = _fit_vae_stage(project, plan, footage, device, resume, progress)
    mdn, result.mdn = _fit_mdn_stage(project, plan, vae, footage, device, resume, progress)
    cal = calibrate(vae, mdn, footage, cfg, device, plan.lineage["scene"])
    if plan.calibration is not None:  # old scenes keep the statistics they were learned with
        cal = _follow_drift(cfg, plan, vae, cal.merged(plan.calibration, plan.lineage["scenes"]))
    result.threshold, result.warnings = cal.threshold, footage.warnings
    result.false_alarms = float(cal.false_alarms.max()) if cal.false_alarms is not None else None
    result.psnr = result.vae.get("psnr") if result.vae else plan.lineage.get("psnr")
    staging = project.new_staging_dir()
    fsutil.save_torch(staging / "vae.pt", _model_file(part / "vae.pt", vae))
    if mdn is not None:
        fsutil.save_torch(staging / "mdn.pt", _model_file(part / "mdn.pt", mdn))
    _stage_vae_state(project, plan, vae, real, split, device, staging)
    fsutil.save_torch(staging / "calibration.pt", cal.to_dict())
    result.seconds = time.time() - t0
    info = {**plan.lineage, "stage": plan.stage, "clips": [m.name for m in metas], "frames": result.frames,
            "seconds_of_footage": round(footage.seconds, 1), "held_out_frames": int(len(split.index(held=True))),
            "dreamed_frames": sum(len(d) for d in plan.dreams), "has_mdn": mdn is not None,
            "threshold": cal.threshold, "expected_false_alarms": result.false_alarms, "psnr": result.psnr,
            "warnings": result.warnings, "train_seconds": round(result.seconds, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "vae": result.vae, "mdn": result.mdn}
    result.version = project.publish_version(staging, info)
    shutil.rmtree(part, ignore_errors=True)
    return result


def train(project: Project, paths: list[Path], stage: str = "all", device: torch.device | None = None,
          resume: bool = False, scene: str = DEFAULT_SCENE, progress: Progress = no_progress) -> TrainResult:
    """Extract new clips, then fit the β-VAE and/or LSTM-MDN on every cached clip of the scene."""
    device = device or torch.device("cpu")
    if paths:
        extract(project, paths, scene, progress)
    metas = _training_clips(project, scene)
    parent = project.current_version()
    plan = Plan(stage, {"scene": scene, "scenes": [scene], "parent": parent, "strategy": "train"})
    if stage == "mdn":
        version = project.require_version()
        plan.vae, _, plan.calibration = load_models(version)
        _check_arch(project, plan.vae)
        prev = json.loads((version / "version.json").read_text())
        plan.lineage.update(scenes=prev.get("scenes", [scene]), vae_from=parent, psnr=prev.get("psnr"))
    return fit_and_publish(project, metas, plan, device, resume, progress)


STRATEGIES = ("replay", "ewc", "finetune")


def _plan_replay(cfg: ProjectConfig, plan: Plan, share: float, dream_frames: int) -> None:
    """Replay's hooks: the old scenes' samples in every VAE batch, their distillation, and dreamed
    clips for the LSTM-MDN (with as many frames beside the new scene's `dream_frames` as the share asks)."""
    plan.vae_extra, plan.extra_share = plan.old_scenes, share
    plan.lineage["replay_share"] = share
    if share <= 0:
        return
    if cfg.train.replay_distill > 0:
        w, n = cfg.train.replay_distill, max(1, replayed_count(cfg.train.batch_size, share))  # as fit_vae replays
        plan.penalty, plan.keeps_latents = ReplayDistillation(plan.old_scenes, plan.vae, n, w, w), True
        plan.lineage["replay_distill"] = w
    if dream_frames and plan.mdn is not None:
        plan.dreams = dream_clips(plan.vae, plan.mdn, replayed_count(dream_frames, share), DREAM_LENGTH,
                                  cfg.frames.channels, plan.old_scenes.prior, cfg.train.dream_temperature,
                                  cfg.train.seed)


def update(project: Project, paths: list[Path], scene: str | None = None, strategy: str = "replay",
           replay_ratio: float | None = None, device: torch.device | None = None, resume: bool = False,
           progress: Progress = no_progress, dreams: bool = True) -> TrainResult:
    """Learn a new normal scene from `paths` without reading earlier scenes' frames.

    replay: the frozen previous VAE decodes samples of its old scenes' latent Gaussians into a share
    of every VAE batch, and clips dreamed by the frozen previous LSTM-MDN join the new scene's clips
    for the LSTM-MDN (dreams=False leaves them out, to measure what they add); ewc: the stored
    Fisher anchors the VAE's weights; finetune: neither. Old scenes keep their score statistics.
    """
    if strategy not in STRATEGIES:
        raise VidanomError(f"--strategy must be one of {', '.join(STRATEGIES)}, not '{strategy}'")
    if replay_ratio is not None and not 0 <= replay_ratio < 1:
        raise VidanomError("--replay-ratio must lie in [0, 1)")
    device = device or torch.device("cpu")
    version = project.require_version()
    vae, mdn, parent_cal = load_models(version)
    _check_arch(project, vae)
    prev = json.loads((version / "version.json").read_text())
    old = list(dict.fromkeys(prev.get("scenes", [prev.get("scene", DEFAULT_SCENE)])))
    scene = scene or f"scene{len(old) + 1}"
    if paths:
        extract(project, paths, scene, progress)
    metas = _training_clips(project, scene)
    cfg = project.config
    plan = Plan("all" if mdn is not None else "vae", {
        "scene": scene, "scenes": old + [s for s in [scene] if s not in old], "parent": version.name,
        "strategy": strategy}, vae=vae, mdn=mdn, calibration=parent_cal)
    plan.ewc_prior = load_checkpoint(version / "ewc.pt") if (version / "ewc.pt").exists() else None
    prior = (LatentPrior.from_dict(load_checkpoint(version / "prior.pt")) if (version / "prior.pt").exists()
             else LatentPrior.standard(old, vae.cfg.latent_channels * vae.cfg.grid[0] * vae.cfg.grid[1]))
    others = [s for s in prior.scenes if s != scene]  # a scene learned again is not replayed
    plan.old_scenes = (PriorReplay(vae, cfg.frames.channels, prior.only(others),
                                   motion_range=cfg.frames.motion_plane().range) if others else None)
    if strategy == "replay":  # nothing to replay when the only scene learned is learned again
        share = 0.0 if not others else replay_ratio if replay_ratio is not None else replay_share(len(others))
        _plan_replay(cfg, plan, share, sum(m.frames for m in metas) if dreams else 0)
    elif strategy == "ewc":
        if plan.ewc_prior is None:
            raise NotTrainedError(f"model {version.name} has no stored Fisher information; train it again first")
        plan.penalty = EWCPenalty.from_dict(vae, plan.ewc_prior)
    return fit_and_publish(project, metas, plan, device, resume, progress)


# -- score -------------------------------------------------------------------------------------------

@dataclass
class ClipScores:
    name: str
    fps: float
    frames: int
    threshold: float
    version: str
    segments: list[dict[str, Any]]
    peak: float
    csv: Path
    summary: Path
    plot: Path
    warning: str | None = None


def _score_arrays(project: Project, src: Source, models: tuple, device: torch.device,
                  progress: Progress) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, DecodeReport]:
    """Components (n, 3), best scene indices (n,), smoothed scores (n,) and times (n,) in seconds of
    one clip's frames, scored while it decodes.

    A producer thread decodes the next chunks (PyAV releases the GIL) while this one runs the
    models on the current chunk; the queue between them holds a few chunks, so memory does not
    grow with the clip. Only a few floats per frame are kept.
    """
    from .inference import decoding_threads, scoring_threads, torch_threads
    from .prefetch import prefetch
    vae, mdn, cal = models
    cfg = project.config
    scorer = make_scorer(for_inference(vae, device), mdn.to(device).eval() if mdn else None, cfg, device,
                         cal.frame_interval)
    report = DecodeReport()
    comps, scenes, scores, times, done = [], [], [], [], 0
    chunks = prefetch(iter_timed_chunks(src, cfg.frames, cfg.score.batch_size, report, threads=decoding_threads()),
                      depth=3, name=f"vidanom-decode {src.name}")

    def timed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for frames, t in chunks:
            times.append(t)
            yield frames, t

    try:
        with torch_threads(scoring_threads(device)):
            for comp, scene, score in iter_scores(scorer, timed(), cal, cfg.score):
                comps.append(comp.numpy())
                scenes.append(scene.numpy())
                scores.append(score.numpy())
                done += len(score)
                progress(f"score {src.name}", done, 0, {})
    finally:
        chunks.close()  # on an error or Ctrl-C: stop the decoding thread and close the file
    return np.concatenate(comps), np.concatenate(scenes), np.concatenate(scores), np.concatenate(times), report


def _write_csv(path: Path, comps: np.ndarray, scenes: list[str], scores: np.ndarray, flags: np.ndarray,
               times: np.ndarray) -> None:
    """One row per frame, as csv.writer would write it (\\r\\n line ends; scene names are checked
    to need no quoting). times: (n,) seconds."""
    header = "frame,time,recon,kl,nll,scene,score,anomalous\r\n"
    n = len(scores)
    nll = ["" if v != v else f"{v:.5g}" for v in comps[:, 2].tolist()]  # NaN (v != v): an empty field
    rows = zip(range(n), times.tolist(), comps[:, 0].tolist(), comps[:, 1].tolist(), nll,
               scenes, scores.tolist(), flags.astype(np.int64).tolist())
    fsutil.write_text(path, header + "".join(map("%d,%.3f,%.5g,%.5g,%s,%s,%.5g,%d\r\n".__mod__, rows)))


def _score_warning(report: DecodeReport, frames: int, has_mdn: bool, warmup: int) -> str | None:
    """What the user should know about a clip that scored, but not quite as a whole clip does."""
    notes = []
    if report.error:
        notes.append(f"decoding stopped after {report.frames} frames: {report.error}")
    if report.skipped:
        notes.append(f"{len(report.skipped)} unreadable image(s) skipped, e.g. {report.skipped[0]}")
    if has_mdn and frames <= warmup:
        notes.append(f"only {frames} frame(s), within the LSTM-MDN's warm-up of {warmup}: "
                     "scored without its temporal (nll) part")
    return "; ".join(notes) or None


def score(project: Project, path: Path, device: torch.device | None = None,
          progress: Progress = no_progress) -> list[ClipScores]:
    """Score every clip named by path; write CSV, JSON summary and timeline PNG for each."""
    device = device or torch.device("cpu")
    version, models = current_models(project)
    out = []
    for src in find_sources([path]):
        comps, scene_index, scores, times, report = _score_arrays(project, src, models, device, progress)
        scenes = np.asarray(models[2].scenes)[scene_index]
        flags = scores > models[2].threshold
        edges = np.append(times, report.duration)  # the time of frame i, and of the clip's end at n
        segs = [{"start_frame": s.start, "end_frame": s.end, "start_time": round(float(edges[s.start]), 3),
                 "end_time": round(float(edges[s.end]), 3), "peak_frame": s.peak_frame, "peak_score": s.peak_score}
                for s in segments(flags, scores, project.config.score.min_segment)]
        base = project.scores_dir / src.name
        warning = _score_warning(report, len(scores), models[1] is not None, project.config.score.mdn_warmup)
        summary = {"clip": src.name, "source": str(src.path.resolve()), "frames": int(len(scores)),
                   "fps": report.fps / project.config.frames.stride, "duration": round(report.duration, 3),
                   "model_version": version.name,
                   "threshold": models[2].threshold, "peak_score": float(scores.max()),
                   "anomalous_frames": int(flags.sum()), "segments": segs, "warning": warning,
                   "scene_frames": dict(zip(*map(np.ndarray.tolist, np.unique(scenes, return_counts=True))))}
        _write_csv(base.with_name(base.name + ".csv"), comps, scenes.tolist(), scores, flags, times)
        fsutil.write_json(base.with_name(base.name + ".json"), summary)
        png = base.with_name(base.name + ".png")
        plot.timeline(png, scores, models[2].threshold, times, [(s["start_frame"], s["end_frame"]) for s in segs],
                      title=src.name, duration=report.duration)
        out.append(ClipScores(src.name, report.fps, len(scores), models[2].threshold, version.name, segs,
                              float(scores.max()), base.with_name(base.name + ".csv"),
                              base.with_name(base.name + ".json"), png, warning))
    return out


# -- reading stored scores ---------------------------------------------------------------------------

def read_scored(project: Project, clip: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Stored combined scores (n,), frame times (n,) in seconds and summary of a scored clip (by its
    file name). A summary written before durations were kept gets one: frames / fps."""
    base = project.scores_dir / clip
    try:
        summary = json.loads(base.with_name(clip + ".json").read_text())
        with open(base.with_name(clip + ".csv")) as f:
            rows = [(float(r["score"]), float(r["time"])) for r in csv.DictReader(f)]
        table = np.array(rows, dtype=np.float64).reshape(-1, 2)
    except (OSError, json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise VidanomError(f"no stored scores for clip '{clip}'; run 'vidanom score {clip}' first") from exc
    scores, times = table[:, 0].copy(), table[:, 1].copy()
    if not isinstance(summary, dict) or summary.get("frames") != len(scores) or not scores.size:
        raise VidanomError(f"the stored scores of clip '{clip}' are incomplete or damaged; "
                           f"score it again with 'vidanom score {clip}'")
    if "duration" not in summary:
        try:
            summary["duration"] = len(scores) / float(summary["fps"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise VidanomError(f"the stored summary of clip '{clip}' is damaged; "
                               f"score it again with 'vidanom score {clip}'") from exc
    return scores, times, summary


def read_scores(project: Project, clip: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Stored combined scores (n,) and summary of a scored clip (by its file name)."""
    scores, _, summary = read_scored(project, clip)
    return scores, summary


def scored_clips(project: Project) -> list[str]:
    return sorted(p.name[:-5] for p in project.scores_dir.glob("*.json") if not p.name.startswith("."))


def read_labels(path: Path) -> dict[str, list[tuple[int, int]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise LabelsError(f"labels file {path} must map clip names to lists of [start, end] ranges")
    out = {}
    for name, ranges in data.items():
        try:
            out[name] = [(int(a), int(b)) for a, b in ranges]
        except (TypeError, ValueError) as exc:
            raise LabelsError(f"labels for '{name}' must be a list of [start, end] pairs") from exc
    return out


def label_vector(ranges: list[tuple[int, int]], n: int, clip: str) -> np.ndarray:
    y = np.zeros(n, dtype=np.int8)
    for a, b in ranges:
        if a < 0 or b < a or a >= n:
            raise LabelsError(f"label range [{a}, {b}) of '{clip}' lies outside its {n} frames")
        y[a:min(b, n)] = 1
    return y


def plot_clip(project: Project, clip: str, labels: Path | None = None, out: Path | None = None) -> Path:
    scores, times, summary = read_scored(project, clip)
    truth = None
    if labels is not None:
        table = read_labels(labels)
        if clip not in table:
            raise LabelsError(f"labels file {labels} has no entry for '{clip}'")
        truth = label_vector(table[clip], len(scores), clip)
    path = out or project.scores_dir / f"{clip}.png"
    segs = [(s["start_frame"], s["end_frame"]) for s in summary["segments"]]
    plot.timeline(path, scores, summary["threshold"], times, segs, truth=truth, title=clip,
                  duration=float(summary["duration"]))
    return path


def evaluate(project: Project, labels: Path) -> dict[str, Any]:
    """Frame-level micro metrics over every labelled, scored clip, plus per-clip AUROC."""
    table = read_labels(labels)
    scored = set(scored_clips(project))
    names = [n for n in sorted(table) if n in scored]
    if not names:
        raise LabelsError(f"none of the {len(table)} clips in {labels} has been scored; "
                          "run 'vidanom score VIDEO...' on them first")
    ys, ss, per_clip = [], [], {}
    for name in names:
        s, _ = read_scores(project, name)
        y = label_vector(table[name], len(s), name)
        ys.append(y)
        ss.append(s)
        if 0 < y.sum() < len(y):
            per_clip[name] = metrics.auroc(y, s)
    result = metrics.summary(np.concatenate(ys), np.concatenate(ss))
    missing = sorted(set(table) - scored)
    return {**result, "clips": len(names), "missing": missing, "per_clip_auroc": per_clip}
