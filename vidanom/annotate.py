"""The annotated video: the clip as it was, with the error heatmap on its anomalous frames and a
strip along the bottom showing the score over the whole clip and a cursor at the current frame.

Streaming in constant memory: the scores come from the score pass (stored per clip), then a
second pass decodes the clip at its own resolution and encodes frame by frame (H.264 through
PyAV) into a temporary file beside the output, renamed into place only when complete. The strip
is drawn once per clip with numpy; each frame only gets its cursor.

The strip's horizontal axis is time (each frame's own, as scoring stored it), so a variable-frame-
rate clip shows its events where they happened. The video is written at a constant rate: the
clip's nominal one, or where the frames' times say otherwise (dropped frames) their mean rate,
so that the video lasts as long as the clip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from typing import cast

import numpy as np
import torch

from . import fsutil, zones
from .errors import VidanomError
from .heatmap import ErrorScale, overlay
from .project import Project
from .revisit import ScoredClip, revisit, scored_clip
from .store import ScoreStore
from .progress import Progress, no_progress

CODECS = ("libx264", "h264", "mpeg4")  # the first this FFmpeg can encode with
CONTAINERS = {
    ".mp4": "mp4",
    ".mkv": "matroska",
    ".mov": "mov",
    ".m4v": "mp4",
    ".avi": "avi",
    ".ts": "mpegts",
}  # output suffix → FFmpeg's muxer (all hold H.264)
STRIP_SHARE = 0.16  # of the frame's height, at the bottom
BACKGROUND = ((0, 0, 0), 0.55)  # colour, alpha of the strip's background...
SEGMENT = ((120, 10, 10), 0.8)  # ...and of the columns of detected segments
CURVE, HIGH = (110, 200, 255), (255, 225, 60)  # the score below and above the threshold
THRESHOLD, CURSOR, BORDER = (255, 80, 80), (255, 255, 255), (230, 30, 30)


class ScoreStrip:
    """The score over the whole clip as a small RGBA image, and its cursor for each frame.

    Each pixel column shows the range (min to max) of the score over the frames it covers, so a
    clip of many more frames than pixels reads as an envelope rather than a solid block.
    times, duration: (n,) each frame's time and the clip's end, in seconds, to place frames by;
    without them, frames are spread evenly.
    """

    def __init__(
        self,
        scores: np.ndarray,
        threshold: float,
        segments: list[tuple[int, int]],
        width: int,
        height: int,
        times: np.ndarray | None = None,
        duration: float | None = None,
    ) -> None:
        n, self.width = len(scores), width
        if times is None:
            times, duration = np.arange(n, dtype=np.float64), float(n)  # in frames
        times = np.asarray(times, dtype=np.float64)
        if duration is None or duration <= 0:
            duration = float(times[-1]) + 1.0 if float(times[-1]) > 0 else 1.0
        centres = (times + duration / (2 * n)) * width / duration  # each frame's centre, in columns
        self.columns = np.minimum(centres.astype(np.int64), width - 1)  # per frame
        lo, hi = _envelope(scores.astype(np.float64), width, self.columns, centres)
        top = max(float(hi.max()), threshold)
        bottom = min(float(lo.min()), threshold)
        span, margin = max(top - bottom, 1e-6), max(1, height // 10)

        def row(v: np.ndarray | float) -> np.ndarray:
            return np.round(margin + (top - np.asarray(v)) / span * (height - 1 - 2 * margin)).astype(np.int64)

        rgb = np.zeros((height, width, 3), np.float32)
        alpha = np.full((height, width, 1), BACKGROUND[1], np.float32)
        for a, b in segments:
            cols = slice(self.columns[a], self.columns[b - 1] + 1)
            rgb[:, cols], alpha[:, cols] = SEGMENT[0], SEGMENT[1]
        rows = np.arange(height)[:, None]
        thr = int(row(threshold))
        dashes = (np.arange(width) // 4) % 2 == 0
        rgb[thr, dashes], alpha[thr, dashes] = THRESHOLD, 1.0
        pad = height // 60  # a thicker line on a large frame
        curve = (rows >= row(hi)[None] - pad) & (rows <= row(lo)[None] + pad)  # (height, width)
        rgb[curve] = CURVE
        rgb[curve & (rows < thr)] = HIGH  # the part above the threshold
        alpha[curve] = 1.0
        self.premultiplied, self.keep = rgb * alpha, 1 - alpha

    def draw(self, frame: np.ndarray, index: int) -> np.ndarray:
        """frame: (H, W, 3) uint8 → the same with the strip along its bottom, cursor at frame index."""
        height = len(self.keep)
        out = frame.copy()
        bottom = out[-height:].astype(np.float32) * self.keep + self.premultiplied
        col, half = self.columns[index], max(1, self.width // 800)
        bottom[:, max(0, col - half) : col + half] = CURSOR
        out[-height:] = bottom.round().astype(np.uint8)
        return out


def _envelope(
    scores: np.ndarray, width: int, columns: np.ndarray, centres: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Min and max per pixel column of the polyline through (centre, score): (width,) each.

    centres: (n,) where each frame lies, in columns (default: spread evenly, (frame + 0.5) · width / n).
    Each column takes the line's values at its two edges (so neighbouring columns join up, and a
    short clip draws a line, not steps) and the score of every frame whose centre falls inside.
    """
    n = len(scores)
    if centres is None:
        centres = (np.arange(n) + 0.5) * width / n
    edges = np.interp(np.arange(width + 1, dtype=np.float64), centres, scores)
    lo, hi = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
    np.minimum.at(lo, columns, scores)
    np.maximum.at(hi, columns, scores)
    return lo, hi


