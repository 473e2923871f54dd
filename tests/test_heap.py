"""The training commands' allocator settings: freed blocks are reused without faulting their pages in again."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from typing import Any

import pytest

from vidanom import heap

# allocates and frees five 8 MB blocks (each page written) ten times, as training steps do their
# activations, and prints the page faults that took, after one round: both runs start from a heap grown once
STEPS = """
import ctypes, resource, sys
from vidanom import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def step():
    blocks = [libc.malloc(8 << 20) for _ in range(5)]
    for b in blocks:
        ctypes.memset(b, 1, 8 << 20)
    for b in blocks:
        libc.free(b)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again() -> None:
    default, kept = faults("default"), faults("keep")
    if default < 1000:  # 10 rounds of 40 MB are 100k small pages
        pytest.skip("this kernel backs the blocks with huge pages: too few faults to compare")
    assert kept < default / 10


class FakeLibc:
    """A C library whose mallopt refuses one parameter (a function, so ctypes' argtypes can be set)."""

    def __init__(self, refuse: int | None) -> None:
        self.refuse, self.calls = refuse, list[int]()

        def mallopt(param: int, value: int) -> int:
            self.calls.append(param)
            return 0 if param == self.refuse else 1

        self.mallopt = mallopt


def test_every_setting_is_tried_and_a_refusal_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc(refuse=heap.M_MMAP_THRESHOLD)
    fake: Any = lambda name: libc  # noqa: E731
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", fake)
    assert heap.keep_freed_memory() is False
    assert libc.calls == [heap.M_MMAP_THRESHOLD, heap.M_TRIM_THRESHOLD, heap.M_TOP_PAD]
    libc.refuse = None
    assert heap.keep_freed_memory() is True


def test_no_mallopt_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(name: object) -> object:
        raise OSError("no C library")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert heap.keep_freed_memory() is False
    monkeypatch.setattr(sys, "platform", "darwin")
    assert heap.keep_freed_memory() is False
