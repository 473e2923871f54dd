"""The engine the fleet runs on: Ray, on this machine or on a cluster.

By default a local Ray is started on this machine's cores, bound to the loopback interface, and
shut down at the end: nothing to set up. With an address (or $RAY_ADDRESS) the fleet joins a running
cluster (`ray start --head` on one machine, `ray start --address HEAD:6379` on the others) whose
nodes share the projects' and the footage's file system and have vidanom installed. A Ray session
the caller has already started (ray.init) is used as it is and left running.

Ray is imported here, when a fleet command runs, never by `import vidanom`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import VidanomError
from ..inference import usable_cores

J = TypeVar("J")  # a job
S = TypeVar("S")  # a slot: the worker a job runs on

LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a single-machine Ray: its servers listen on loopback only
    "RAY_USAGE_STATS_ENABLED": "0",  # and report nothing anywhere
}
POLL = 0.25  # seconds between two looks at the progress of the jobs in flight


def failure(exc: Exception, what: str) -> str:
    """The one line a failed job reports: a VidanomError's own message, a file's error, or a bug's
    type and message (a bug fails its `what` alone)."""
    if isinstance(exc, VidanomError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}"
    return f"unexpected {type(exc).__name__}: {exc} (a bug in vidanom: please report it)"


@dataclass(frozen=True)
class Engine:
    """Where and how wide the fleet runs."""

    address: str | None = None  # a cluster to join (HOST:PORT, "auto"); None: $RAY_ADDRESS, else a local Ray
    workers: int | None = None  # workers at once; None: as many as the engine's CPUs (and GPUs) hold
    cpus_per_worker: float = 1.0  # the CPUs a worker reserves (its torch threads: the whole ones of them)
    gpus_per_worker: float = 0.0  # the GPUs a worker reserves (fractions share one); > 0: it runs on CUDA
    retries: int = 2  # times a job is tried again after its worker died
    local_cpus: int | None = None  # the CPUs of a local Ray (None: this machine's cores)

    def __post_init__(self) -> None:
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or (self.workers or 1) < 1 or self.retries < 0:
            raise VidanomError("workers, CPUs per worker and retries must be positive, GPUs per worker not negative")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    @property
    def threads(self) -> int:
        """Torch threads of a worker."""
        return max(1, int(self.cpus_per_worker))

    def options(self) -> dict[str, float]:
        return {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker}


def _import_ray(local: bool) -> Any:
    if local:  # read when ray is first imported and when its processes start
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError as exc:
        raise VidanomError("the fleet runs on Ray, which is not installed: pip install 'vidanom[ray]'") from exc
    return ray


@contextmanager
def session(engine: Engine) -> Iterator[Any]:
    """Within the block, a Ray session (see the module's docstring); yields the ray module."""
    address = engine.address or os.environ.get("RAY_ADDRESS") or None
    ray = _import_ray(local=address is None)
    if ray.is_initialized():
        yield ray
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address is None:
            ray.init(num_cpus=engine.local_cpus or usable_cores(), **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise VidanomError(f"could not start or join {where}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def capacity(ray: Any, engine: Engine) -> int:
    """How many workers run at once: engine.workers, else as many as the cluster's resources hold."""
    if engine.workers is not None:
        return max(1, engine.workers)
    resources = ray.cluster_resources()
    fits = {"CPU": resources.get("CPU", 0) / engine.cpus_per_worker}
    if engine.gpus_per_worker > 0:
        fits["GPU"] = resources.get("GPU", 0) / engine.gpus_per_worker
    for kind, n in fits.items():
        if n < 1:
            raise VidanomError(f"a worker asks for more {kind}s than the Ray cluster has ({resources.get(kind, 0):g})")
    return max(1, int(min(fits.values())))


class Tally:
    """A Ray actor that counts what workers report (frames scored, steps trained) until the driver
    takes it: progress that flows while the jobs run, not only when they end."""

    def __init__(self) -> None:
        self.counts: dict[str, Any] = {}

    def add(self, key: str, value: Any, total: bool = False) -> None:
        """Add value to key's count (total: it is the latest value, not an increment)."""
        self.counts[key] = value if total else self.counts.get(key, 0) + value

    def take(self) -> dict[str, Any]:
        counts, self.counts = self.counts, {}
        return counts


class Throttled:
    """A worker's messages to the Tally, at most one every `every` seconds (and the last one)."""

    def __init__(self, tally: Any, every: float = 0.5) -> None:
        self.tally, self.every, self.last, self.pending = tally, every, 0.0, 0

    def add(self, key: str, value: int) -> None:
        self.pending += value
        if self.tally is not None and time.monotonic() - self.last > self.every:
            self.flush(key)

    def flush(self, key: str) -> None:
        if self.tally is not None and self.pending:
            self.tally.add.remote(key, self.pending)
        self.pending, self.last = 0, time.monotonic()


def run_jobs(
    ray: Any,
    jobs: list[J],
    slots: list[S],
    submit: Callable[[S, J], Any],
    settle: Callable[[S, J, Any], tuple[S | None, J | None]],
    tick: Callable[[], None],
) -> None:
    """Run jobs on slots (workers), one job per slot at a time: never more in flight than slots.

    submit(slot, job) starts a job and returns its ObjectRef. settle(slot, job, outcome) takes what
    it returned, or the Ray error it ended with (its worker died...), and returns the slot to run
    the next job on (None: none, the slot is gone) and the job to run again first (or None).
    tick() is called every POLL seconds while jobs are in flight.
    """
    queue: deque[J] = deque(jobs)
    idle, running = list(slots), dict[Any, tuple[S, J]]()
    while queue or running:
        while queue and idle:
            slot, job = idle.pop(), queue.popleft()
            running[submit(slot, job)] = (slot, job)
        if not running:
            raise VidanomError("no worker of the fleet is left to run the remaining jobs; see the Ray logs")
        done, _ = ray.wait(list(running), num_returns=1, timeout=POLL)
        tick()
        for ref in done:
            slot, job = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:
                outcome = exc
            reuse, again = settle(slot, job, outcome)
            if again is not None:
                queue.appendleft(again)
            if reuse is not None:
                idle.append(reuse)
