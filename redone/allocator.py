"""glibc malloc settings for long CPU training runs (``tune_malloc``, called once per process).

Why: with glibc's defaults a CPU run slows down step after step. Packed rows give every step new segment
lengths, so attention and its backward allocate buffers of ever new sizes; glibc raises its mmap
threshold dynamically after such frees, serves the next large buffers from the heap, trims the heap top
back to the kernel whenever 128 KiB are free and faults the pages in again on the next step. Measured on
the demo's CPT (SmolLM2, 2 Xeon cores, bf16, 40 steps, same losses bitwise): tokens/s fell from ~75 to
35 by step 40 with the defaults; with a fixed 32 MiB mmap threshold and no trimming it stayed at 72-127
(`docs/BENCHMARKS.md`). This is what tcmalloc/jemalloc fix for PyTorch CPU users; these two mallopt
calls get most of it with no extra library.

Left alone where it cannot apply or was chosen already: not glibc (macOS, musl), a ``MALLOC_*`` setting
in the environment (the user's own tuning), or ``REDONE_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum: buffers above this are still mmapped and returned at once
TRIM_THRESHOLD = 2**31 - 1  # mallopt's largest (an int): keep freed heap memory for the next step

_applied: bool | None = None


def tune_malloc() -> bool:
    """Apply the two settings once; True when they are in effect for this process."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("REDONE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if any(key.startswith("MALLOC_") for key in os.environ) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
