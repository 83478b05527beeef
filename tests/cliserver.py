"""Run ``trio-ysync serve`` as a real subprocess for end-to-end and interop tests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

_READY = re.compile(rb"serving ws://[^:]+:(\d+)/")


@dataclass
class ServerProcess:
    process: trio.Process
    port: int

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        self.process.kill()

    def terminate(self) -> None:
        """SIGTERM: graceful shutdown."""
        self.process.send_signal(signal.SIGTERM)


@asynccontextmanager
async def cli_server(
    *args: str, port: int = 0, cwd: str | None = None
) -> AsyncIterator[ServerProcess]:
    """``python -m trio_ysync serve --port PORT ARGS...`` on 127.0.0.1 (in ``cwd``); waits until
    it listens."""
    command = [sys.executable, "-m", "trio_ysync", "serve", "--host", "127.0.0.1"]
    process = await trio.lowlevel.open_process(
        [*command, "--port", str(port), *args], stdout=subprocess.PIPE, cwd=cwd
    )
    try:
        assert process.stdout is not None
        output = b""
        while (match := _READY.search(output)) is None:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"trio-ysync serve exited early: {output!r}")
            output += chunk
        yield ServerProcess(process, int(match.group(1)))
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()  # type: ignore[union-attr]
