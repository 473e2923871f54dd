"""What scoring a project's clips leaves behind, and what is read back from it: per clip a CSV of
every frame, a JSON summary (segments, peak, model version) and a timeline PNG; labels; evaluation.

Scoring takes no lock: several processes may score clips into one project at once, and while a
model trains (each uses the version current when it started; every file is written atomically).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import fsutil, metrics, plot
from .detector import Detector
from .errors import LabelsError, VidanomError
from .progress import Progress, no_progress
from .project import Project
from .scoring import segments
from .video import DecodeReport, Source, find_sources


@dataclass
class ClipScores:
    name: str
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
    """Times (n,), components (n, 3), scene names (n,), scores (n,) of one clip's frames, scored while
    it decodes; only a few numbers per frame are kept."""
    report = DecodeReport()
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for chunk in detector.score_source(src, device, report):
        for part, values in zip(parts, (chunk.times, chunk.components, chunk.scenes, chunk.scores)):
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
    (times, comps, scenes, scores), report = _score_arrays(detector, src, device, progress)
    sc, threshold, fps = detector.config.score, detector.threshold, detector.config.frames.rate(report.fps)
    flags = scores > threshold
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
    base = project.scores_dir / src.name
    csv_path, json_path, png = (base.with_name(base.name + ext) for ext in (".csv", ".json", ".png"))
    _write_csv(csv_path, comps, scenes.tolist(), scores, flags, times)
    fsutil.write_json(json_path, summary)
    plot.timeline(
        png,
        scores,
        threshold,
        times,
        [(int(s["start_frame"]), int(s["end_frame"])) for s in segs],
        title=src.name,
        duration=report.duration,
    )
    return ClipScores(
        src.name,
        fps,
        len(scores),
        threshold,
        str(detector.version),
        segs,
        float(scores.max()),
        csv_path,
        json_path,
        png,
        warning,
    )


def _write_csv(
    path: Path, comps: np.ndarray, scenes: list[str], scores: np.ndarray, flags: np.ndarray, times: np.ndarray
) -> None:
    """One row per frame, as csv.writer would write it (\\r\\n line ends; scene names are checked
    to need no quoting). times: (n,) seconds."""
    header = "frame,time,recon,kl,nll,still,scene,score,anomalous\r\n"
    n = len(scores)
    nll, still = (["" if v != v else f"{v:.5g}" for v in comps[:, j].tolist()] for j in (2, 3))  # NaN: empty
    rows = zip(
        range(n),
        times.tolist(),
        comps[:, 0].tolist(),
        comps[:, 1].tolist(),
        nll,
        still,
        scenes,
        scores.tolist(),
        flags.astype(np.int64).tolist(),
    )
    fsutil.write_text(path, header + "".join(map("%d,%.3f,%.5g,%.5g,%s,%s,%s,%.5g,%d\r\n".__mod__, rows)))


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
    file name). A summary written before durations were kept gets one: frames / fps."""
    base = project.scores_dir / clip
    try:
        summary = json.loads(base.with_name(clip + ".json").read_text())
        with open(base.with_name(clip + ".csv")) as f:
            rows = [(float(r["score"]), float(r["time"])) for r in csv.DictReader(f)]
        table = np.array(rows, dtype=np.float64).reshape(-1, 2)
    except (OSError, json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise VidanomError(f"no stored scores for clip '{clip}'; run 'vidanom score {clip}' first") from exc
    scores, times = table[:, 0].copy(), table[:, 1].copy()
    if not isinstance(summary, dict) or summary.get("frames") != len(scores) or not scores.size:
        raise VidanomError(
            f"the stored scores of clip '{clip}' are incomplete or damaged; score it again with 'vidanom score {clip}'"
        )
    if "duration" not in summary:
        try:
            summary["duration"] = len(scores) / float(summary["fps"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise VidanomError(
                f"the stored summary of clip '{clip}' is damaged; score it again with 'vidanom score {clip}'"
            ) from exc
    return scores, times, summary


def read_scores(project: Project, clip: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Stored combined scores (n,) and summary of a scored clip (by its file name)."""
    scores, _, summary = read_scored(project, clip)
    return scores, summary


def scored_clips(project: Project) -> list[str]:
    return sorted(p.name[:-5] for p in project.scores_dir.glob("*.json") if not p.name.startswith("."))


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
    scores, times, summary = read_scored(project, clip)
    truth = None
    if labels is not None:
        table = read_labels(labels)
        if clip not in table:
            raise LabelsError(f"labels file {labels} has no entry for '{clip}'")
        truth = label_vector(table[clip], len(scores), clip)
    path = out or project.scores_dir / f"{clip}.png"
    segs = [(s["start_frame"], s["end_frame"]) for s in summary["segments"]]
    plot.timeline(
        path, scores, summary["threshold"], times, segs, truth=truth, title=clip, duration=float(summary["duration"])
    )
    return path


def evaluate(project: Project, labels: Path) -> dict[str, Any]:
    """Frame-level micro metrics over every labelled, scored clip, plus per-clip AUROC."""
    table = read_labels(labels)
    scored = set(scored_clips(project))
    names = [n for n in sorted(table) if n in scored]
    if not names:
        raise LabelsError(
            f"none of the {len(table)} clips in {labels} has been scored; run 'vidanom score VIDEO...' on them first"
        )
    ys, ss, per_clip = [], [], {}
    for name in names:
        s, _ = read_scores(project, name)
        y = label_vector(table[name], len(s), name)
        ys.append(y)
        ss.append(s)
        if 0 < y.sum() < len(y):
            per_clip[name] = metrics.auroc(y, s)
    result = metrics.summary(np.concatenate(ys), np.concatenate(ss))
    missing = sorted(set(table) - scored)
    return {**result, "clips": len(names), "missing": missing, "per_clip_auroc": per_clip}
