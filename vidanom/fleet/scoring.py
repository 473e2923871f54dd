"""Scoring a fleet: every camera's clips, on a pool of Ray workers, and one events table of them all.

Each worker (ClipScorer, a Ray actor) scores one clip at a time, of any camera: it keeps the models
of the last few cameras it scored loaded (an LRU of Detectors, keyed by project and version), writes
the clip's CSV, JSON summary and timeline into its camera's project as `vidanom score` does (each
file atomically; scoring takes no lock), and returns the clip's outcome with its events. The driver
hands a clip to each idle worker, so no more clips are in flight than workers. A clip that fails
(not a video, damaged...) fails alone; a clip whose worker died is run again on a fresh worker, up
to Engine.retries times. A clip whose stored summary says the current version scored this very
file is skipped (force: scored again).
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import fsutil
from ..errors import NotTrainedError, VidanomError
from ..progress import Progress, no_progress
from ..project import Project
from ..store import ScoreStore
from ..video import Source
from .engine import Engine, Tally, failure, Throttled, capacity, run_jobs, session
from .manifest import Camera, Manifest, clips, open_project

MODELS = 4  # cameras' models a worker keeps loaded
EVENT_COLUMNS = (
    "camera",
    "clip",
    "start_time",
    "end_time",
    "peak_time",
    "peak_score",
    "start_frame",
    "end_frame",
    "peak_frame",
    "model_version",
    "source",
)


@dataclass(frozen=True)
class ClipJob:
    """One clip to score, with everything a worker needs (absolute paths: workers have their own cwd)."""

    camera: str
    project: str
    version: str  # the model version to score with: the camera's current one when the run started
    source: str
    frames_dir: bool = False


@dataclass
class ClipOutcome:
    camera: str
    clip: str
    source: str
    state: str  # "scored", "skipped" (already scored by this version) or "failed"
    version: str | None = None
    frames: int = 0
    seconds: float = 0.0  # decoding, scoring and writing it, in its worker (with the model's loading)
    loading: float = 0.0  # of which loading the camera's model (0 when the worker had it)
    events: list[dict[str, Any]] = field(default_factory=list)
    warning: str | None = None
    error: str | None = None
    worker: str = ""  # host:pid of the worker that scored it


@dataclass(frozen=True)
class CameraTotals:
    """What a fleet score did for one camera."""

    camera: str
    scored: int  # clips
    skipped: int  # already scored by the camera's current version
    failed: int
    frames: int  # of the clips scored or skipped
    events: int


@dataclass
class FleetScores:
    clips: list[ClipOutcome]
    problems: list[str]  # a line per problem with the manifest or a camera (those clips were not scored)
    events: list[dict[str, Any]]  # every event of every clip, as the tables hold them
    csv: Path
    json: Path
    seconds: float
    workers: int

    @property
    def failed(self) -> list[ClipOutcome]:
        return [c for c in self.clips if c.state == "failed"]

    @property
    def scored(self) -> list[ClipOutcome]:
        return [c for c in self.clips if c.state == "scored"]

    @property
    def rate(self) -> float | None:
        """Frames scored a second over the run (None when nothing was scored)."""
        frames = sum(c.frames for c in self.scored)
        return frames / self.seconds if frames and self.seconds > 0 else None

    def totals(self) -> list[CameraTotals]:
        """Per camera, in the manifest's order."""
        out = []
        for camera in dict.fromkeys(c.camera for c in self.clips):
            mine = [c for c in self.clips if c.camera == camera]
            scored, skipped, failed = (sum(c.state == s for c in mine) for s in ("scored", "skipped", "failed"))
            frames, events = sum(c.frames for c in mine), sum(len(c.events) for c in mine)
            out.append(CameraTotals(camera, scored, skipped, failed, frames, events))
        return out


# -- in a worker -----------------------------------------------------------------------------------


