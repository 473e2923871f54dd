"""Alarms a person corrects: `vidanom accept` says a stretch of footage that raised an alarm is normal.

    accept(project, "clip.mp4", events=[2])             # event 2 of the scored clip is normal
    accept(project, "clip.mp4", start=12.0, end=18.5)   # and so is this stretch (seconds)
    accept_events(project, [payload, ...])              # events as `watch` reports them
    project.use_version("v0003")                        # undo: an earlier version current again

The stretch, with `accept.margin` seconds either side, joins the scene's normal footage as a cached
clip of its own that remembers where it came from (cache.extract_span). Then a short continual update
of the model's current scene learns it: the β-VAE and the LSTM-MDN go on from the current version,
every batch a share (`accept.share`) of accepted frames and the rest the scene's own cached frames
(what the model already knows, so nothing is forgotten), with generative replay and distillation of
the other scenes as `update` does; the step budget grows with the accepted footage, not the
scene's. The scene is then recalibrated on its footage, each accepted stretch counted among its
training frames and among the held-out frames that set the components' scales and the threshold (see
_judged), and a new version is published whose lineage lists what was accepted. Several stretches
accepted at once are one update.

A version's accepted stretches belong to the scene's footage while that version, or one that came
from it, is current (Project.accepted_keys): after `use_version` of an earlier one, later training
leaves them out.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import cache, strategies
from .cache import ClipMeta
from .calibration import Footage, check_footage
from .config import AcceptConfig, ProjectConfig
from .data import Split, Timing
from .detector import Detector
from .errors import VidanomError
from .fitting import encode, fit_mdn, fit_vae, passes
from .inference import for_inference
from .progress import Progress, no_progress
from .project import LOCK_WAIT, Project
from .replay import batch_parts
from .store import ScoreStore
from .training import (
    DEFAULT_SCENE,
    Fitted,
    Plan,
    _publish,
    _standard_prior,
    _training_clips,
    in_motion_unit,
    parent_of,
    usual_interval,
)
from .video import find_sources


@dataclass(frozen=True)
class Stretch:
    """A stretch of a clip that a person says is normal, and where it came from."""

    source: Path  # the video file or frame folder
    start: float  # seconds from the clip's first frame, as its scores show them (without the margin)
    end: float
    clip: str  # the clip as the person named it: its scores' key, or the file's name
    event: int | None = None  # the event's number in the clip, where one was accepted by it

    def provenance(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "source": str(self.source.resolve()),
            "from": round(self.start, 3),
            "to": round(self.end, 3),
            "event": self.event,
        }


@dataclass(frozen=True)
class AcceptResult:
    """What an accept published."""

    version: str
    parent: str | None
    scene: str
    accepted: list[dict[str, Any]]  # each stretch's provenance, cache key, margin and frames
    frames: int  # accepted frames, margins included
    steps: int  # optimiser steps of the β-VAE (the LSTM-MDN's at most as many)
    seconds: float  # the whole run's, to the new version's publication
    threshold: float
    false_alarms: float | None  # the share of new normal frames expected over the threshold
    warnings: list[str]


# -- which stretches -----------------------------------------------------------------------------------


def stretches(
    project: Project,
    clip: str | Path,
    *,
    events: Iterable[int] = (),
    start: float | None = None,
    end: float | None = None,
) -> list[Stretch]:
    """The stretches of a scored clip (its video's path, or its name as `score` lists it) named by
    its events' numbers (1, 2... as `score` lists them) or by start and end seconds. VidanomError
    for a clip never scored, an event it does not have, or times outside it."""
    numbers = list(dict.fromkeys(int(e) for e in events))
    if bool(numbers) == (start is not None or end is not None):
        raise VidanomError("name what to accept by its event number (--event N) or by its times (--from T0 --to T1)")
    store = ScoreStore.of(project)
    key = store.lookup(clip)
    stored = store.read(key)
    name, summary = clip_name(store, key), stored.summary
    source = Path(str(summary.get("source", "")))
    if not source.exists():
        raise VidanomError(f"the video of {name} ({source}) is gone: accept needs its frames")
    current = (project.lineage()[:1] or [{}])[0].get("scene")
    shown = summary.get("scene_frames") or {}
    if current and shown and current not in shown:
        raise VidanomError(
            f"{name} shows scene {', '.join(map(repr, shown))}, and accept learns into the model's latest scene "
            f"'{current}' only: train or update that scene with the footage instead"
        )
    segments = summary.get("segments") or []
    if numbers:
        wrong = [n for n in numbers if not 1 <= n <= len(segments)]
        if wrong:
            has = f"events 1 to {len(segments)}" if len(segments) > 1 else f"{len(segments) or 'no'} event"
            raise VidanomError(f"{name} has {has}, not event {wrong[0]}; 'vidanom score {name}' lists them")
        return [
            Stretch(source, float(segments[n - 1]["start_time"]), float(segments[n - 1]["end_time"]), name, n)
            for n in numbers
        ]
    duration = float(summary["duration"])
    if start is None or end is None or not (0 <= start < end <= duration):
        raise VidanomError(
            f"--from {_shown(start)} --to {_shown(end)} is not a stretch of {name}, which lasts {duration:.2f} s: "
            f"give 0 <= from < to <= {duration:.2f}"
        )
    return [Stretch(source, float(start), float(end), name)]


def _shown(value: float | None) -> str:
    return "(none)" if value is None else f"{value:g}"


def event_stretch(payload: dict[str, Any]) -> Stretch:
    """The stretch of an event as `watch` (or `fleet watch`) reports it: in its clip (with --clips),
    else in the watched file. VidanomError for a health record, or an event of a live stream
    without a clip (its frames are gone)."""
    if payload.get("kind", "event") != "event":
        raise VidanomError(f"only events can be accepted, not a '{payload.get('kind')}' record")
    try:
        start, end = float(payload["start_time"]), float(payload["end_time"])
    except (KeyError, TypeError, ValueError):
        raise VidanomError(
            "an event needs its start_time and end_time in seconds, as 'vidanom watch' writes them"
        ) from None
    number = payload.get("event") if isinstance(payload.get("event"), int) else None
    clip, source = payload.get("clip"), payload.get("source")
    if isinstance(clip, str) and Path(clip).exists():
        offset = float(payload.get("clip_start_time") or 0.0)  # the clip's first frame, in the watch's times
        return Stretch(Path(clip), max(0.0, start - offset), end - offset, Path(clip).name, number)
    if isinstance(source, str) and Path(source).is_file():  # a watched file (not a URL, nor a camera)
        return Stretch(Path(source), start, end, Path(source).name, number)
    raise VidanomError(
        f"event {number or '?'} of {source} has no video on disk to learn from: watch a stream with "
        "--clips DIR, whose event clips accept reads"
    )


def clip_name(store: ScoreStore, key: str) -> str:
    """The name that finds a scored clip (store.resolve): its key while no other scored clip
    shares its name, else its alias."""
    return key if store.named(key) == [key] else store.alias(key)


def accept_command(clip: str, event: int, project: Path | str | None = None) -> str:
    """The command line that accepts event number `event` of a scored clip (named as the store's
    alias gives it), in the project folder given (none: the one the command finds)."""
    where = f" -p {shlex.quote(str(project))}" if project is not None else ""
    return f"vidanom accept {shlex.quote(clip)} --event {event}{where}"


# -- accepting -----------------------------------------------------------------------------------------


def accept(
    project: Project,
    clip: str | Path,
    *,
    events: Iterable[int] = (),
    start: float | None = None,
    end: float | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    wait: float = LOCK_WAIT,
) -> AcceptResult:
    """Accept events (by number) or a stretch (start to end seconds) of a scored clip as normal: one
    short update of the current scene, published as a new version (see the module docstring).
    Everything is checked before anything is written; holds the write lock and defers Ctrl-C to the
    end of a step, as `update` does."""
    return learn(project, stretches(project, clip, events=events, start=start, end=end), device, progress, wait)


def accept_events(
    project: Project,
    payloads: Iterable[dict[str, Any]],
    *,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    wait: float = LOCK_WAIT,
) -> AcceptResult:
    """Accept events as `watch` reports them (its JSON lines, parsed) as normal, all in one update."""
    return learn(project, [event_stretch(p) for p in payloads], device, progress, wait)


def learn(
    project: Project,
    accepted: list[Stretch],
    device: torch.device | None = None,
    progress: Progress = no_progress,
    wait: float = LOCK_WAIT,
) -> AcceptResult:
    """Fold stretches into the current scene's normal footage, learn them in one short update, and
    publish the result as a new version."""
    if not accepted:
        raise VidanomError("nothing to accept")
    started, device = time.time(), device or torch.device("cpu")
    with project.writing("accept", wait):
        parent = parent_of(project, "all")
        scene = str(parent.info.get("scene", DEFAULT_SCENE))
        scenes = list(dict.fromkeys(parent.info.get("scenes", [scene])))
        known = _training_clips(project, scene)  # the scene's footage, and what its lineage accepted before
        new = _extract(project, accepted, scene, progress)
        known = [m for m in known if m.key not in {m.key for m in new}]  # a stretch accepted again counts once
        plain, stretches = [m for m in known if m.accepted is None], [m for m in known if m.accepted is not None] + new
        footage = in_motion_unit(_footage(project, plain, stretches, progress), parent.calibration.frame_interval)
        hooks = strategies.plan(
            "replay",
            parent.vae,
            mdn=None,
            prior=parent.prior or _standard_prior(parent, scenes),
            ewc=parent.ewc,
            cfg=project.config,
            scene=scene,
            new_frames=0,
            dreams=False,
        )
        steps = budget(project.config, sum(m.frames for m in new), hooks.share)
        fitted = _fit(project.config, parent, footage, len(new), hooks, steps, device, progress)
        lineage = {
            "scene": scene,
            "scenes": scenes,
            "parent": parent.version,
            "strategy": "accept",
            "accepted": [{"key": m.key, **(m.accepted or {}), "frames": m.frames} for m in new],
            **hooks.lineage,
        }
        plan = Plan("all" if parent.mdn is not None else "vae", lineage, parent, hooks)
        judged = _judged(footage, len(stretches))
        result = _publish(project, plan, judged, fitted, metas=known + new, device=device, started=started)
    return AcceptResult(
        result.version,
        parent.version,
        scene,
        lineage["accepted"],
        sum(m.frames for m in new),
        steps,
        result.seconds,
        result.threshold,
        result.false_alarms,
        result.warnings,
    )


def budget(cfg: ProjectConfig, frames: int, replay_share: float) -> int:
    """The β-VAE's optimiser steps for `frames` accepted frames: accept.epochs passes over them at
    accept.share of the batch's scene part, within accept.min_steps and max_steps."""
    ac: AcceptConfig = cfg.accept
    per_step = max(1.0, batch_parts(cfg.train.batch_size, replay_share)[0] * ac.share)
    return passes(ac.epochs, frames, per_step, ac.min_steps, ac.max_steps)


def _extract(project: Project, accepted: list[Stretch], scene: str, progress: Progress) -> list[ClipMeta]:
    """Cache each stretch, with the margin either side, as a clip of the scene (unless cached already)."""
    margin, fc, out = project.config.accept.margin, project.config.frames, []
    for i, s in enumerate(accepted):
        progress("accept: extract", i, len(accepted), {"clip": s.clip})
        src = find_sources([s.source])[0]  # a video file, or a folder of frames
        provenance = {**s.provenance(), "margin": margin}
        meta, _ = cache.extract_span(project.cache_dir, src, fc, scene, (s.start - margin, s.end + margin), provenance)
        out.append(meta)
    progress("accept: extract", len(accepted), len(accepted), {})
    return list({m.key: m for m in out}.values())


def _footage(project: Project, plain: list[ClipMeta], stretches: list[ClipMeta], progress: Progress) -> Footage:
    """The scene's footage to fit on: its own clips, split as training split them, then every accepted
    stretch, among the training frames (_judged holds them out as well, to calibrate on)."""
    tc = project.config.train
    metas = plain + stretches
    clips = [cache.load(project.cache_dir, m) for m in metas]
    times = [cache.load_times(project.cache_dir, m) for m in metas]
    fps = [m.fps / m.stride for m in metas]
    split = Split.blocks([m.frames for m in plain], fps[: len(plain)], tc.holdout, tc.block_seconds) + Split.none(
        [m.frames for m in stretches]
    )
    footage = Footage(clips, fps, split, Timing(times, usual_interval(times)), progress=progress)
    check_footage(footage, tc.holdout, tc.block_seconds)
    return footage


def _judged(footage: Footage, stretches: int) -> Footage:
    """The footage to calibrate on: as fitted, then its last `stretches` clips (every stretch the scene
    accepted) once more, wholly held out. A stretch a person called normal then sets the components'
    scales and the threshold as the scene's held-out frames do, and is not flagged again; among the
    training frames alone it only moved the place statistics, and stayed flagged."""
    k = len(footage.clips) - stretches
    again = list(range(k, len(footage.clips)))
    times, lengths = footage.timing.times, [len(footage.clips[i]) for i in again]
    return replace(
        footage,
        clips=footage.clips + [footage.clips[i] for i in again],
        fps=footage.fps + [footage.fps[i] for i in again],
        split=footage.split + Split(lengths, [[(0, n)] for n in lengths]),
        timing=Timing(None if times is None else times + [times[i] for i in again], footage.timing.ref_dt),
    )


def _weighted(footage: Footage, new: int, share: float) -> tuple[list[int], Split]:
    """What the update fits on, as indices of the footage's clips and their split: every clip of the
    footage, then its last `new` clips (this accept's stretches) again, so many times that they make
    up about `share` of the frames drawn, then once more wholly held out: the weights kept are those
    that do best on the scene's held-out frames and the accepted ones together (each is trained on
    through its other copies)."""
    clips, split = footage.clips, footage.split
    fresh = list(range(len(clips) - new, len(clips)))
    n_new = sum(len(clips[i]) for i in fresh)
    n_rest = len(split.train_index()) - n_new
    copies = max(0, round(share / (1 - share) * n_rest / max(1, n_new)) - 1)
    extra = [i for _ in range(copies) for i in fresh]
    held = Split([len(clips[i]) for i in fresh], [[(0, len(clips[i]))] for i in fresh])
    return list(range(len(clips))) + extra + fresh, split + Split.none([len(clips[i]) for i in extra]) + held


def _fit(
    cfg: ProjectConfig,
    parent: Detector,
    footage: Footage,
    new: int,
    hooks: strategies.Hooks,
    steps: int,
    device: torch.device,
    progress: Progress,
) -> Fitted:
    """The parent's β-VAE, then its LSTM-MDN, fitted on the footage with its last `new` clips (the
    accepted stretches) weighted in (see _weighted)."""
    order, split = _weighted(footage, new, cfg.accept.share)
    times = footage.timing.times
    vae_stats = fit_vae(
        parent.vae,
        [footage.clips[i] for i in order],
        split,
        cfg,
        device,
        progress=progress,
        extra=hooks.extra,
        penalty=hooks.penalty,
        extra_share=hooks.share,
        steps=steps,
        timing=Timing(None if times is None else [times[i] for i in order], footage.timing.ref_dt),
    )
    if parent.mdn is None:
        return Fitted(parent.vae, None, vae_stats, {})
    fast, motion, ref_dt = for_inference(parent.vae, device), cfg.frames.motion_plane(), footage.timing.ref_dt
    latents = [
        encode(fast, c, motion, device, None if times is None else times[i], ref_dt)
        for i, c in enumerate(footage.clips)
    ]
    fresh, copies = order[len(order) - new :], order[len(footage.clips) : len(order) - new]
    train = [latents[c][:, a:b] for c, a, b in footage.split.runs()] + [latents[i] for i in copies]
    held = [latents[c][:, a:b] for c, a, b in footage.split.runs(held=True)] + [latents[i] for i in fresh]
    mdn_stats = fit_mdn(parent.mdn, train, held, cfg, device, progress=progress, steps=min(steps, cfg.train.mdn_steps))
    return Fitted(parent.vae, parent.mdn, vae_stats, mdn_stats)
