"""Notifications: one JSON payload per event (or health change) handed to each output without ever
making the scoring wait.

Each output owns a bounded queue and a thread that delivers from it (Sender). When the queue is
full the oldest waiting payload is dropped and counted: memory stays bounded while an endpoint is
down, and what was lost is said. A command (ExecNotifier) runs once per payload; a webhook
(webhook.py) is retried with a growing wait until it answers; MQTT (mqtt.py) queues in its client.

Cooldown merges the events of one camera that come closer than `seconds` to the last one notified:
the first is sent at once, the next ones wait until `seconds` pass without another, and go as one
payload (the highest peak's, spanning all of them, with "merged": how many).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..backoff import Backoff

log = logging.getLogger("vidanom")
EXEC_TIMEOUT = 60.0  # seconds a command may run before it is killed and counted as failed
ERROR_CHARS = 300  # of a failure's message kept in the stats


class Sender:
    """A bounded queue of payloads and the thread that delivers them, one at a time, in order.

    Subclasses implement attempt(payload) → True (delivered), False (failed for good: counted, not
    retried) or None (try again after the backoff's wait).
    """

    name = "output"

    def __init__(self, queue: int, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.limit, self.backoff = queue, Backoff(*backoff)
        self.sent = self.failed = self.dropped = self.retries = 0
        self.last_error = ""
        self._streak = False  # the payload in hand is being retried after a failure
        self._items: deque[dict[str, Any]] = deque()
        self._current: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._closing, self._deadline = False, 0.0
        self._thread = threading.Thread(target=self._run, name=f"vidanom-{self.name}", daemon=True)
        self._thread.start()

    def send(self, payload: dict[str, Any]) -> None:
        """Queue payload; never blocks. A full queue drops its oldest payload."""
        with self._cond:
            if self._closing:
                return
            if len(self._items) >= self.limit:
                self._items.popleft()
                self.dropped += 1
            self._items.append(payload)
            self._cond.notify_all()

    def attempt(self, payload: dict[str, Any]) -> bool | None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._current is None and not self._items:
                    if self._closing:
                        return
                    self._cond.wait()
                if self._current is None:
                    self._current = self._items.popleft()
                payload = self._current
            try:
                outcome = self.attempt(payload)
            except Exception as exc:  # noqa: BLE001 - a bug in one output must not end the others
                outcome = False
                self._error(f"unexpected {type(exc).__name__}: {exc}")
            if not self._settle(outcome):
                return

    def _settle(self, outcome: bool | None) -> bool:
        """Count the attempt's outcome; wait before a retry → False once closing is over."""
        with self._cond:
            if outcome is None:
                self.retries, self._streak = self.retries + 1, True
                wait = self.backoff.next()
                if self._closing:
                    wait = min(wait, self._deadline - time.monotonic())
                if wait <= 0:
                    return False
                self._cond.wait(wait)
                return not (self._closing and time.monotonic() >= self._deadline)
            self.sent, self.failed = self.sent + bool(outcome), self.failed + (not outcome)
            self._current, self._streak = None, False
            self.backoff.reset()
            self._cond.notify_all()
            return True

    def _error(self, message: str) -> None:
        """Log a failure (of a payload being retried, only the first) and keep it for the stats."""
        if not self._streak:
            log.warning("%s: %s", self.name, message)
        self.last_error = message[:ERROR_CHARS]

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._items) + (self._current is not None)

    def close(self, timeout: float) -> None:
        """Deliver what is queued for at most `timeout` s more; what is left then is counted as
        dropped, and the thread (a daemon) is left to end."""
        with self._cond:
            self._closing, self._deadline = True, time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            left = len(self._items) + (self._current is not None)
            self.dropped += left
            self._items.clear()
            self._current = None

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sent": self.sent, "failed": self.failed, "dropped": self.dropped}
        out.update(pending=self.pending, retries=self.retries)
        if self.last_error:
            out["last_error"] = self.last_error
        return out


class ExecNotifier(Sender):
    """Runs a shell command per payload, the JSON on its stdin (and VIDANOM_KIND, VIDANOM_CAMERA,
    VIDANOM_CLIP, VIDANOM_SNAPSHOT in its environment). One command at a time; one that fails or
    runs past EXEC_TIMEOUT is logged and counted, not run again."""

    name = "exec"

    def __init__(self, command: str, queue: int, timeout: float = EXEC_TIMEOUT) -> None:
        self.command, self.timeout = command, timeout
        super().__init__(queue)

    def attempt(self, payload: dict[str, Any]) -> bool | None:
        env = dict(os.environ)
        for key in ("kind", "camera", "clip", "snapshot"):
            env[f"VIDANOM_{key.upper()}"] = str(payload.get(key) or "")
        try:
            proc = subprocess.run(
                self.command,
                shell=True,  # noqa: S602 - the user's own command line, as they would type it
                input=json.dumps(payload).encode(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            self._error(f"{self.command!r} ran longer than {self.timeout:g} s and was killed")
            return False
        except OSError as exc:
            self._error(f"cannot run {self.command!r}: {exc.strerror or exc}")
            return False
        if proc.returncode != 0:
            why = (proc.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            self._error(f"{self.command!r} exited with {proc.returncode}" + (f": {why}" if why else ""))
            return False
        return True


class Cooldown:
    """Merges the events of one camera closer than `seconds` for notifications (see the module
    docstring); deliver(payload) gets what is to be sent, in the caller's thread or, for a merged
    payload whose cooldown ran out, in a timer's."""

    def __init__(self, seconds: float, deliver: Callable[[dict[str, Any]], None]) -> None:
        self.seconds, self.deliver = seconds, deliver
        self.merged = 0  # events merged into another's payload
        self._last_end: float | None = None  # the end (stream time) of the last event notified
        self._pending: list[dict[str, Any]] = []
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            near = self._last_end is not None and event["start_time"] - self._last_end < self.seconds
            near = near and self.seconds > 0
            self._last_end = event["end_time"]
            if near:
                self._pending.append(event)
                self._arm()
                return
        self.flush()  # a merged payload still waiting goes first (a file read faster than real time)
        self.deliver(event)

    def _arm(self) -> None:
        if self.seconds <= 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.seconds, self.flush)
        self._timer.daemon = True
        self._timer.start()

    def flush(self) -> None:
        """Send the merged payload now, if there is one."""
        with self._lock:
            events, self._pending = self._pending, []
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if events:
            self.merged += len(events) - 1
            self.deliver(merge(events))


def merge(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Several events as one payload: the highest peak's, from the first start to the last end."""
    peak = max(events, key=lambda e: e["peak_score"])
    first, last = events[0], events[-1]
    out = dict(peak)
    for key in ("start_time", "start_frame", "start"):
        if key in first:
            out[key] = first[key]
    for key in ("end_time", "end_frame", "end"):
        if key in last:
            out[key] = last[key]
    out["duration"] = round(out["end_time"] - out["start_time"], 3)
    out["merged"] = len(events)
    out["merged_events"] = [e["event"] for e in events]
    return out
