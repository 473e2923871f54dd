"""Watching a fleet live: one long-running Ray actor per camera, each owning a vidanom.watch.Watcher.

The actor starts its Watcher in a thread of its own when it is created, so an actor that Ray
restarts after its process died (up to RESTARTS times) watches again by itself. It keeps the
events and health records its Watcher reports, and its latest status, until the driver polls them
(every POLL seconds); the driver hands each on with the camera's name. Nothing is written into the
projects. A file named as a camera's live source stands in for a camera: it is played at its own
frame rate (WatchOptions.realtime).

Each camera's event outputs (clips, command, webhook, MQTT: events.OutputOptions, from the
manifest and fleet watch's options) run in its actor, beside its stream: its clips are cut from the
packets its actor reads, and its MQTT connection's last will speaks for its process.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import NotTrainedError, VidanomError
from ..events.options import OutputOptions, check
from ..watch import WatchOptions, WatchStatus, is_stream
from .engine import POLL, Engine, session
from .manifest import Manifest, open_project

RESTARTS = 5  # times Ray starts a camera's actor again after its process died
STOP_WAIT = 10.0  # seconds the cameras get to finish when watching stops


@dataclass
class CameraState:
    """What the driver knows of one camera's watch."""

    camera: str
    state: str = "starting"  # starting, watching, reconnecting, restarting, ended, failed
    status: dict[str, Any] | None = None  # its Watcher's latest WatchStatus, as a dict
    error: str | None = None
    worker: str = ""  # host:pid of its actor
    restarts: int = 0

    @property
    def over(self) -> bool:
        return self.state in ("ended", "failed")


