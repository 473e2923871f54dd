"""How long work tells its caller how far it got: a `progress(task, done, total, info)` callback.

The library never prints; the CLI turns these calls into rich progress bars.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Progress = Callable[[str, int, int, dict[str, Any]], None]  # (task, done, total or 0, what to show)


def no_progress(task: str, done: int, total: int, info: dict[str, Any]) -> None:
    """The progress callback of a caller that shows none (tests, benchmarks, library use)."""
