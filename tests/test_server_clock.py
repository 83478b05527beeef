"""Timed server behaviour on memory streams under trio's MockClock (no real waiting)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from rawclient import RawClient
from ydocs import insert_text

from trio_ysync.bus import BusListener, LocalBus, RoomChannel
from trio_ysync.doc import DocumentError, new_document
from trio_ysync.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode_awareness_update,
)
from trio_ysync.room import Room, RoomState
from trio_ysync.server import RoomServer
from trio_ysync.store import MemoryStore
from trio_ysync.transport import CloseCode


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
async def server() -> AsyncIterator[RoomServer]:
    async with RoomServer(room_grace_period=5.0, ping_interval=30.0) as server:
        yield server


async def open_client(
    server: RoomServer, nursery: trio.Nursery, room: str, **kwargs: bool
) -> RawClient:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream)
    client = RawClient(client_stream, **kwargs)
    await client.handshake(room)
    assert isinstance(await client.receive(), SyncStep1)
    await client.send(SyncStep1(b"\x00"))
    assert isinstance(await client.receive(), SyncStep2)
    return client


async def test_a_client_that_ignores_pings_is_closed(
    autojump_clock: trio.testing.MockClock, server: RoomServer, nursery: trio.Nursery
) -> None:
    client = await open_client(server, nursery, "ping", answer_pings=False)
    start = trio.current_time()
    assert await client.receive() is None
    assert client.close_code == CloseCode.GOING_AWAY
    assert client.pings == 1
    # Closed at the second ping time: the first ping went unanswered for a whole interval.
    assert 60 <= trio.current_time() - start < 61


async def test_a_client_that_answers_pings_stays(
    autojump_clock: trio.testing.MockClock, server: RoomServer, nursery: trio.Nursery
) -> None:
    client = await open_client(server, nursery, "pong")
    with trio.move_on_after(301):
        await client.receive()
        pytest.fail("nothing should arrive but pings")
    assert client.pings == 10
    assert len(server.rooms["pong"].peers) == 1


async def test_awareness_that_is_not_renewed_expires(
    autojump_clock: trio.testing.MockClock, server: RoomServer, nursery: trio.Nursery
) -> None:
    watcher = await open_client(server, nursery, "expiry")
    silent = await open_client(server, nursery, "expiry")
    entry = AwarenessEntry(7, 1, {"name": "gone quiet"})
    await silent.send(AwarenessUpdate([entry]))
    assert await watcher.receive() == AwarenessUpdate([entry])
    start = trio.current_time()
    removal = await watcher.receive()
    assert removal == AwarenessUpdate([AwarenessEntry(7, 1, None)])
    assert 30 <= trio.current_time() - start <= 33
    assert len(server.rooms["expiry"].peers) == 2  # the connection itself stays


async def test_a_stalled_handshake_times_out(
    autojump_clock: trio.testing.MockClock, server: RoomServer
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    await client_stream.send_all(b"GET /x HTTP/1.1\r\n")  # and never the rest
    start = trio.current_time()
    await server.serve_stream(server_stream)
    assert trio.current_time() - start == pytest.approx(server.handshake_timeout)
    assert server.rooms == {}


async def test_room_stays_for_the_grace_period_then_unloads(
    autojump_clock: trio.testing.MockClock, server: RoomServer, nursery: trio.Nursery
) -> None:
    client = await open_client(server, nursery, "grace")
    room = server.rooms["grace"]
    await client.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    left_at = trio.current_time()
    assert not room.peers
    await room.closed.wait()
    assert trio.current_time() - left_at == pytest.approx(5.0)
    assert server.rooms == {}


async def test_rejoining_within_the_grace_period_keeps_the_room(
    autojump_clock: trio.testing.MockClock, server: RoomServer, nursery: trio.Nursery
) -> None:
    first = await open_client(server, nursery, "again")
    room = server.rooms["again"]
    await first.stream.aclose()
    await trio.sleep(4.0)
    await open_client(server, nursery, "again")
    await trio.sleep(10.0)
    assert server.rooms["again"] is room
    assert not room.closed.is_set()


async def test_a_room_without_grace_period_still_admits_its_first_peer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # The room is loaded before the peer's handshake completes; it must not unload in between.
    async with RoomServer(room_grace_period=0) as server:
        for _ in range(3):
            client = await open_client(server, nursery, "no-grace")
            await client.stream.aclose()


def count_tasks() -> int:
    def below(task: trio.lowlevel.Task) -> int:
        return 1 + sum(below(child) for n in task.child_nurseries for child in n.child_tasks)

    return below(trio.lowlevel.current_root_task())


async def test_a_quiet_room_costs_no_task(
    autojump_clock: trio.testing.MockClock, server: RoomServer, nursery: trio.Nursery
) -> None:
    # A loaded room works in its peers' tasks: ten more rooms with a peer each cost ten more
    # tasks (the connections), and their commits come and go.
    clients = [await open_client(server, nursery, "room-0")]
    await trio.testing.wait_all_tasks_blocked()
    one_room = count_tasks()
    for number in range(1, 11):
        client = await open_client(server, nursery, f"room-{number}")
        doc = new_document()
        insert_text(doc, 0, f"edit {number}")
        await client.send(SyncUpdate(doc.diff()))
        clients.append(client)
    await trio.testing.wait_all_tasks_blocked()
    assert len(server.rooms) == 11
    assert count_tasks() == one_room + 10
    # Each unloads by a timer once its peer has left, and flushes what it was sent.
    for client in clients:
        await client.stream.aclose()
    rooms = list(server.rooms.values())
    for room in rooms:
        await room.closed.wait()
    assert server.rooms == {}
    for number in range(1, 11):
        stored = await server.store.load(f"room-{number}")
        doc = new_document()
        for update in stored.updates:
            doc.apply_update(update)
        assert doc.get_text("t") == f"edit {number}"


async def test_presence_changes_are_gathered_into_one_message_per_peer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with RoomServer(presence_interval=0.05) as server:
        watcher = await open_client(server, nursery, "cursors")
        movers = [await open_client(server, nursery, "cursors") for _ in range(3)]
        start = trio.current_time()
        # The first change in a quiet room goes out at once.
        await movers[0].send(AwarenessUpdate([AwarenessEntry(10, 1, {"at": 1})]))
        assert await watcher.receive() == AwarenessUpdate([AwarenessEntry(10, 1, {"at": 1})])
        assert trio.current_time() == start
        for clock in (2, 3):
            for index, mover in enumerate(movers):
                await mover.send(
                    AwarenessUpdate([AwarenessEntry(10 + index, clock, {"at": clock})])
                )
        # Six changes within the interval, one message at its end: each client's latest state,
        # in the order they first moved.
        assert await watcher.receive() == AwarenessUpdate(
            [AwarenessEntry(10 + index, 3, {"at": 3}) for index in range(3)]
        )
        assert trio.current_time() - start == pytest.approx(0.05)
        with trio.move_on_after(1):
            await watcher.receive()
            pytest.fail("a third awareness message was sent")
        # A quiet interval ended the window: the next change goes out at once again.
        moved_at = trio.current_time()
        await movers[1].send(AwarenessUpdate([AwarenessEntry(11, 4, {"at": 4})]))
        assert await watcher.receive() == AwarenessUpdate([AwarenessEntry(11, 4, {"at": 4})])
        assert trio.current_time() == moved_at


async def test_an_update_with_a_clock_gap_is_answered_with_the_rooms_state_vector(
    autojump_clock: trio.testing.MockClock, server: RoomServer, nursery: trio.Nursery
) -> None:
    writer = await open_client(server, nursery, "gap")
    doc = new_document(client_id=9)
    insert_text(doc, 0, "ab")
    first_edit = doc.state_vector()
    insert_text(doc, 2, "cd")
    # The second edit alone starts at clock 2 of client 9, which the room has never seen.
    await writer.send(SyncUpdate(doc.diff(first_edit)))
    with trio.fail_after(5):
        asked = await writer.receive()
    assert asked == SyncStep1(b"\x00")  # the room's state vector: nothing of client 9
    room = server.rooms["gap"]
    assert room.document.get_text("t") == ""
    # What the client answers to that (y-websocket does it by itself) has no gap.
    await writer.send(SyncStep2(doc.diff(asked.state_vector)))
    await writer.send(SyncStep1(b"\x00"))
    assert isinstance(await writer.receive(), SyncStep2)  # answered after the commit
    assert room.document.get_text("t") == "abcd"


async def test_an_update_that_names_clocks_the_room_lacks_is_answered_likewise(
    autojump_clock: trio.testing.MockClock, server: RoomServer, nursery: trio.Nursery
) -> None:
    writer = await open_client(server, nursery, "lacking")
    other, doc = new_document(client_id=1), new_document(client_id=2)
    insert_text(other, 0, "ab")
    doc.apply_update(other.diff())
    before = doc.state_vector()
    insert_text(doc, 1, "X")  # between the other client's "a" and "b", which the room lacks
    await writer.send(SyncUpdate(doc.diff(before)))
    with trio.fail_after(5):
        asked = await writer.receive()
    assert asked == SyncStep1(b"\x00")
    room = server.rooms["lacking"]
    assert room.document.get_text("t") == ""
    await writer.send(SyncStep2(doc.diff(asked.state_vector)))
    await writer.send(SyncStep1(b"\x00"))
    assert isinstance(await writer.receive(), SyncStep2)
    assert room.document.get_text("t") == "aXb"


async def test_a_submitted_update_that_builds_on_missing_changes_is_refused(
    autojump_clock: trio.testing.MockClock, server: RoomServer
) -> None:
    # What the HTTP API's POST does: nobody to ask for the missing part, so it is refused.
    doc = new_document(client_id=9)
    insert_text(doc, 0, "ab")
    first_edit = doc.state_vector()
    insert_text(doc, 2, "cd")
    async with server.open_room("posted") as room:
        with pytest.raises(DocumentError, match="does not have"):
            await room.submit(doc.diff(first_edit), "http")
        assert room.document.get_text("t") == ""
        await room.submit(doc.diff(), "http")
        assert room.document.get_text("t") == "abcd"


class AwarenessRecordingBus(LocalBus):
    """A bus that pretends to be shared and records the awareness a room publishes."""

    shared = True

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.published: list[tuple[float, list[AwarenessEntry]]] = []

    async def attach(self, room: str, listener: BusListener) -> RoomChannel:
        channel = await super().attach(room, listener)

        def record(payload: bytes) -> None:
            self.published.append((trio.current_time(), decode_awareness_update(payload)))

        channel.publish_awareness = record  # type: ignore[method-assign]
        return channel


async def test_presence_for_other_servers_is_gathered_too(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    bus = AwarenessRecordingBus()
    async with RoomServer(bus.store, bus=bus, presence_interval=0.05) as server:
        movers = [await open_client(server, nursery, "shared") for _ in range(2)]
        start = trio.current_time()
        for clock in (1, 2, 3):
            for index, mover in enumerate(movers):
                await mover.send(AwarenessUpdate([AwarenessEntry(20 + index, clock, {})]))
        await movers[0].stream.aclose()
        await trio.sleep(1)
        # The first change at once; the other five and the leaving client's removal in one
        # message at the window's end, each client's latest state in the order they changed.
        assert bus.published == [
            (start, [AwarenessEntry(20, 1, {})]),
            (start + 0.05, [AwarenessEntry(21, 3, {}), AwarenessEntry(20, 3, None)]),
        ]


async def test_updates_are_echoed_to_their_sender_when_asked(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    doc = new_document(client_id=3)
    insert_text(doc, 0, "mine")
    async with RoomServer(echo_updates=True) as server:
        writer = await open_client(server, nursery, "echo")
        await writer.send(SyncUpdate(doc.diff()))
        assert await writer.receive() == SyncUpdate(doc.diff())


async def test_a_room_runs_on_its_own_and_unloads_when_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    room = Room("alone", store)
    doc = new_document()
    insert_text(doc, 0, "kept")
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run, 5.0)
        started = trio.current_time()
        await room.submit(doc.diff(), "http")
        await room.closed.wait()
    assert trio.current_time() - started == pytest.approx(5.0)
    assert room.state is RoomState.CLOSED and room.failure is None
    stored = new_document()
    for update in (await store.load("alone")).updates:
        stored.apply_update(update)
    assert stored.get_text("t") == "kept"
