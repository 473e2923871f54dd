"""Where scoring leaves a clip's results, and how they are found again: the one owner of their names,
their layout and the CSV's format.

    scores/KEY.csv             one row per frame: frame, time, recon, kl, nll, still, frozen, direction, scene,
                               score, anomalous
    scores/KEY.json            the summary: clip, source, frames, fps, duration, segments, threshold, model...
    scores/KEY.png             the timeline
    scores/KEY.annotated.mp4   the annotated video (vidanom annotate, report --videos)
    scores/KEY.gallery.png     the gallery (vidanom gallery)
    scores/.KEY.source         which source owns a plain key (see below)

A clip's key is its file name (`clip.mp4`), which a person recognises. A second source of that name
(another folder's `clip.mp4`) gets the name and a short hash of its path (`clip.mp4~1f2e3d4c`), so two
sources never share results. Which source owns the plain name is recorded the first time results are
written under it (`.KEY.source`, created in one step, so of two scorers at once only one takes it);
results written before that record existed belong to the source their summary names.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import fsutil
from .errors import VidanomError
from .project import Project
from .video import Source, find_sources

COLUMNS = ("frame", "time", "recon", "kl", "nll", "still", "frozen", "direction", "scene", "score", "anomalous")
HASH = 8  # hex digits of the path's hash that tell apart two sources of one name
_HASHED = re.compile(rf"(.+)~[0-9a-f]{{{HASH}}}")


@dataclass(frozen=True)
class ClipFiles:
    """The files of one clip's results (any of them may not exist yet)."""

    key: str
    csv: Path
    summary: Path
    timeline: Path
    annotated: Path
    gallery: Path


@dataclass(frozen=True)
class StoredScores:
    """A scored clip's results as scoring stored them."""

    key: str
    scores: np.ndarray  # (n,) the combined score of each scored frame
    times: np.ndarray  # (n,) each frame's time in seconds
    flags: np.ndarray  # (n,) bool: the frames scoring flagged anomalous
    summary: dict[str, Any]  # the JSON summary (with a duration, also where an old one had none)


