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

A URL or a camera is opened again when its stream ends, breaks or stalls (no frame for
frames.decode_timeout seconds): after 1, 2, 4 ... at most 30 seconds (Backoff), until it comes
back. Only the first opening must succeed: a wrong address is an error, not a wait. The gap is
reported (on_gap) once frames flow again; an event open when the stream was lost ends at its last
frame, and the scorer starts afresh as after dropped frames. Frame numbers and times go on from
the time since watching started (the times of the frames after the gap are their arrival after
the first frame, plus their own timestamps), so they never go back.

Event times are the frames' own times (from their timestamps, see video.iter_live), so they stay
true on a variable-frame-rate source, and match those `score` writes for the same file.

Watcher is one source's watch, with run() and a stop() for other threads: what a supervisor of
many cameras (one actor each) owns. watch() runs one until the stream ends or Ctrl-C.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import torch

from .backoff import Backoff
from .config import FrameConfig, ScoreConfig
from .detector import Detector
from .errors import VideoError
from .events.tracker import EventTracker
from .project import Project
from .scoring import Scorer, iter_scores, make_scorer
from .video import DecodeReport, iter_live

if TYPE_CHECKING:
    from .events.options import OutputOptions
    from .events.outputs import EventOutputs

LIVE_QUEUE = 256  # frames waiting to be scored, at most (at the model's size: 4 kB each at 64×64 gray)
POLL = 0.1  # seconds between checks of the stop flag while waiting


def is_stream(source: str) -> bool:
    """Whether a source is a URL or a camera device (rather than a file)."""
    return "://" in source or source.startswith("/dev/")


def camera_name(source: str) -> str:
    """A short name for a source: a URL's host and path, a device's or a file's name."""
    if "://" in source:
        parts = urlsplit(source)
        name = f"{parts.hostname or ''}{parts.path}"
    else:
        name = Path(source).stem or source
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "camera"


@dataclass
class WatchOptions:
    realtime: bool = False  # pace a file at its frame rate, as if it were live
    follow: float = 0.0  # follow a growing file; it ends after this many seconds without growth (0: no)
    max_latency: float = 2.0  # seconds a frame may wait on a live source before it is dropped
    input_options: dict[str, str] = field(default_factory=dict)  # FFmpeg options for the input
    reconnect: bool | None = None  # open the source again when it ends or breaks (None: for URLs and cameras)
    backoff: tuple[float, float] = (1.0, 30.0)  # seconds before the first attempt to reconnect; the longest wait

    def live(self, source: str) -> bool:
        """Whether frames come at their own pace (and may be dropped) rather than as fast as read."""
        return self.realtime or is_stream(source)

    def reconnects(self, source: str) -> bool:
        """Whether watching source goes on after its stream ends or breaks."""
        return is_stream(source) if self.reconnect is None else self.reconnect


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
    interrupted: bool = False  # ended by Ctrl-C or Watcher.stop()
    state: str = "watching"  # "reconnecting" while the stream is lost, "ended" in the summary
    reason: str = ""  # while reconnecting: why the stream was lost, or why the latest attempt failed
    attempts: int = 0  # while reconnecting: attempts that failed so far
    retry_in: float = 0.0  # while reconnecting: seconds from this status to the next attempt
    gaps: int = 0  # times the stream was lost and came back
    gap_seconds: float = 0.0  # their total length
    down: float = 0.0  # while reconnecting: seconds since the stream was lost
    camera: str = ""  # the name in payloads, MQTT topics and clip names
    outputs: dict[str, Any] = field(default_factory=dict)  # clips and notifications: events.EventOutputs.stats


@dataclass
class _Frame:
    index: int  # frame number in the stream, after the stride, dropped frames included
    pixels: np.ndarray  # (h, w, C) uint8 at the model's size
    arrived: float  # time.monotonic() when it was decoded
    time: float  # seconds from the stream's first frame, from its timestamp (see video.iter_live)


