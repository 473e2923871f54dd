"""Training and updating a project's model: the library behind `vidanom extract`, `train` and `update`.

Each run fits into models/.partial (resumable), calibrates, and publishes a new version as one model
file (detector.Detector), atomically: until the last rename the previous version stays current, so
scoring goes on meanwhile and an interrupted run loses nothing. A run holds the project's write lock
and defers Ctrl-C to the end of an optimiser step (Project.writing), for the CLI and a library
caller alike.

Under torchrun, train() fits one model in several processes (see distributed): rank 0 holds the
lock, extracts, checkpoints and publishes; every rank fits its part of each batch.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from . import cache, carry, distributed, interrupt, kept, strategies
from .cache import ClipMeta
from .calibration import Footage, calibrate, check_footage
from .normality import Calibration
from .config import CONFIG_NAME, ProjectConfig, disagreements, trained_in
from .data import Split, Timing, evenly, gather
from .detector import Detector
from .distributed import Group
from .errors import ConfigError, VidanomError
from .fitting import encode, fit_mdn, fit_vae, load_checkpoint, update_budget
from .progress import Progress, no_progress
from .inference import for_inference
from .mdn import LSTMMDN
from .project import LOCK_WAIT, Project
from .strategies import Hooks
from .vae import BetaVAE
from .video import Source, find_sources, first_frame_size

DEFAULT_SCENE = "default"
T = TypeVar("T")
EWC_SAMPLES = 256  # training frames the Fisher information is estimated on
PRIOR_SAMPLES = 4096  # training frames a scene's latent Gaussian is fitted to
# what a run fits: the β-VAE, the LSTM-MDN (on the current β-VAE), both, or neither ("calibrate": the
# current models recalibrated on their scene's cached clips, after score settings changed)
STAGES = ("vae", "mdn", "all", "calibrate")
KEEPS_VAE = ("mdn", "calibrate")  # the stages that take the current version's β-VAE as it is


# -- extract -------------------------------------------------------------------------------------------


def extract(
    project: Project, paths: list[Path], scene: str = DEFAULT_SCENE, progress: Progress = no_progress
) -> list[tuple[ClipMeta, bool]]:
    """Cache the frames of every clip named by paths; clips already cached are not decoded again.

    A clip cached as another scene is refused (VidanomError) before any is extracted.
    Needs no lock: every clip's cache is written atomically, so extracting and scoring in other
    processes go on meanwhile. The first clip of a project sets its frame size (its aspect ratio).
    """
    if not re.fullmatch(r"[\w.-]+", scene):  # it becomes a CSV field and a table cell
        raise VidanomError(f"scene name '{scene}' may hold only letters, digits, '_', '.' and '-'")
    out = []
    sources = find_sources(paths)
    if sources and not project.config.frames.width:
        project.resolve_width(*first_frame_size(sources[0], project.config.frames))
    for src in sources:  # all of them, before any is extracted
        cache.check_scene(project.cache_dir, src, project.config.frames, scene)
    for i, src in enumerate(sources):
        done = [0]

        def on_frames(n: int, i: int = i, src: Source = src, done: list[int] = done) -> None:
            done[0] += n
            progress("extract", i, len(sources), {"clip": src.name, "frames": done[0]})

        out.append(cache.extract(project.cache_dir, src, project.config.frames, scene, on_frames))
        progress("extract", i + 1, len(sources), {"clip": src.name, "frames": done[0]})
    return out


# -- what a run fits -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What a train or update run published: made once the version is in place."""

    version: str
    clips: int
    frames: int
    seconds: float  # the run's, from its start to the version's publication
    vae: dict[str, float]  # the β-VAE stage's held-out loss, PSNR and steps ({} where the stage kept it)
    mdn: dict[str, float]  # the LSTM-MDN stage's ({} where it was kept or none was fitted)
    threshold: float
    scene: str
    psnr: float | None  # of the reconstructed held-out frames, in dB
    false_alarms: float | None  # the share of new normal frames expected over the threshold
    warnings: list[str]


@dataclass(frozen=True)
class Fitted:
    """The models a run fitted (or kept), and what their stages measured."""

    vae: BetaVAE
    mdn: LSTMMDN | None
    vae_stats: dict[str, float]
    mdn_stats: dict[str, float]


