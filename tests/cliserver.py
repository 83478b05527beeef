"""Run ``trio-ysync serve`` as a real subprocess for end-to-end and interop tests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO

import trio

_READY = re.compile(rb"serving ws://[^:]+:(\d+)/")


@dataclass
class ServerProcess:
    process: trio.Process
    port: int
    #: What the server wrote to standard error so far (with ``capture_stderr=True``).
    stderr: bytearray = field(default_factory=bytearray)
    _more: trio.Event = field(default_factory=trio.Event)
    _ended: bool = False

    @property
    def log_lines(self) -> list[str]:
        """The captured standard error, line by line."""
        return self.stderr.decode(errors="replace").splitlines()

    async def wait_for_log(self, text: str, count: int = 1) -> None:
        """Wait until ``text`` has appeared ``count`` times on the captured standard error."""
        needle = text.encode()
        while self.stderr.count(needle) < count:
            if self._ended:
                raise RuntimeError(f"the server's standard error ended before {text!r}")
            await self._more.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        self.process.kill()

    def terminate(self) -> None:
        """SIGTERM: graceful shutdown."""
        self.process.send_signal(signal.SIGTERM)


async def _collect(stream: trio.abc.ReceiveStream, server: ServerProcess) -> None:
    while chunk := await stream.receive_some():
        server.stderr += chunk
        more, server._more = server._more, trio.Event()
        more.set()
    server._ended = True
    server._more.set()


@asynccontextmanager
async def cli_server(
    *args: str,
    port: int = 0,
    capture_stderr: bool = False,
    stderr: IO[bytes] | None = None,
    cwd: str | None = None,
) -> AsyncIterator[ServerProcess]:
    """``python -m trio_ysync serve --port PORT ARGS...`` on 127.0.0.1 (in ``cwd``); waits until
    it listens.

    The server's standard error goes to ``stderr`` (a file) when given; with
    ``capture_stderr`` it is collected in :attr:`ServerProcess.stderr`; else it goes to ours.
    """
    command = [sys.executable, "-m", "trio_ysync", "serve", "--host", "127.0.0.1"]
    process = await trio.lowlevel.open_process(
        [*command, "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr and stderr is None else stderr,
        cwd=cwd,
    )
    try:
        async with trio.open_nursery() as nursery:
            server = ServerProcess(process, 0)
            if process.stderr is not None:
                nursery.start_soon(_collect, process.stderr, server)
            try:
                assert process.stdout is not None
                output = b""
                while (match := _READY.search(output)) is None:
                    chunk = await process.stdout.receive_some()
                    if not chunk:
                        if process.stderr is not None:
                            with trio.move_on_after(5):
                                while not server._ended:
                                    await server._more.wait()
                        error = server.stderr.decode(errors="replace")[-2000:]
                        raise RuntimeError(f"trio-ysync serve exited early: {output!r} {error}")
                    output += chunk
                server.port = int(match.group(1))
                yield server
            finally:
                # Stopped inside the nursery: the task reading stderr ends when it exits.
                await _stop(process)
    finally:
        await _stop(process)
        await process.stdout.aclose()  # type: ignore[union-attr]


async def _stop(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL if the server does not exit within 10 s."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
