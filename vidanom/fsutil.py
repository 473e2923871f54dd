"""Atomic writes: every file goes to a temporary name in the same folder and is renamed into place,
so a crash leaves either the old file or the new one, never half of one.

A temporary file is named `.NAME.PID.RANDOM.tmp`: whoever cleans up after a killed writer can tell
a dead process's leftovers from the file a live one is still writing (see leftover).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


def _create_temporary(path: Path) -> Path:
    """A new empty file beside path, with the mode open() would give it (0666 less the umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def leftover(tmp: Path) -> bool:
    """Whether a temporary file was left by a process that is gone (not by one still writing it)."""
    parts = tmp.name.split(".")
    if len(parts) < 4 or not parts[-3].isdigit():
        return True  # not named as atomic_path names them: nobody is writing it
    pid = int(parts[-3])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, write: Callable[[IO[Any]], None], mode: str = "w") -> None:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: None if f.write(text) is None else None)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_torch(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def create_once(path: Path, text: str) -> bool:
    """Create path holding text unless it exists, in one step (a hard link of a written temporary
    file: no reader ever sees it empty); whether this call created it. Of several processes that
    try at once, exactly one does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        tmp.write_text(text)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive creation, then the text
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
    finally:
        tmp.unlink(missing_ok=True)
