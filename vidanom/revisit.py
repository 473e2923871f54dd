"""Going back over a scored clip to draw on it (annotated video, gallery).

Scoring keeps a few floats per frame, never the frames. To draw the error on the frames, a second
pass decodes the clip again, at its own resolution, beside the small frames the model sees, and
runs the β-VAE on those (the error maps need no LSTM-MDN). The stored scores say which frames are
anomalous; they must come from the model in use, so that the maps match them.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import VidanomError, VideoError
from .detector import Detector
from .project import Project
from .scoring import Maps, make_scorer
from .store import ScoreStore
from .progress import Progress, no_progress
from .video import DecodeReport, Source, find_sources, iter_full_chunks

FULL_CHUNK = 8  # frames per chunk of the second pass: 8 RGB frames of 1080p are 50 MB


@dataclass(frozen=True)
class ScoredClip:
    """One clip, its stored scores and the model that made them."""

    src: Source
    key: str  # what its results are stored under (store.ScoreStore)
    scores: np.ndarray  # (n,) combined score per scored frame
    flags: np.ndarray  # (n,) bool: the frames scoring flagged anomalous
    threshold: float
    fps: float  # scored frames per second (FrameConfig.rate)
    segments: list[tuple[int, int]]  # detected segments [start, end) in frames
    detector: Detector  # the current version, which made the scores
    times: np.ndarray  # (n,) each scored frame's time in seconds, as stored
    duration: float  # seconds: the clip's end

    @property
    def rate(self) -> float:
        """Scored frames per second as the frames' times have them: one over the median step between
        them (the nominal fps where the times do not say)."""
        step = float(np.median(np.diff(self.times))) if len(self.times) > 1 else 0.0
        return 1.0 / step if step > 0 else self.fps


def one_source(path: Path) -> Source:
    """The single clip named by path (a video file or a folder of frames)."""
    sources = find_sources([path])
    if len(sources) != 1:
        raise VideoError(f"{path} holds {len(sources)} clips; pass one video file or frame folder")
    return sources[0]


def scored_clip(project: Project, clip: Path) -> ScoredClip:
    """The clip named by the path of its video or as the store's lookup takes it (a scored clip's
    name, key or alias), with its stored scores, which must come from the current model."""
    store = ScoreStore.of(project)
    if not clip.exists() and not store.named(str(clip)):
        one_source(clip)  # says that nothing is there
    key = store.lookup(clip)
    stored = store.read(key)
    src = one_source(clip if clip.exists() else Path(stored.summary["source"]))
    detector = Detector.load(project)
    summary = stored.summary
    if summary.get("model_version") != detector.version:
        raise VidanomError(
            f"the stored scores of {key} come from model {summary.get('model_version')}, "
            f"not the current {detector.version}; score it again with 'vidanom score {src.path}'"
        )
    return ScoredClip(
        src,
        key,
        stored.scores,
        stored.flags,
        float(summary["threshold"]),
        float(summary["fps"]),
        [(int(s["start_frame"]), int(s["end_frame"])) for s in summary.get("segments", [])],
        detector,
        stored.times,
        float(summary["duration"]),
    )


@dataclass
class Chunk:
    """A run of consecutive frames of the second pass."""

    start: int  # frame number of the first
    small: np.ndarray  # (n, h, w, C) uint8 as the model sees them
    full: np.ndarray  # (n, H, W, 3) uint8 RGB at the source's resolution
    maps: Maps  # err (n, h, w), and recon (n, C_in, h, w) when asked for


def revisit(
    project: Project,
    clip: ScoredClip,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    task: str = "draw",
    recon: bool = False,
) -> Generator[Chunk, None, None]:
    """Decode the clip again, at full resolution, with the VAE's error maps: chunks in order.

    Raises VidanomError if the clip no longer has the frames it was scored with.
    """
    from .inference import DECODING_THREADS, for_inference, scoring_threads, torch_threads
    from .prefetch import prefetch

    device, cfg, n = device or torch.device("cpu"), clip.detector.config, len(clip.scores)
    scorer = make_scorer(
        for_inference(clip.detector.vae, device), None, cfg, device, clip.detector.calibration.frame_interval
    )
    scorer.keep_recon = recon
    changed = f"{clip.src.name} no longer decodes to the {n} frames it was scored with; score it again"
    chunks = prefetch(
        iter_full_chunks(clip.src, cfg.frames, FULL_CHUNK, DecodeReport(), DECODING_THREADS),
        depth=2,
        name=f"vidanom-decode {clip.src.name}",
    )
    done = 0
    try:
        with torch_threads(scoring_threads(device)):
            for small, full in chunks:
                if done + len(small) > n:
                    raise VidanomError(changed)
                yield Chunk(done, small, full, scorer.maps(small, clip.times[done : done + len(small)]))
                done += len(small)
                progress(f"{task} {clip.src.name}", done, n, {})
    finally:
        chunks.close()  # on an error or Ctrl-C: stop the decoding thread and close the file
    if done != n:
        raise VidanomError(changed)
