"""Process settings that make CPU inference fast by themselves: :func:`configure`.

Measured on the reference machine (2 cores, glibc 2.36, torch 2.13 CPU; README "Figures"):
a region encoder allocates activations of tens to hundreds of MiB on every batch (batch 8 of
512 px regions = 32 chunks of 256 px; EfficientNet-Lite0's first stages make 64-192 MiB
tensors). glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and gives it back with ``munmap`` when freed, so each batch page-faults (and the
kernel zeroes) about a gigabyte again: system time above user time, and the OpenMP threads wait
on each other's faults. Raising ``M_MMAP_THRESHOLD`` to its 32 MiB ceiling does not help, the big
tensors are larger than that. What helps is to stop glibc from using mmap for single blocks
(``M_MMAP_MAX = 0``) and from trimming the heap top after each batch (``M_TRIM_THRESHOLD``), so
freed activations are reused in place; :func:`release_memory` (``malloc_trim``) gives the unused
memory back once a slide is done. A preloaded tcmalloc or jemalloc does the same job; then
nothing is changed.

Everything here is idempotent, cheap, and safe elsewhere: on a C library other than glibc
(musl, macOS, Windows) the allocator is left alone; CUDA is not touched; torch's thread count
is kept unless ``XT_NUM_THREADS`` says otherwise. ``XT_NO_TUNING=1`` turns all of it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any

__all__ = ["configure", "applied", "release_memory", "preloaded_allocator", "tcmalloc_path",
           "reexec_with_tcmalloc"]

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

#: What :func:`configure` sets with ``mallopt`` (glibc only).
MALLOPT_SETTINGS: dict[str, tuple[int, int]] = {
    # No single block gets its own mmap: big tensors come from the heap and are reused there.
    # (glibc still falls back to mmap where the heap cannot grow, and for blocks a thread's
    # own 64 MiB arena cannot hold, so allocation never fails because of this.)
    "M_MMAP_MAX": (M_MMAP_MAX, 0),
    # Keep up to 2 GiB of free heap top instead of trimming it after every batch; the memory
    # goes back to the system at release_memory() (end of predict_slide).
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**31 - 1),
    # Grow the heap 64 MiB at a time: fewer brk calls.
    "M_TOP_PAD": (M_TOP_PAD, 64 << 20),
}

_PRELOADED_NAMES = ("libtcmalloc", "libjemalloc", "libmimalloc")
_REEXEC_GUARD = "XT_REEXECED"

_lock = threading.Lock()
_applied: dict[str, Any] | None = None
_libc: Any = None


def configure(*, threads: int | None = None) -> dict[str, Any]:
    """Apply the process settings once; returns (a copy of) what was applied.

    Later calls change nothing and return the same record. ``threads`` (or the environment
    variable ``XT_NUM_THREADS``) sets torch's intra-op threads; by default torch's own choice
    (one per core) is kept, which measured best with 2 reader threads on 2 cores.
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = _configure(threads)
        return dict(_applied)


def applied() -> dict[str, Any] | None:
    """What :func:`configure` applied, or None before it ran."""
    return dict(_applied) if _applied is not None else None


def release_memory() -> bool:
    """Give free heap memory back to the system (glibc ``malloc_trim``); True if done.

    Only acts where :func:`configure` tuned glibc (it kept that memory on purpose).
    """
    if _applied is None or _applied.get("allocator") != "glibc (tuned)" or _libc is None:
        return False
    try:
        _libc.malloc_trim(ctypes.c_size_t(0))
    except (AttributeError, OSError):
        return False
    return True


def preloaded_allocator() -> str | None:
    """``tcmalloc``/``jemalloc``/``mimalloc`` when one is loaded in this process, else None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
    except OSError:
        maps = os.environ.get("LD_PRELOAD", "")
    for name in _PRELOADED_NAMES:
        if name in maps:
            return name[3:]
    return None


def glibc_version() -> str | None:
    """``"2.36"`` on glibc, None on any other C library."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    if not text or not text.startswith("glibc"):
        return None
    return text.split()[-1]


def tcmalloc_path() -> str | None:
    """The system's ``libtcmalloc_minimal.so.4`` (Debian/Ubuntu ``libtcmalloc-minimal4``), if any."""
    import glob

    patterns = (
        "/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4",
        "/usr/lib64/libtcmalloc_minimal.so.4",
        "/usr/lib/libtcmalloc_minimal.so.4",
        "/usr/local/lib/libtcmalloc_minimal.so.4",
    )
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def reexec_with_tcmalloc(argv: list[str] | None = None) -> None:
    """Replace this process by itself with tcmalloc preloaded, where that is possible and wanted.

    Opt-in (``XT_ALLOCATOR=tcmalloc``): measured, the glibc settings of :func:`configure`
    give the same speed without a second process start. Does nothing (returns) when
    ``XT_NO_REEXEC=1``, when this process was already re-executed, when an allocator is
    already preloaded, off Linux, or when the library is not installed.
    """
    if os.environ.get("XT_ALLOCATOR", "").lower() != "tcmalloc":
        return
    if os.environ.get("XT_NO_REEXEC") == "1" or os.environ.get(_REEXEC_GUARD) == "1":
        return
    if not sys.platform.startswith("linux") or preloaded_allocator() is not None:
        return
    lib = tcmalloc_path()
    if lib is None:
        return
    env = dict(os.environ)
    env[_REEXEC_GUARD] = "1"
    env["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else lib
    args = [sys.executable, *(sys.orig_argv[1:] if argv is None and hasattr(sys, "orig_argv") else (argv or sys.argv))]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


# --------------------------------------------------------------------------------------


def _configure(threads: int | None) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if os.environ.get("XT_NO_TUNING") == "1":
        record["allocator"] = "untouched (XT_NO_TUNING=1)"
    else:
        record.update(_configure_allocator())
    record.update(_configure_threads(threads))
    return record


def _configure_allocator() -> dict[str, Any]:
    global _libc
    other = preloaded_allocator()
    if other is not None:
        return {"allocator": f"{other} (preloaded)"}
    version = glibc_version()
    if version is None or not sys.platform.startswith("linux"):
        return {"allocator": "system (not glibc: left alone)"}
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {"allocator": f"glibc {version} (mallopt unavailable: left alone)"}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = {}
    for name, (param, value) in MALLOPT_SETTINGS.items():
        if mallopt(param, value) == 1:
            done[name] = value
    _libc = libc
    return {"allocator": "glibc (tuned)" if done else f"glibc {version} (mallopt refused)",
            "glibc": version, "mallopt": done}


def _configure_threads(threads: int | None) -> dict[str, Any]:
    import torch

    env = os.environ.get("XT_NUM_THREADS")
    if threads is None and env:
        try:
            threads = int(env)
        except ValueError:
            threads = None
    if threads is not None and threads >= 1 and threads != torch.get_num_threads():
        torch.set_num_threads(int(threads))
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
