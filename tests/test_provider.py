"""Tests of the client provider against fake servers.

Most tests connect over in-memory streams (``FakeServer.connect`` as the provider's
``websocket_factory``) under ``MockClock(autojump_threshold=0)``, so back-off, watchdog, renewal
and expiry run in virtual time, deterministically. The tests at the end use real trio-websocket
servers on 127.0.0.1 for what needs a socket: headers, query, subprotocols, TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import logging
import random
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.lowlevel
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
    wrap_client_stream,
    wrap_server_stream,
)
from ydocs import insert_text, wait_text

from trio_ysync.doc import Document, new_document, wrap_document
from trio_ysync.protocol import (
    Awareness,
    AwarenessChange,
    AwarenessEntry,
    AwarenessUpdate,
    Message,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    encode,
)
from trio_ysync.provider import (
    Backoff,
    ConnectionStatus,
    PermanentDisconnect,
    Provider,
    open_provider,
)
from trio_ysync.provider._feed import Feed
from trio_ysync.provider._provider import _build_url, _header_list

S = ConnectionStatus

# -- fake network over memory streams ---------------------------------------------------------


class Link:
    """Both directions of one in-memory connection; ``freeze()`` makes it a dead link (bytes
    are kept, never delivered), as a network that silently drops everything."""

    def __init__(self) -> None:
        self.frozen = False
        c2s_send, c2s_receive = self._one_way()
        s2c_send, s2c_receive = self._one_way()
        self.client_stream = trio.StapledStream(c2s_send, s2c_receive)
        self.server_stream = trio.StapledStream(s2c_send, c2s_receive)

    def _one_way(
        self,
    ) -> tuple[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]:
        send = trio.testing.MemorySendStream()
        receive = trio.testing.MemoryReceiveStream()

        def pump() -> None:
            if not self.frozen:
                trio.testing.memory_stream_pump(send, receive)

        async def async_pump() -> None:
            pump()

        send.send_all_hook = async_pump
        send.close_hook = pump
        return send, receive

    def freeze(self) -> None:
        self.frozen = True


class ServerConn:
    """The server side of one connection. Every received message is recorded with the time it
    arrived; tests read them in order with :meth:`next` / :meth:`next_of`."""

    def __init__(self, ws: WebSocketConnection, request_path: str, headers: list[Any]) -> None:
        self.ws = ws
        self.path = request_path
        self.headers = headers
        self.received: list[tuple[float, Message]] = []
        self.cursor = 0
        self.closed = trio.Event()
        self.close_code: int | None = None
        self.handler: Callable[[ServerConn, Message], Awaitable[None]] | None = None
        self._changed = trio.Event()

    async def read_loop(self) -> None:
        try:
            while True:
                data = await self.ws.get_message()
                assert isinstance(data, bytes), data
                for message in decode(data):
                    self.received.append((trio.current_time(), message))
                    self._notify()
                    if self.handler is not None:
                        await self.handler(self, message)
        except ConnectionClosed as exc:
            self.close_code = exc.reason.code if exc.reason else None
        finally:
            self.closed.set()
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def next(self) -> Message:
        """The next received message (waiting for it)."""
        while self.cursor >= len(self.received):
            if self.closed.is_set():
                raise AssertionError(f"connection closed; received {self.messages()}")
            await self._changed.wait()
        message = self.received[self.cursor][1]
        self.cursor += 1
        return message

    async def next_of(self, kind: type[Any]) -> Any:
        """The next received message of type ``kind``, skipping others."""
        while True:
            message = await self.next()
            if isinstance(message, kind):
                return message

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self.closed.is_set():
                raise AssertionError(f"connection closed; received {self.messages()}")
            await self._changed.wait()

    def messages(self, kind: type[Any] = object) -> list[Any]:
        return [message for _, message in self.received if isinstance(message, kind)]

    def times(self, kind: type[Any]) -> list[float]:
        return [t for t, message in self.received if isinstance(message, kind)]

    async def send(self, *messages: Message) -> None:
        for message in messages:
            await self.ws.send_message(encode(message))

    async def handshake(self, doc: Document | None = None) -> SyncStep1:
        """Answer the provider's SyncStep1 and send ours, as a y-websocket server does."""
        doc = doc or new_document("pycrdt")
        step1: SyncStep1 = await self.next_of(SyncStep1)
        await self.send(SyncStep1(doc.state_vector()), SyncStep2(doc.diff(step1.state_vector)))
        return step1

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.aclose(code, reason)

    async def drop(self) -> None:
        """Break the connection without a close handshake (a dropped TCP connection)."""
        await self.ws._stream.aclose()


