"""Anomalous events found live, frame by frame, as the scores come (see vidanom.watch)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..scoring import anomalous


class EventTracker:
    """Anomalous events found frame by frame: an event starts at a frame whose score is above the
    threshold and ends at the first frame back under it (end exclusive); one shorter than min_len
    frames is not reported. On a whole clip, the same as score.segments.

    Times are the frames' own (seconds); dt (seconds per frame number) only stands in where a time
    is not known: frames given without times, and an end after the last frame seen.
    """

    def __init__(self, threshold: float, min_len: int, dt: float) -> None:
        self.threshold, self.min_len, self.dt = threshold, min_len, dt
        self.start: int | None = None
        self.start_time = self.peak_time = 0.0
        self.peak, self.peak_score, self.count = 0, -math.inf, 0
        self.last: tuple[int, float] | None = None  # the latest frame's number and time

    def update(self, frames: np.ndarray, scores: np.ndarray, times: np.ndarray | None = None) -> list[dict[str, Any]]:
        """frames: (n,) frame numbers, increasing; scores: (n,); times: (n,) their times in seconds
        (default frames · dt) → the events that ended here."""
        out = []
        times = np.asarray(frames) * self.dt if times is None else times
        flags = anomalous(scores, self.threshold).tolist()
        for f, s, t, flagged in zip(frames.tolist(), scores.tolist(), np.asarray(times, np.float64).tolist(), flags):
            if flagged:
                if self.start is None:
                    self.start, self.start_time, self.peak_score = f, t, -math.inf
                if s > self.peak_score:
                    self.peak, self.peak_time, self.peak_score = f, t, s
            elif self.start is not None:
                out += self.finish(f, t)
            self.last = (f, t)
        return out

    def finish(self, end: int, end_time: float | None = None) -> list[dict[str, Any]]:
        """Close the open event, if any, at frame end (exclusive), whose time is end_time: at the end
        of the stream, where it defaults to the last frame's time plus dt per frame number after it."""
        start, self.start = self.start, None
        if start is None or end - start < self.min_len:
            return []
        if end_time is None:
            f, t = self.last if self.last is not None else (0, 0.0)
            end_time = t + (end - f) * self.dt
        self.count += 1
        return [
            {
                "event": self.count,
                "start_frame": start,
                "end_frame": end,
                "peak_frame": self.peak,
                "start_time": round(self.start_time, 3),
                "end_time": round(end_time, 3),
                "peak_time": round(self.peak_time, 3),
                "peak_score": self.peak_score,
                "duration": round(end_time - self.start_time, 3),
            }
        ]
