"""Process memory policy for ``trio-ysync serve``: the cyclic collector's thresholds, and
returning freed heap memory to the operating system.

Both are settings of the whole process, so the command line applies them; a program that embeds
:class:`~trio_ysync.server.RoomServer` decides for itself.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable

import trio

#: The cyclic collector's thresholds while serving (CPython's defaults: 700, 10, 10).
SERVING_GC_THRESHOLDS = (10_000, 20, 10)

#: Seconds between two returns of freed heap memory to the operating system.
RELEASE_INTERVAL = 60.0


def tune_garbage_collector() -> None:
    """Freeze what startup allocated and make young collections rarer.

    Thousands of connections and rooms opening at once (a reconnect storm) survive every young
    collection, and with the default thresholds the storm spent a third of its time rescanning
    them (`nox -s bench -- storm`). Rarer young collections still free garbage cycles soon.
    """
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc only (not musl)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


async def release_freed_memory(interval: float = RELEASE_INTERVAL) -> None:
    """Every ``interval`` seconds, hand the heap's free pages back to the operating system.

    glibc keeps freed memory for reuse; after rooms unload, a long-running server's resident
    size then stays at its peak although the memory is free (the soak measured a few MB an
    hour, see docs/memory.rst). ``malloc_trim`` returns it; it takes about a millisecond. Does
    nothing where the C library has no ``malloc_trim``.
    """
    trim = _malloc_trim()
    if trim is None:
        return
    while True:
        await trio.sleep(interval)
        trim(0)
