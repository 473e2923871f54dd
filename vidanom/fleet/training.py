"""Training a fleet: each camera's project trained by one Ray task (per-camera models are small, so
many train at once, one per worker). A camera's missing project folder is created with the default
config first. A camera that fails (no videos, a damaged one...) fails alone; one whose worker died
is trained again, resuming from the checkpoint the dead worker left.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import VidanomError
from ..progress import Progress, no_progress
from .engine import Engine, Tally, failure, capacity, run_jobs, session
from .manifest import Manifest, expand, open_project

PROGRESS_EVERY = 1.0  # seconds between a training task's reports of its progress


@dataclass(frozen=True)
class TrainJob:
    camera: str
    project: str  # absolute
    videos: tuple[str, ...]  # absolute; none: the project's cached clips
    scene: str
    steps: int | None = None  # optimiser steps of each stage at most (None: the project's config)
    resume: bool = False


@dataclass
class CameraTrained:
    camera: str
    version: str | None = None
    clips: int = 0
    frames: int = 0
    seconds: float = 0.0
    threshold: float | None = None
    false_alarms: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    worker: str = ""


@dataclass
class FleetTrained:
    cameras: list[CameraTrained]
    problems: list[str]  # a line per problem with the manifest or a camera (those were not trained)
    seconds: float
    workers: int

    @property
    def failed(self) -> list[CameraTrained]:
        return [c for c in self.cameras if c.error]


def train_camera(job: TrainJob, device: str, threads: int, tally: Any = None) -> CameraTrained:
    """Train one camera's project (what a Ray task runs); its outcome, with the error if it failed."""
    import torch

    from ..config import fixed_steps, with_overrides
    from ..project import Project
    from ..training import train

    torch.set_num_threads(threads)
    out = CameraTrained(job.camera, worker=f"{socket.gethostname()}:{os.getpid()}")
    last = [0.0]

    def progress(task: str, done: int, total: int, info: dict[str, Any]) -> None:
        if tally is not None and time.monotonic() - last[0] > PROGRESS_EVERY:
            tally.add.remote(job.camera, f"{task} {done}/{total}" if total else task, True)
            last[0] = time.monotonic()

    try:
        project = Project.open(Path(job.project))
        if job.steps is not None:
            project.config = with_overrides(project.config, train=fixed_steps(job.steps))
        paths = [Path(v) for v in job.videos]
        r = train(project, paths, device=torch.device(device), resume=job.resume, scene=job.scene, progress=progress)
        out.version, out.clips, out.frames, out.seconds = r.version, r.clips, r.frames, r.seconds
        out.threshold, out.false_alarms, out.warnings = r.threshold, r.false_alarms, r.warnings
    except Exception as exc:  # noqa: BLE001 - one camera fails alone, with a line that says why
        out.error = failure(exc, "its camera")
    return out


def plan(manifest: Manifest, steps: int | None, resume: bool) -> tuple[list[TrainJob], list[str]]:
    """A job per camera that can be trained (its project created if missing), and the problems."""
    jobs, problems = [], list(manifest.problems)
    for camera in manifest.cameras:
        videos, found = expand(camera.train, manifest.folder)
        if not found:
            try:
                project = open_project(camera, create=True)
            except VidanomError as exc:
                found.append(str(exc))
        if found:  # a model of part of its footage is not what was asked for
            problems += [f"camera {camera.name}: {p}" for p in found]
            continue
        paths = tuple(str(v.resolve()) for v in videos)
        jobs.append(TrainJob(camera.name, str(project.root.resolve()), paths, camera.scene, steps, resume))
    return jobs, problems


def train_fleet(
    manifest: Manifest,
    engine: Engine | None = None,
    steps: int | None = None,
    resume: bool = False,
    progress: Progress = no_progress,
) -> FleetTrained:
    """Train every camera's project, one Ray task each, as many at once as the engine has workers."""
    engine, started = engine or Engine(), time.monotonic()
    jobs, problems = plan(manifest, steps, resume)
    results: list[CameraTrained] = []
    workers = 0
    if jobs:
        with session(engine) as ray:
            workers = min(capacity(ray, engine), len(jobs))
            results = _run(ray, engine, jobs, workers, progress)
    order = {c.name: i for i, c in enumerate(manifest.cameras)}
    results.sort(key=lambda c: order[c.camera])
    return FleetTrained(results, problems, time.monotonic() - started, workers)


def _run(ray: Any, engine: Engine, jobs: list[TrainJob], workers: int, progress: Progress) -> list[CameraTrained]:
    tally = ray.remote(Tally).options(num_cpus=0).remote()
    task = ray.remote(train_camera).options(**engine.options(), max_retries=0)
    results: list[CameraTrained] = []
    tries: Counter[str] = Counter()
    running: dict[str, str] = {}

    def submit(slot: int, job: TrainJob) -> Any:
        tries[job.camera] += 1
        running[job.camera] = "starting"
        return task.remote(job, engine.device, engine.threads, tally)

    def settle(slot: int, job: TrainJob, outcome: Any) -> tuple[int, TrainJob | None]:
        running.pop(job.camera, None)
        if not isinstance(outcome, CameraTrained):
            died = isinstance(outcome, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
            if died and tries[job.camera] <= engine.retries:
                return slot, replace(job, resume=True)  # on from the dead worker's checkpoint
            outcome = CameraTrained(job.camera, error=f"training failed in the engine: {_last_line(outcome)}")
        results.append(outcome)
        return slot, None

    def tick() -> None:
        running.update({k: v for k, v in ray.get(tally.take.remote()).items() if k in running})
        shown = ", ".join(f"{k} {v}" for k, v in list(running.items())[:3])
        progress("cameras", len(results), len(jobs), {"training": shown} if shown else {})

    try:
        run_jobs(ray, jobs, list(range(workers)), submit, settle, tick)
        tick()
    finally:
        ray.kill(tally)
    return results


def _last_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__