@dataclass
class Plan:
    """What one train/update run fits, from what, and how."""

    stage: str  # one of STAGES
    lineage: dict[str, Any]  # what version.json records: scene(s), parent, strategy...
    parent: Detector | None = None  # the version it starts from (update, or a stage in KEEPS_VAE)
    hooks: Hooks | None = None  # the update strategy's replay, penalty and dreams
    group: Group | None = None  # the processes that fit it together (torchrun), None for this one alone
    steps: int | None = None  # the β-VAE's budget (None: fitting.vae_budget of the footage); the LSTM-MDN's at most


def _training_clips(project: Project, scene: str) -> list[ClipMeta]:
    metas = cache.clips(project.cache_dir, project.config.frames, scene, project.accepted_keys())
    if not metas:
        raise VidanomError(f"no training clips for scene '{scene}'; pass videos: 'vidanom train VIDEO...'")
    return metas


def _footage(project: Project, metas: list[ClipMeta], progress: Progress) -> Footage:
    """The cached clips of metas, with their frames' times and which frames are held out."""
    tc = project.config.train
    clips = [cache.load(project.cache_dir, m) for m in metas]
    times = [cache.load_times(project.cache_dir, m) for m in metas]
    fps = [m.fps / m.stride for m in metas]
    split = Split.blocks([len(c) for c in clips], fps, tc.holdout, tc.block_seconds)
    footage = Footage(clips, fps, split, Timing(times, usual_interval(times)), progress=progress)
    check_footage(footage, tc.holdout, tc.block_seconds)
    return footage


def in_motion_unit(footage: Footage, *intervals: float | None) -> Footage:
    """The footage with the usual interval its motion planes are scaled by (see data.motion_scale)
    set for a model that learns more than one scene: the longest of its own and the given ones (the
    parent's, which is the longest of its scenes').

    One interval serves every scene (the scorer scales motion before it knows the scene), and at the
    longest none of the scenes' normal motion is scaled down. A scene at 25 frames/s learned after
    one at 10 would otherwise set 0.04 s, and the first scene's motion would be scored at 0.4 of what
    the models learned of it (README, "A real second camera")."""
    known = [dt for dt in (footage.timing.ref_dt, *intervals) if dt]
    if not known or footage.timing.times is None:
        return footage
    return replace(footage, timing=Timing(footage.timing.times, max(known)))


def usual_interval(times: list[np.ndarray]) -> float | None:
    """The median of the intervals between consecutive frames over all clips (None if none)."""
    steps = np.concatenate([np.diff(t) for t in times]) if times else np.zeros(0)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else None