class FakeRoom:
    """A y-websocket room like the reference server's: one document, awareness, broadcast."""

    def __init__(self) -> None:
        self.doc = new_document("pycrdt")
        self.awareness = Awareness(None)
        self.conns: list[ServerConn] = []

    async def serve(self, conn: ServerConn) -> None:
        self.conns.append(conn)
        conn.handler = self.handle
        await conn.send(SyncStep1(self.doc.state_vector()))
        if len(self.awareness):
            await conn.send(self.awareness.update_message())

    async def broadcast(self, message: Message) -> None:
        for conn in list(self.conns):
            if not conn.closed.is_set():
                try:
                    await conn.send(message)
                except ConnectionClosed:
                    pass

    async def handle(self, conn: ServerConn, message: Message) -> None:
        if isinstance(message, SyncStep1):
            await conn.send(SyncStep2(self.doc.diff(message.state_vector)))
        elif isinstance(message, (SyncStep2, SyncUpdate)):
            before = self.doc.state_vector()
            self.doc.apply_update(message.update, conn)
            if self.doc.state_vector() != before:
                await self.broadcast(SyncUpdate(message.update))
        elif isinstance(message, AwarenessUpdate):
            change = self.awareness.apply(message.entries, trio.current_time(), conn)
            if change:
                await self.broadcast(self.awareness.update_message(change.client_ids))
        elif isinstance(message, QueryAwareness):
            await conn.send(self.awareness.update_message())

    async def edit(self, index: int, text: str) -> None:
        """A server-side edit, broadcast to every connection."""
        updates: list[bytes] = []
        unobserve = self.doc.observe(lambda update, origin: updates.append(update))
        insert_text(self.doc, index, text)
        unobserve()
        for update in updates:
            await self.broadcast(SyncUpdate(update))


class FakeServer:
    """Accepts the connections a provider opens through :meth:`connect` (its
    ``websocket_factory``). Without a ``room``, each connection is handed to the test by
    :meth:`accept`; with one, the room serves it."""

    def __init__(self, nursery: trio.Nursery, room: FakeRoom | None = None) -> None:
        self.nursery = nursery
        self.room = room
        #: (time, url, headers) of every connection attempt.
        self.attempts: list[tuple[float, str, list[tuple[bytes, bytes]]]] = []
        #: How many of the next attempts to refuse (the factory raises OSError); -1: all.
        self.refuse = 0
        self.conns: list[ServerConn] = []
        self.links: list[Link] = []
        self._send, self._receive = trio.open_memory_channel[ServerConn](16)
        self._attempted = trio.Event()

    @asynccontextmanager
    async def connect(
        self, url: str, headers: list[tuple[bytes, bytes]]
    ) -> AsyncIterator[WebSocketConnection]:
        self.attempts.append((trio.current_time(), url, headers))
        attempted, self._attempted = self._attempted, trio.Event()
        attempted.set()
        if self.refuse:
            self.refuse -= 1 if self.refuse > 0 else 0
            raise OSError("connection refused")
        link = Link()
        self.links.append(link)
        self.nursery.start_soon(self._serve, link)
        parts = urlsplit(url)
        resource = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, link.client_stream, "fake", resource, extra_headers=headers
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(5):
                    await ws.aclose()
                nursery.cancel_scope.cancel()

    async def _serve(self, link: Link) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, link.server_stream)
            ws = await request.accept()
            conn = ServerConn(ws, request.path, request.headers)
            self.conns.append(conn)
            nursery.start_soon(conn.read_loop)
            if self.room is not None:
                await self.room.serve(conn)
            else:
                await self._send.send(conn)
            # trio-websocket's reader ends once the connection is closed (or the test ends).

    async def accept(self) -> ServerConn:
        """The next connection (the test drives it)."""
        return await self._receive.receive()

    async def wait_attempts(self, count: int) -> None:
        while len(self.attempts) < count:
            await self._attempted.wait()

    def attempt_times(self) -> list[float]:
        return [t for t, _, _ in self.attempts]


@pytest.fixture
def server(nursery: trio.Nursery) -> FakeServer:
    return FakeServer(nursery)


@pytest.fixture
def room_server(nursery: trio.Nursery) -> FakeServer:
    return FakeServer(nursery, FakeRoom())


URL = "ws://fake.invalid:1234"


def fake_provider(server: FakeServer, doc: Any, **options: Any) -> Any:
    options.setdefault("backoff", Backoff(initial=1.0, maximum=8.0, jitter=0.0))
    return open_provider(URL, doc, room="room", websocket_factory=server.connect, **options)


# -- pure units -------------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(10_000) == 4.0


def test_backoff_jitter_stays_in_bounds() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": -1.0}, {"initial": 2.0, "maximum": 1.0}, {"factor": 0.5}, {"jitter": 1.5}],
)
def test_backoff_rejects_invalid_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="back-off"):
        Backoff(**kwargs)


def test_build_url() -> None:
    assert _build_url("ws://h:1", "room", None) == "ws://h:1/room"
    assert _build_url("ws://h:1/", "a b/c", None) == "ws://h:1/a%20b/c"
    assert _build_url("wss://h/base/", "r", {"t": "x y"}) == "wss://h/base/r?t=x+y"
    assert _build_url("ws://h/r?a=1&t=old", None, {"t": "new"}) == "ws://h/r?a=1&t=new"
    assert _build_url("ws://h/r?a=1", None, {}) == "ws://h/r?a=1"
    with pytest.raises(ValueError, match="ws://"):
        _build_url("http://h/r", None, None)


def test_header_list() -> None:
    assert _header_list(None) == []
    assert _header_list({"Authorization": "Bearer x"}) == [(b"Authorization", b"Bearer x")]
    assert _header_list([(b"a", "b"), ("c", b"d")]) == [(b"a", b"b"), (b"c", b"d")]