def check_request(videos: list[Path], out: Path) -> None:
    """Refuse, before any work (such as scoring first), what cannot be annotated: more than one
    clip, or an output the video cannot be written to."""
    from .revisit import one_source

    if len(videos) != 1:
        raise VidanomError(f"--annotate takes one clip, not {len(videos)}; annotate them one at a time")
    one_source(videos[0])
    check_output(out)


def check_output(path: Path) -> None:
    """Refuse, before any work, an output the video cannot be written to."""
    if path.suffix.lower() not in CONTAINERS:
        raise VidanomError(f"cannot write a video to {path}: name it .mp4 (or {', '.join(list(CONTAINERS)[1:])})")
    if path.is_dir():
        raise VidanomError(f"{path} is a folder; name the video file to write")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise VidanomError(f"cannot write to {path.parent}: no permission; choose another output")


def _codec() -> str:
    for name in CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - not in this FFmpeg build
            continue
    raise VidanomError(f"this FFmpeg (PyAV) can encode none of {', '.join(CODECS)}; install PyAV's wheel")


@contextmanager
def open_encoder(path: Path, width: int, height: int, fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """A function that encodes one RGB frame (height, width, 3) uint8, into a temporary file that
    becomes `path` when the block ends without an error (and is removed otherwise).

    yuv420p, which every player reads, needs an even width and height: an odd one is padded by
    repeating the last row or column.
    """
    codec, pad = _codec(), ((0, height % 2), (0, width % 2), (0, 0))
    with fsutil.atomic_path(path) as tmp, av.open(str(tmp), "w", format=CONTAINERS[path.suffix.lower()]) as out:
        stream = cast(av.VideoStream, out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001)))
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 8_000_000
        else:
            stream.options = {"crf": "20", "preset": "veryfast"}

        def encode(frame: np.ndarray) -> None:
            frame = np.pad(frame, pad, mode="edge") if pad[0][1] or pad[1][1] else frame
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))

        yield encode
        out.mux(stream.encode())  # flush the encoder's delayed frames


@dataclass
class Annotated:
    path: Path
    frames: int
    fps: float
    width: int
    height: int
    note: str | None = None  # e.g. that an odd size was padded


def _mark(frame: torch.Tensor) -> torch.Tensor:
    """A thin red border: this frame is flagged anomalous. frame: (H, W, 3) uint8, changed in place."""
    t = max(2, min(frame.shape[:2]) // 100)
    colour = torch.tensor(BORDER, dtype=torch.uint8)
    frame[:t], frame[-t:], frame[:, :t], frame[:, -t:] = colour, colour, colour, colour
    return frame


def _rate(clip: ScoredClip) -> float:
    """Frames per second to write the annotated video at: the clip's nominal rate, unless its frames
    span a clearly different time (dropped frames): then their mean rate, to keep its length."""
    mean = len(clip.scores) / clip.duration if clip.duration > 0 else clip.fps
    return clip.fps if abs(mean / clip.fps - 1) < 0.02 else mean


def render(
    project: Project, clip: ScoredClip, out: Path, device: torch.device | None = None, progress: Progress = no_progress
) -> Annotated:
    """Write the annotated video of a scored clip to out (see the module docstring)."""
    scale = ErrorScale.from_calibration(clip.detector.calibration, clip.detector.config)
    flags, rate, mask = clip.flags, _rate(clip), clip.detector.config.score.mask
    with ExitStack() as stack:
        encode, strip, size = None, None, (0, 0)
        for chunk in revisit(project, clip, device, progress, "annotate"):
            if encode is None:
                size = chunk.full.shape[1:3]
                strip = ScoreStrip(
                    clip.scores,
                    clip.threshold,
                    clip.segments,
                    size[1],
                    max(8, round(size[0] * STRIP_SHARE)),
                    clip.times,
                    clip.duration,
                )
                encode = stack.enter_context(open_encoder(out, size[1], size[0], rate))
            levels = scale.levels(chunk.maps.err)
            for i, full in enumerate(chunk.full):
                t = chunk.start + i
                frame = torch.from_numpy(full)
                if flags[t]:
                    frame = _mark(overlay(frame, levels[i], scale.lut))
                assert strip is not None  # made with the encoder, at the first chunk
                encode(strip.draw(zones.draw(frame.numpy(), mask), t))
    odd = size[0] % 2 or size[1] % 2
    note = (
        f"{size[1]}x{size[0]} is odd: padded by one pixel to {size[1] + size[1] % 2}x{size[0] + size[0] % 2}"
        if odd
        else None
    )
    return Annotated(out, len(clip.scores), rate, size[1], size[0], note)


def annotate(
    project: Project,
    path: Path,
    out: Path | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> Annotated:
    """The annotated video of a scored clip (its video's path, or its name or key): to out, or
    scores/KEY.annotated.mp4."""
    if out is not None:
        check_output(out)
    clip = scored_clip(project, path)
    return render(project, clip, out or ScoreStore.of(project).files(clip.key).annotated, device, progress)