def _seeded(make: Callable[[], Any], seed: int) -> Any:
    """make(), with torch's global random state (which initialises weights) seeded and restored
    afterwards: the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(seed))))
        return make()


# -- the stages ----------------------------------------------------------------------------------------


def _fit_vae_stage(
    project: Project, plan: Plan, footage: Footage, device: torch.device, resume: bool, progress: Progress
) -> tuple[BetaVAE, dict[str, float]]:
    cfg, part = project.config, project.partial_dir
    if plan.stage in KEEPS_VAE:  # train() loaded it, or said there was none
        assert plan.parent is not None
        return plan.parent.vae, {}
    start = load_checkpoint(part / "vae.pt") if resume and (part / "vae.pt").exists() else None
    ckpt = part / "vae.pt" if distributed.is_main(plan.group) else None  # the other ranks only read it
    vae = plan.parent.vae if plan.parent is not None else _seeded(lambda: BetaVAE(cfg.vae_config()), cfg.train.seed)
    hooks = plan.hooks or Hooks("train")
    stats = fit_vae(
        vae,
        footage.clips,
        footage.split,
        cfg,
        device,
        progress=progress,
        ckpt=ckpt,
        start=start,
        extra=hooks.extra,
        penalty=hooks.penalty,
        extra_share=hooks.share,
        steps=plan.steps,
        timing=footage.timing,
        group=plan.group,
    )
    return vae, stats


def _fit_mdn_stage(
    project: Project, plan: Plan, vae: BetaVAE, footage: Footage, device: torch.device, resume: bool, progress: Progress
) -> tuple[LSTMMDN | None, dict[str, float]]:
    cfg, part = project.config, project.partial_dir
    if plan.stage == "vae":
        return None, {}
    if plan.stage == "calibrate":
        assert plan.parent is not None
        return plan.parent.mdn, {}
    parent_mdn = plan.parent.mdn if plan.parent is not None and plan.stage != "mdn" else None
    mdn = parent_mdn or _seeded(lambda: LSTMMDN(cfg.mdn_config()), cfg.train.seed + 1)
    start = load_checkpoint(part / "mdn.pt") if resume and (part / "mdn.pt").exists() else None
    # dreams are encoded by the new encoder, like real clips: that maps them into the new latent space
    fast, timing, motion = for_inference(vae, device), footage.timing, cfg.frames.motion_plane()
    latents = [
        encode(fast, c, motion, device, None if timing.times is None else timing.times[i], timing.ref_dt)
        for i, c in enumerate(footage.clips)
    ]
    dreamed = [encode(fast, d, motion, device) for d in (plan.hooks.dreams if plan.hooks else [])]
    dreamed_train, dreamed_held = held_out(dreamed, cfg.train.holdout)
    train = [latents[c][:, a:b] for c, a, b in footage.split.runs()] + dreamed_train
    held = [latents[c][:, a:b] for c, a, b in footage.split.runs(held=True)] + dreamed_held
    ckpt = part / "mdn.pt" if distributed.is_main(plan.group) else None
    steps = None if plan.steps is None else min(cfg.train.mdn_steps, plan.steps)
    return mdn, fit_mdn(
        mdn, train, held, cfg, device, progress=progress, ckpt=ckpt, start=start, steps=steps, group=plan.group
    )


def held_out(clips: list[T], share: float) -> tuple[list[T], list[T]]:
    """(training, held-out) clips: `share` of them, evenly spread, held out."""
    # dreamed clips of the old scenes are held out like the new scene's footage: the LSTM-MDN of an update
    # keeps its best steps on held-out windows, and on the new scene's alone it was chosen blind to the old
    # ones (how well it kept them then turned on the order of float sums; README, "Learning new scenes")
    count = round(share * len(clips)) if len(clips) > 1 else 0
    picked = set(evenly(len(clips), count))
    return [c for i, c in enumerate(clips) if i not in picked], [c for i, c in enumerate(clips) if i in picked]


def _calibrations(
    project: Project, plan: Plan, footage: Footage, fitted: Fitted, device: torch.device
) -> tuple[Calibration, dict[str, kept.KeptScene], dict[str, Any]]:
    """Every scene's calibration for the fitted models, the frames kept for the next run, and what
    each scene's calibration rests on (version.json's "calibration").

    The run's scene is calibrated on its footage; every other scene the parent knew, on the frames
    kept of it where there are some (train.keep_frames), else carried from the parent's calibration,
    whole, through the β-VAE's drift on its replayed frames (carry.py).
    """
    cfg, scene, scenes = project.config, plan.lineage["scene"], plan.lineage["scenes"]
    parent = plan.parent
    before = kept.load(project.models_dir / parent.version) if parent is not None and parent.version else {}
    others = {s: k for s, k in before.items() if s in scenes and s != scene}
    fresh = [calibrate(fitted.vae, fitted.mdn, footage, cfg, device, scene)]
    unit = footage.timing.ref_dt  # the run's, which in_motion_unit made the models' own
    fresh += [
        calibrate(fitted.vae, fitted.mdn, in_motion_unit(k.footage(), unit), cfg, device, s) for s, k in others.items()
    ]
    mine = kept.keep(footage, cfg.train.keep_frames)
    # kept only while the project keeps frames: with train.keep_frames 0 the new version holds no footage
    frames = {**others, **({scene: mine} if mine is not None else {})} if cfg.train.keep_frames else {}
    cal = carry.stacked([carry.rows(c, c.scenes) for c in fresh])
    held = int(len(footage.split.index(True)))
    basis = {scene: carry.measured("footage", len(footage.split.index()), held)}
    basis.update({s: carry.measured("kept frames", *k.counts()) for s, k in others.items()})
    if parent is None:
        return cal, frames, basis
    old = None if plan.stage in KEEPS_VAE else _models_of(project, parent)
    cal, drifts = carry.after_update(old, fitted.vae, parent.calibration, cal, scenes, cfg)
    if plan.stage == "mdn":  # an LSTM-MDN fitted anew on this scene: the others' surprise is unknown to it
        cal = carry.without_surprise(cal, [s for s in cal.scenes if s != scene and s not in others])
    previous = parent.info.get("calibration") or {}
    for drift in drifts:
        basis[drift.scene] = carry.carried_basis(previous.get(drift.scene), drift, parent.version)
    for s in cal.scenes:  # kept as they were (models unchanged, or a calibration from before scenes' bases)
        basis.setdefault(s, previous.get(s) or {"on": "unknown"})
    return cal, frames, basis


def _models_of(project: Project, parent: Detector) -> carry.Models:
    """The parent version's β-VAE as it was published (the run trained the one it loaded in place)."""
    stored = Detector.of_version(project, parent.version) if parent.version else parent
    return carry.Models(stored.vae, stored.prior or parent.prior)