class ClipScorer:
    """A fleet worker (run as a Ray actor): scores clips of any camera, one at a time."""

    def __init__(
        self,
        device: str,
        threads: int,
        tally: Any = None,
        models: int = MODELS,
        before_clip: Callable[[ClipJob], None] | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.device, self.tally, self.models, self.before_clip = torch.device(device), tally, models, before_clip
        self.loaded: OrderedDict[tuple[str, str], tuple[Project, Any]] = OrderedDict()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def _model(self, root: str, version: str) -> tuple[Project, Any]:
        """The project and the Detector of one version, loaded once while it is among the last used."""
        from ..detector import Detector

        key = (root, version)
        if key not in self.loaded:
            project = Project.open(Path(root))
            detector = Detector.for_project(project, version)
            self.loaded[key] = (project, detector)
            while len(self.loaded) > self.models:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(key)
        return self.loaded[key]

    def score(self, job: ClipJob) -> ClipOutcome:
        """Score one clip into its project; its outcome, failed with the reason if it could not be."""
        from ..results import score_clip

        out = ClipOutcome(job.camera, Path(job.source).name, job.source, "failed", job.version, worker=self.name)
        start = time.perf_counter()
        frames, seen = Throttled(self.tally), [0]

        def progress(task: str, done: int, total: int, info: dict[str, Any]) -> None:
            frames.add("frames", done - seen[0])
            seen[0] = done

        try:
            if self.before_clip is not None:
                self.before_clip(job)
            project, detector = self._model(job.project, job.version)
            out.loading = time.perf_counter() - start
            clip = score_clip(project, Source(Path(job.source), job.frames_dir), detector, self.device, progress)
            out.clip, out.state, out.frames, out.warning = clip.key, "scored", clip.frames, clip.warning
            out.events = clip_events(job.camera, project, clip.key, json.loads(clip.summary.read_text()))
        except Exception as exc:  # noqa: BLE001 - one clip fails alone, with a line that says why
            out.error = failure(exc, "its clip")
        frames.flush("frames")
        out.seconds = time.perf_counter() - start
        return out


def clip_events(camera: str, project: Project, key: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The events table's rows of one scored clip (its key in the store), from its JSON summary."""
    segments = summary.get("segments") or []
    times = None
    if any("peak_time" not in s for s in segments):  # written before summaries kept it: from the CSV
        times = ScoreStore.of(project).read(key).times
    return [
        {
            "camera": camera,
            "clip": key,
            "start_time": s["start_time"],
            "end_time": s["end_time"],
            "peak_time": s["peak_time"] if times is None else round(float(times[s["peak_frame"]]), 3),
            "peak_score": s["peak_score"],
            "start_frame": s["start_frame"],
            "end_frame": s["end_frame"],
            "peak_frame": s["peak_frame"],
            "model_version": summary.get("model_version"),
            "source": summary.get("source"),
        }
        for s in segments
    ]


# -- on the driver ---------------------------------------------------------------------------------


def stored(camera: str, project: Project, src: Source, version: str) -> ClipOutcome | None:
    """The clip's outcome from its stored scores if `version` scored this very file; else None."""
    store = ScoreStore.of(project)
    key = store.find(src)
    if key is None:
        return None
    try:
        summary = json.loads(store.files(key).summary.read_text())
        if not isinstance(summary, dict) or not store.files(key).csv.is_file():
            return None
        if summary.get("model_version") != version or summary.get("source") != str(src.path.resolve()):
            return None
        events = clip_events(camera, project, key, summary)
    except (OSError, ValueError, KeyError, TypeError, VidanomError):
        return None  # missing, damaged or incomplete: score it (again)
    return ClipOutcome(camera, key, str(src.path), "skipped", version, int(summary.get("frames", 0)), events=events)


def plan(manifest: Manifest, force: bool = False) -> tuple[list[ClipJob], list[ClipOutcome], list[str]]:
    """The clips to score, those already scored by their camera's current version, and the problems."""
    jobs, skipped, problems = [], [], list(manifest.problems)
    for camera in manifest.cameras:
        try:
            project, version = _trained(camera)
        except VidanomError as exc:
            problems.append(f"camera {camera.name}: {exc}")
            continue
        sources, found = clips(camera, manifest.folder)
        problems += [f"camera {camera.name}: {p}" for p in found]
        for src in sources:
            done = None if force else stored(camera.name, project, src, version)
            if done is not None:
                skipped.append(done)
            else:
                jobs.append(ClipJob(camera.name, str(project.root), version, str(src.path.resolve()), src.frames_dir))
    return jobs, skipped, problems


def _trained(camera: Camera) -> tuple[Project, str]:
    project = open_project(camera)
    version = project.current_version()
    if version is None:
        raise NotTrainedError(f"the project {project.root} has no trained model yet; run 'vidanom fleet train'")
    return project, version


def score_fleet(
    manifest: Manifest,
    engine: Engine | None = None,
    force: bool = False,
    out: Path | None = None,
    progress: Progress = no_progress,
    before_clip: Callable[[ClipJob], None] | None = None,
) -> FleetScores:
    """Score every camera's clips on the engine's workers; write the events table (events.csv and
    events.json in `out`, default: the manifest's folder). before_clip(job) runs in the worker before
    each clip (tests make a worker die with it)."""
    engine, started = engine or Engine(), time.monotonic()
    jobs, outcomes, problems = plan(manifest, force)
    workers = 0
    if jobs:
        with session(engine) as ray:
            workers = min(capacity(ray, engine), len(jobs))
            outcomes += _run(ray, engine, jobs, workers, progress, before_clip)
    order = {c.name: i for i, c in enumerate(manifest.cameras)}
    outcomes.sort(key=lambda c: (order[c.camera], c.clip))
    events = [e for c in outcomes for e in c.events]
    csv_path, json_path = write_events(events, out or manifest.folder)
    return FleetScores(outcomes, problems, events, csv_path, json_path, time.monotonic() - started, workers)


def _run(
    ray: Any,
    engine: Engine,
    jobs: list[ClipJob],
    workers: int,
    progress: Progress,
    before_clip: Callable[[ClipJob], None] | None,
) -> list[ClipOutcome]:
    """Score the jobs on `workers` ClipScorer actors; their outcomes."""
    tally = ray.remote(Tally).options(num_cpus=0).remote()
    actor = ray.remote(ClipScorer).options(**engine.options(), max_restarts=0)
    alive: list[Any] = []
    outcomes: list[ClipOutcome] = []
    tries: Counter[ClipJob] = Counter()
    frames = [0]

    def start() -> Any:
        alive.append(actor.remote(engine.device, engine.threads, tally, MODELS, before_clip))
        return alive[-1]

    def submit(worker: Any, job: ClipJob) -> Any:
        tries[job] += 1
        return worker.score.remote(job)

    def settle(worker: Any, job: ClipJob, outcome: Any) -> tuple[Any, ClipJob | None]:
        died = isinstance(outcome, ray.exceptions.RayActorError)
        if died and tries[job] <= engine.retries:
            return start(), job
        if not isinstance(outcome, ClipOutcome):
            error, outcome = outcome, ClipOutcome(job.camera, Path(job.source).name, job.source, "failed", job.version)
            outcome.error = (
                f"its worker died {tries[job]} time(s) ({type(error).__name__})"
                if died
                else f"the engine failed: {str(error).strip().splitlines()[-1]}"
            )
        outcomes.append(outcome)
        tick()
        return (start() if died else worker), None

    def tick() -> None:
        frames[0] += ray.get(tally.take.remote()).get("frames", 0)
        failed = sum(o.state == "failed" for o in outcomes)
        progress("clips", len(outcomes), len(jobs), {"failed": failed} if failed else {})
        progress("frames", frames[0], 0, {})

    try:
        run_jobs(ray, jobs, [start() for _ in range(workers)], submit, settle, tick)
    finally:
        for worker in alive:
            ray.kill(worker)
        ray.kill(tally)
    return outcomes


def write_events(events: list[dict[str, Any]], folder: Path) -> tuple[Path, Path]:
    """events.csv and events.json in folder, each written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, EVENT_COLUMNS)
    writer.writeheader()
    writer.writerows(events)
    folder.mkdir(parents=True, exist_ok=True)
    fsutil.write_text(folder / "events.csv", buffer.getvalue())
    fsutil.write_json(folder / "events.json", events)
    return folder / "events.csv", folder / "events.json"
