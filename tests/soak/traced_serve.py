"""``trio-ysync`` with memory accounting, for finding what a long-running server retains.

    python tests/soak/traced_serve.py OUT_DIR EVERY FRAMES serve --store ... (CLI arguments)

Runs the normal command line (:func:`trio_ysync.cli.main`) and every EVERY seconds a thread
writes ``OUT_DIR/trace-NNN.txt``: the process's RSS beside what the C allocator has handed out
and holds free (glibc's ``mallinfo2``: native memory of pycrdt/yrs and SQLite, and Python's
larger objects), the object types whose count grew most since the first dump, and, with
FRAMES > 0, tracemalloc's allocation sites that grew most (FRAMES frames each; tracing slows
the server down several times, so keep the load light then). Nothing here is part of the
package: the server pays for this only when started this way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

TOP = 25


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None  # not glibc
    return libc


def heap_in_use() -> int:
    """Bytes the C allocator has handed out and not taken back (glibc; 0 elsewhere)."""
    libc = _libc()
    if libc is None:
        return 0
    gc.collect()
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _malloc_stats() -> str:
    """In use / free-but-held bytes of the C allocator (glibc only)."""
    libc = _libc()
    if libc is None:
        return "malloc: no mallinfo2"
    info = libc.mallinfo2()
    in_use = info.uordblks + info.hblkhd
    return (
        f"malloc: in use {in_use // 1024} KiB (mmapped {info.hblkhd // 1024} KiB), "
        f"free but held {info.fordblks // 1024} KiB, heap {info.arena // 1024} KiB"
    )


def _rss_kib() -> int:
    match = re.search(r"VmRSS:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else -1


def _type_counts() -> Counter[str]:
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return counts


def _filtered(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        ]
    )


def _dump(n: int, elapsed: float, frames: int, state: dict[str, object]) -> str:
    gc.collect()
    counts = _type_counts()
    lines = [
        f"dump {n} at {elapsed:.0f} s: RSS {_rss_kib()} KiB; {_malloc_stats()}; "
        f"gc objects {sum(counts.values())}; gc garbage {len(gc.garbage)}"
    ]
    snapshot = None
    if frames:
        traced, peak = tracemalloc.get_traced_memory()
        lines.append(
            f"tracemalloc: Python allocations {traced // 1024} KiB (peak {peak // 1024} KiB), "
            f"its own overhead {tracemalloc.get_tracemalloc_memory() // 1024} KiB"
        )
        snapshot = _filtered(tracemalloc.take_snapshot())
    first_counts = state.get("counts")
    if not isinstance(first_counts, Counter):
        state["counts"], state["snapshot"] = counts, snapshot
        return "\n".join(lines) + "\n"
    first_snapshot = state.get("snapshot")
    if snapshot is not None and isinstance(first_snapshot, tracemalloc.Snapshot):
        lines.append(f"\n-- allocation sites that grew most since dump 1 (top {TOP})")
        for stat in snapshot.compare_to(first_snapshot, "traceback")[:TOP]:
            lines.append(
                f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks"
                f"  (now {stat.size / 1024:.1f} KiB)"
            )
            lines.extend(f"      {line}" for line in stat.traceback.format(limit=frames))
    lines.append(f"\n-- object types whose count grew most since dump 1 (top {TOP})")
    growth = Counter({k: counts[k] - first_counts.get(k, 0) for k in counts})
    for name, diff in growth.most_common(TOP):
        lines.append(f"{diff:+8d}  {name} (now {counts[name]})")
    return "\n".join(lines) + "\n"


def _malloc_info(path: Path) -> None:
    """glibc's per-arena statistics (XML) into ``path``."""
    libc = _libc()
    if libc is None:
        return
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    stream = libc.fopen(str(path).encode(), b"w")
    if stream:
        libc.malloc_info(0, stream)
        libc.fclose(stream)


def _dump_forever(out: Path, every: float, frames: int) -> None:
    state: dict[str, object] = {}
    start = time.monotonic()
    n = 0
    while True:
        time.sleep(every)
        n += 1
        text = _dump(n, time.monotonic() - start, frames, state)
        (out / f"trace-{n:03d}.txt").write_text(text)
        _malloc_info(out / f"malloc-{n:03d}.xml")


def main() -> int:
    out, every, frames, *argv = sys.argv[1:]
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    if int(frames):
        tracemalloc.start(int(frames))
    threading.Thread(
        target=_dump_forever,
        args=(directory, float(every), int(frames)),
        name="trace-dumper",
        daemon=True,
    ).start()
    from trio_ysync.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