def _sample_inputs(cfg: ProjectConfig, footage: Footage, count: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Model inputs of `count` random training frames, one batch per clip they fall in."""
    rng = np.random.default_rng(cfg.train.seed)
    index = footage.split.train_index()
    rows = index[rng.permutation(len(index))[:count]]
    return (
        gather(footage.clips[c], np.sort(rows[rows[:, 0] == c, 1]), cfg.frames.motion_plane()).to(device)
        for c in np.unique(rows[:, 0])
    )


def _scene_state(
    project: Project, plan: Plan, vae: BetaVAE, footage: Footage, device: torch.device
) -> tuple[Any, dict[str, Any] | None]:
    """The new version's latent Gaussians of every scene and EWC state (the parent's when the β-VAE is kept)."""
    if plan.stage in KEEPS_VAE:
        assert plan.parent is not None
        return plan.parent.prior, plan.parent.ewc
    cfg = project.config
    ewc = plan.parent.ewc if plan.parent is not None else None
    return strategies.consolidate(
        plan.hooks,
        vae,
        _sample_inputs(cfg, footage, PRIOR_SAMPLES, device),
        _sample_inputs(cfg, footage, EWC_SAMPLES, device),
        plan.lineage["scene"],
        ewc,
        cfg,
    )


def fit_and_publish(
    project: Project, metas: list[ClipMeta], plan: Plan, device: torch.device, resume: bool, progress: Progress
) -> TrainResult:
    """Fit the planned stages into models/.partial, calibrate, and publish as a new version.

    The VAE learns the real clips (plus replay); the LSTM-MDN also sees the dreamed clips of old
    scenes. The calibration of this scene comes from its real clips; old scenes keep theirs. In a
    distributed group, rank 0 alone prepares models/.partial, calibrates and publishes.
    """
    cfg, t0 = project.config, time.time()
    identity = {
        **{k: plan.lineage.get(k) for k in ("strategy", "scene", "parent", "replay_share")},
        "stage": plan.stage,
        "clips": [m.key for m in metas],
        "seed": cfg.train.seed,
        "train": asdict(cfg.train),
        "vae": asdict(cfg.vae_config()),
        "mdn": asdict(cfg.mdn_config()),
    }
    footage = _footage(project, metas, progress)  # refuses too little footage before anything is written
    footage = in_motion_unit(footage, plan.parent.calibration.frame_interval if plan.parent else None)
    distributed.on_main(plan.group, lambda: project.begin_run(identity, resume))
    vae, vae_stats = _fit_vae_stage(project, plan, footage, device, resume, progress)
    mdn, mdn_stats = _fit_mdn_stage(project, plan, vae, footage, device, resume, progress)
    fitted = Fitted(vae, mdn, vae_stats, mdn_stats)
    return distributed.on_main(
        plan.group, lambda: _publish(project, plan, footage, fitted, metas=metas, device=device, started=t0)
    )


def _publish(
    project: Project,
    plan: Plan,
    footage: Footage,
    fitted: Fitted,
    *,
    metas: list[ClipMeta],
    device: torch.device,
    started: float,
) -> TrainResult:
    """Calibrate the fitted models and publish them as the project's new version."""
    cfg, part, vae, mdn = project.config, project.partial_dir, fitted.vae, fitted.mdn
    cal, kept_frames, basis = _calibrations(project, plan, footage, fitted, device)
    prior, ewc = _scene_state(project, plan, vae, footage, device)
    false_alarms = float(cal.false_alarms.max()) if cal.false_alarms is not None else None
    psnr = fitted.vae_stats.get("psnr") if fitted.vae_stats else plan.lineage.get("psnr")
    frames = sum(m.frames for m in metas)
    info = {
        **plan.lineage,
        "stage": plan.stage,
        "clips": [m.name for m in metas],
        "frames": frames,
        "seconds_of_footage": round(footage.seconds, 1),
        "held_out_frames": int(len(footage.split.index(True))),
        "dreamed_frames": sum(len(d) for d in (plan.hooks.dreams if plan.hooks else [])),
        "has_mdn": mdn is not None,
        "threshold": cal.threshold,
        "expected_false_alarms": false_alarms,
        "psnr": psnr,
        "warnings": footage.warnings,
        "calibration": basis,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "vae": fitted.vae_stats,
        "mdn": fitted.mdn_stats,
    }
    seconds = info["train_seconds"] = round(time.time() - started, 1)
    detector = Detector(cfg, vae, mdn, cal, prior, ewc, info)

    def write(folder: Path) -> None:
        detector.save(folder)
        kept.save(folder, kept_frames)

    version = project.publish_version(write, info)
    shutil.rmtree(part, ignore_errors=True)
    return TrainResult(
        version=version,
        clips=len(metas),
        frames=frames,
        seconds=seconds,
        vae=fitted.vae_stats,
        mdn=fitted.mdn_stats,
        threshold=cal.threshold,
        scene=plan.lineage["scene"],
        psnr=psnr,
        false_alarms=false_alarms,
        warnings=footage.warnings,
    )


