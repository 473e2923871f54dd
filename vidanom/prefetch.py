"""Run an iterator ahead in a background thread, through a bounded queue.

Decoding (PyAV/FFmpeg) and inference (torch) both release the GIL, so a producer thread that
decodes the next chunks while the caller scores the current one keeps both busy. The queue is
bounded, so memory stays at `depth` items however long the video; an exception in the producer
is raised in the consumer, in order after the items before it; and a consumer that stops early
(break, an exception, Ctrl-C, closing the generator) stops and joins the producer thread, which
then closes the source iterator in its own thread (for a decoder: closes the file).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")

_ITEM, _DONE, _ERROR = 0, 1, 2
_POLL = 0.05  # seconds between checks of the stop flag while the queue is full


def prefetch(items: Iterable[T], depth: int = 2, name: str = "vidanom-prefetch") -> Generator[T, None, None]:
    """Yield what `items` yields, in the same order, produced up to `depth` items ahead in a thread.

    Nothing is read from `items` until the first item is asked for.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be positive, not {depth}")
    q: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: int, value: object) -> bool:
        while not stop.is_set():
            try:
                q.put((kind, value), timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put(_ITEM, item):
                    return
            put(_DONE, None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_ERROR, exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # a generator left suspended: run its cleanup here, in its own thread
                try:
                    close()
                except Exception:  # noqa: BLE001 - nothing sensible to do with an error while closing
                    pass

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == _ITEM:
                yield value  # type: ignore[misc]
            elif kind == _DONE:
                return
            else:
                raise value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
