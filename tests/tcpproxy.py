"""A TCP proxy on 127.0.0.1 that a test can pause: a server behind it lags on command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

__all__ = ["PausableProxy", "pausable_proxy"]


class PausableProxy:
    """Forwards connections from ``port`` to a target port; :meth:`pause` holds every byte in
    both directions until :meth:`resume` (the connections stay open)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._open = trio.Event()
        self._open.set()

    def pause(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()

    def resume(self) -> None:
        self._open.set()

    async def _pump(self, source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
        try:
            async for chunk in source:
                await self._open.wait()
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await sink.aclose()

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream)
            nursery.start_soon(self._pump, upstream, client)


@asynccontextmanager
async def pausable_proxy(target_port: int) -> AsyncIterator[PausableProxy]:
    """Run a proxy to ``127.0.0.1:target_port`` for the duration of the block."""
    proxy = PausableProxy(target_port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        yield proxy
        nursery.cancel_scope.cancel()
