"""End-to-end tests of the room server over real sockets on 127.0.0.1."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
from rawclient import RawClient
from wsclient import TestClient, connect, http_get
from ydocs import insert_text

from trio_ysync.doc import new_document
from trio_ysync.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    UnknownMessage,
    encode,
)
from trio_ysync.server import RoomServer
from trio_ysync.transport import CloseCode, ServerWebSocket

TIMEOUT = 10


@dataclass
class Running:
    server: RoomServer
    port: int


@pytest.fixture
async def running(nursery: trio.Nursery) -> AsyncIterator[Running]:
    server = RoomServer(room_grace_period=0.2, max_message_size=4 * 1024 * 1024)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    yield Running(server, port)
    server.shutdown()


def make_update(text: str, client_id: int = 1) -> bytes:
    doc = new_document(client_id=client_id)
    insert_text(doc, 0, text)
    return doc.diff()


async def test_updates_reach_the_other_clients_but_not_the_sender(running: Running) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(running.port, "r") as a, connect(running.port, "r") as b:
            await a.join()
            await b.join()
            update = make_update("hello")
            await a.send(SyncUpdate(update))
            received = await b.receive_until(SyncUpdate)
            doc = new_document()
            doc.apply_update(received.update)  # type: ignore[union-attr]
            assert doc.get_text("t") == "hello"
            # The sender gets nothing back: a query answered proves nothing else was queued.
            await a.send(QueryAwareness())
            assert isinstance(await a.receive(), AwarenessUpdate)


async def test_late_joiner_gets_the_whole_document(running: Running) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(running.port, "late") as a:
            await a.join()
            await a.send(SyncUpdate(make_update("first", 1)), SyncUpdate(make_update("second", 2)))
            await a.send(QueryAwareness())  # processed after both updates
            await a.receive_until(AwarenessUpdate)
        async with connect(running.port, "late") as b:
            answer = await b.join()
            doc = new_document()
            doc.apply_update(answer)
            assert sorted(doc.get_text("t")) == sorted("firstsecond")


async def test_server_asks_for_what_the_client_has(running: Running) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(running.port, "step1") as a, connect(running.port, "step1") as b:
            await b.join()
            first = await a.receive()
            assert first == SyncStep1(b"\x00")
            # The client's SyncStep2 (its offline edits) is applied and broadcast.
            await a.send(SyncStep2(make_update("offline")))
            received = await b.receive_until(SyncUpdate)
            doc = new_document()
            doc.apply_update(received.update)  # type: ignore[union-attr]
            assert doc.get_text("t") == "offline"


async def test_awareness_is_broadcast_sent_to_newcomers_and_removed(running: Running) -> None:
    entry = AwarenessEntry(42, 1, {"user": {"name": "Zoë"}})
    with trio.fail_after(TIMEOUT):
        async with connect(running.port, "aw") as b:
            await b.join()
            async with connect(running.port, "aw") as a:
                await a.join()
                await a.send(AwarenessUpdate([entry]))
                # Broadcast to everyone, the sender too (it keeps idle clients' watchdogs quiet).
                assert await a.receive_until(AwarenessUpdate) == AwarenessUpdate([entry])
                assert await b.receive_until(AwarenessUpdate) == AwarenessUpdate([entry])
                async with connect(running.port, "aw") as c:
                    assert isinstance(await c.receive(), SyncStep1)
                    assert await c.receive() == AwarenessUpdate([entry])
                    await c.send(QueryAwareness())
                    assert await c.receive() == AwarenessUpdate([entry])
            # a disconnected: its client is removed for the others at the same clock.
            removal = await b.receive_until(AwarenessUpdate)
            assert removal == AwarenessUpdate([AwarenessEntry(42, 1, None)])


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x00\x05\xff", CloseCode.INVALID_DATA),  # truncated sync message
        (encode(SyncUpdate(b"\x05\xff")), CloseCode.INVALID_DATA),  # malformed Yjs update
        (b"\x01\x03\x01\x01\x01", CloseCode.INVALID_DATA),  # awareness with a broken string
        (encode(UnknownMessage(99, b"x")), CloseCode.UNSUPPORTED_DATA),
        ("text frame", CloseCode.UNSUPPORTED_DATA),
        (b"\x00" * (4 * 1024 * 1024 + 1), CloseCode.MESSAGE_TOO_BIG),
    ],
)
async def test_bad_input_closes_only_that_connection(
    running: Running, payload: bytes | str, code: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(running.port, "bad") as good, connect(running.port, "bad") as other:
            await good.join()
            await other.join()
            async with connect(running.port, "bad") as bad:
                await bad.join()
                await bad.send_raw(payload)
                assert await bad.close_code() == code
            await good.send(SyncUpdate(make_update("still fine")))
            received = await other.receive_until(SyncUpdate)
            doc = new_document()
            doc.apply_update(received.update)  # type: ignore[union-attr]
            assert doc.get_text("t") == "still fine"
            assert running.server.rooms["bad"].peers.__len__() == 2


async def test_plain_http_health_and_upgrade_required(running: Running) -> None:
    with trio.fail_after(TIMEOUT):
        assert await http_get(running.port, "/health") == (200, b"ok\n")
        status, _ = await http_get(running.port, "/some-room")
        assert status == 426


async def test_room_names_are_percent_decoded(running: Running) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(running.port, "caf%C3%A9%20room?token=x") as client:
            await client.join()
            assert "café room" in running.server.rooms


async def write_and_wait(client: TestClient, text: str) -> None:
    """Send an update with ``text`` and wait until the server has handled it."""
    await client.send(SyncUpdate(make_update(text)))
    await client.send(QueryAwareness())  # answered after the update before it
    await client.receive_until(AwarenessUpdate)


async def test_room_unloads_after_the_grace_period_and_keeps_its_content(
    running: Running,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(running.port, "unload") as a:
            await a.join()
            await write_and_wait(a, "kept")
            room = running.server.rooms["unload"]
        await room.closed.wait()
        assert "unload" not in running.server.rooms
        async with connect(running.port, "unload") as b:
            answer = await b.join()
            doc = new_document()
            doc.apply_update(answer)
            assert doc.get_text("t") == "kept"
            assert running.server.rooms["unload"] is not room


async def test_an_unloaded_room_is_freed_with_its_document(running: Running) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(running.port, "freed") as client:
            await client.join()
            await write_and_wait(client, "gone")
            room = running.server.rooms["freed"]
            room_ref, native_ref = weakref.ref(room), weakref.ref(room.document.native)
            del room
        await room_ref().closed.wait()  # type: ignore[union-attr]
        await trio.testing.wait_all_tasks_blocked()
    assert "freed" not in running.server.rooms
    gc.collect()
    assert room_ref() is None
    assert native_ref() is None


async def test_shutdown_closes_clients_with_going_away(nursery: trio.Nursery) -> None:
    server = RoomServer()
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "bye") as client:
            await client.join()
            server.shutdown()
            assert await client.close_code() == CloseCode.GOING_AWAY


async def test_many_clients_open_new_rooms_at_the_same_instant(running: Running) -> None:
    rooms, per_room = 20, 10
    synced = 0

    async def one_client(room: int) -> None:
        nonlocal synced
        async with connect(running.port, f"crowd-{room}") as client:
            await client.join()
            synced += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(rooms * per_room):
                nursery.start_soon(one_client, index % rooms)
    assert synced == rooms * per_room


async def test_a_client_that_stops_reading_is_disconnected_with_bounded_memory(
    nursery: trio.Nursery,
) -> None:
    limit = 256 * 1024
    server = RoomServer(max_buffered_bytes=limit)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(30):
        # A client that completes its handshake, asks for updates, and then never reads again.
        stalled = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await stalled.handshake("slow")
        await stalled.send(SyncStep1(b"\x00"))
        async with connect(port, "slow") as writer, connect(port, "slow") as reader:
            await writer.join()
            await reader.join()
            room = server.rooms["slow"]
            sent = 0
            while len(room.peers) == 3:
                assert sent < 200, "the stalled client was never disconnected"
                await writer.send(SyncUpdate(make_update("x" * 200_000, client_id=1000 + sent)))
                sent += 1
                await reader.receive_until(SyncUpdate)
                for peer in room.peers:
                    assert isinstance(peer.connection, ServerWebSocket)
                    assert peer.connection.buffered_bytes <= limit
            # The reader kept up with every update; only the stalled client is gone.
            assert len(room.peers) == 2
        await stalled.stream.aclose()