def test_provider_rejects_bad_options() -> None:
    doc = new_document("pycrdt")
    with pytest.raises(ValueError, match="ws://"):
        Provider("http://example.com", doc)
    with pytest.raises(ValueError, match="watchdog"):
        Provider(URL, doc, watchdog_timeout=0)
    with pytest.raises(ValueError, match="resync"):
        Provider(URL, doc, resync_interval=-1)
    with pytest.raises(TypeError):
        Provider(URL, object())


async def test_feed_keeps_bounded_items_and_ends_on_close() -> None:
    feed: Feed[int] = Feed(maxlen=3)
    sub = feed.subscribe(0)
    for i in range(1, 6):
        feed.publish(i)
    feed.close()
    assert [i async for i in sub] == [3, 4, 5]
    assert [i async for i in feed.subscribe(9)] == [9]


async def test_feed_coalesces_and_drops_abandoned_subscriptions() -> None:
    feed: Feed[int] = Feed(coalesce=lambda a, b: a + b)
    sub = feed.subscribe()
    abandoned = feed.subscribe()
    del abandoned
    assert len(feed._subscriptions) == 1
    feed.publish(1)
    feed.publish(2)
    assert await sub.__anext__() == 3


# -- syncing ----------------------------------------------------------------------------------


async def test_handshake_syncs_both_ways(
    autojump_clock: trio.testing.MockClock, server: FakeServer, backend: str
) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    insert_text(doc, 0, "local ")
    remote = new_document("pycrdt")
    insert_text(remote, 0, "remote")
    with trio.fail_after(10):
        async with fake_provider(server, doc) as provider:
            conn = await server.accept()
            assert conn.path == "/room"
            step1 = await conn.next_of(SyncStep1)
            assert step1.state_vector == doc.state_vector()
            assert not provider.synced
            # The server's SyncStep1 is answered with exactly what it lacks.
            await conn.send(SyncStep1(remote.state_vector()))
            step2 = await conn.next_of(SyncStep2)
            remote.apply_update(step2.update)
            assert provider.status is S.CONNECTED
            assert not provider.synced
            await conn.send(SyncStep2(remote.diff(step1.state_vector)))
            await provider.wait_synced()
            assert provider.synced
            assert doc.get_text("t") == remote.get_text("t")
            assert "local " in doc.get_text("t")
            assert "remote" in doc.get_text("t")


async def test_edits_flow_both_ways_without_echo(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer, backend: str
) -> None:
    room = room_server.room
    assert room is not None
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with fake_provider(room_server, doc) as provider:
            await provider.wait_synced()
            conn = room_server.conns[0]
            insert_text(doc, 0, "hello")
            await conn.wait_until(lambda: room.doc.get_text("t") == "hello")
            await room.edit(5, " world")
            await wait_text(doc, "hello world")
            await trio.testing.wait_all_tasks_blocked()
            # One update sent for the one local edit; the remote edit was not echoed back.
            assert len(conn.messages(SyncUpdate)) == 1


async def test_remote_updates_are_applied_with_the_provider_as_origin(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer, backend: str
) -> None:
    room = room_server.room
    assert room is not None
    doc = new_document(backend)  # type: ignore[arg-type]
    origins: list[object] = []
    doc.observe(lambda update, origin: origins.append(origin))
    with trio.fail_after(10):
        async with fake_provider(room_server, doc) as provider:
            await provider.wait_synced()
            await room.edit(0, "x")
            await wait_text(doc, "x")
            assert origins == [provider]


async def test_burst_of_edits_is_merged(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer, backend: str
) -> None:
    room = room_server.room
    assert room is not None
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with fake_provider(room_server, doc) as provider:
            await provider.wait_synced()
            conn = room_server.conns[0]
            for i in range(20):  # no checkpoint in between: all queued before the writer runs
                insert_text(doc, i, "ab"[i % 2])
            await conn.wait_until(lambda: room.doc.get_text("t") == doc.get_text("t"))
            assert len(conn.messages(SyncUpdate)) == 1


async def test_overflowing_queue_is_replaced_by_a_diff(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer, backend: str
) -> None:
    room = room_server.room
    assert room is not None
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with fake_provider(room_server, doc, max_pending_bytes=64) as provider:
            await provider.wait_synced()
            conn = room_server.conns[0]
            for i in range(50):
                insert_text(doc, i, "z")
            await conn.wait_until(lambda: room.doc.get_text("t") == "z" * 50)
            assert len(conn.messages(SyncUpdate)) == 1


async def test_edits_queued_at_exit_are_sent_before_closing(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer, backend: str
) -> None:
    room = room_server.room
    assert room is not None
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with fake_provider(room_server, doc) as provider:
            await provider.wait_synced()
            insert_text(doc, 0, "last words")
        await room_server.conns[0].closed.wait()
    assert room.doc.get_text("t") == "last words"
    assert room_server.conns[0].close_code == 1000


