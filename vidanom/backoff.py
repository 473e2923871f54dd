"""Waits between attempts that may fail again: reconnecting to a stream, resending a notification."""

from __future__ import annotations


class Backoff:
    """Seconds to wait before each attempt: first, 2·first, 4·first ... at most longest.

    A connection that stayed up for `longest` seconds starts the sequence again; one lost sooner
    continues it, so that a source which accepts and drops at once is not hammered.
    """

    def __init__(self, first: float = 1.0, longest: float = 30.0) -> None:
        self.first, self.longest, self.tries = first, longest, 0

    def next(self) -> float:
        wait = min(self.first * 2.0**self.tries, self.longest)
        self.tries = min(self.tries + 1, 64)
        return wait

    def connected(self, seconds: float) -> None:
        """A connection gave frames for this many seconds before it was lost."""
        if seconds >= self.longest:
            self.tries = 0

    def reset(self) -> None:
        """An attempt succeeded: the next failure waits `first` again."""
        self.tries = 0
