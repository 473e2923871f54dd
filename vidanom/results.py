"""What scoring a project's clips leaves behind, and what is read back from it: per clip a CSV of
every frame, a JSON summary (segments, peak, model version) and a timeline PNG; labels; evaluation.

Scoring takes no lock: several processes may score clips into one project at once, and while a
model trains (each uses the version current when it started; every file is written atomically).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics, plot
from .detector import Detector
from .errors import LabelsError
from .progress import Progress, no_progress
from .project import Project
from .scoring import segments
from .store import ScoreStore
from .video import DecodeReport, Source, find_sources


@dataclass(frozen=True)
class ClipScores:
    name: str  # the clip's file (or folder) name
    key: str  # what its results are stored under: the name, unless another source of that name has it
    fps: float  # of the scored frames (FrameConfig.rate)
    frames: int
    threshold: float
    version: str
    segments: list[dict[str, Any]]
    peak: float
    csv: Path
    summary: Path
    plot: Path
    warning: str | None = None


def score(
    project: Project,
    path: Path,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    detector: Detector | None = None,
) -> list[ClipScores]:
    """Score every clip named by path with the project's current model (or `detector`); write CSV,
    JSON summary and timeline PNG for each."""
    detector = detector or Detector.load(project)
    return [score_clip(project, src, detector, device, progress) for src in find_sources([path])]


def _score_arrays(
    detector: Detector, src: Source, device: torch.device | None, progress: Progress
) -> tuple[list[np.ndarray], DecodeReport]:
    """Times (n,), components (n, 6), scene names (n,), scores (n,) and verdicts (n,) of one clip's
    frames, scored while it decodes; only a few numbers per frame are kept."""
    report = DecodeReport()
    parts: list[list[np.ndarray]] = [[], [], [], [], []]
    for chunk in detector.score_source(src, device, report):
        for part, values in zip(parts, (chunk.times, chunk.components, chunk.scenes, chunk.scores, chunk.anomalous)):
            part.append(values)
        progress(f"score {src.name}", chunk.start + len(chunk.scores), 0, {})
    return [np.concatenate(p) for p in parts], report


def score_clip(
    project: Project,
    src: Source,
    detector: Detector,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> ClipScores:
    """Score one clip and write its CSV, JSON summary and timeline PNG into the project's scores/."""
    (times, comps, scenes, scores, flags), report = _score_arrays(detector, src, device, progress)
    sc, threshold, fps = detector.config.score, detector.threshold, detector.config.frames.rate(report.fps)
    edges = np.append(times, report.duration)  # the time of frame i, and of the clip's end at n
    segs = [
        {
            "start_frame": s.start,
            "end_frame": s.end,
            "start_time": round(float(edges[s.start]), 3),
            "end_time": round(float(edges[s.end]), 3),
            "peak_frame": s.peak_frame,
            "peak_time": round(float(edges[s.peak_frame]), 3),
            "peak_score": s.peak_score,
        }
        for s in segments(flags, scores, sc.min_segment)
    ]
    warning = _score_warning(report, len(scores), detector.mdn is not None, sc.mdn_warmup)
    summary = {
        "clip": src.name,
        "source": str(src.path.resolve()),
        "frames": int(len(scores)),
        "fps": fps,
        "duration": round(report.duration, 3),
        "model_version": detector.version,
        "threshold": threshold,
        "peak_score": float(scores.max()),
        "anomalous_frames": int(flags.sum()),
        "segments": segs,
        "warning": warning,
        "scene_frames": dict(zip(*map(np.ndarray.tolist, np.unique(scenes, return_counts=True)))),
    }
    store = ScoreStore.of(project)
    key = store.key_for(src)
    files = store.write(key, summary, times=times, components=comps, scenes=scenes.tolist(), scores=scores, flags=flags)
    plot.timeline(
        files.timeline,
        scores,
        threshold,
        times,
        [(int(s["start_frame"]), int(s["end_frame"])) for s in segs],
        title=key,
        duration=report.duration,
    )
    return ClipScores(
        src.name,
        key,
        fps,
        len(scores),
        threshold,
        str(detector.version),
        segs,
        float(scores.max()),
        files.csv,
        files.summary,
        files.timeline,
        warning,
    )