async def test_offline_edits_reach_the_server_on_reconnect(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer, backend: str
) -> None:
    room = room_server.room
    assert room is not None
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(30):
        async with fake_provider(room_server, doc) as provider:
            await provider.wait_synced()
            room_server.refuse = 2
            await room_server.conns[0].drop()
            await room_server.wait_attempts(2)
            assert provider.status is not S.CONNECTED
            insert_text(doc, 0, "offline")
            await room.edit(0, "server ")  # made while the provider is away
            await provider.wait_synced()
            second = room_server.conns[1]
            await second.wait_until(lambda: "offline" in room.doc.get_text("t"))
            await wait_text(doc, room.doc.get_text("t"))
            # Carried by the answer to the server's SyncStep1, not by a queued update.
            assert second.messages(SyncUpdate) == []
            assert any(m.update for m in second.messages(SyncStep2))


async def test_wait_synced_waits_for_the_next_connection(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            await conn.close(1011)
            second = await server.accept()
            assert not provider.synced
            async with trio.open_nursery() as nursery:
                synced = trio.Event()

                async def waiter() -> None:
                    await provider.wait_synced()
                    synced.set()

                nursery.start_soon(waiter)
                await second.next_of(SyncStep1)
                await second.send(SyncStep1(b"\x00"))
                await trio.testing.wait_all_tasks_blocked()
                assert not synced.is_set()
                await second.send(SyncStep2(b"\x00\x00"))
                await synced.wait()


async def test_resync_interval_sends_sync_step1_again(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer
) -> None:
    with trio.fail_after(100):
        async with fake_provider(room_server, new_document("pycrdt"), resync_interval=10) as p:
            await p.wait_synced()
            conn = room_server.conns[0]
            start = conn.times(SyncStep1)[0]
            await conn.wait_until(lambda: len(conn.messages(SyncStep1)) == 4)
            times = [t - start for t in conn.times(SyncStep1)]
            assert times == pytest.approx([0, 10, 20, 30], abs=0.01)
            p.resync()
            await conn.wait_until(lambda: len(conn.messages(SyncStep1)) == 5)


async def test_malformed_message_closes_and_reconnects(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            await conn.ws.send_message(b"\x00\x07")  # unknown sync subtype
            await conn.closed.wait()
            assert conn.close_code == 1007  # invalid data, not a WebSocket framing error
            second = await server.accept()
            await second.handshake()
            await provider.wait_synced()


async def test_unapplicable_update_closes_and_reconnects(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            await conn.send(SyncUpdate(b"\xff\xff\xff\xff"))
            await conn.closed.wait()
            assert conn.close_code == 1007
            await server.accept()


async def test_text_and_unknown_messages_are_ignored(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            await conn.ws.send_message("hello")
            await conn.ws.send_message(b"\x09\x01\x02")
            await conn.handshake()
            await provider.wait_synced()
            assert len(server.attempts) == 1


# -- status, close codes, lifecycle -----------------------------------------------------------


async def test_status_changes(autojump_clock: trio.testing.MockClock, server: FakeServer) -> None:
    seen: list[ConnectionStatus] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            provider = Provider(
                URL, new_document("pycrdt"), websocket_factory=server.connect, backoff=Backoff()
            )
            assert provider.status is S.DISCONNECTED

            changes = provider.status_changes()  # subscribed now: sees every change

            async def watch() -> None:
                async for status in changes:
                    seen.append(status)

            nursery.start_soon(watch)
            await nursery.start(provider.run)
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            await conn.close(1000)
            second = await server.accept()
            await second.handshake()
            await provider.wait_synced()
            await provider.aclose()
    assert seen == [
        S.DISCONNECTED,
        S.CONNECTING,
        S.CONNECTED,
        S.DISCONNECTED,
        S.CONNECTING,
        S.CONNECTED,
        S.DISCONNECTED,
    ]
    assert provider.closed
    assert provider.last_close == (1000, "")


@pytest.mark.parametrize("code", [4400, 4403, 4499])
async def test_close_codes_4400_to_4499_are_permanent(
    autojump_clock: trio.testing.MockClock, server: FakeServer, code: int
) -> None:
    provider: Provider | None = None

    async def scenario() -> None:
        nonlocal provider
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            await conn.send(PermissionDenied("revoked"))
            await conn.close(code, "go away")
            await trio.sleep_forever()

    with trio.fail_after(30), pytest.raises(PermanentDisconnect) as info:
        await scenario()
    assert provider is not None
    assert info.value.code == code
    assert info.value.reason == "go away"
    assert info.value.permission_denied == "revoked"
    assert "revoked" in str(info.value)
    assert provider.status is S.DISCONNECTED
    assert provider.permission_denied == "revoked"
    await trio.sleep(60)
    assert len(server.attempts) == 1
    with pytest.raises(trio.ClosedResourceError):
        await provider.wait_synced()


async def test_permanent_disconnect_raised_from_run(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    provider = Provider(URL, new_document("pycrdt"), websocket_factory=server.connect)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.accept)

            async def run() -> None:
                with pytest.raises(PermanentDisconnect):
                    await provider.run()

            nursery.start_soon(run)
            await server.wait_attempts(1)
            await trio.testing.wait_all_tasks_blocked()
            await server.conns[0].close(4401)


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4000, 4399, 4500])
async def test_other_close_codes_reconnect(
    autojump_clock: trio.testing.MockClock, server: FakeServer, code: int
) -> None:
    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            await conn.close(code)
            second = await server.accept()
            await second.handshake()
            await provider.wait_synced()
    assert provider.last_close == (code, "")


async def test_custom_should_reconnect(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:

    async def scenario() -> None:
        async with fake_provider(
            server, new_document("pycrdt"), should_reconnect=lambda code, reason: code != 1000
        ):
            conn = await server.accept()
            await conn.close(1000)
            await trio.sleep_forever()

    with trio.fail_after(30), pytest.raises(PermanentDisconnect):
        await scenario()


async def test_nursery_form_and_aclose(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer, backend: str
) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    provider = Provider(URL, doc, websocket_factory=room_server.connect)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(provider.run)
            await provider.wait_synced()
            provider.awareness.set_local_state({"n": 1})
            await provider.aclose()
            assert provider.closed
            await provider.aclose()  # idempotent
    conn = room_server.conns[0]
    await conn.closed.wait()
    last = conn.messages(AwarenessUpdate)[-1]
    assert last.entries == [AwarenessEntry(doc.client_id, last.entries[0].clock, None)]
    assert conn.close_code == 1000
    with pytest.raises(RuntimeError, match="once"):
        await provider.run()


async def test_aclose_before_run_and_while_connecting(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    provider = Provider(URL, new_document("pycrdt"), websocket_factory=server.connect)
    await provider.aclose()
    with trio.fail_after(1):
        await provider.run()  # returns at once
    assert provider.closed

    server.refuse = -1  # never connects: aclose must not wait for a connection
    with trio.fail_after(10):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            await server.wait_attempts(3)
    assert provider.closed


async def test_cancellation_still_says_goodbye(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    doc = new_document("pycrdt")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            provider = Provider(URL, doc, websocket_factory=server.connect)
            provider.awareness.set_local_state({"here": True})
            await nursery.start(provider.run)
            conn = await server.accept()
            await conn.handshake()
            await conn.next_of(AwarenessUpdate)
            await provider.wait_synced()
            nursery.cancel_scope.cancel()
        removal = await conn.next_of(AwarenessUpdate)
        assert removal.entries[0].client_id == doc.client_id
        assert removal.entries[0].state is None
        await conn.closed.wait()
    assert provider.closed


async def test_accepts_native_documents(
    autojump_clock: trio.testing.MockClock, room_server: FakeServer, backend: str
) -> None:
    room = room_server.room
    assert room is not None
    await room.edit(0, "shared")
    wrapped = new_document(backend)  # type: ignore[arg-type]
    for doc in (wrapped.native, wrapped):
        with trio.fail_after(10):
            async with fake_provider(room_server, doc) as provider:
                await provider.wait_synced()
                assert provider.document.get_text("t") == "shared"
                if doc is wrapped:
                    assert provider.document is wrapped
    assert wrap_document(wrapped.native).get_text("t") == "shared"


# -- reconnecting -----------------------------------------------------------------------------


async def test_backoff_between_failed_attempts_and_reset_after_sync(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    server.refuse = 5
    with trio.fail_after(100):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            t = server.attempt_times()
            assert [b - a for a, b in itertools.pairwise(t)] == pytest.approx([1, 2, 4, 8, 8])
            await conn.handshake()
            await provider.wait_synced()
            synced_at = trio.current_time()
            await conn.close(1011)
            await server.accept()
            # The failure count restarted when the connection synced.
            assert server.attempt_times()[-1] - synced_at == pytest.approx(1.0)


async def test_backoff_jitter(autojump_clock: trio.testing.MockClock, server: FakeServer) -> None:
    server.refuse = 6
    backoff = Backoff(initial=1.0, maximum=4.0, jitter=0.5)
    with trio.fail_after(100):
        async with fake_provider(
            server, new_document("pycrdt"), backoff=backoff, rng=random.Random(1)
        ):
            await server.accept()
    t = server.attempt_times()
    delays = [b - a for a, b in itertools.pairwise(t)]
    for n, delay in enumerate(delays, start=1):
        base = min(4.0, 2.0 ** (n - 1))
        assert base / 2 - 1e-9 <= delay <= base + 1e-9
    assert len({round(d, 6) for d in delays}) > 3


async def test_params_and_headers_refreshed_before_each_attempt(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    tokens = iter(range(1, 100))

    async def params() -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        return {"token": str(next(tokens))}

    calls = 0

    def headers() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return {"X-Attempt": str(calls)}

    server.refuse = 1
    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt"), params=params, headers=headers):
            first = await server.accept()
            await first.close(1000)
            second = await server.accept()
    assert [url for _, url, _ in server.attempts] == [
        "ws://fake.invalid:1234/room?token=1",
        "ws://fake.invalid:1234/room?token=2",
        "ws://fake.invalid:1234/room?token=3",
    ]
    assert first.path == "/room?token=2"
    assert second.path == "/room?token=3"
    assert (b"x-attempt", b"3") in second.headers


async def test_failing_params_callable_is_retried(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    calls = 0

    def params() -> dict[str, str]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("token service down")
        return {"token": "ok"}

    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt"), params=params):
            conn = await server.accept()
    assert conn.path == "/room?token=ok"
    assert calls == 3


async def test_watchdog_reconnects_when_nothing_arrives(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(100):
        async with fake_provider(server, new_document("pycrdt"), keepalive=False) as provider:
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            last_sent = trio.current_time()
            second = await server.accept()  # the server stays silent after the handshake
            reconnected_at = server.attempt_times()[-1]
            # Closed 30 s after the last message; reconnected after the first back-off delay.
            assert 30.0 <= reconnected_at - last_sent <= 30.0 + 1.0 + 1.0
            await conn.closed.wait()
            assert conn.close_code == 4000
            del second


async def test_keepalive_pings_keep_a_quiet_connection(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(500):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            await trio.sleep(300)  # the server's trio-websocket answers the pings
            assert len(server.attempts) == 1
            assert provider.status is S.CONNECTED


async def test_watchdog_detects_a_dead_link(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(100):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            frozen_at = trio.current_time()
            server.links[0].freeze()  # pings go nowhere now
            second = await server.accept()
            assert 30.0 <= server.attempt_times()[-1] - frozen_at <= 30.0 + 1.0 + 1.0 + 0.1
            await second.handshake()
            await provider.wait_synced()


# -- awareness --------------------------------------------------------------------------------


async def test_local_awareness_is_announced_updated_and_cleared(
    autojump_clock: trio.testing.MockClock, server: FakeServer, backend: str
) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    me = doc.client_id
    with trio.fail_after(10):
        async with fake_provider(server, doc) as provider:
            provider.awareness.set_local_state({"name": "py"})  # before connecting
            conn = await server.accept()
            assert isinstance(await conn.next(), SyncStep1)  # SyncStep1 always comes first
            first = await conn.next_of(AwarenessUpdate)
            assert [(e.client_id, e.state) for e in first.entries] == [(me, {"name": "py"})]
            provider.awareness.set_local_state_field("cursor", 3)
            second = await conn.next_of(AwarenessUpdate)
            assert second.entries[0].state == {"name": "py", "cursor": 3}
            assert second.entries[0].clock == first.entries[0].clock + 1
            provider.awareness.clear_local_state()
            third = await conn.next_of(AwarenessUpdate)
            assert third.entries == [AwarenessEntry(me, second.entries[0].clock + 1, None)]
            assert provider.awareness.local_state is None


async def test_remote_awareness_is_observed(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    events: list[tuple[AwarenessChange, str]] = []
    iterated: list[AwarenessChange] = []
    with trio.fail_after(10):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            provider.awareness.observe(lambda change, origin: events.append((change, origin)))
            changes = provider.awareness.changes()
            conn = await server.accept()
            await conn.handshake()
            await provider.wait_synced()
            await conn.send(AwarenessUpdate([AwarenessEntry(7, 1, {"n": "a"})]))
            iterated.append(await changes.__anext__())
            assert provider.awareness.remote_states == {7: {"n": "a"}}
            await conn.send(AwarenessUpdate([AwarenessEntry(7, 2, {"n": "a"})]))  # a renewal
            await conn.send(AwarenessUpdate([AwarenessEntry(7, 3, {"n": "b"})]))
            iterated.append(await changes.__anext__())
            await conn.send(AwarenessUpdate([AwarenessEntry(7, 3, None)]))
            iterated.append(await changes.__anext__())
            assert provider.awareness.remote_states == {}
    assert [(c.added, c.changed, c.removed, o) for c, o in events] == [
        ([7], [], [], "remote"),
        ([], [7], [], "remote"),
        ([], [], [7], "remote"),
    ]
    assert [c for c, _ in events] == iterated


async def test_awareness_changes_iterator_coalesces_and_ends(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(10):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            changes = provider.awareness.changes()
            conn = await server.accept()
            await conn.send(AwarenessUpdate([AwarenessEntry(7, 1, {})]))
            await conn.send(AwarenessUpdate([AwarenessEntry(8, 1, {})]))
            await trio.testing.wait_all_tasks_blocked()
    merged = [change async for change in changes]
    # Both arrivals merged, then the disconnect's removal merged too; then the iterator ended.
    assert len(merged) == 1
    assert merged[0].added == [7, 8]
    assert sorted(merged[0].removed) == [7, 8]


async def test_awareness_renewed_every_15_seconds(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(100):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            provider.awareness.set_local_state({"alive": True})
            conn = await server.accept()
            await conn.handshake()
            await conn.wait_until(lambda: len(conn.messages(AwarenessUpdate)) == 4)
    updates = conn.messages(AwarenessUpdate)[:4]
    times = conn.times(AwarenessUpdate)[:4]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(15.0 <= gap <= 18.0 + 1e-9 for gap in gaps), gaps
    clocks = [u.entries[0].clock for u in updates]
    assert clocks == sorted(set(clocks))
    assert all(u.entries[0].state == {"alive": True} for u in updates)


async def test_remote_awareness_expires_after_30_seconds(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    events: list[tuple[AwarenessChange, str]] = []
    with trio.fail_after(100):
        async with fake_provider(server, new_document("pycrdt"), watchdog_timeout=None) as p:
            p.awareness.observe(lambda change, origin: events.append((change, origin)))
            conn = await server.accept()
            await conn.handshake()
            await conn.send(AwarenessUpdate([AwarenessEntry(7, 1, {"n": "a"})]))
            await trio.testing.wait_all_tasks_blocked()
            sent_at = trio.current_time()
            changes = p.awareness.changes()
            change = await changes.__anext__()
            expired_at = trio.current_time()
    assert change.removed == [7]
    assert 30.0 <= expired_at - sent_at <= 33.0 + 1e-9
    assert events[-1][1] == "timeout"


async def test_query_awareness_is_answered_with_every_state(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    doc = new_document("pycrdt")
    with trio.fail_after(10):
        async with fake_provider(server, doc) as provider:
            provider.awareness.set_local_state({"me": 1})
            conn = await server.accept()
            await conn.handshake()
            await conn.next_of(AwarenessUpdate)
            await conn.send(AwarenessUpdate([AwarenessEntry(7, 1, {"other": 2})]))
            await conn.send(QueryAwareness())
            answer = await conn.next_of(AwarenessUpdate)
    assert {e.client_id: e.state for e in answer.entries} == {
        doc.client_id: {"me": 1},
        7: {"other": 2},
    }


async def test_own_state_removed_by_a_peer_is_announced_again(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    doc = new_document("pycrdt")
    with trio.fail_after(10):
        async with fake_provider(server, doc) as provider:
            provider.awareness.set_local_state({"me": 1})
            conn = await server.accept()
            await conn.handshake()
            announced = await conn.next_of(AwarenessUpdate)
            clock = announced.entries[0].clock
            await conn.send(AwarenessUpdate([AwarenessEntry(doc.client_id, clock, None)]))
            again = await conn.next_of(AwarenessUpdate)
            assert again.entries == [AwarenessEntry(doc.client_id, clock + 1, {"me": 1})]
            assert provider.awareness.local_state == {"me": 1}


async def test_remote_states_dropped_on_disconnect_and_restored_on_reconnect(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    origins: list[str] = []
    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            provider.awareness.observe(lambda change, origin: origins.append(origin))
            conn = await server.accept()
            await conn.send(AwarenessUpdate([AwarenessEntry(7, 5, {"n": 1})]))
            await conn.handshake()
            await provider.wait_synced()
            assert 7 in provider.awareness.states
            await conn.close(1011)
            second = await server.accept()
            assert provider.awareness.remote_states == {}
            # The server sends the same state at the same clock: it must be accepted again.
            await second.send(AwarenessUpdate([AwarenessEntry(7, 5, {"n": 1})]))
            await second.handshake()
            await provider.wait_synced()
            assert provider.awareness.remote_states == {7: {"n": 1}}
    assert origins == ["remote", "disconnect", "remote", "disconnect"]


async def test_awareness_reannounced_with_a_newer_clock_on_reconnect(
    autojump_clock: trio.testing.MockClock, server: FakeServer
) -> None:
    with trio.fail_after(30):
        async with fake_provider(server, new_document("pycrdt")) as provider:
            provider.awareness.set_local_state({"me": 1})
            conn = await server.accept()
            first = await conn.next_of(AwarenessUpdate)
            await conn.close(1011)
            second = await server.accept()
            again = await second.next_of(AwarenessUpdate)
    assert again.entries[0].clock > first.entries[0].clock


# -- real sockets on 127.0.0.1 ----------------------------------------------------------------


@asynccontextmanager
async def socket_server(
    handler: Callable[[WebSocketRequest], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, ssl_context)
        yield ws_server.port
        nursery.cancel_scope.cancel()


async def test_real_socket_headers_query_and_subprotocols() -> None:
    seen: list[WebSocketRequest] = []
    served = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        seen.append(request)
        ws = await request.accept(subprotocol="yjs")
        step1 = decode(await ws.get_message())[0]
        assert isinstance(step1, SyncStep1)
        await ws.send_message(encode(SyncStep1(b"\x00"), SyncStep2(b"\x00\x00")))
        served.set()
        with trio.move_on_after(5):
            await ws.get_message()

    with trio.fail_after(10):
        async with (
            socket_server(handler) as port,
            open_provider(
                f"ws://127.0.0.1:{port}/base?fixed=1",
                new_document("pycrdt"),
                room="my room",
                params={"token": "secret"},
                headers=[("Authorization", "Bearer abc")],
                subprotocols=["yjs"],
            ) as provider,
        ):
            await provider.wait_synced()  # two messages in one frame are both handled
            await served.wait()
    request = seen[0]
    assert request.path == "/base/my%20room?fixed=1&token=secret"
    assert (b"authorization", b"Bearer abc") in [(k.lower(), v) for k, v in request.headers]
    assert request.proposed_subprotocols == ("yjs",)


def failed_attempts(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """The level and message of each logged failed connection attempt."""
    return [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if record.name == "trio_ysync.provider" and "cannot connect" in record.getMessage()
    ]


async def test_real_socket_refused_connection_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trio_ysync.provider")
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(10):
        async with open_provider(
            f"ws://127.0.0.1:{port}", new_document("pycrdt"), backoff=Backoff(0.01, 0.02)
        ) as provider:
            seen = await count_attempts(provider, 3)
            # wait_synced waits for ever; the caller bounds it and reads why.
            with trio.move_on_after(0.05):
                await provider.wait_synced()
            assert provider.last_error == "connection refused"
    assert S.CONNECTED not in seen
    attempts = failed_attempts(caplog)
    # One WARNING when the failure starts, INFO while it repeats: one line each, no traceback.
    assert attempts[0] == (
        logging.WARNING,
        f"provider ws://127.0.0.1:{port}: cannot connect (attempt 1, retrying): connection refused",
    )
    assert len(attempts) >= 2
    assert {level for level, _ in attempts[1:]} == {logging.INFO}
    assert all(record.exc_info is None for record in caplog.records)


def _self_signed_context() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.NamedTemporaryFile() as cert_file, tempfile.NamedTemporaryFile() as key_file:
        cert_file.write(cert_pem)
        cert_file.flush()
        key_file.write(key_pem)
        key_file.flush()
        server_context.load_cert_chain(cert_file.name, key_file.name)
    client_context = ssl.create_default_context(cadata=cert_pem.decode())
    return server_context, client_context


async def test_wss_with_an_ssl_context() -> None:
    server_context, client_context = _self_signed_context()
    room = FakeRoom()
    await room.edit(0, "over tls")

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        conn = ServerConn(ws, request.path, request.headers)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.read_loop)
            await room.serve(conn)

    doc = new_document("pycrdt")
    with trio.fail_after(10):
        async with (
            socket_server(handler, server_context) as port,
            open_provider(
                f"wss://127.0.0.1:{port}", doc, room="r", ssl_context=client_context
            ) as provider,
        ):
            await provider.wait_synced()
    assert doc.get_text("t") == "over tls"


async def count_attempts(provider: Provider, attempts: int) -> list[ConnectionStatus]:
    seen: list[ConnectionStatus] = []
    async for status in provider.status_changes():
        seen.append(status)
        if seen.count(S.CONNECTING) == attempts:
            break
    return seen


async def test_server_closing_during_the_handshake_is_retried_at_once() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        # Far below the connect timeout: each attempt fails as soon as the server hangs up.
        with trio.fail_after(5):
            async with open_provider(
                f"ws://127.0.0.1:{port}",
                new_document("pycrdt"),
                backoff=Backoff(0.01, 0.02),
                connect_timeout=60,
            ) as provider:
                seen = await count_attempts(provider, 3)
        nursery.cancel_scope.cancel()
    assert S.CONNECTED not in seen


@pytest.mark.parametrize(
    ("status", "params"),
    [(503, None), (403, lambda: {"token": "refreshed"})],
    ids=["server busy", "access refused, credentials refreshable"],
)
async def test_rejected_handshake_is_retried(status: int, params: object) -> None:
    rejected = 0

    async def handler(request: WebSocketRequest) -> None:
        nonlocal rejected
        rejected += 1
        await request.reject(status, body=b"no")

    with trio.fail_after(10):
        async with (
            socket_server(handler) as port,
            open_provider(
                f"ws://127.0.0.1:{port}",
                new_document("pycrdt"),
                backoff=Backoff(0.01, 0.02),
                params=params,
            ) as provider,
        ):
            seen = await count_attempts(provider, 3)
            expected = f"the server refused the WebSocket upgrade (HTTP {status})"
            assert provider.last_error == expected
    assert S.CONNECTED not in seen
    assert rejected >= 2


async def test_access_refused_with_fixed_credentials_stops() -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(401, body=b"a token is required\n")

    provider = Provider("ws://127.0.0.1:1", new_document("pycrdt"), backoff=Backoff(0.01, 0.02))
    with trio.fail_after(10):
        async with socket_server(handler) as port:
            provider.url = f"ws://127.0.0.1:{port}"
            with pytest.raises(PermanentDisconnect) as info:
                await provider.run()
    assert info.value.code == 4401
    assert info.value.reason == "HTTP 401: a token is required"
    assert provider.stop_reason is info.value


async def test_untrusted_certificate_is_retried() -> None:
    server_context, _ = _self_signed_context()

    async def handler(request: WebSocketRequest) -> None:
        await request.accept()  # pragma: no cover - the TLS handshake never succeeds

    with trio.fail_after(10):
        async with (
            socket_server(handler, server_context) as port,
            open_provider(
                f"wss://127.0.0.1:{port}", new_document("pycrdt"), backoff=Backoff(0.01, 0.02)
            ) as provider,
        ):
            seen = await count_attempts(provider, 3)
            assert provider.last_error is not None
            assert provider.last_error.startswith("TLS error: CERTIFICATE_VERIFY_FAILED")
    assert S.CONNECTED not in seen


def test_awareness_state_must_be_json() -> None:
    provider = Provider(URL, new_document("pycrdt"))
    with pytest.raises(TypeError):
        provider.awareness.set_local_state({"when": object()})
    assert provider.awareness.local_state is None
    provider.awareness.set_local_state({"ok": [1, 2.5, "x", None]})
    assert provider.awareness.states == {provider.awareness.client_id: {"ok": [1, 2.5, "x", None]}}
