"""Live scoring of a stream (a URL, a camera, a file as it plays or grows), one event at a time.

A producer thread decodes with PyAV and puts frames, numbered and stamped with their arrival
time, into a bounded queue; the caller's thread scores what has arrived, in one batch, and
reports each anomalous event as soon as it ends (the score falls back under the threshold).

Latency stays bounded on a live source (a URL, a camera, or a file paced in real time): a frame
that waited longer than max_latency when the scorer gets to it is dropped, and so is the oldest
frame when the queue is full. A file read as fast as it decodes (or followed while it grows)
loses nothing: the decoder waits for the scorer instead, so the events are those `score` finds.

A gap of dropped frames breaks what the model sees over time: the motion plane (this frame minus
the one before) and the LSTM-MDN's sequence. After a gap the scorer starts afresh, as at the
start of a clip: the first frame's motion is zero, the LSTM-MDN is silent for its warm-up frames,
and the score's moving average restarts. Frame numbers count the dropped frames, and an event
open across a gap goes on while the score stays above the threshold.

Event times are the frames' own times (from their timestamps, see video.iter_live), so they stay
true on a variable-frame-rate source, and match those `score` writes for the same file.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .detector import Detector
from .project import Project
from .scoring import Scorer, iter_scores, make_scorer
from .video import DecodeReport, iter_live

LIVE_QUEUE = 256  # frames waiting to be scored, at most (at the model's size: 4 kB each at 64×64 gray)
POLL = 0.1  # seconds between checks of the stop flag while waiting


@dataclass
class WatchOptions:
    realtime: bool = False  # pace a file at its frame rate, as if it were live
    follow: float = 0.0  # follow a growing file; it ends after this many seconds without growth (0: no)
    max_latency: float = 2.0  # seconds a frame may wait on a live source before it is dropped
    input_options: dict[str, str] = field(default_factory=dict)  # FFmpeg options for the input

    def live(self, source: str) -> bool:
        """Whether frames come at their own pace (and may be dropped) rather than as fast as read."""
        return self.realtime or "://" in source or source.startswith("/dev/")


@dataclass
class WatchStatus:
    """What watching has done so far; the last one is the summary."""

    source: str
    version: str
    threshold: float
    fps: float = 0.0
    frames: int = 0  # scored
    dropped: int = 0  # skipped to keep up
    events: int = 0
    score: float = math.nan  # of the latest frame
    latency: float = 0.0  # seconds from the arrival of the latest batch's first frame to its scores
    seconds: float = 0.0  # since watching started
    in_event: bool = False  # the latest frame is part of an event still going on
    interrupted: bool = False  # ended by Ctrl-C


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

    def update(self, frames: np.ndarray, scores: np.ndarray, times: np.ndarray | None = None
               ) -> list[dict[str, Any]]:
        """frames: (n,) frame numbers, increasing; scores: (n,); times: (n,) their times in seconds
        (default frames · dt) → the events that ended here."""
        out = []
        times = np.asarray(frames) * self.dt if times is None else times
        for f, s, t in zip(frames.tolist(), scores.tolist(), np.asarray(times, np.float64).tolist()):
            if s > self.threshold:
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
        return [{"event": self.count, "start_frame": start, "end_frame": end, "peak_frame": self.peak,
                 "start_time": round(self.start_time, 3), "end_time": round(end_time, 3),
                 "peak_time": round(self.peak_time, 3), "peak_score": self.peak_score,
                 "duration": round(end_time - self.start_time, 3)}]


@dataclass
class _Frame:
    index: int  # frame number in the stream, after the stride, dropped frames included
    pixels: np.ndarray  # (h, w, C) uint8 at the project's size
    arrived: float  # time.monotonic() when it was decoded
    time: float  # seconds from the stream's first frame, from its timestamp (see video.iter_live)


_END = object()


class _Feed:
    """The frames of one source, decoded in a thread into a bounded queue (see the module docstring)."""

    def __init__(self, frames: Iterator[tuple[np.ndarray, float]], report: DecodeReport, live: bool, pace: bool,
                 depth: int) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=LIVE_QUEUE if live else depth)
        self.stop, self.live, self.pace = threading.Event(), live, pace
        self.dropped = 0  # by the producer, when the queue was full
        self._frames, self._report = frames, report
        self._thread = threading.Thread(target=self._produce, name="vidanom-watch-decode", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        start = None
        try:
            for i, (pixels, t) in enumerate(self._frames):
                start = time.monotonic() - t if start is None else start
                if self.pace:  # a file played at its own rate: a frame is due at its time after the first
                    wait = start + t - time.monotonic()
                    if wait > 0 and self.stop.wait(wait):
                        return
                if not self._put(_Frame(i, pixels, time.monotonic(), t)):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the scoring thread, which raises it
            self._put(exc)
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()  # here, in the thread that decodes: closes the input

    def _put(self, item: Any) -> bool:
        """Queue item: on a live source make room by dropping the oldest frame, else wait for room."""
        while not self.stop.is_set():
            try:
                if self.live:
                    self.q.put_nowait(item)
                else:
                    self.q.put(item, timeout=POLL)
                return True
            except queue.Full:
                if self.live:
                    try:
                        self.q.get_nowait()  # only this thread adds, so this makes room for the put
                        self.dropped += 1
                    except queue.Empty:
                        pass
        return False

    def batches(self, most: int) -> Iterator[list[_Frame]]:
        """What has arrived, up to `most` frames at a time (waiting for at least one)."""
        while True:
            try:
                items = [self.q.get(timeout=POLL)]
            except queue.Empty:
                continue
            while len(items) < most and items[-1] is not _END and not isinstance(items[-1], BaseException):
                try:
                    items.append(self.q.get_nowait())
                except queue.Empty:
                    break
            last = items[-1]
            frames = [it for it in items if isinstance(it, _Frame)]
            if frames:
                yield frames
            if isinstance(last, BaseException):
                raise last
            if last is _END:
                return

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=2.0)  # a network read may block longer: the thread is a daemon


class _LiveScorer:
    """iter_scores, fed one batch at a time, started afresh after a gap in the frame numbers."""

    def __init__(self, new_scorer: Callable[[], Scorer], project: Project, cal: Any) -> None:
        self.new_scorer, self.cal, self.sc = new_scorer, cal, project.config.score
        self.next = -1  # the frame number that continues the current run
        self._chunk: tuple[np.ndarray, np.ndarray] | None = None
        self._scores: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def _feed(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while self._chunk is not None:
            chunk, self._chunk = self._chunk, None
            yield chunk

    def __call__(self, index: np.ndarray, frames: np.ndarray, times: np.ndarray) -> np.ndarray:
        """index: (n,) increasing frame numbers; frames: (n, h, w, C) uint8; times: (n,) seconds
        → (n,) smoothed scores."""
        out = []
        for run in np.split(np.arange(len(index)), np.flatnonzero(np.diff(index) != 1) + 1):
            if index[run[0]] != self.next or self._scores is None:  # a gap (or the start): begin again
                self._scores = iter_scores(self.new_scorer(), self._feed(), self.cal, self.sc)
            self._chunk = frames[run], times[run]
            out.append(next(self._scores)[-1].numpy())  # (components, scene, score)
            self.next = int(index[run[-1]]) + 1
        return np.concatenate(out)


class _Session:
    """One watch: the models, the feed, the live scorer and the event tracker."""

    def __init__(self, project: Project, source: str, options: WatchOptions, device: torch.device) -> None:
        from .inference import for_inference
        detector = Detector.load(project)
        cal = detector.calibration
        self.cfg, self.report, self.options = project.config, DecodeReport(), options
        fast, mdn = for_inference(detector.vae, device), detector.mdn.to(device).eval() if detector.mdn else None
        self.scorer = _LiveScorer(lambda: make_scorer(fast, mdn, self.cfg, device, cal.frame_interval), project, cal)
        self.live = options.live(source)
        self.status = WatchStatus(source, str(detector.version), cal.threshold)
        self.tracker: EventTracker | None = None
        self.late, self.last, self.started = 0, -1, time.monotonic()
        frames = iter_live(source, self.cfg.frames, self.report, options.input_options, options.follow)
        self.feed = _Feed(frames, self.report, self.live, options.realtime, 2 * self.cfg.score.batch_size)

    def fresh(self, batch: list[_Frame]) -> list[_Frame]:
        """The frames not too late to score (on a live source); counts the others as dropped."""
        if not self.live:
            return batch
        now = time.monotonic()
        fresh = [f for f in batch if now - f.arrived <= self.options.max_latency]
        self.late += len(batch) - len(fresh)
        return fresh

    def step(self, batch: list[_Frame], on_event: Callable[[dict[str, Any]], None]) -> None:
        """Score one batch of frames (n at the project's size), report the events that ended in it."""
        status = self.status
        if self.tracker is None:  # the rate is known once the stream is open
            status.fps = self.report.fps / self.cfg.frames.stride
            self.tracker = EventTracker(status.threshold, self.cfg.score.min_segment, 1 / status.fps)
        index, times = np.array([f.index for f in batch]), np.array([f.time for f in batch])
        scores = self.scorer(index, np.stack([f.pixels for f in batch]), times)
        self.last = int(index[-1])
        self._report(self.tracker.update(index, scores, times), on_event)
        status.frames += len(batch)
        status.score, status.in_event = float(scores[-1]), self.tracker.start is not None
        status.latency = time.monotonic() - batch[0].arrived
        self._tally()

    def _tally(self) -> None:
        self.status.seconds = time.monotonic() - self.started
        self.status.dropped = self.late + self.feed.dropped

    def finish(self, on_event: Callable[[dict[str, Any]], None]) -> WatchStatus:
        """Stop the decoder, close an event still open at the last frame, and sum up."""
        self.feed.close()
        if self.tracker is not None:  # past the stream's last frame: its end (the time `score` gives too)
            end = self.report.duration if self.last + 1 == self.report.frames else None
            self._report(self.tracker.finish(self.last + 1, end), on_event)
        self.status.in_event = False
        self._tally()
        return self.status

    def _report(self, events: list[dict[str, Any]], on_event: Callable[[dict[str, Any]], None]) -> None:
        for event in events:
            self.status.events += 1
            on_event({**event, "source": self.status.source, "model_version": self.status.version,
                      "detected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def watch(project: Project, source: str, options: WatchOptions | None = None,
          on_event: Callable[[dict[str, Any]], None] = lambda e: None,
          on_status: Callable[[WatchStatus], None] = lambda s: None, device: torch.device | None = None,
          before_batch: Callable[[int], None] | None = None) -> WatchStatus:
    """Score a stream as it comes until it ends or Ctrl-C.

    on_event gets each event (a dict of frames, times and scores) as soon as it ends, on_status
    the status after every batch. Returns the final status: the summary. before_batch(n) is
    called before n frames are scored (tests make the model slow with it).
    """
    from .inference import scoring_threads, torch_threads
    device = device or torch.device("cpu")
    session = _Session(project, source, options or WatchOptions(), device)
    try:
        with torch_threads(scoring_threads(device)):
            for batch in session.feed.batches(session.cfg.score.batch_size):
                batch = session.fresh(batch)
                if batch:
                    if before_batch is not None:
                        before_batch(len(batch))
                    session.step(batch, on_event)
                    on_status(session.status)
    except KeyboardInterrupt:
        session.status.interrupted = True
    finally:
        status = session.finish(on_event)
    return status
