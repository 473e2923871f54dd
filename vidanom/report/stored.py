"""What the report reads of a project: its scored clips and its model versions.

read_stored reads them through the store (vidanom.store), which alone knows how scoring stores
its results; the rest of the report works on the dataclasses below.
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

    name: str  # the clip's key: its file name, unless another source of that name has it (store.ScoreStore)
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
    """The project's scored clips (in key order) and model versions; unreadable clips become problems."""
    from ..store import ScoreStore  # imported here: it pulls in torch and the models

    store = ScoreStore.of(project)
    clips, problems = [], []
    for key in store.keys():
        files = store.files(key)
        try:
            stored = store.read(key)
            scored_at = max(f.stat().st_mtime for f in (files.csv, files.summary))
        except (VidanomError, OSError) as exc:
            problems.append(str(exc))
            continue
        clips.append(
            StoredClip(key, stored.summary, stored.scores, stored.times, scored_at, files.timeline, files.annotated)
        )
    versions = {str(v.get("version")): v for v in project.versions()}
    return Stored(clips, versions, project.current_version(), problems)
