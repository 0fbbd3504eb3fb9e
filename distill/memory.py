"""How this process's C allocator treats large freed blocks (glibc on Linux). No torch here.

torch allocates every CPU tensor with ``malloc`` and frees it when the last reference goes. glibc serves
blocks above its mmap threshold (128 KiB, raised up to 32 MiB as such blocks are freed) with fresh
``mmap`` pages and hands free memory at the top of the heap back to the system above a trim threshold,
so a training step that allocates the same few-MiB temporaries every batch (a chunk of logits, the
(B, L, L) attention weights) page-faults on all of them every time: that made the full-softmax CE of an
ML-1M batch 1.6-2x slower and a whole epoch about 17% slower (``bench/results/sasrec_epoch.md``).
:func:`keep_freed_memory` raises both thresholds, so freed blocks are reused from the heap instead. The
price is that up to :data:`TRIM_THRESHOLD` of freed memory stays with the process rather than going back
to the system; peak memory is what the work needs either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 256 << 20  # blocks up to 256 MiB come from the heap and are reused there
TRIM_THRESHOLD = 1 << 30  # up to 1 GiB of free memory at the heap's top stays with the process
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring).

    Does nothing outside Linux, without glibc, or when the environment sets either threshold itself
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``: the user's choice wins).

    Returns:
        Whether both thresholds were set.
    """
    if sys.platform != "linux" or any(name in os.environ for name in _ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # The mmap threshold first: setting either one turns off glibc's own adjustment of both.
    mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mmap) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
