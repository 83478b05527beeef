"""A real ``redis-server`` for tests, on a free 127.0.0.1 port, in a temporary directory.

Where redis-server is missing, the tests that need it are skipped (``requires_redis``), except
under CI (the ``CI`` environment variable is set), where collecting them fails instead: CI must
run them (.ci/run installs redis-server).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Literal

import pytest
import trio

__all__ = ["RedisServer", "redis_server", "requires_redis", "shared_redis_server"]

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0

Fsync = Literal["always", "everysec", "no"]


class RedisUnavailableError(RuntimeError):
    """redis-server is missing where the Redis tests must run (CI)."""


def _redis_server_path() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason() -> str | None:
    if _redis_server_path() is not None:
        return None
    reason = "redis-server is not installed (apt-get install redis-server)"
    if _in_ci():
        # A skip would let CI pass without a single Redis test: fail at collection instead.
        raise RedisUnavailableError(f"{reason}; CI must run the Redis tests")
    return reason


_SKIP_REASON = _skip_reason()
requires_redis = pytest.mark.skipif(_SKIP_REASON is not None, reason=_SKIP_REASON or "")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_command(port: int, directory: Path, aof: bool, appendfsync: Fsync) -> list[str]:
    binary = _redis_server_path()
    assert binary is not None
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--logfile", "",  # to stdout, where the harness reads "Ready to accept connections"
        "--save", "",
        "--appendonly", "yes" if aof else "no",
        "--appendfsync", appendfsync,
        "--protected-mode", "no",
        "--daemonize", "no",
    ]  # fmt: skip


_READY = "Ready to accept connections"


class RedisServer:
    """One redis-server process that can be stopped, killed and started again on the same port
    with the same data directory (so an AOF survives a restart)."""

    def __init__(
        self, nursery: trio.Nursery, directory: Path, *, aof: bool, appendfsync: Fsync
    ) -> None:
        self._nursery = nursery
        self.directory = directory
        self.aof = aof
        self.appendfsync = appendfsync
        self.port = 0
        self.starts = 0
        self._process: trio.Process | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _command(self) -> list[str]:
        return _server_command(self.port, self.directory, self.aof, self.appendfsync)

    async def start(self) -> None:
        """Start redis-server (on a free port the first time, on the same port afterwards) and
        return once it accepts connections."""
        assert not self.running, "already running"
        first = self.port == 0
        for _ in range(5 if first else 1):
            if first:
                self.port = _free_port()
            self._process = await trio.lowlevel.open_process(
                self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
            )
            ready = trio.Event()
            exited = trio.Event()
            self._nursery.start_soon(self._read_log, self._process, ready, exited)
            with trio.fail_after(_START_TIMEOUT):
                async with trio.open_nursery() as race:
                    for event in (ready, exited):
                        race.start_soon(_wait_then_cancel, event, race.cancel_scope)
            if ready.is_set():
                self.starts += 1
                return
            await self._process.wait()  # exited: most likely the port was taken meanwhile
        log = "\n".join(self.log[-20:])
        raise RuntimeError(f"redis-server did not start:\n{log}")

    async def _read_log(self, process: trio.Process, ready: trio.Event, exited: trio.Event) -> None:
        """Keep the log (and drain the pipe); "Ready to accept connections" means started,
        after any AOF was read back."""
        stdout = process.stdout
        assert stdout is not None
        buffer = b""
        async with stdout:
            async for chunk in stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    self.log.append(text)
                    if _READY in text:
                        ready.set()
        exited.set()

    async def stop(self) -> None:
        """Stop cleanly (SIGTERM: Redis flushes its AOF and exits)."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """Kill with SIGKILL: whatever Redis had not written to its AOF is lost."""
        await self._end(signal.SIGKILL)

    async def restart(self, *, kill: bool = False) -> None:
        """Kill (or stop) and start again on the same port with the same data."""
        await (self.kill() if kill else self.stop())
        await self.start()

    async def _end(self, signum: int) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signum)
        with trio.move_on_after(_STOP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


@asynccontextmanager
async def redis_server(
    *, aof: bool = False, appendfsync: Fsync = "everysec"
) -> AsyncIterator[RedisServer]:
    """Run a redis-server for the duration of the block; killed and removed afterwards.

    Its log lines are in ``server.log``.
    """
    with tempfile.TemporaryDirectory(prefix="trio-ysync-redis-") as directory:
        async with trio.open_nursery() as nursery:
            server = RedisServer(nursery, Path(directory), aof=aof, appendfsync=appendfsync)
            try:
                await server.start()
                yield server
            finally:
                with trio.CancelScope(shield=True):
                    await server.kill()


@contextmanager
def shared_redis_server() -> Iterator[str]:
    """A redis-server for a whole test session, started without trio (for session fixtures);
    yields its URL. Tests that share it keep apart by key prefix."""
    if _SKIP_REASON is not None:
        pytest.skip(_SKIP_REASON)
    with tempfile.TemporaryDirectory(prefix="trio-ysync-redis-") as directory:
        for _ in range(5):
            port = _free_port()
            process = subprocess.Popen(
                _server_command(port, Path(directory), False, "everysec"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert process.stdout is not None
            log = []
            for line in process.stdout:  # ends when the process exits (port taken)
                log.append(line)
                if _READY in line:
                    break
            else:
                process.wait()
                continue
            # Keep draining the log, or Redis blocks once the pipe is full.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            try:
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                process.kill()
                process.wait()
            return
        raise RuntimeError("redis-server did not start:\n" + "".join(log[-20:]))
