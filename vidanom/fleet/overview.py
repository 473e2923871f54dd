"""What a fleet's projects hold: `fleet status` (each camera's model and clips scored or pending) and
`fleet report` (one HTML page of every camera's scored clips). Neither needs Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import cache
from ..errors import VidanomError
from ..progress import Progress, no_progress
from .manifest import Camera, Manifest, clips, expand, open_project
from .scoring import stored

if TYPE_CHECKING:
    import torch

    from ..report import Report


@dataclass
class CameraStatus:
    camera: str
    project: Path
    version: str | None = None  # the current model version (None: not trained, or no project)
    versions: int = 0
    cached: int = 0  # clips in the frame cache
    train: int = 0  # paths the train patterns name
    score: int = 0  # clips the score patterns name
    scored: int = 0  # of which the current version has scored
    problems: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.score - self.scored


def fleet_status(manifest: Manifest) -> tuple[list[CameraStatus], list[str]]:
    """Each camera's state, and the manifest's own problems (those of a camera are in its status)."""
    return [_status(manifest, camera) for camera in manifest.cameras], list(manifest.problems)


def _status(manifest: Manifest, camera: Camera) -> CameraStatus:
    out = CameraStatus(camera.name, camera.project)
    videos, out.problems = expand(camera.train, manifest.folder)
    out.train = len(videos)
    sources, found = clips(camera, manifest.folder)
    out.problems += found
    out.score = len(sources)
    try:
        project = open_project(camera)
    except VidanomError as exc:
        out.problems.append(str(exc))
        return out
    out.version, out.versions = project.current_version(), len(project.versions())
    out.cached = len(cache.clips(project.cache_dir, project.config.frames))
    if out.version is not None:
        out.scored = sum(stored(camera.name, project, src, out.version) is not None for src in sources)
    return out


def fleet_report(
    manifest: Manifest,
    out: Path | None = None,
    videos: bool = False,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> tuple[Report, list[str]]:
    """The report of every camera's scored clips (default folder: report/ beside the manifest), and
    a line per camera left out (no project)."""
    from ..report import build_report

    cameras, problems = [], list(manifest.problems)
    for camera in manifest.cameras:
        try:
            cameras.append((camera.name, open_project(camera)))
        except VidanomError as exc:
            problems.append(f"camera {camera.name}: {exc}")
    if not cameras:
        raise VidanomError(f"no camera of {manifest.path.name} has a project yet; run 'vidanom fleet train' first")
    return build_report(cameras, out or manifest.folder / "report", videos, device, progress), problems