@dataclass
class _Lost:
    """The stream was lost (attempts == 0) or an attempt to reconnect failed; the next in `wait` s."""

    reason: str
    attempts: int
    wait: float


@dataclass
class _Back:
    """The stream is back: the gap's record (see Watcher), before the first frame after it."""

    gap: dict[str, Any]


_END = object()
Connect = Callable[[DecodeReport], Generator[tuple[np.ndarray, float], None, None]]


class _Buffer:
    """A bounded FIFO from the decoding thread to the scoring thread. When full it drops the oldest
    frame (drop: a live source) or makes the producer wait; notices are never dropped."""

    def __init__(self, size: int, drop: bool) -> None:
        self.size, self.drop, self.dropped = size, drop, 0
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()

    def put(self, item: Any, stop: threading.Event) -> bool:
        """Queue item; False (not queued) once stop is set."""
        with self._cond:
            while len(self._items) >= self.size and not (self.drop and self._drop_oldest()):
                if stop.is_set():
                    return False
                self._cond.wait(POLL)
            if stop.is_set():
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def _drop_oldest(self) -> bool:
        for i, item in enumerate(self._items):
            if isinstance(item, _Frame):
                del self._items[i]
                self.dropped += 1
                return True
        return False

    def take(self, most: int) -> list[Any]:
        """Up to `most` items, waiting at most POLL s for the first ([] if none came)."""
        with self._cond:
            if not self._items:
                self._cond.wait(POLL)
            out = [self._items.popleft() for _ in range(min(most, len(self._items)))]
            if out:
                self._cond.notify_all()
            return out


