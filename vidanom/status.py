"""What `vidanom status` shows of a project, as a typed summary: its config, cached clips, model
versions and their lineage, where vidanom.json and the current model disagree, an interrupted run,
and the scored clips. The CLI only formats it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import cache
from .config import ScoreConfig, calibrated_with, disagreements, to_dict, trained_in
from .errors import VidanomError
from .project import Project

if TYPE_CHECKING:
    from .normality import Calibration


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
class SceneRow:
    """One scene of the current model: what its frames are scored with, and what its calibration
    rests on (carry.measured, carry.carried_basis), so how sure it is."""

    name: str
    components: list[str]  # those that count in its score (a model of an earlier release: recon alone)
    on: str  # "footage", "kept frames" (measured in this version), "carried" or "unknown"
    measured_on: str | None  # where carried: what it was last measured on, in version `since`
    frames: int | None  # training frames it was last measured on
    held_out: int | None  # held-out frames its scales and threshold were set on
    updates: int  # updates it was carried through since it was last measured
    since: str | None
    drift: dict[str, float]  # how far those updates moved its statistics, summed, per component (carry.Drift)
    threshold: float
    false_alarms: float | None  # the share of its new normal frames expected over its threshold
    sure: float | None  # how sure its threshold is to flag at most the target share (calibration.threshold_sureness)


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
    scenes: list[SceneRow]  # the current model's
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
    scenes: list[SceneRow] = []
    if current is not None:
        try:
            model = Detector.of_version(project)
        except VidanomError as exc:
            problems.append(str(exc))
        else:
            name = f"model {current}"
            trained = disagreements(model.config, project.config, trained_in, name)
            calibrated = disagreements(model.config, project.config, calibrated_with, name)
            scenes = scene_rows(model.calibration, model.info, model.scoring(project.config).config.score)
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
        scenes,
        _interrupted(project),
        scored_clips(project),
    )


def scene_rows(cal: Calibration, info: dict[str, Any], score: ScoreConfig) -> list[SceneRow]:
    """Each scene of a model's calibration (and its version.json's "calibration", where it has one)."""
    from .calibration import threshold_sureness
    from .scoring import counted

    basis = info.get("calibration") or {}
    out = []
    for row, name in enumerate(cal.scenes):
        b = basis.get(name) or {"on": "footage" if name == info.get("scene") else "unknown"}
        held = b.get("held_out")
        if held is None and name == info.get("scene"):  # a version from before scenes had their record
            held = info.get("held_out_frames")
        out.append(
            SceneRow(
                name,
                counted(cal, row, score.weights),
                str(b.get("on", "unknown")),
                b.get("measured_on"),
                b.get("frames"),
                held,
                int(b.get("updates") or 0),
                b.get("since"),
                {k: float(v) for k, v in (b.get("drift_total") or {}).items()},
                float(cal.thresholds[row]),
                None if cal.false_alarms is None else float(cal.false_alarms[row]),
                None if held is None else threshold_sureness(int(held), score.false_alarms),
            )
        )
    return out


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
