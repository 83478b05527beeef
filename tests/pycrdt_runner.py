"""Feed updates to pycrdt in a child process, so one that crashes yrs cannot kill the test run.

``apply_in_child(cases)`` starts ``python pycrdt_runner.py``, which reads one case per line
(``BASE_HEX MUTANT_HEX``), and for each: applies the mutant to an empty document and to one that
already holds the base update, then asks both for their state vector and their full and
incremental updates (yrs can accept an update and panic only on a later diff). It prints
``begin N`` before a case and ``end N OUTCOME`` after it, flushing each line, so a case that kills
the process is the last one begun.

Outcomes: ``ok``; ``error`` (an ordinary exception: yrs refused the update); ``panic`` (a
``BaseException`` such as pyo3's ``PanicException``); ``died`` (the process ended inside the case,
e.g. SIGSEGV from a native stack overflow).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outcome", "apply_in_child"]

_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Outcome:
    """What happened to one case."""

    base: bytes
    mutant: bytes
    result: str  # "ok", "error", "panic" or "died"
    detail: str = ""


def apply_in_child(cases: list[tuple[bytes, bytes]]) -> list[Outcome]:
    """Run every (base, mutant) case in one child process; restart it after a case kills it."""
    outcomes: list[Outcome] = []
    while len(outcomes) < len(cases):
        outcomes += _run_batch(cases[len(outcomes) :])
    return outcomes


def _run_batch(cases: list[tuple[bytes, bytes]]) -> list[Outcome]:
    request = "".join(f"{base.hex()} {mutant.hex()}\n" for base, mutant in cases)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__))],
        input=request,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_SECONDS,
        check=False,
    )
    outcomes = []
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "end":
            index, _, detail = rest.partition(" ")
            result, _, detail = detail.partition(" ")
            base, mutant = cases[int(index)]
            outcomes.append(Outcome(base, mutant, result, detail))
    if len(outcomes) < len(cases):
        # The process ended inside the next case (or before the first one).
        if proc.returncode == 0 or not proc.stdout.strip():
            raise RuntimeError(f"pycrdt runner failed: {proc.returncode}\n{proc.stderr[-2000:]}")
        base, mutant = cases[len(outcomes)]
        outcomes.append(Outcome(base, mutant, "died", f"exit status {proc.returncode}"))
    return outcomes


def _exercise(base: bytes, mutant: bytes) -> None:
    import pycrdt

    alone = pycrdt.Doc()
    alone.apply_update(mutant)
    on_base = pycrdt.Doc()
    on_base.apply_update(base)
    base_state = on_base.get_state()
    on_base.apply_update(mutant)
    for doc in (alone, on_base):
        doc.get_state()
        doc.get_update()
        doc.get_update(base_state)


def _main() -> None:
    for index, line in enumerate(sys.stdin):
        base_hex, mutant_hex = line.split()
        print(f"begin {index}", flush=True)
        try:
            _exercise(bytes.fromhex(base_hex), bytes.fromhex(mutant_hex))
        except Exception as exc:
            outcome = f"error {type(exc).__name__}: {exc}"
        except BaseException as exc:  # pyo3's PanicException derives from BaseException
            outcome = f"panic {type(exc).__name__}: {exc}"
        else:
            outcome = "ok"
        print(f"end {index} {outcome}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    _main()
