"""Watching the server under attack (its exit, its log, its responsiveness) and the fuzzer's
own event loop."""

from __future__ import annotations

import faulthandler
from pathlib import Path

import trio

from .ledger import Ledger
from .target import Target, answers_health_check, describe_exit

#: How often the server's health page is fetched, and the wait that counts as a stall.
PULSE_INTERVAL = 0.25
STALL_SECONDS = 1.0
#: A block of the fuzzer's own event loop this long dumps its stacks.
SELF_STALL_SECONDS = 3.0


async def watch_exit(target: Target, ledger: Ledger, scope: trio.CancelScope) -> None:
    await target.died.wait()
    if not target.stopping:
        assert target.process.returncode is not None
        reason = describe_exit(target.process.returncode)
        ledger.server_died.set()
        ledger.suspect_recent(f"server {reason} at {ledger.elapsed():.1f} s", keep=True)
        scope.cancel()


async def watch_log(target: Target, ledger: Ledger) -> None:
    while True:
        await trio.sleep(0.2)
        new = target.log.poll()
        if new:
            ledger.suspect_recent(
                f"{new} traceback(s) in the server log at {ledger.elapsed():.1f} s"
            )


async def watch_pulse(target: Target, ledger: Ledger) -> None:
    """Ask the server for its health page over and over: an attack that blocks its event loop
    stalls every room. The inputs in flight when a stall starts become suspects."""
    while True:
        started = trio.current_time()
        answered = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stall_alarm, answered, ledger)
                # A server that died or refuses is reported on its own: this only times answers.
                await answers_health_check(target.port)
                answered.set()
        finally:
            # Also when cancelled: a stall that lasts until the end counts in full.
            ledger.longest_stall = max(ledger.longest_stall, trio.current_time() - started)
        await trio.sleep(PULSE_INTERVAL)


async def _stall_alarm(answered: trio.Event, ledger: Ledger) -> None:
    with trio.move_on_after(STALL_SECONDS):
        await answered.wait()
        return
    ledger.stalls += 1
    reason = f"server unresponsive for {STALL_SECONDS} s at {ledger.elapsed():.1f} s"
    ledger.suspect_recent(reason, keep=ledger.stalls == 1)


async def watch_self(out: Path, ledger: Ledger) -> None:
    """Measure how late this process's own event loop runs: a fuzzer that blocks makes honest
    edits look late. If it blocks for SELF_STALL_SECONDS, its threads' stacks are dumped."""
    with (out / "fuzzer-stalls.txt").open("w") as file:
        try:
            while True:
                faulthandler.dump_traceback_later(SELF_STALL_SECONDS, file=file)
                before = trio.current_time()
                await trio.sleep(0.1)
                ledger.fuzzer_lag = max(ledger.fuzzer_lag, trio.current_time() - before - 0.1)
        finally:
            faulthandler.cancel_dump_traceback_later()
