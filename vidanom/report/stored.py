"""What the report reads of a project: its scored clips and its model versions.

read_stored is the one place that knows how scoring stores its results; the rest of the report
works on the dataclasses below, so a new storage layout needs only this function re-pointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VidanomError
from ..project import Project


@dataclass
class StoredClip:
    """One scored clip as scoring left it."""

    name: str  # the clip's file name, as scoring named it
    summary: dict[str, Any]  # its JSON summary: source, frames, duration, threshold, segments, model_version...
    scores: np.ndarray  # (n,) combined score per frame
    times: np.ndarray  # (n,) each frame's time in seconds
    scored_at: float  # when its stored scores were written (mtime): anything older was made from other scores
    timeline: Path  # the timeline PNG scoring draws (may be missing)
    annotated: Path  # where `vidanom annotate CLIP` writes its video by default (may be missing)


@dataclass
class Stored:
    """A project's scored clips and model versions."""

    clips: list[StoredClip]
    versions: dict[str, dict[str, Any]]  # version name → its version.json
    current: str | None  # the version in use
    problems: list[str]  # one line per clip whose stored scores cannot be read


def read_stored(project: Project) -> Stored:
    """The project's scored clips (in name order) and model versions; unreadable clips become problems."""
    from .. import results  # imported here: it pulls in torch and the models

    clips, problems = [], []
    for name in results.scored_clips(project):
        files = [project.scores_dir / f"{name}{suffix}" for suffix in (".csv", ".json", ".png", ".annotated.mp4")]
        try:
            scores, times, summary = results.read_scored(project, name)
            scored_at = max(f.stat().st_mtime for f in files[:2])
        except (VidanomError, OSError) as exc:
            problems.append(str(exc))
            continue
        clips.append(StoredClip(name, summary, scores, times, scored_at, files[2], files[3]))
    versions = {str(v.get("version")): v for v in project.versions()}
    return Stored(clips, versions, project.current_version(), problems)
