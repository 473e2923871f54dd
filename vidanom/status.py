"""What `vidanom status` shows of a project, as a typed summary: its config, cached clips, model
versions and their lineage, where vidanom.json and the current model disagree, an interrupted run,
and the scored clips. The CLI only formats it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cache
from .config import calibrated_with, disagreements, to_dict, trained_in
from .errors import VidanomError
from .project import Project


@dataclass(frozen=True)
class VersionRow:
    """One model version, as its version.json describes it."""

    name: str
    current: bool
    scene: str
    parent: str | None
    how: str  # the strategy, with "/stage" for a stage other than all (e.g. train/calibrate)
    frames: int | None  # of footage it learned from
    psnr: float | None  # of its reconstructed held-out frames, in dB
    threshold: float
    false_alarms: float | None  # the share of new normal frames expected over the threshold
    accepted: tuple[str, ...] = ()  # what an accept learned as normal: 'clip event N (from-to s)' each


@dataclass(frozen=True)
class Interrupted:
    """A train or update run that stopped before it published (models/.partial): --resume continues it."""

    command: str  # "train", "update", or "training" where its record is unreadable
    scene: str | None


@dataclass(frozen=True)
class ProjectStatus:
    root: Path
    config: dict[str, Any]  # as vidanom.json holds it (config.to_dict)
    cached_clips: int  # at the project's frame settings
    cached_frames: int
    cache_bytes: int  # of every cached clip
    versions: list[VersionRow]
    current: str | None
    # 'key is X in vidanom.json, Y in model v0003', for the current model:
    trained_otherwise: list[str]  # input settings and architecture (it scores as it was trained)
    calibrated_otherwise: list[str]  # score settings its threshold was set for
    problems: list[str]  # what could not be read (the current model)
    interrupted: Interrupted | None
    scored: list[str]  # the scored clips' names


def project_status(project: Project) -> ProjectStatus:
    """The status of a project; a current model that cannot be read is a problem, not an error."""
    from .detector import Detector  # imported here: it brings in the models
    from .results import scored_clips

    clips = cache.clips(project.cache_dir, project.config.frames)
    current = project.current_version()
    trained: list[str] = []
    calibrated: list[str] = []
    problems: list[str] = []
    if current is not None:
        try:
            model = Detector.of_version(project)
        except VidanomError as exc:
            problems.append(str(exc))
        else:
            name = f"model {current}"
            trained = disagreements(model.config, project.config, trained_in, name)
            calibrated = disagreements(model.config, project.config, calibrated_with, name)
    return ProjectStatus(
        project.root.resolve(),
        to_dict(project.config),
        len(clips),
        sum(c.frames for c in clips),
        cache.size_bytes(project.cache_dir),
        [_row(v, current) for v in project.versions()],
        current,
        trained,
        calibrated,
        problems,
        _interrupted(project),
        scored_clips(project),
    )


def _row(info: dict[str, Any], current: str | None) -> VersionRow:
    name = str(info.get("version", "?"))
    how = str(info.get("strategy", "")) + ("" if info.get("stage") == "all" else f"/{info.get('stage', '')}")
    return VersionRow(
        name,
        name == current,
        str(info.get("scene", "")),
        info.get("parent"),
        how,
        info.get("frames"),
        info.get("psnr"),
        float(info.get("threshold", 0.0)),
        info.get("expected_false_alarms"),
        tuple(
            f"{a.get('clip')}{' event ' + str(a['event']) if a.get('event') else ''} "
            f"({float(a.get('from', 0)):.1f}-{float(a.get('to', 0)):.1f} s)"
            for a in info.get("accepted") or []
        ),
    )


def _interrupted(project: Project) -> Interrupted | None:
    run = project.interrupted_run()
    if run is None:
        return None
    if not run:
        return Interrupted("training", None)
    return Interrupted("train" if run.get("strategy") == "train" else "update", run.get("scene") or None)
