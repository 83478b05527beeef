"""The server under attack: a real ``trio-ysync serve`` process, its log and its memory."""

from __future__ import annotations

import re
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cliserver import ServerProcess, cli_server
from wsclient import http_get

STORES = ("memory", "sqlite", "files")

#: A record of the CLI's log format: "2024-01-01 12:00:00,123 WARNING trio_ysync.room: ...".
_RECORD = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) ([\w.]+): ?(.*)$")
_TRACEBACK = b"Traceback (most recent call last)"
_PEER = re.compile(r"^room '(.*)': peer (joined|left)")
_PANIC = re.compile(rb"^thread '.*' .*panicked at")
_TRACEBACK_LINES = 80
_TRACEBACKS_KEPT = 3


@dataclass
class ServerLog:
    """Reads the server's standard error as it grows: level counts, tracebacks, Rust panics."""

    path: Path
    levels: Counter[str] = field(default_factory=Counter)
    #: WARNING and ERROR messages by their first words (what the server complained about).
    complaints: Counter[str] = field(default_factory=Counter)
    tracebacks: int = 0
    panics: int = 0
    first_tracebacks: list[str] = field(default_factory=list)
    #: Peers connected to each room, as the INFO lines about joins and leaves tell.
    peers: Counter[str] = field(default_factory=Counter)
    _offset: int = 0
    _partial: bytes = b""
    _block: list[bytes] | None = None
    _in_traceback: bool = False

    def poll(self) -> int:
        """Read what was written since the last call; returns how many tracebacks it held."""
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        before = self.tracebacks
        for line in lines:
            self._line(line.rstrip(b"\r"))
        return self.tracebacks - before

    def finish(self) -> None:
        """Read the rest, the last line too, once the process has exited."""
        self.poll()
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        self._end_block()

    def _line(self, line: bytes) -> None:
        record = _RECORD.match(line)
        if record is not None:
            self._end_block()
            self._in_traceback = False
            level = record.group(1).decode()
            self.levels[level] += 1
            peer = _PEER.match(record.group(3).decode(errors="replace"))
            if peer is not None:
                self.peers[peer.group(1)] += 1 if peer.group(2) == "joined" else -1
            if level in ("WARNING", "ERROR", "CRITICAL"):
                self.complaints[
                    f"{level} {record.group(2).decode()}: {_shape(record.group(3))}"
                ] += 1
        if _TRACEBACK in line and not self._in_traceback:
            # One report, however many chained or grouped tracebacks it prints.
            self._in_traceback = True
            self.tracebacks += 1
            if len(self.first_tracebacks) < _TRACEBACKS_KEPT:
                self._block = []
        if _PANIC.search(line):
            self.panics += 1
        if self._block is not None and record is None:
            self._block.append(line)
            if len(self._block) >= _TRACEBACK_LINES:
                self._end_block()

    def _end_block(self) -> None:
        if self._block:
            self.first_tracebacks.append(b"\n".join(self._block).decode(errors="replace"))
        self._block = None


def _shape(message: bytes) -> str:
    """A log message with its room names and numbers blanked, to group alike messages."""
    text = re.sub(r"'[^']*'", "'*'", message.decode(errors="replace"))
    return re.sub(r"\d+", "N", text)[:120]


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


async def answers_health_check(port: int) -> bool:
    """Whether the server answers its health page (the caller bounds the wait)."""
    try:
        status, _ = await http_get(port, "/health")
    except (OSError, trio.BrokenResourceError, IndexError, ValueError):
        return False
    return status == 200


def store_argument(store: str, directory: Path, name: str) -> str:
    if store == "memory":
        return "memory"
    if store == "sqlite":
        return str(directory / f"{name}.db")
    if store == "files":
        return f"{directory / name}/"
    raise ValueError(f"unknown store {store!r}: one of {', '.join(STORES)}")


class Target:
    """A running server: its port, whether it died, its peak memory."""

    def __init__(self, process: ServerProcess, log: ServerLog) -> None:
        self.process = process.process
        self.port = process.port
        self.log = log
        self.peak_rss_kib = 0
        self.died = trio.Event()
        #: Set before the fuzzer stops the server itself, so the exit is not a crash.
        self.stopping = False

    @property
    def crashed(self) -> bool:
        return self.died.is_set() and not self.stopping

    async def _watch_exit(self) -> None:
        await self.process.wait()
        self.died.set()

    def _sample_rss(self) -> None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            self.peak_rss_kib = max(self.peak_rss_kib, int(match.group(1)))

    async def _sample_rss_forever(self, interval: float) -> None:
        while True:
            self._sample_rss()
            await trio.sleep(interval)


@asynccontextmanager
async def run_target(
    store: str, directory: Path, name: str, *, max_message_size: int
) -> AsyncIterator[Target]:
    """Start ``trio-ysync serve`` on a free port with its standard error in
    ``directory/name.log``; stopped with SIGTERM on exit (``target.process.returncode`` then
    says whether it shut down cleanly)."""
    log = ServerLog(directory / f"{name}.log")
    args = ["--store", store_argument(store, directory, name)]
    args += ["--max-message-size", str(max_message_size)]
    with log.path.open("wb") as stderr:
        async with (
            cli_server(*args, stderr=stderr) as process,
            trio.open_nursery() as nursery,
        ):
            target = Target(process, log)
            nursery.start_soon(target._watch_exit)
            nursery.start_soon(target._sample_rss_forever, 0.05)
            try:
                yield target
            finally:
                target.stopping = not target.died.is_set()
                nursery.cancel_scope.cancel()
    log.finish()
