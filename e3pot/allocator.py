"""Keep freed memory in the process between model calls (glibc malloc settings).

Every energy+forces call allocates and frees the same edge-sized buffers (tens of MB for a few
hundred atoms). With glibc's default settings, free memory above 128 KiB at the top of the heap
is handed back to the kernel, and blocks above the (dynamic) mmap threshold are unmapped on
``free``, so the next call touches fresh pages and pays one page fault per 4 KiB page. On the
768-atom water box of the speed benchmark this cost 20 % of a call (2 threads); on a loaded
machine the faults cost more.

:func:`tune_allocator` raises the trim threshold and stops serving large blocks with ``mmap``, so
freed memory is reused by the next call. Peak memory grows a little (7 % on the water box, from
fragmentation), and the process keeps its high-water mark until it exits. The settings are process-wide. The calculator, ``e3pot train``
and ``e3pot predict`` call it; set ``E3POT_MALLOC=off`` to leave malloc alone. It also does
nothing when the user already tunes malloc (``MALLOC_*_`` or ``GLIBC_TUNABLES`` in the
environment, or jemalloc/tcmalloc/mimalloc preloaded), and on platforms without glibc.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Dict

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free heap memory

_applied: Dict[str, int] = {}


def _user_tuned() -> bool:
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return True
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))


def tune_allocator() -> Dict[str, int]:
    """Apply the malloc settings once per process; returns what was set (empty: nothing)."""
    if _applied:
        return dict(_applied)
    if os.environ.get("E3POT_MALLOC", "on").lower() in ("off", "0", "false", "no") or _user_tuned():
        return {}
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {}
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return {}
    for name, param, value in (("trim_threshold", M_TRIM_THRESHOLD, TRIM_THRESHOLD), ("mmap_max", M_MMAP_MAX, 0)):
        if libc.mallopt(param, value) == 1:
            _applied[name] = value
    return dict(_applied)
