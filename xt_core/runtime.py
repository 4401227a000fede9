"""Process settings that make CPU inference fast by themselves: :func:`configure`.

Measured on the reference machine (2 cores, glibc 2.36, torch 2.13 CPU; README "Figures"):
a region encoder allocates activations of tens to hundreds of MiB on every batch (batch 8 of
512 px regions = 32 chunks of 256 px; EfficientNet-Lite0's first stages make 32-192 MiB
tensors). glibc's malloc serves every block above its mmap threshold (dynamic, at most 32 MiB)
with a fresh ``mmap`` and returns it with ``munmap`` when freed, so each batch page-faults
(and the kernel zeroes) gigabytes again: system time near user time, and the OpenMP threads
wait on each other's faults; the encoder runs at 9 regions/s instead of 22. Pinning the
threshold at 32 MiB does not help (the big tensors are larger). :func:`configure` raises it
to 1 GiB (where glibc refuses, it switches mmap off for single blocks instead) and keeps up to
1 GiB of free heap top between batches, so activations are reused in place: no page faults,
faster than a preloaded tcmalloc. :func:`release_memory` (``malloc_trim``, called by
``predict_slide`` at the end of a slide) gives the kept memory back to the system. Where
tcmalloc, jemalloc or mimalloc is already preloaded, nothing is changed.

:func:`prepare_process` (entry points call it before torch is imported: ``xt-slide``, the napari
plugin, Dask workers) makes waiting OpenMP threads sleep instead of spin
(``OMP_WAIT_POLICY=PASSIVE``): at most a few percent slower on an idle machine, 1.8x faster and
without the collapses of spinning when anything else wants a core; see its docstring.

Everything here is idempotent, cheap, and safe elsewhere: on a C library other than glibc
(musl, macOS, Windows) the allocator is left alone; CUDA is not touched; torch's thread count
is kept (one per core measured best, with 2 reader threads on 2 cores) unless
``XT_NUM_THREADS`` says otherwise. ``XT_NO_TUNING=1`` leaves the allocator and OpenMP alone;
an ``OMP_WAIT_POLICY`` the user set is kept.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any

__all__ = ["prepare_process", "configure", "env_threads", "omp_wait_policy_env", "applied", "release_memory",
           "preloaded_allocator", "glibc_version", "tcmalloc_path"]

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

#: Blocks below this come from the heap, not from their own mmap: every activation of a batch.
MMAP_THRESHOLD = 1 << 30
#: Free memory at the heap top kept for the next batch instead of being trimmed after this one.
TRIM_THRESHOLD = 1 << 30
#: The heap grows by this much at a time (fewer brk calls).
TOP_PAD = 64 << 20

_PRELOADED_NAMES = ("libtcmalloc", "libjemalloc", "libmimalloc")

_lock = threading.Lock()
_applied: dict[str, Any] | None = None
_libc: Any = None
_omp: str | None = None  # what prepare_process found or did about OMP_WAIT_POLICY


def prepare_process() -> str:
    """Settings that only work before torch is imported; call first thing in an entry point.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` (where the user has not set it): OpenMP threads that wait
    at the end of each parallel kernel sleep instead of spinning on their core, so the reader
    threads, a GUI or other processes get that core. Measured on 2 cores with the default
    model's encoder (2 torch threads, batches of 8): idle machine 241-251 regions/s passive
    against 246-265 spinning (within the noise, at most 5% slower); with one other busy
    process 150 regions/s passive against 74-88 spinning (libgomp's spinning threads wait on
    descheduled ones; spinning briefly, GOMP_SPINCOUNT=3000, gave 106), and runs under heavier
    load collapsed to 22-42 regions/s spinning. It does nothing once torch (and so libgomp,
    which reads the variable when it loads) has been imported.
    Idempotent; returns what it found or did (``"PASSIVE (set)"``, ``"ACTIVE (user's)"``,
    ``"libgomp default (...)"`` saying why), which :func:`configure` records.
    """
    global _omp
    if _omp is not None:
        return _omp
    if "OMP_WAIT_POLICY" in os.environ:
        _omp = f"{os.environ['OMP_WAIT_POLICY']} (user's)"
    elif os.environ.get("XT_NO_TUNING") == "1":
        _omp = "libgomp default (XT_NO_TUNING=1)"
    elif "torch" in sys.modules:
        _omp = "libgomp default (torch imported before xt_core.runtime.prepare_process)"
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        _omp = "PASSIVE (set)"
    return _omp


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


# --------------------------------------------------------------------------------------


def _configure(threads: int | None) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if os.environ.get("XT_NO_TUNING") == "1":
        record["allocator"] = "untouched (XT_NO_TUNING=1)"
    else:
        record.update(_configure_allocator())
    record.update(_configure_threads(threads))
    record["omp_wait_policy"] = _omp or (f"{os.environ['OMP_WAIT_POLICY']} (user's)" if "OMP_WAIT_POLICY" in os.environ
                                         else "libgomp default (prepare_process not called)")
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
    # glibc 2.36 takes a 1 GiB mmap threshold; versions that refuse more than 32 MiB (half
    # their heap size, below our tensors) get mmap switched off for single blocks instead.
    # Either way glibc still maps memory where the heap cannot grow and for blocks a thread
    # arena cannot hold, so no allocation fails because of this.
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        done["M_MMAP_THRESHOLD"] = MMAP_THRESHOLD
    elif mallopt(M_MMAP_MAX, 0) == 1:
        done["M_MMAP_MAX"] = 0
    for name, param, value in (("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                               ("M_TOP_PAD", M_TOP_PAD, TOP_PAD)):
        if mallopt(param, value) == 1:
            done[name] = value
    _libc = libc
    return {"allocator": "glibc (tuned)" if done else f"glibc {version} (mallopt refused)",
            "glibc": version, "mallopt": done}


def env_threads() -> int | None:
    """The torch thread count ``XT_NUM_THREADS`` asks for (None: unset or not a positive integer)."""
    text = os.environ.get("XT_NUM_THREADS")
    try:
        value = int(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value >= 1 else None


def omp_wait_policy_env() -> dict[str, str]:
    """The ``OMP_WAIT_POLICY`` a process started from this one should get, by
    :func:`prepare_process`'s rule: the user's, else ``PASSIVE`` unless ``XT_NO_TUNING=1``."""
    if "OMP_WAIT_POLICY" in os.environ:
        return {"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}
    return {} if os.environ.get("XT_NO_TUNING") == "1" else {"OMP_WAIT_POLICY": "PASSIVE"}


def _configure_threads(threads: int | None) -> dict[str, Any]:
    import torch

    if threads is None:
        threads = env_threads()
    if threads is not None and threads >= 1 and threads != torch.get_num_threads():
        torch.set_num_threads(int(threads))
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
