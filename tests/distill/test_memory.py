"""``distill.memory``: large freed blocks are reused from the heap instead of fresh mmap pages."""

import ctypes
import json
import os
import subprocess
import sys

import pytest

# In a fresh process: a 16 MiB block, allocated and freed, then allocated again; how many bytes the
# allocator holds in mmap'ed blocks while it is alive (mallinfo2's hblkhd) and whether it is one address.
PROBE = """
import ctypes, json, sys
from distill.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None

class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 << 20)
mapped = libc.mallinfo2().hblkhd - before
print(json.dumps({"kept": kept, "mapped": mapped}))
libc.free(block)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return sys.platform == "linux" and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def _probe(mode: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    run = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=environment, check=True
    )
    return json.loads(run.stdout)


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_large_block_comes_from_the_heap_once_distill_keeps_freed_memory():
    assert _probe("glibc")["mapped"] >= 16 << 20  # glibc's own threshold: a fresh mapping per block
    kept = _probe("keep")
    assert kept == {"kept": True, "mapped": 0}  # from the heap, where a freed block is reused


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_thresholds_set_in_the_environment_win():
    kept = _probe("keep", MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert kept["kept"] is False and kept["mapped"] >= 16 << 20  # the user's 1 MiB threshold holds


def test_every_command_keeps_freed_memory(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli import main

    calls = []
    monkeypatch.setattr("cli.keep_freed_memory", lambda: calls.append(1))
    args = ["prepare", "--synthetic", "--num-users", "30", "--num-items", "20", "-o", str(tmp_path / "d")]
    assert CliRunner().invoke(main, args).exit_code == 0 and calls == [1]