class ScoreStore:
    """The results of the clips scored into one folder (a project's scores/)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def of(cls, project: Project) -> ScoreStore:
        return cls(project.scores_dir)

    def files(self, key: str) -> ClipFiles:
        return ClipFiles(
            key, *(self.folder / (key + ext) for ext in (".csv", ".json", ".png", ".annotated.mp4", ".gallery.png"))
        )

    def keys(self) -> list[str]:
        """Every scored clip's key, in order."""
        return sorted(p.name[:-5] for p in self.folder.glob("*.json") if not p.name.startswith("."))

    # -- which key a source's results have ---------------------------------------------------------

    def key_for(self, src: Source) -> str:
        """The key to write src's results under: its name, unless another source owns that name (then
        the name and a hash of its path). Takes the name for src when nobody owns it yet."""
        plain, path = src.name, _path(src)
        owner = self._owner(plain)
        if owner is None:
            if fsutil.create_once(self._claim(plain), path):
                return plain
            owner = self._owner(plain)
        return plain if owner == path else self._hashed(src)

    def find(self, src: Source) -> str | None:
        """The key of src's stored results, or None if it has none."""
        for key in (src.name, self._hashed(src)):
            if self._owner(key) == _path(src) and self.files(key).summary.is_file():
                return key
        return None

    def _hashed(self, src: Source) -> str:
        return _keyed(src.name, _path(src))

    def _claim(self, key: str) -> Path:
        return self.folder / f".{key}.source"

    def _owner(self, key: str) -> str | None:
        """The source whose results a key holds: as recorded, else as their summary says."""
        try:
            return self._claim(key).read_text()
        except OSError:
            pass
        try:
            source = json.loads(self.files(key).summary.read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            return None
        return source if isinstance(source, str) else None

    # -- naming a stored clip ---------------------------------------------------------------------------

    def alias(self, key: str) -> str:
        """The name that no other stored clip shares: the key, or for a clip that holds its plain name
        the name and the hash of its source's path (as a second source of that name is keyed)."""
        owner = self._owner(key)
        if _HASHED.fullmatch(key) or owner is None:
            return key
        return _keyed(key, owner)

    def named(self, name: str) -> list[str]:
        """The keys of the stored clips a person may mean by a name: those of that clip name, or the
        one whose key or alias it is."""
        return [k for k in self.keys() if _name(k) == name or k == name or self.alias(k) == name]

    def resolve(self, name: str) -> str:
        """The key of the stored clip a person names: by its name, when no other stored clip has it,
        or by its alias (which a hashed key is). VidanomError when there is none, or several."""
        found = self.named(name)
        if len(found) == 1:
            return found[0]
        if not found:
            raise VidanomError(f"no stored scores for clip '{name}'; run 'vidanom score {name}' first")
        choices = ", ".join(f"{self.alias(k)} (from {self._owner(k)})" for k in found)
        raise VidanomError(f"{len(found)} scored clips are named {name}: name one as {choices}, or by its video's path")

    def lookup(self, clip: str | Path) -> str:
        """The key of the stored clip named by the path of its video (where that exists) or as
        resolve() takes it."""
        path = Path(clip)
        if not path.exists():
            return self.resolve(str(clip))
        sources = find_sources([path])
        key = self.find(sources[0]) if len(sources) == 1 else None
        if key is None:
            raise VidanomError(f"no stored scores for {path}; run 'vidanom score {path}' first")
        return key

    # -- reading and writing ---------------------------------------------------------------------------

    def read(self, key: str) -> StoredScores:
        """A scored clip's stored results. A summary written before durations were kept gets one:
        frames / fps. VidanomError when they are missing, incomplete or damaged."""
        files = self.files(key)
        try:
            summary = json.loads(files.summary.read_text())
            with open(files.csv) as f:
                rows = [(float(r["score"]), float(r["time"]), r["anomalous"] == "1") for r in csv.DictReader(f)]
            table = np.array(rows, dtype=np.float64).reshape(-1, 3)
        except (OSError, json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            raise VidanomError(f"no stored scores for clip '{key}'; run 'vidanom score {key}' first") from exc
        damaged = f"the stored scores of clip '{key}' are incomplete or damaged; score it again with 'vidanom score'"
        if not isinstance(summary, dict) or summary.get("frames") != len(table) or not len(table):
            raise VidanomError(damaged)
        if "duration" not in summary:
            try:
                summary["duration"] = len(table) / float(summary["fps"])
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                raise VidanomError(damaged) from exc
        return StoredScores(key, table[:, 0].copy(), table[:, 1].copy(), table[:, 2] > 0, summary)

    def write(
        self,
        key: str,
        summary: dict[str, Any],
        *,
        times: np.ndarray,
        components: np.ndarray,
        scenes: list[str],
        scores: np.ndarray,
        flags: np.ndarray,
    ) -> ClipFiles:
        """Write a clip's CSV (one row per frame: times, components (n, 6), scene names, scores and
        flags, each (n,)) and JSON summary, each atomically; its files."""
        files = self.files(key)
        fsutil.write_text(files.csv, _csv(times, components, scenes, scores, flags))
        fsutil.write_json(files.summary, summary)
        return files


def _path(src: Source) -> str:
    return str(src.path.resolve())


def _keyed(name: str, source: str) -> str:
    """The key of a second source of a name: the name and a short hash of the source's path."""
    return f"{name}~{hashlib.sha1(source.encode()).hexdigest()[:HASH]}"


def _name(key: str) -> str:
    """The clip's name in its key (the key, less the hash of a second source of that name)."""
    m = _HASHED.fullmatch(key)
    return m.group(1) if m else key


def _csv(times: np.ndarray, comps: np.ndarray, scenes: list[str], scores: np.ndarray, flags: np.ndarray) -> str:
    """The rows as csv.writer would write them (\\r\\n line ends; scene names are checked to need no
    quoting); a missing (NaN) nll, still, frozen or direction is an empty field."""
    n = len(scores)
    nll, still, frozen, direction = (["" if v != v else f"{v:.5g}" for v in comps[:, j].tolist()] for j in (2, 3, 4, 5))
    rows = zip(
        range(n),
        times.tolist(),
        comps[:, 0].tolist(),
        comps[:, 1].tolist(),
        nll,
        still,
        frozen,
        direction,
        scenes,
        scores.tolist(),
        flags.astype(np.int64).tolist(),
    )
    header = ",".join(COLUMNS) + "\r\n"
    return header + "".join(map("%d,%.3f,%.5g,%.5g,%s,%s,%s,%s,%s,%.5g,%d\r\n".__mod__, rows))