# -- train and update ----------------------------------------------------------------------------------


def train(
    project: Project,
    paths: list[Path] | None = None,
    *,
    stage: str = "all",
    device: torch.device | None = None,
    resume: bool = False,
    scene: str = DEFAULT_SCENE,
    progress: Progress = no_progress,
    group: Group | None = None,
    wait: float = LOCK_WAIT,
) -> TrainResult:
    """Extract new clips, then fit the β-VAE and/or LSTM-MDN on every cached clip of the scene, calibrate,
    and publish the model as a new version (stage "mdn": a new LSTM-MDN on the current version's β-VAE;
    "calibrate": the current models, recalibrated with the project's score settings, e.g. a new
    score.false_alarms; other scenes keep their calibration).

    Holds the project's write lock (a second train or update waits `wait` s, then raises LockError) and
    stops at the end of an optimiser step on Ctrl-C, with a checkpoint that `resume=True` continues.
    group: the processes torchrun started to fit this model together (distributed.from_env()), each
    calling train() alike; rank 0 alone takes the lock and writes, every rank returns the result.
    """
    if stage not in STAGES:
        raise VidanomError(f"stage must be one of {', '.join(STAGES)}, not '{stage}'")
    joined = distributed.joined(group, device or torch.device("cpu"))
    with joined as device, _writing(project, "train", group, wait):
        parent = _kept_parent(project, stage, scene) if stage in KEEPS_VAE else None
        if paths:
            frames = distributed.on_main(group, lambda: _extract_frames(project, paths, scene, progress))
            project.config = replace(project.config, frames=frames)  # where the first clip set the frame size
        metas = _training_clips(project, scene)
        lineage = {"scene": scene, "scenes": [scene], "parent": project.current_version(), "strategy": "train"}
        if parent is not None:
            scenes = parent.info.get("scenes", [scene])
            lineage.update(scenes=scenes, vae_from=lineage["parent"], psnr=parent.info.get("psnr"))
        return fit_and_publish(project, metas, Plan(stage, lineage, parent, group=group), device, resume, progress)


