"""redone.allocator: the glibc settings take effect (an 8 MiB buffer comes from the heap, not mmap) and
are left alone when the user tuned malloc themselves."""

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from redone.allocator import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
applied = tune_malloc()
before = libc.mallinfo2().hblkhd
block = libc.malloc(8 << 20)
mmapped = libc.mallinfo2().hblkhd - before  # bytes of mmapped chunks this malloc added
libc.free(block)
print(applied, mmapped >= 8 << 20)
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc only")


def probe(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "REDONE_MALLOC_TUNING"}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**clean, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@glibc
def test_tuned_process_serves_large_buffers_from_the_heap():
    assert probe() == "True False"  # applied; the 8 MiB buffer was not mmapped


@glibc
@pytest.mark.parametrize("env", [{"REDONE_MALLOC_TUNING": "0"}, {"MALLOC_ARENA_MAX": "2"}])
def test_left_alone_when_switched_off_or_user_tuned(env):
    assert probe(**env) == "False True"  # glibc's default: 8 MiB is above its 128 KiB mmap threshold
