"""One camera's event outputs, as a watch drives them: the packet ring and the clip recordings, the
peak's heatmap, and the notifiers (a command, a webhook, MQTT) behind the cooldown.

The watch calls, from its own thread: seen() after every scored batch, ended(payload) for each
event that ended, health(payload) when the stream is lost or back, take_ready() for the events
whose clips are written (their payloads now name the clip and the snapshot), notify(payload) to
send one, and at the end wait() and close(). Recordings run in threads of their own and never
make the watch wait; every failure is logged, counted in stats() and leaves the watch running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import OutputError
from .clips import ClipResult, Recording, Snapshot, clip_path, prune
from .mqtt import MqttNotifier, topic_name
from .notify import Cooldown, ExecNotifier
from .options import OutputOptions, check, check_folder, mqtt_address
from .ring import PacketRing
from .tracker import EventTracker
from .webhook import WebhookNotifier, reachable, url_reachable

SLACK = 10.0  # seconds the ring keeps beyond the pre-roll: how far the scorer may lag the decoder
MAX_RECORDINGS = 4  # clips written at once at most (events whose post-rolls overlap); more get none
log = logging.getLogger("vidanom")

LevelOf = Callable[[np.ndarray, np.ndarray], torch.Tensor]  # (k, h, w, C) frames, (k,) times → (h, w) level


class Notifier(Protocol):
    name: str

    def send(self, payload: dict[str, Any]) -> None: ...

    def close(self, timeout: float) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class EventOutputs:
    """See the module docstring. camera names the topics and clip files; min_len is
    score.min_segment; lag the motion plane's (the frames before the peak its map needs); wall(t)
    turns a time of the watch's timeline into time.time(); level(frames, times) the peak's frames
    into its heatmap level (h, w), with lut the colormap (None: no snapshots).

    Raises OutputError for what can never work; unreachable endpoints are warnings (in .warnings,
    and logged), or an OutputError with options.strict.
    """

    def __init__(
        self,
        options: OutputOptions,
        camera: str,
        *,
        min_len: int,
        lag: int,
        history: int,
        wall: Callable[[float], float],
        level: LevelOf | None = None,
        lut: torch.Tensor | None = None,
    ) -> None:
        self.options, self.camera, self.min_len, self.lag, self.wall = options, camera, min_len, lag, wall
        self.level, self.lut = level, lut
        self.warnings = check(options) + self._unreachable()
        for warning in self.warnings:
            log.warning("%s", warning)
        self.folder = options.clips / topic_name(camera) if options.clips is not None else None
        self.ring: PacketRing | None = None
        if self.folder is not None:
            check_folder(self.folder)
            self.ring = PacketRing(options.pre + SLACK, options.buffer_bytes)
        self.notifiers: list[Notifier] = []
        self.mqtt: MqttNotifier | None = None
        if options.command:
            self.notifiers.append(ExecNotifier(options.command, options.queue))
        if options.webhook:
            self.notifiers.append(WebhookNotifier(options.webhook, options.queue))
        if options.mqtt:
            self.mqtt = MqttNotifier(options.mqtt, camera, options.queue, options.ha_discovery)
            self.notifiers.append(self.mqtt)
        self.cooldown = Cooldown(options.cooldown, self._send)
        self.history: deque[tuple[int, np.ndarray, float]] = deque(maxlen=history + lag)
        self.peaks: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}  # event start → (peak, frames, times)
        self.confirmed: set[int] = set()  # start frames of the events going on that were confirmed
        self.recordings: dict[int, Recording] = {}  # start frame → its clip, while the event goes on
        self.writing: list[Recording] = []  # clips of ended events still being written
        self.clips, self.clip_errors, self.pruned, self.skipped = 0, 0, 0, 0
        self._deadline: float | None = None  # when the end's drain time is over (set by wait)
        self._order: deque[dict[str, Any]] = deque()  # the ended events' payloads, in the order they ended
        self._ready: set[int] = set()  # the ids of those whose clips are done (or that have none)
        self._lock = threading.Lock()
        if self.folder is not None:
            self.pruned += prune(self.folder, options.keep_days, options.keep_bytes)

    def _unreachable(self) -> list[str]:
        """A line per endpoint that does not accept a connection now (OutputError if strict)."""
        o, lines = self.options, []
        if o.webhook and (why := url_reachable(o.webhook)):
            lines.append(f"the webhook {o.webhook} is not reachable now ({why})")
        if o.mqtt:
            host, port, *_ = mqtt_address(o.mqtt)
            if why := reachable(host, port):
                lines.append(f"the MQTT broker {host}:{port} is not reachable now ({why})")
        if lines and o.strict:
            raise OutputError(f"{lines[0]}; without --strict-outputs the watch would start and retry")
        return [f"{line}: watching anyway; its notifications wait in a queue of {o.queue}" for line in lines]

    # -- from the watch's thread --------------------------------------------------------------

    def seen(
        self, frames: list[tuple[int, np.ndarray, float]], ended: list[dict[str, Any]], tracker: EventTracker
    ) -> None:
        """After a batch was scored: frames (number, pixels, time) in it, the raw events that ended in
        it, and the EventTracker as it stands."""
        self.history.extend(frames)
        for event in ended:
            self._capture(event["start_frame"], event["peak_frame"])
        start = tracker.start
        if start is not None:
            self._capture(start, tracker.peak)
            last = tracker.last[0] if tracker.last is not None else start
            if start not in self.confirmed and last - start + 1 >= self.min_len:
                self._confirm(start, tracker.start_time, tracker.count + 1)

    def scored_until(self, t: float) -> None:
        """Frames up to t have been scored, and the events that ended among them reported: a clip may
        be written that far (plus its post-roll) before its event's end is known."""
        if self.ring is not None:
            self.ring.scored_until(t)

    def _capture(self, start: int, peak: int) -> None:
        """Keep the peak frame and the frames its motion plane needs (only those after any gap)."""
        if self.level is None or self.peaks.get(start, (None,))[0] == peak:
            return
        around = [f for f in self.history if peak - self.lag <= f[0] <= peak]
        if not around or around[-1][0] != peak:
            return
        while around[0][0] != peak - (len(around) - 1):  # a gap before the peak: the scorer began afresh
            around = around[1:]
        self.peaks[start] = (peak, np.stack([f[1] for f in around]), np.array([f[2] for f in around]))

    def _confirm(self, start: int, start_time: float, number: int) -> None:
        """An event has lasted min_len frames: it will be reported. ON, and its clip starts."""
        if self.mqtt is not None and not self.confirmed:
            self.mqtt.state(True)
        self.confirmed.add(start)
        if self.ring is None or self.folder is None:
            return
        self.writing = [r for r in self.writing if r.thread.is_alive()]
        if len(self.recordings) + len(self.writing) >= MAX_RECORDINGS:
            self.skipped += 1
            return
        path = clip_path(self.folder, topic_name(self.camera), self.wall(start_time), number)
        o = self.options
        self.recordings[start] = Recording(
            self.ring, start_time, path, pre=o.pre, post=o.post, max_clip=o.max_clip, done=self._recorded
        )

    def ended(self, payload: dict[str, Any]) -> None:
        """An event ended: its clip goes on for `post` s; the payload is ready when the clip is."""
        start = payload["start_frame"]
        if start not in self.confirmed:  # it ended within the batch it was confirmed in
            self._confirm(start, payload["start_time"], payload["event"])
        self.confirmed.discard(start)
        if self.mqtt is not None and not self.confirmed:
            self.mqtt.state(False)
        recording = self.recordings.pop(start, None)
        snapshot = self._snapshot(self.peaks.pop(start, None))
        with self._lock:
            self._order.append(payload)
            if recording is None:
                self._ready.add(id(payload))
                return
        with self._lock:  # a clip cut short by its cap may be complete before its event ends
            recording.payload = payload
            done = recording.complete
        if done:
            try:
                recording.snap(snapshot)
            except Exception as exc:  # noqa: BLE001 - no snapshot, but the event goes on
                log.warning("snapshot of %s: %s", recording.path.name, exc)
            self._recorded(recording)
            return
        recording.finish(payload["end_time"], snapshot)
        self.writing.append(recording)

    def _snapshot(self, peak: tuple[int, np.ndarray, np.ndarray] | None) -> Snapshot | None:
        if peak is None or self.level is None or self.lut is None:
            return None
        _, frames, times = peak
        return Snapshot(float(times[-1]), self.level(frames, times), self.lut)

    def health(self, payload: dict[str, Any]) -> None:
        """The stream was lost or is back: to every notifier at once (no cooldown); MQTT's availability."""
        if self.mqtt is not None:
            self.mqtt.availability(payload["state"] == "back")
        self._send(payload)

    def online(self) -> None:
        """Frames flow (the first came)."""
        if self.mqtt is not None:
            self.mqtt.availability(True)

    def take_ready(self) -> list[dict[str, Any]]:
        """The payloads of the events whose clips are done (or that have none), in the order the events
        ended: one whose clip is still being written holds back those after it."""
        out = []
        with self._lock:
            while self._order and id(self._order[0]) in self._ready:
                self._ready.discard(id(self._order[0]))
                out.append(self._order.popleft())
        return out

    def notify(self, payload: dict[str, Any]) -> None:
        self.cooldown(payload)

    def _send(self, payload: dict[str, Any]) -> None:
        for notifier in self.notifiers:
            notifier.send(payload)

    # -- from a recording's thread --------------------------------------------------------------

    def _recorded(self, recording: Recording) -> None:
        r: ClipResult = recording.result
        with self._lock:
            recording.complete = True
            payload = recording.payload
        if payload is None:  # its event goes on: ended() hands it on
            return
        payload.update(
            clip=str(r.clip) if r.clip else None,
            snapshot=str(r.snapshot) if r.snapshot else None,
            clip_start_time=r.start,
            clip_end_time=r.end,
            clip_mode=r.mode or None,
        )
        if r.capped:
            payload["clip_capped"] = True
        if r.error:
            payload["clip_error"] = r.error
        with self._lock:
            self.clips += r.clip is not None
            self.clip_errors += r.error is not None
            if self.folder is not None and r.clip is not None:
                self.pruned += prune(self.folder, self.options.keep_days, self.options.keep_bytes)
            self._ready.add(id(payload))

    # -- the end ------------------------------------------------------------------------------

    def wait(self) -> None:
        """Let the clips being written finish (their streams have ended); they, and then the
        notifications (close), get options.drain s together."""
        timeout = self.options.drain
        deadline = self._deadline = time.monotonic() + timeout
        for start, recording in list(self.recordings.items()):  # never ended: not to be reported
            recording.abandon()
            del self.recordings[start]
        for recording in self.writing:
            recording.thread.join(max(0.0, deadline - time.monotonic()))
            if recording.thread.is_alive() and recording.claim():
                recording.abandon()
                recording.result.error = f"not finished {timeout:g} s after the watch ended"
                log.warning("event clip %s: %s", recording.path.name, recording.result.error)
                self._recorded(recording)

    def close(self) -> None:
        """Send a merged payload still waiting out its cooldown, and give the notifiers up to
        options.drain s to deliver what they hold."""
        self.cooldown.flush()
        deadline = self._deadline or time.monotonic() + self.options.drain
        for notifier in self.notifiers:
            notifier.close(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, Any]:
        """Clips written, failed, skipped (too many at once) and pruned; each notifier's counts."""
        out: dict[str, Any] = {}
        if self.folder is not None:
            out["clips"] = {"written": self.clips, "failed": self.clip_errors, "skipped": self.skipped}
            out["clips"].update(pruned=self.pruned, folder=str(self.folder))
            if self.ring is not None:
                out["clips"]["buffer_bytes"] = self.ring.peak_bytes
        for notifier in self.notifiers:
            out[notifier.name] = notifier.stats()
        if self.cooldown.merged:
            out["merged"] = self.cooldown.merged
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def for_watch(
    options: OutputOptions,
    camera: str,
    cfg: Any,
    cal: Any,
    scorer: Callable[[], Any],
    wall0: Callable[[], float | None],
) -> EventOutputs:
    """A watch's outputs: cfg the project's config, cal its model's calibration, scorer() a new
    β-VAE scorer (scoring.make_scorer without the LSTM-MDN: the snapshots' error maps), wall0() the
    time.time() of the watch's time 0 once known."""
    level, lut = None, None
    if options.clips is not None:
        from ..heatmap import ErrorScale

        scale = ErrorScale.from_calibration(cal, cfg)  # (loads matplotlib's colormap: now, not at an event)

        def level(frames: np.ndarray, times: np.ndarray) -> torch.Tensor:
            """The peak's frames (its motion plane's past, then itself) → its heatmap level (h, w)."""
            with torch.inference_mode():
                return scale.levels(scorer().maps(frames, times).err[-1:])[0]

        lut = scale.lut
    return EventOutputs(
        options,
        camera,
        min_len=cfg.score.min_segment,
        lag=cfg.frames.motion_lag,
        history=cfg.score.batch_size,
        wall=lambda t: (wall0() or time.time()) + t,
        level=level,
        lut=lut,
    )