class CameraWatch:
    """One camera's watch (run as a Ray actor); see the module's docstring."""

    def __init__(
        self,
        camera: str,
        project: str,
        source: str,
        options: WatchOptions,
        device: str,
        outputs: OutputOptions | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(1)
        self.camera, self.lock, self.stopping = camera, threading.Lock(), threading.Event()
        self.items: list[dict[str, Any]] = []
        self.status: dict[str, Any] | None = None
        self.error: str | None = None
        self.done = False
        self.watcher: Any = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        args = (Path(project), source, options, torch.device(device), outputs)
        threading.Thread(target=self._run, args=args, daemon=True, name=f"vidanom-watch {camera}").start()

    def _run(self, root: Path, source: str, options: WatchOptions, device: Any, outputs: OutputOptions | None) -> None:
        from ..project import Project
        from ..watch import Watcher

        try:
            watcher = Watcher(
                Project.open(root),
                source,
                options,
                device=device,
                on_event=self._item,
                on_health=self._item,
                on_status=self._status,
                outputs=outputs,
                camera=self.camera,
            )
            with self.lock:
                self.watcher = watcher
            if self.stopping.is_set():
                watcher.stop()
            self._status(watcher.run())
        except VidanomError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - this camera fails alone; the message says what it was
            self.error = f"unexpected {type(exc).__name__}: {exc} (a bug in vidanom: please report it)"
        finally:
            self.done = True

    def _item(self, item: dict[str, Any]) -> None:
        with self.lock:
            self.items.append({"camera": self.camera, **item})

    def _status(self, status: WatchStatus) -> None:
        with self.lock:
            self.status = asdict(status)

    def poll(self) -> dict[str, Any]:
        """The events and gaps since the last poll, the latest status, whether it is over and why."""
        with self.lock:
            items, self.items = self.items, []
            return {
                "items": items,
                "status": self.status,
                "done": self.done,
                "error": self.error,
                "worker": self.worker,
            }

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            watcher = self.watcher
        if watcher is not None:
            watcher.stop()


Plan = tuple[str, str, WatchOptions, OutputOptions]


def plan(
    manifest: Manifest, options: WatchOptions, flags: dict[str, Any] | None = None
) -> tuple[dict[str, Plan], list[str]]:
    """(project, source, options, outputs) of each camera to watch, and the problems with the others.
    flags: fleet-wide event outputs (OutputOptions fields) over the manifest's [watch] table."""
    cameras, problems = {}, list(manifest.problems)
    for camera in manifest.cameras:
        if camera.live is None:
            continue
        try:
            project = open_project(camera)
            if project.current_version() is None:
                raise NotTrainedError(f"the project {project.root} has no trained model yet; run 'vidanom fleet train'")
            if not is_stream(camera.live) and not Path(camera.live).is_file():
                raise VidanomError(f"no such file: {camera.live}")
            outputs = manifest.outputs_of(camera, flags)
            check(outputs)
        except VidanomError as exc:
            problems.append(f"camera {camera.name}: {exc}")
            continue
        own = options if is_stream(camera.live) else replace(options, realtime=True)
        cameras[camera.name] = (str(project.root.resolve()), camera.live, own, outputs)
    if not cameras and not problems:
        problems.append('no camera has a live source; add live = "rtsp://..." (or a file) to a camera')
    return cameras, problems


def watch_fleet(
    manifest: Manifest,
    engine: Engine | None = None,
    options: WatchOptions | None = None,
    on_item: Callable[[dict[str, Any]], None] = lambda item: None,
    on_change: Callable[[list[CameraState]], None] = lambda states: None,
    stop: threading.Event | None = None,
    outputs: dict[str, Any] | None = None,
) -> tuple[list[CameraState], list[str]]:
    """Watch every camera with a live source until all their streams end, `stop` is set or Ctrl-C.

    on_item(event or health record) gets each as it is polled, with "camera"; on_change(states)
    every POLL seconds. outputs: fleet-wide event outputs (OutputOptions fields; see plan). Returns
    each camera's last state (its summary in .status) and the problems.
    """
    engine, stop = engine or Engine(), stop or threading.Event()
    cameras, problems = plan(manifest, options or WatchOptions(), outputs)
    states = [CameraState(name) for name in cameras]
    if not cameras:
        return states, problems
    with session(engine) as ray:
        actor = ray.remote(CameraWatch).options(**engine.options(), max_restarts=RESTARTS)
        handles = {
            name: actor.remote(name, root, source, own, engine.device, outputs)
            for name, (root, source, own, outputs) in cameras.items()
        }
        try:
            while not stop.is_set() and not all(s.over for s in states):
                _poll(ray, handles, states, on_item)
                on_change(states)
                stop.wait(POLL)
        except KeyboardInterrupt:
            pass
        finally:
            _finish(ray, handles, states, on_item)
            on_change(states)
    return states, problems


def _poll(ray: Any, handles: dict[str, Any], states: list[CameraState], on_item: Callable[..., None]) -> None:
    """Ask every camera's actor what happened since the last poll."""
    refs = {s.camera: handles[s.camera].poll.remote() for s in states if not s.over}
    ray.wait(list(refs.values()), num_returns=len(refs), timeout=2 * POLL + 1)
    for state in states:
        if state.camera not in refs:
            continue
        try:
            news = ray.get(refs[state.camera], timeout=0)
        except ray.exceptions.ActorDiedError as exc:
            state.state, state.error = "failed", f"its worker died {RESTARTS + 1} times ({type(exc).__name__})"
            continue
        except ray.exceptions.RayActorError:  # its process died: Ray is starting it again
            state.state = "restarting" if state.state != "starting" else state.state
            continue
        except ray.exceptions.GetTimeoutError:  # busy: its news comes with a later poll
            continue
        _update(state, news, on_item)


def _update(state: CameraState, news: dict[str, Any], on_item: Callable[..., None]) -> None:
    for item in news["items"]:
        on_item(item)
    if state.worker and news["worker"] != state.worker:
        state.restarts += 1
    state.worker, state.status, state.error = news["worker"], news["status"], news["error"]
    if news["done"]:
        state.state = "failed" if news["error"] else "ended"
    elif news["status"] is not None:
        state.state = news["status"]["state"]


def _finish(ray: Any, handles: dict[str, Any], states: list[CameraState], on_item: Callable[..., None]) -> None:
    """Stop every camera, hand on what they reported meanwhile, and end their actors."""
    for state in states:
        if not state.over:
            handles[state.camera].stop.remote()
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and not all(s.over or s.state == "restarting" for s in states):
        _poll(ray, handles, states, on_item)
        time.sleep(POLL / 2)
    for state in states:
        if not state.over:
            state.state = "ended"
        ray.kill(handles[state.camera])