class _Feed:
    """The frames of one source, decoded in a thread into a bounded buffer (see the module
    docstring), over as many connections as it takes when reconnecting (backoff not None)."""

    def __init__(
        self,
        connect: Connect,
        live: bool,
        pace: bool,
        depth: int,
        fc: FrameConfig,
        stop: threading.Event,
        backoff: Backoff | None,
        origin: Callable[[float], None] | None = None,
    ) -> None:
        self.stop, self.pace, self.stride, self.limit = stop, pace, fc.stride, fc.decode_timeout
        self.origin = origin  # told each connection's start in the watch's timeline (the packet ring)
        self.report = DecodeReport()  # the first connection's
        self.connections = 0  # that gave frames
        self._buf = _Buffer(LIVE_QUEUE if live else depth, drop=live)
        self._connect, self._backoff = connect, backoff
        self._last: _Frame | None = None  # the latest frame queued...
        self._last_wall, self._zero = 0.0, 0.0  # ...its arrival (time.time()); the monotonic time of time 0
        self._thread = threading.Thread(target=self._produce, name="vidanom-watch-decode", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Frames dropped because the buffer was full."""
        return self._buf.dropped

    def _produce(self) -> None:
        try:
            reason = self._stream(self.report)  # the first connection: failing to open is an error
            while self._backoff is not None and not self.stop.is_set():
                reason = self._reconnect(reason)
            self._buf.put(_END, self.stop)
        except BaseException as exc:  # handed to the scoring thread, which raises it
            self._buf.put(exc, self.stop)

    def _reconnect(self, reason: str) -> str:
        """After the stream was lost (why: reason), try again after each wait of the backoff until a
        connection gives frames; read it to its end → why it ended."""
        assert self._backoff is not None
        attempts, wait, why = 0, self._backoff.next(), reason
        self._buf.put(_Lost(reason, 0, wait), self.stop)
        while not self.stop.wait(wait):
            try:
                return self._stream(DecodeReport(), (reason, attempts + 1))
            except VideoError as exc:
                attempts, why, wait = attempts + 1, _root(exc), self._backoff.next()
                self._buf.put(_Lost(why, attempts, wait), self.stop)
        return why

    def _stream(self, report: DecodeReport, lost: tuple[str, int] | None = None) -> str:
        """Queue the frames of one connection until it ends → why it ended. lost: (why the stream
        was lost, attempts): the gap's record goes before the first frame."""
        frames, started, base = self._connect(report), 0.0, (0, 0.0)
        try:
            for i, (pixels, t) in enumerate(frames):
                if i == 0:
                    started = time.monotonic()
                    base = self._origin(started, report)
                    if self.origin is not None:
                        self.origin(base[1])  # a frame at t on its own clock is at base[1] + t
                elif self.pace and self.stop.wait(max(0.0, started + t - time.monotonic())):
                    break  # a file played at its own rate: a frame is due at its time after the first
                frame = _Frame(base[0] + i, pixels, time.monotonic(), base[1] + t)
                if i == 0 and lost is not None and not self._buf.put(_Back(self._gap(frame, *lost)), self.stop):
                    break
                if not self._buf.put(frame, self.stop):
                    break
                self._last, self._last_wall = frame, time.time()
        finally:
            frames.close()  # here, in the thread that decodes: closes the input
        if report.frames:
            self.connections += 1
            if self._backoff is not None:
                self._backoff.connected(time.monotonic() - started)
        return _ended(report, self.limit)

    def _origin(self, now: float, report: DecodeReport) -> tuple[int, float]:
        """The number and time of a connection's first frame, arrived at `now`: 0 for the first one;
        after a gap its time since watching started (never before the last frame's time), and the
        frame slots of the gap at the stream's rate."""
        last = self._last
        if last is None:
            self._zero = now
            return 0, 0.0
        rate = report.fps / self.stride
        t = max(now - self._zero, last.time + 1 / rate)
        return last.index + max(1, round((t - last.time) * rate)), t

    def _gap(self, first: _Frame, reason: str, attempts: int) -> dict[str, Any]:
        """The record of a gap from the last frame before it to `first` after it."""
        last = self._last
        assert last is not None
        return {
            "gap": round(first.arrived - last.arrived, 3),
            "from": _iso(self._last_wall),
            "to": _iso(time.time()),
            "from_frame": last.index,
            "to_frame": first.index,
            "from_time": round(last.time, 3),
            "to_time": round(first.time, 3),
            "reason": reason,
            "attempts": attempts,
        }

    def items(self, most: int) -> Iterator[list[_Frame] | _Lost | _Back]:
        """What the decoder sent, in order: lists of at most `most` frames, and notices, until the
        stream ends or stop is set. Raises what the decoder raised."""
        while not self.stop.is_set():
            frames: list[_Frame] = []
            taken = self._buf.take(most)
            if not taken:
                yield []  # nothing for a while: the caller may do what waits (clips finished...)
            for item in taken:
                if isinstance(item, _Frame):
                    frames.append(item)
                    continue
                if frames:
                    yield frames
                    frames = []
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
            if frames:
                yield frames

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=2.0)  # a network read may block longer: the thread is a daemon


def _iso(wall: float) -> str:
    """A time.time() as local ISO 8601 with milliseconds and the UTC offset."""
    return datetime.fromtimestamp(wall).astimezone().isoformat(timespec="milliseconds")


def _root(exc: BaseException) -> str:
    """Briefly, why opening failed: FFmpeg's own message where there is one."""
    cause = exc.__cause__ or exc
    return getattr(cause, "strerror", None) or str(cause)


def _ended(report: DecodeReport, limit: float) -> str:
    """Why a connection's frames ended; limit: frames.decode_timeout."""
    if report.error == "Immediate exit requested":  # FFmpeg's read was cut off by PyAV's time limit
        return f"no data in {limit:g} s (frames.decode_timeout)"
    return report.error or "the stream ended"