def _score_warning(report: DecodeReport, frames: int, has_mdn: bool, warmup: int) -> str | None:
    """What the user should know about a clip that scored, but not quite as a whole clip does."""
    notes = []
    if report.error:
        notes.append(f"decoding stopped after {report.frames} frames: {report.error}")
    if report.skipped:
        notes.append(f"{len(report.skipped)} unreadable image(s) skipped, e.g. {report.skipped[0]}")
    if has_mdn and frames <= warmup:
        notes.append(
            f"only {frames} frame(s), within the LSTM-MDN's warm-up of {warmup}: scored without its temporal (nll) part"
        )
    return "; ".join(notes) or None


def read_scored(project: Project, clip: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Stored combined scores (n,), frame times (n,) in seconds and summary of a scored clip (by its
    key, see store.ScoreStore)."""
    stored = ScoreStore.of(project).read(clip)
    return stored.scores, stored.times, stored.summary


def read_scores(project: Project, clip: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Stored combined scores (n,) and summary of a scored clip (by its key)."""
    scores, _, summary = read_scored(project, clip)
    return scores, summary


def scored_clips(project: Project) -> list[str]:
    """The keys of the project's scored clips (see store.ScoreStore)."""
    return ScoreStore.of(project).keys()


def read_labels(path: Path) -> dict[str, list[tuple[int, int]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise LabelsError(f"labels file {path} must map clip names to lists of [start, end] ranges")
    out = {}
    for name, ranges in data.items():
        try:
            out[name] = [(int(a), int(b)) for a, b in ranges]
        except (TypeError, ValueError) as exc:
            raise LabelsError(f"labels for '{name}' must be a list of [start, end] pairs") from exc
    return out


def label_vector(ranges: list[tuple[int, int]], n: int, clip: str) -> np.ndarray:
    y = np.zeros(n, dtype=np.int8)
    for a, b in ranges:
        if a < 0 or b < a or a >= n:
            raise LabelsError(f"label range [{a}, {b}) of '{clip}' lies outside its {n} frames")
        y[a : min(b, n)] = 1
    return y


def plot_clip(project: Project, clip: str, labels: Path | None = None, out: Path | None = None) -> Path:
    """Redraw a scored clip's timeline (named as store.ScoreStore.lookup takes it), with ground truth
    from a labels file (its entry for the clip's key or name)."""
    store = ScoreStore.of(project)
    key = store.lookup(clip)
    stored = store.read(key)
    truth = None
    if labels is not None:
        table = read_labels(labels)
        entry = next((n for n in (key, store.alias(key), stored.summary.get("clip")) if n in table), None)
        if entry is None:
            raise LabelsError(f"labels file {labels} has no entry for '{clip}'")
        truth = label_vector(table[entry], len(stored.scores), entry)
    path = out or store.files(key).timeline
    segs = [(s["start_frame"], s["end_frame"]) for s in stored.summary["segments"]]
    plot.timeline(
        path,
        stored.scores,
        stored.summary["threshold"],
        stored.times,
        segs,
        truth=truth,
        title=key,
        duration=float(stored.summary["duration"]),
    )
    return path


def evaluate(project: Project, labels: Path) -> dict[str, Any]:
    """Frame-level micro metrics over every labelled, scored clip, plus per-clip AUROC. A clip is
    labelled by its name, or by its key or alias where two scored clips share a name."""
    table = read_labels(labels)
    store = ScoreStore.of(project)
    keys: dict[str, str] = {}
    for name in sorted(table):
        found = store.named(name)
        if len(found) > 1:
            raise LabelsError(
                f"labels file {labels} names '{name}', which {len(found)} scored clips share; "
                f"label each by its own name: {', '.join(store.alias(k) for k in found)}"
            )
        if found:
            keys[name] = found[0]
    if not keys:
        raise LabelsError(
            f"none of the {len(table)} clips in {labels} has been scored; run 'vidanom score VIDEO...' on them first"
        )
    ys, ss, per_clip = [], [], {}
    for name, key in keys.items():
        s = store.read(key).scores
        y = label_vector(table[name], len(s), name)
        ys.append(y)
        ss.append(s)
        if 0 < y.sum() < len(y):
            per_clip[name] = metrics.auroc(y, s)
    result = metrics.summary(np.concatenate(ys), np.concatenate(ss))
    missing = sorted(set(table) - set(keys))
    return {**result, "clips": len(keys), "missing": missing, "per_clip_auroc": per_clip}
