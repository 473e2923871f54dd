"""vidanom: video anomaly detection for a static camera, with a β-VAE, an LSTM-MDN and continual learning.

The public API (everything else is private by convention and may change):

    import vidanom
    project = vidanom.Project.init(Path("cam1"))              # or vidanom.Project.open(Path("cam1"))
    vidanom.train(project, [Path("normal_videos")])           # → TrainResult (version, PSNR, threshold...)
    vidanom.update(project, [Path("night")], scene="night")   # a new normal scene, without forgetting
    for clip in vidanom.score(project, Path("new_clip.mp4")):  # CSV, JSON and PNG into the project
        print(clip.name, clip.segments)
    vidanom.evaluate(project, Path("labels.json"))             # frame-level micro AUROC and friends
    vidanom.accept(project, "new_clip.mp4", events=[2])        # a false alarm: learn that it is normal
    project.use_version("v0001")                              # undo: an earlier version current again

    detector = vidanom.Detector.load(project)                 # the current model, in memory
    for frame in detector.score_video("clip.mp4"):            # streaming per-frame records
        ...

Errors are vidanom.VidanomError and its subclasses; their message says what to do. The names below
are imported when first used, so `import vidanom` stays fast (torch loads with the first model).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.6.4"  # the one place the version is written (pyproject.toml reads it)

_EXPORTS = {
    "Project": "project",
    "Detector": "detector",
    "FrameScore": "detector",
    "extract": "training",
    "train": "training",
    "update": "training",
    "TrainResult": "training",
    "score": "results",
    "ClipScores": "results",
    "evaluate": "results",
    "accept": "accepting",
    "accept_events": "accepting",
    "AcceptResult": "accepting",
    "ProjectConfig": "config",
    "VidanomError": "errors",
    "VideoError": "errors",
    "ProjectError": "errors",
    "ConfigError": "errors",
    "NotTrainedError": "errors",
    "LabelsError": "errors",
    "LockError": "errors",
}
__all__ = [
    "AcceptResult",
    "ClipScores",
    "ConfigError",
    "Detector",
    "FrameScore",
    "LabelsError",
    "LockError",
    "NotTrainedError",
    "Project",
    "ProjectConfig",
    "ProjectError",
    "TrainResult",
    "VidanomError",
    "VideoError",
    "accept",
    "accept_events",
    "evaluate",
    "extract",
    "score",
    "train",
    "update",
]

if TYPE_CHECKING:
    from .accepting import AcceptResult, accept, accept_events
    from .config import ProjectConfig
    from .detector import Detector, FrameScore
    from .errors import ConfigError, LabelsError, LockError, NotTrainedError, ProjectError, VidanomError, VideoError
    from .project import Project
    from .results import ClipScores, evaluate, score
    from .training import TrainResult, extract, train, update


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vidanom' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
