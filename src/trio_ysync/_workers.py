"""Several server processes on one port: ``trio-ysync serve --workers N --redis URL``.

Each worker listens on a socket of its own with ``SO_REUSEPORT``, so the kernel spreads new
connections over the workers; the workers share rooms through Redis like any servers of a
cluster. The parent binds the port first (to learn it when it is 0, and to fail early when it is
taken), starts the workers and supervises them: SIGINT and SIGTERM are forwarded, and a worker
that exits on its own makes the parent stop the others and fail. A worker stops by itself when
its parent dies: its standard input, a pipe from the parent, reaches its end.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence

import trio

__all__ = ["WorkerFailedError", "bind_reuseport", "stop_when_parent_exits", "supervise"]

logger = logging.getLogger("trio_ysync.workers")

#: How long stopped workers get to close their rooms before they are killed.
STOP_TIMEOUT = 60.0

_READY = b"serving ws://"


class WorkerFailedError(Exception):
    """A worker failed to start or exited on its own; the others were stopped."""


async def bind_reuseport(host: str, port: int, *, listen: bool) -> list[trio.socket.SocketType]:
    """Sockets bound to every address of ``host`` at ``port`` with ``SO_REUSEPORT`` (so other
    processes of this user may bind the same port), listening if ``listen``.

    With port 0 the first socket gets a free port and the others take the same.

    Raises:
        OSError: an address cannot be bound (the port is taken by a socket without
            ``SO_REUSEPORT``, the host is unknown, ...).
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("this system has no SO_REUSEPORT, which several workers need")
    addresses = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[trio.socket.SocketType] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            await sock.bind(address)
            if listen:
                sock.listen(0xFFFF)  # the kernel caps it at net.core.somaxconn
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def stop_when_parent_exits() -> None:
    """Wait until standard input (a pipe from the parent) ends, then stop this process the way
    SIGTERM does."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with stdin:
        try:
            while await stdin.receive_some():
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    logger.warning("the parent process is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)


class _Worker:
    def __init__(self, index: int, process: trio.Process) -> None:
        self.index = index
        self.process = process

    async def wait_listening(self) -> bool:
        """Whether the worker said it listens (else its output ended first)."""
        stdout = self.process.stdout
        assert stdout is not None
        output = b""
        while not (_READY in output and output.endswith(b"\n")):
            chunk = await stdout.receive_some()
            if not chunk:
                return False
            output += chunk
        return True

    async def drain(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        async with stdout:
            while await stdout.receive_some():
                pass

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)


class _Supervisor:
    def __init__(self) -> None:
        self.workers: list[_Worker] = []
        self.listening = 0
        self.all_listening = trio.Event()
        self.stopping = False
        self.failed: _Worker | None = None

    def stop(self, signum: int = signal.SIGTERM) -> None:
        self.stopping = True
        for worker in self.workers:
            worker.signal(signum)

    async def watch(self, worker: _Worker) -> None:
        if await worker.wait_listening():
            self.listening += 1
            if self.listening == len(self.workers):
                self.all_listening.set()
        await worker.drain()
        code = await worker.process.wait()
        if not self.stopping:
            logger.error("worker %d exited with status %d: stopping the others", worker.index, code)
            self.failed = worker
            self.stop()
        self.all_listening.set()  # or never: stop waiting

    async def forward_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            logger.info("received %s: stopping the workers", signal.Signals(signum).name)
            self.stop(signum)

    def outcome(self) -> None:
        if self.failed is not None:
            code = self.failed.process.returncode
            raise WorkerFailedError(
                f"worker {self.failed.index} exited with status {code}; the other workers were "
                "stopped (its log lines above say why)"
            )
        for worker in self.workers:
            if worker.process.returncode:
                raise WorkerFailedError(
                    f"worker {worker.index} exited with status {worker.process.returncode} "
                    "while stopping"
                )


async def supervise(
    commands: Sequence[Sequence[str]], listening: Callable[[list[int]], None]
) -> None:
    """Run one worker per command; call ``listening`` with their process IDs once every worker
    listens; return once they all exited after SIGINT or SIGTERM.

    Raises:
        WorkerFailedError: a worker exited on its own, or with an error after a signal.
    """
    supervisor = _Supervisor()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(supervisor.forward_signals, signals)
                async with trio.open_nursery() as watchers:
                    for index, command in enumerate(commands, start=1):
                        # A session of its own: a Ctrl+C in the terminal reaches the parent
                        # only, which forwards it once.
                        process = await trio.lowlevel.open_process(
                            list(command),
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            start_new_session=True,
                        )
                        worker = _Worker(index, process)
                        supervisor.workers.append(worker)
                        watchers.start_soon(supervisor.watch, worker)
                    await supervisor.all_listening.wait()
                    if supervisor.failed is None and not supervisor.stopping:
                        listening([worker.process.pid for worker in supervisor.workers])
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(supervisor)
    supervisor.outcome()


async def _stop_all(supervisor: _Supervisor) -> None:
    """Whatever is still running gets SIGTERM, and SIGKILL after STOP_TIMEOUT."""
    if any(worker.process.returncode is None for worker in supervisor.workers):
        supervisor.stop()
        with trio.move_on_after(STOP_TIMEOUT):
            for worker in supervisor.workers:
                await worker.process.wait()
    for worker in supervisor.workers:
        if worker.process.returncode is None:
            worker.process.kill()
            await worker.process.wait()
        for stream in (worker.process.stdin, worker.process.stdout):
            if stream is not None:
                await stream.aclose()
