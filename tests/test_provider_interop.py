"""The provider against the reference server (@y/websocket-server) with a real yjs + y-websocket
client in the same room.

Connections that must break are routed through ``TcpProxy``: it can drop every connection and
refuse new ones for a while. A server restart is real: a new reference server process (empty:
documents live in memory) on the same port.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from nodejs import js_client, reference_server, requires_node, ws_url
from ydocs import insert_text, wait_text

from trio_ysync.doc import new_document
from trio_ysync.provider import Backoff, ConnectionStatus, Provider, open_provider

pytestmark = requires_node

FAST = Backoff(initial=0.05, maximum=0.5)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream`` (a port on 127.0.0.1)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.accepting = True
        self.accepted = 0
        self._scopes: set[trio.CancelScope] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def drop_all(self) -> None:
        """Break every open connection (both TCP sides are closed, as by a network failure)."""
        for scope in list(self._scopes):
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            if not self.accepting:
                await trio.aclose_forcefully(client)
                return
            self.accepted += 1
            self._scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pipe, upstream, client, nursery.cancel_scope)
            except OSError:
                pass
            finally:
                self._scopes.discard(scope)
        await trio.aclose_forcefully(client)

    @staticmethod
    async def _pipe(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


@asynccontextmanager
async def tcp_proxy(upstream: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(upstream)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        yield proxy
        nursery.cancel_scope.cancel()


async def wait_status(provider: Provider, status: ConnectionStatus) -> None:
    async for current in provider.status_changes():
        if current is status:
            return


async def wait_awareness(provider: Provider, client_id: int, state: Any) -> None:
    changes = provider.awareness.changes()
    while provider.awareness.states.get(client_id) != state:
        await changes.__anext__()


async def test_edits_converge_both_ways(backend: str) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(30):
        async with reference_server() as port, js_client(ws_url(port), "room") as js:
            await js.wait_synced()
            await js.insert(0, "from js")
            async with open_provider(ws_url(port), doc, room="room") as provider:
                await provider.wait_synced()
                assert doc.get_text("t") == "from js"
                insert_text(doc, 0, "from python, ")
                await js.wait_text("from python, from js")
                await js.insert(len(js.text), "!")
                await wait_text(doc, "from python, from js!")
                # Concurrent inserts at the same place resolve the same way on both sides.
                insert_text(doc, 0, "P")
                await js.insert(0, "J")
                await js.wait_until(lambda: len(js.text) == len("from python, from js!") + 2)
                await wait_text(doc, js.text)
                assert set(doc.get_text("t")[:2]) == {"P", "J"}


async def test_awareness_crosses_and_leaves_with_the_provider(backend: str) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(30):
        async with reference_server() as port, js_client(ws_url(port), "room") as js:
            await js.wait_synced()
            await js.set_awareness({"user": "js"})
            async with open_provider(ws_url(port), doc, room="room") as provider:
                provider.awareness.set_local_state({"user": "python"})
                states = await js.wait_awareness_count(2)
                assert states[doc.client_id] == {"user": "python"}
                assert js.client_id is not None
                # The server sent the JS state on connect.
                await wait_awareness(provider, js.client_id, {"user": "js"})
                provider.awareness.set_local_state_field("cursor", 5)
                await js.wait_until(
                    lambda: js.awareness.get(doc.client_id) == {"user": "python", "cursor": 5}
                )
                await js.set_awareness({"user": "js", "typing": True})
                await wait_awareness(provider, js.client_id, {"user": "js", "typing": True})
            # Gone at once (the removal is sent on close), far sooner than the 30 s expiry.
            with trio.fail_after(5):
                await js.wait_awareness_count(1)


async def test_dropped_connection_is_restored_and_offline_edits_arrive(backend: str) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(30):
        async with (
            reference_server() as port,
            tcp_proxy(port) as proxy,
            js_client(ws_url(port), "room") as js,
        ):
            await js.wait_synced()
            async with open_provider(
                ws_url(proxy.port), doc, room="room", backoff=FAST
            ) as provider:
                provider.awareness.set_local_state({"user": "python"})
                await provider.wait_synced()
                await js.wait_awareness_count(2)
                insert_text(doc, 0, "before ")
                await js.wait_text("before ")

                proxy.accepting = False
                proxy.drop_all()
                await wait_status(provider, ConnectionStatus.DISCONNECTED)
                assert not provider.synced
                # The server saw the connection end: the provider's presence is gone for JS.
                await js.wait_awareness_count(1)

                insert_text(doc, len(doc.get_text("t")), "offline-py ")
                await js.insert(0, "offline-js ")

                proxy.accepting = True
                await provider.wait_synced()
                await js.wait_until(lambda: "offline-py" in js.text)
                await wait_text(doc, js.text)
                assert "offline-js" in doc.get_text("t")
                # The presence is announced again on the new connection.
                await js.wait_awareness_count(2)
            assert proxy.accepted >= 2


def free_port() -> int:
    """A port nobody listens on right now (the servers of a test take turns on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_restarted_server_is_rejoined_and_refilled(backend: str) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    port = free_port()
    with trio.fail_after(40):
        async with open_provider(ws_url(port), doc, room="room", backoff=FAST) as provider:
            provider.awareness.set_local_state({"user": "python"})
            async with reference_server(port):
                await provider.wait_synced()
                insert_text(doc, 0, "survives restarts")
                async with js_client(ws_url(port), "room") as js:
                    await js.wait_text("survives restarts")
            # The server is gone, and the room's document with it (kept in memory only).
            await wait_status(provider, ConnectionStatus.DISCONNECTED)
            async with reference_server(port):  # a new server process on the same port
                await provider.wait_synced()
                # The provider re-sent its content when it answered the new server's SyncStep1:
                # a client joining only now receives it.
                async with js_client(ws_url(port), "room", name="late") as late:
                    await late.wait_synced()
                    await late.wait_text("survives restarts")
                    states = await late.wait_awareness_count(2)
                    assert states[doc.client_id] == {"user": "python"}