def parent_of(project: Project, stage: str) -> Detector:
    """The current version, which the run (an update, or a stage that keeps its β-VAE) goes on from:
    so it must see the inputs the version was trained on. ConfigError when vidanom.json's frame
    settings or architecture (its LSTM-MDN's too, unless the stage fits a new one) are not the
    version's, or its score.patch settings do not fit the version's calibration."""
    parent = Detector.of_version(project)
    keeps = (lambda key: trained_in(key) and not key.startswith("mdn.")) if stage == "mdn" else trained_in
    lines = disagreements(parent.config, project.config, keeps, f"model {parent.version}")
    if lines:
        raise ConfigError(
            f"{'; '.join(lines)}: this run goes on from that model and needs the settings it was trained "
            f"with; set them back in {CONFIG_NAME}, or run 'vidanom train' to train anew with these"
        )
    return parent.scoring(project.config)


def _kept_parent(project: Project, stage: str, scene: str) -> Detector:
    """The current version, whose β-VAE (and LSTM-MDN, to calibrate) the run keeps; it must know the scene."""
    parent = parent_of(project, stage)
    known = parent.calibration.scenes  # the scenes a calibration can be replaced for
    if stage == "calibrate" and scene not in known:
        raise VidanomError(
            f"the model has not learned scene '{scene}' (it knows {', '.join(known)}); 'vidanom update' learns one"
        )
    return parent


def _extract_frames(project: Project, paths: list[Path], scene: str, progress: Progress) -> Any:
    """Extract, and return the project's frame size (which the first clip may have set)."""
    extract(project, paths, scene, progress)
    return project.config.frames


@contextmanager
def _writing(project: Project, command: str, group: Group | None, wait: float) -> Iterator[None]:
    """Project.writing (the lock, Ctrl-C deferred to the end of a step) on rank 0; the other ranks
    defer Ctrl-C alone, once rank 0 holds the lock (or fail with its LockError)."""
    if group is None:
        with project.writing(command, wait):
            yield
        return
    with ExitStack() as stack:
        distributed.on_main(group, lambda: stack.enter_context(project.writing(command, wait)))
        if not group.main:
            stack.enter_context(interrupt.deferred())
        yield


def update(
    project: Project,
    paths: list[Path] | None = None,
    scene: str | None = None,
    *,
    strategy: str = "replay",
    replay_ratio: float | None = None,
    device: torch.device | None = None,
    resume: bool = False,
    progress: Progress = no_progress,
    dreams: bool = True,
    wait: float = LOCK_WAIT,
) -> TrainResult:
    """Learn a normal scene from `paths` (a new one, or more footage of one the model knows) without
    reading other scenes' frames (see strategies), in a budget of steps that grows with the footage
    passed (fitting.update_budget); every other scene is calibrated for the new models (see
    _calibrations). A scene the model knows is learned from all its cached clips. dreams=False leaves
    replay's dreamed clips out, to measure what they add. Holds the write lock and defers Ctrl-C as
    train does."""
    with project.writing("update", wait):
        parent = parent_of(project, "all")
        old = list(dict.fromkeys(parent.info.get("scenes", [parent.info.get("scene", DEFAULT_SCENE)])))
        scene = scene or f"scene{len(old) + 1}"
        new = [m for m, _ in extract(project, paths, scene, progress)] if paths else []
        metas = _training_clips(project, scene)
        prior = parent.prior or _standard_prior(parent, old)
        hooks = strategies.plan(
            strategy,
            parent.vae,
            mdn=parent.mdn,
            prior=prior,
            ewc=parent.ewc,
            cfg=project.config,
            scene=scene,
            new_frames=sum(m.frames for m in metas),
            replay_ratio=replay_ratio,
            dreams=dreams,
        )
        fresh = sum(m.frames for m in (new or metas))  # what the update learns: the footage passed
        plan = Plan(
            "all" if parent.mdn is not None else "vae",
            {
                "scene": scene,
                "scenes": old + [s for s in [scene] if s not in old],
                "parent": parent.version,
                "strategy": strategy,
                **hooks.lineage,
            },
            parent,
            hooks,
            steps=update_budget(project.config.train, round(fresh * (1 - project.config.train.holdout)), hooks.share),
        )
        return fit_and_publish(project, metas, plan, device or torch.device("cpu"), resume, progress)


def _standard_prior(parent: Detector, scenes: list[str]) -> Any:
    """N(0, I) for every scene: the prior of a model fitted before scenes' Gaussians were kept."""
    from .replay import LatentPrior

    cfg = parent.vae.cfg
    return LatentPrior.standard(scenes, cfg.latent_channels * cfg.grid[0] * cfg.grid[1])
