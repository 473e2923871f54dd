"""Ctrl-C at a safe point: while a training command runs, the first SIGINT only asks it to stop.

`check()` (the CLI calls it from its progress callback, which the fitting loops call between
optimiser steps) then raises KeyboardInterrupt, so the loop saves a checkpoint of a consistent
state and the command ends; `--resume` continues from that checkpoint. A second Ctrl-C stops at
once (every file is still written atomically, so that too loses nothing but the last batches).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = threading.Event()


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, the first SIGINT sets a flag that `check()` turns into KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread: Ctrl-C acts at once
        return

    def handler(signum: int, frame: object) -> None:
        if _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()

    _requested.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed inside `deferred()`."""
    if _requested.is_set():
        raise KeyboardInterrupt
