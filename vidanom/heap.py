"""The C heap of a long computation: keep memory freed by one training step for the next.

Each optimiser step allocates and frees the same activations, blocks of a few MB to tens of MB. glibc's
allocator, by default, maps such blocks from the kernel afresh and hands the free top of its heap back,
so every step faults the same pages in again (and the kernel zeroes them). `keep_freed_memory` asks it
to keep them: the peak memory grows a little, and what is kept is held until the process ends.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # blocks up to this size come from the heap: as far as glibc's own threshold rises
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept, up to this much
TOP_PAD = 64 << 20  # grow the heap by this much beyond a request, rather than page by page


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for a process that allocates the same large blocks step after step.
    Returns whether it took effect: False off Linux or where the C library has no glibc `mallopt`
    (musl's accepts no setting). It changes the whole process, so the library never calls it: the
    commands that train (train, update, accept) do."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all([mallopt(param, value) == 1 for param, value in settings])  # a list: each is tried, refused or not