class _LiveScorer:
    """iter_scores, fed one batch at a time, started afresh after a gap in the frame numbers."""

    def __init__(self, new_scorer: Callable[[], Scorer], sc: ScoreConfig, cal: Any) -> None:
        self.new_scorer, self.cal, self.sc = new_scorer, cal, sc
        self.next = -1  # the frame number that continues the current run
        self._chunk: tuple[np.ndarray, np.ndarray] | None = None
        self._scores: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def _feed(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while self._chunk is not None:
            chunk, self._chunk = self._chunk, None
            yield chunk

    def restart(self) -> None:
        """Begin again at the next frame, whatever its number (the stream was lost)."""
        self._scores = None

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


def _ignore(_: Any) -> None:
    pass


class Watcher:
    """The watch of one source: models, decoder, live scorer and event tracker, and its outputs.

    run() scores the stream until it ends (without reconnecting), stop() is called (from any
    thread), or Ctrl-C. Callbacks, in run()'s thread: on_event(event) as each anomalous event
    ends (a dict of frames, times and scores: see the README for its keys; with clips, once its
    clip is written, `post` seconds later); on_health(record) when the stream is lost
    ({"kind": "health", "state": "down", ...}) and when it is back ({"state": "back", "gap":
    seconds, "from", "to": ISO times, "from_frame", "to_frame", "from_time", "to_time", "reason",
    "attempts", ...}); on_gap(record) too when it is back (the same record); on_status(status)
    after every batch and change of state. before_batch(n) is called before n frames are scored
    (tests make the model slow with it).

    outputs: clips, snapshots, a command, a webhook, MQTT (events.OutputOptions); camera: the name
    they use (default: from the source). A Watcher runs once. Raises VideoError when the source
    cannot be opened at first, NotTrainedError without a model, OutputError for outputs that can
    never work (or, with outputs.strict, cannot be reached now).
    """

    def __init__(
        self,
        project: Project,
        source: str,
        options: WatchOptions | None = None,
        *,
        device: torch.device | None = None,
        on_event: Callable[[dict[str, Any]], None] = _ignore,
        on_gap: Callable[[dict[str, Any]], None] = _ignore,
        on_status: Callable[[WatchStatus], None] = _ignore,
        before_batch: Callable[[int], None] | None = None,
        on_health: Callable[[dict[str, Any]], None] = _ignore,
        outputs: OutputOptions | None = None,
        camera: str | None = None,
    ) -> None:
        from .inference import for_inference

        self.source, self.options, self.device = source, options or WatchOptions(), device or torch.device("cpu")
        self.on_event, self.on_gap, self.on_status, self.before_batch = on_event, on_gap, on_status, before_batch
        self.on_health = on_health
        detector = Detector.load(project)
        cal, self.cfg = detector.calibration, detector.config  # the model's frame settings, the project's score
        fast = for_inference(detector.vae, self.device)
        mdn = detector.mdn.to(self.device).eval() if detector.mdn else None
        self.scorer = _LiveScorer(
            lambda: make_scorer(fast, mdn, self.cfg, self.device, cal.frame_interval), self.cfg.score, cal
        )
        self.live, self.reconnect = self.options.live(source), self.options.reconnects(source)
        self.status = WatchStatus(source, str(detector.version), cal.threshold, camera=camera or camera_name(source))
        self.tracker: EventTracker | None = None
        self.late, self.last, self.started = 0, -1, time.monotonic()
        self.wall0: float | None = None  # time.time() at the watch's time 0 (see _anchor)
        self.lost_at = 0.0  # time.monotonic() when the stream was last lost
        self._stop = threading.Event()
        self.outputs: EventOutputs | None = None
        if outputs is not None and outputs.active:
            from .events.outputs import for_watch

            scorer = functools.partial(make_scorer, fast, None, self.cfg, self.device, cal.frame_interval)
            self.outputs = for_watch(outputs, self.status.camera, self.cfg, cal, scorer, lambda: self.wall0)

    def stop(self) -> None:
        """Make run() return soon (within 0.1 s, or when a blocked network read gives up, at most 2 s
        later); safe to call from any thread, before or during run()."""
        self._stop.set()

    def run(self) -> WatchStatus:
        """Score the stream as it comes (see the class docstring) → the final status: the summary."""
        from .inference import scoring_threads, torch_threads

        self.started = time.monotonic()
        feed = self._open()
        try:
            with torch_threads(scoring_threads(self.device)):
                for item in feed.items(self.cfg.score.batch_size):
                    self._handle(item, feed)
        except KeyboardInterrupt:
            self.status.interrupted = True
        finally:
            self._finish(feed)
        return self.status

    def _open(self) -> _Feed:
        o = self.options
        backoff = Backoff(*o.backoff) if self.reconnect else None

        ring = self.outputs.ring if self.outputs is not None else None

        def connect(report: DecodeReport) -> Generator[tuple[np.ndarray, float], None, None]:
            return iter_live(
                self.source, self.cfg.frames, report, o.input_options, o.follow, warn=not self.reconnect, sink=ring
            )

        depth = 2 * self.cfg.score.batch_size
        origin = ring.origin if ring is not None else None
        return _Feed(connect, self.live, o.realtime, depth, self.cfg.frames, self._stop, backoff, origin)

    def _handle(self, item: list[_Frame] | _Lost | _Back, feed: _Feed) -> None:
        self._drain()
        if isinstance(item, _Lost):
            self._lost(item)
        elif isinstance(item, _Back):
            self._back(item.gap)
        else:
            batch = self._fresh(item)
            if not batch:
                return
            if self.before_batch is not None:
                self.before_batch(len(batch))
            self._step(batch, feed)
        self._tally(feed)
        self.on_status(self.status)

    def _fresh(self, batch: list[_Frame]) -> list[_Frame]:
        """The frames not too late to score (on a live source); counts the others as dropped."""
        if not self.live:
            return batch
        now = time.monotonic()
        fresh = [f for f in batch if now - f.arrived <= self.options.max_latency]
        self.late += len(batch) - len(fresh)
        return fresh

    def _step(self, batch: list[_Frame], feed: _Feed) -> None:
        """Score one batch of frames (n at the model's size), report the events that ended in it."""
        status = self.status
        if self.tracker is None:  # the rate is known once the stream is open
            status.fps = self.cfg.frames.rate(feed.report.fps)
            self.tracker = EventTracker(status.threshold, self.cfg.score.min_segment, 1 / status.fps)
            self.wall0 = self._anchor(batch[0])
            if self.outputs is not None:
                self.outputs.online()
        elif self.live:  # the frame that came soonest after its time places the stream on the clock
            self.wall0 = min(self.wall0 or math.inf, *(self._anchor(f) for f in batch))
        index, times = np.array([f.index for f in batch]), np.array([f.time for f in batch])
        scores = self.scorer(index, np.stack([f.pixels for f in batch]), times)
        self.last = int(index[-1])
        ended = self.tracker.update(index, scores, times)
        if self.outputs is not None:
            self.outputs.seen([(f.index, f.pixels, f.time) for f in batch], ended, self.tracker)
        self._report(ended)
        if self.outputs is not None:
            self.outputs.scored_until(float(times[-1]))
        status.frames += len(batch)
        status.score, status.in_event = float(scores[-1]), self.tracker.start is not None
        status.latency = time.monotonic() - batch[0].arrived

    @staticmethod
    def _anchor(frame: _Frame) -> float:
        """time.time() at the watch's time 0, were this frame's arrival on time. A live stream's first
        frames come late (FFmpeg probes the stream first, a second by default): the least of these
        over the frames is the truest."""
        return time.time() - (time.monotonic() - frame.arrived) - frame.time

    def _lost(self, lost: _Lost) -> None:
        """The stream was lost, or another attempt to reconnect failed."""
        if lost.attempts == 0:  # an open event ends at the last frame; the scorer starts afresh after the gap
            if self.tracker is not None:
                self._report(self.tracker.finish(self.last + 1))
            self.scorer.restart()
            self.lost_at = time.monotonic()
            self._health({"state": "down", "at": _iso(time.time()), "reason": lost.reason, **self._last_frame()})
        s = self.status
        s.state, s.reason, s.attempts, s.retry_in, s.in_event = (
            "reconnecting",
            lost.reason,
            lost.attempts,
            lost.wait,
            False,
        )

    def _back(self, gap: dict[str, Any]) -> None:
        s = self.status
        s.state, s.reason, s.attempts, s.retry_in = "watching", "", 0, 0.0
        s.gaps, s.gap_seconds = s.gaps + 1, s.gap_seconds + gap["gap"]
        record = self._health({"state": "back", "down_seconds": gap["gap"], **gap})
        self.on_gap(record)

    def _last_frame(self) -> dict[str, Any]:
        if self.tracker is None or self.tracker.last is None:
            return {}
        return {"from_frame": self.tracker.last[0], "from_time": round(self.tracker.last[1], 3)}

    def _health(self, record: dict[str, Any]) -> dict[str, Any]:
        """A health record, to on_health and the outputs → the record."""
        s = self.status
        record = {"kind": "health", "camera": s.camera, **record, "source": s.source, "model_version": s.version}
        self.on_health(record)
        if self.outputs is not None:
            self.outputs.health(record)
        return record

    def _tally(self, feed: _Feed) -> None:
        self.status.seconds = time.monotonic() - self.started
        self.status.dropped = self.late + feed.dropped
        self.status.down = time.monotonic() - self.lost_at if self.status.state == "reconnecting" else 0.0
        if self.outputs is not None:
            self.status.outputs = self.outputs.stats()

    def _finish(self, feed: _Feed) -> None:
        """Stop the decoder, close an event still open at the last frame, and sum up."""
        self.status.interrupted = self.status.interrupted or self._stop.is_set()
        feed.close()
        if self.tracker is not None:  # past the stream's last frame: its end (the time `score` gives too)
            whole = feed.connections == 1 and self.last + 1 == feed.report.frames
            self._report(self.tracker.finish(self.last + 1, feed.report.duration if whole else None))
        if self.outputs is not None:  # the clips being written end with the stream; then the notifications
            self.outputs.wait()
            self._drain()
            self.outputs.close()
        self.status.in_event, self.status.state = False, "ended"
        self._tally(feed)

    def _report(self, events: list[dict[str, Any]]) -> None:
        """Events that ended: delivered now, or with clips once their clips are written."""
        s = self.status
        for event in events:
            t0 = self.wall0 if self.wall0 is not None else time.time()
            payload = {
                "kind": "event",
                "camera": s.camera,
                **event,
                "threshold": s.threshold,
                "x_threshold": round(event["peak_score"] / s.threshold, 3) if s.threshold > 0 else None,
                **{key: _iso(t0 + event[f"{key}_time"]) for key in ("start", "peak", "end")},
                "source": s.source,
                "model_version": s.version,
                "detected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "clip": None,  # with clips: named once written (see events.outputs)
                "snapshot": None,
            }
            if self.outputs is not None:
                self.outputs.ended(payload)
            else:
                self._deliver(payload)
        self._drain()

    def _drain(self) -> None:
        """Deliver the events whose clips are written."""
        if self.outputs is not None:
            for payload in self.outputs.take_ready():
                self._deliver(payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        self.status.events += 1
        self.on_event(payload)
        if self.outputs is not None:
            self.outputs.notify(payload)


def watch(
    project: Project,
    source: str,
    options: WatchOptions | None = None,
    on_event: Callable[[dict[str, Any]], None] = _ignore,
    on_status: Callable[[WatchStatus], None] = _ignore,
    device: torch.device | None = None,
    before_batch: Callable[[int], None] | None = None,
    on_gap: Callable[[dict[str, Any]], None] = _ignore,
    *,
    on_health: Callable[[dict[str, Any]], None] = _ignore,
    outputs: OutputOptions | None = None,
    camera: str | None = None,
) -> WatchStatus:
    """Score a stream as it comes until it ends (a URL or camera: is lost for good, which it never
    is while reconnecting) or Ctrl-C → the final status: the summary. See Watcher."""
    return Watcher(
        project,
        source,
        options,
        device=device,
        on_event=on_event,
        on_gap=on_gap,
        on_status=on_status,
        before_batch=before_batch,
        on_health=on_health,
        outputs=outputs,
        camera=camera,
    ).run()
