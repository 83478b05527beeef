"""What the server does when the document library, a peer or our own code misbehaves.

A fake document stands in for native failures (a Rust panic is a ``BaseException`` Python cannot
import by name), so these run in-process without risking the test runner.
"""

from __future__ import annotations

import gc
import os
import socket
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from wsclient import connect
from ydocs import insert_text

import trio_ysync.room
from trio_ysync.doc import (
    Backend,
    Document,
    DocumentBrokenError,
    DocumentError,
    PycrdtDocument,
    new_document,
)
from trio_ysync.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    encode,
)
from trio_ysync.room import Room
from trio_ysync.server import RoomServer
from trio_ysync.store import MemoryStore
from trio_ysync.transport import CloseCode, OutgoingMessage, ServerWebSocket

TIMEOUT = 10


class PanicException(BaseException):
    """Stands for ``pyo3_runtime.PanicException``: recognised by its name."""


class NativeCrash(BaseException):
    """A ``BaseException`` from a native library that is not a panic."""


class FaultyDocument(PycrdtDocument):
    """A pycrdt document that fails like native code when told to."""

    #: What ``_apply`` raises for an update containing b"PANIC-APPLY" or b"CRASH-APPLY".
    #: After an update containing b"BREAK-DIFF" is applied, every diff panics.
    broken = False

    def _apply(self, update: bytes) -> None:
        if b"PANIC-APPLY" in update:
            raise PanicException("attempt to divide by zero")
        if b"CRASH-APPLY" in update:
            raise NativeCrash("native crash")
        super()._apply(update)
        if b"BREAK-DIFF" in update:
            self.broken = True

    def _diff(self, state_vector: bytes | None) -> bytes:
        if self.broken:
            raise PanicException("index out of bounds")
        return super()._diff(state_vector)


def make_update(text: str, client_id: int) -> bytes:
    doc = new_document(client_id=client_id)
    insert_text(doc, 0, text)
    return doc.diff()


def text_of(update: bytes) -> str:
    doc = new_document()
    doc.apply_update(update)
    return doc.get_text("t")


# -- the adapter boundary ----------------------------------------------------------------------


def test_a_panic_becomes_document_broken_error() -> None:
    doc = FaultyDocument()
    with pytest.raises(DocumentBrokenError) as info:
        doc.apply_update(make_update("PANIC-APPLY", 1))
    assert isinstance(info.value.__cause__, PanicException)
    assert info.value.close_code == CloseCode.INTERNAL_ERROR


def test_a_refused_update_is_the_peers_fault(backend: Backend) -> None:
    with pytest.raises(DocumentError) as info:
        new_document(backend).apply_update(b"\x05\xff")
    assert not isinstance(info.value, DocumentBrokenError)
    assert info.value.peer_fault


def test_an_observer_error_does_not_reach_the_library() -> None:
    doc = new_document("pycrdt")

    def failing(update: bytes, origin: object) -> None:
        raise RuntimeError("observer bug")

    doc.observe(failing)
    with pytest.raises(RuntimeError, match="observer bug"):
        doc.apply_update(make_update("x", 1))
    assert doc.get_text("t") == "x"


# -- rooms with a faulty document ---------------------------------------------------------------


@pytest.fixture
def faulty_rooms(monkeypatch: pytest.MonkeyPatch) -> list[FaultyDocument]:
    """Rooms get FaultyDocuments from now on; the list collects them."""
    made: list[FaultyDocument] = []

    def new_faulty(backend: Backend | None = None, client_id: int | None = None) -> Document:
        doc = FaultyDocument()
        made.append(doc)
        return doc

    monkeypatch.setattr(trio_ysync.room, "new_document", new_faulty)
    return made


class DurableMemoryStore(MemoryStore):
    durable = True  # rooms write ahead of broadcasting, as with SQLite


@pytest.fixture
async def port(nursery: trio.Nursery) -> AsyncIterator[int]:
    server = RoomServer(DurableMemoryStore(), room_grace_period=0)
    yield await nursery.start(server.serve, "127.0.0.1", 0)
    server.shutdown()


@pytest.mark.parametrize("poison", [b"PANIC-APPLY", b"CRASH-APPLY", b"BREAK-DIFF"])
async def test_a_broken_document_fails_its_room_and_nothing_else(
    faulty_rooms: list[FaultyDocument], port: int, poison: bytes
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            connect(port, "doomed") as a,
            connect(port, "doomed") as b,
            connect(port, "safe") as bystander,
        ):
            await a.join()
            await b.join()
            await bystander.join()
            await a.send(SyncUpdate(make_update("kept", 1)))
            await b.receive_until(SyncUpdate)
            await a.send(SyncUpdate(make_update(poison.decode(), 2)))
            # Every peer of the broken room is closed as our failure, not theirs.
            assert await a.close_code() == CloseCode.INTERNAL_ERROR
            assert await b.close_code() == CloseCode.INTERNAL_ERROR
            # The other room goes on.
            await bystander.send(QueryAwareness())
            assert isinstance(await bystander.receive(), AwarenessUpdate)
            # The room reloads from what was committed: the poison never reached the store.
            async with connect(port, "doomed") as again:
                assert text_of(await again.join()) == "kept"


async def test_no_peer_stays_in_a_room_whose_greeting_failed(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RoomServer()
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "greet") as first:
            await first.join()
            room = server.rooms["greet"]
            await first.send(AwarenessUpdate([AwarenessEntry(5, 1, {"name": "a"})]))
            await first.receive_until(AwarenessUpdate)

            def broken_update_message(*args: Any) -> AwarenessUpdate:
                raise RuntimeError("bug while greeting")

            monkeypatch.setattr(room.awareness, "update_message", broken_update_message)
            async with connect(port, "greet") as second:
                assert await second.close_code() is not None
            assert not room.peers
            assert await first.close_code() == CloseCode.INTERNAL_ERROR
    server.shutdown()


# -- connections ---------------------------------------------------------------------------------


async def test_a_closed_connection_never_writes_to_a_reused_descriptor() -> None:
    """The direct-write path once kept a closed socket's file descriptor number and wrote a
    room's messages to whatever connection the kernel gave that number next."""
    ours, theirs = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    websocket = ServerWebSocket(
        stream,
        max_message_size=1024,
        max_buffered_bytes=1024,
        sock=ours,  # the fast path
    )
    number = ours.fileno()
    await trio.aclose_forcefully(stream)
    # The kernel hands the number to another connection (usually at once; dup2 makes sure).
    stranger, stranger_peer = socket.socketpair()
    duplicate = None
    if stranger.fileno() != number:
        duplicate = os.dup2(stranger.fileno(), number)
    try:
        websocket.send(OutgoingMessage(b"secret of another room"))
        stranger_peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            stranger_peer.recv(1024)
    finally:
        if duplicate is not None:
            os.close(duplicate)
        for sock in (theirs, stranger, stranger_peer):
            sock.close()


async def test_room_data_never_crosses_rooms_after_poisoned_awareness(
    nursery: trio.Nursery,
) -> None:
    server = RoomServer(room_grace_period=0)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    secret = {"secret": "room-poison-only"}
    with trio.fail_after(TIMEOUT):
        async with connect(port, "poison") as owner:
            await owner.join()
            await owner.send(AwarenessUpdate([AwarenessEntry(9, 1, secret)]))
            await owner.receive_until(AwarenessUpdate)
            for _ in range(20):
                async with connect(port, "poison") as attacker:
                    await attacker.send_raw(
                        b"\x01" + bytes([12]) + b"\x01\x4d\x01\x08" + b'"\\ud800"'
                    )
                    assert await attacker.close_code() == CloseCode.INVALID_DATA
                async with connect(port, "other") as victim:
                    await victim.join()
                    await victim.send(QueryAwareness())
                    assert await victim.receive_until(AwarenessUpdate) == AwarenessUpdate([])
            room = server.rooms["poison"]
            assert len(room.peers) == 1
            # Honest joins still work while the poison was tried.
            async with connect(port, "poison") as honest:
                assert isinstance(await honest.receive(), SyncStep1)
                assert await honest.receive() == AwarenessUpdate([AwarenessEntry(9, 1, secret)])
    server.shutdown()


# -- bounded work --------------------------------------------------------------------------------


async def test_a_frame_of_many_messages_yields_to_other_connections(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[str] = []
    busy_started = trio.Event()
    original = Room.handle

    def recording(self: Room, peer: Any, message: Any) -> None:
        handled.append(type(message).__name__)
        busy_started.set()
        original(self, peer, message)

    async def send_when_busy(client: Any) -> None:
        await busy_started.wait()
        await client.send(SyncStep1(b"\x00"))

    monkeypatch.setattr(Room, "handle", recording)
    server = RoomServer()
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "busy") as busy, connect(port, "calm") as calm:
            await busy.join()
            await calm.join()
            handled.clear()
            async with trio.open_nursery() as senders:
                senders.start_soon(busy.send_raw, encode(*[QueryAwareness()] * 1000))
                senders.start_soon(send_when_busy, calm)
            await calm.receive_until(SyncStep2)
            await trio.testing.wait_all_tasks_blocked()
    assert len(handled) == 1001
    # The calm connection's message was handled while the busy frame was being worked through.
    position = handled.index("SyncStep1")
    assert 0 < position < 1000, position
    server.shutdown()


async def test_whole_state_replies_are_one_at_a_time_per_peer(nursery: trio.Nursery) -> None:
    server = RoomServer()
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    big = make_update("x" * 200_000, 1)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "heavy") as writer:
            await writer.join()
            await writer.send(SyncUpdate(big))
            await writer.send(QueryAwareness())
            await writer.receive_until(AwarenessUpdate)
            async with connect(port, "heavy") as greedy:
                await greedy.receive()  # the server's SyncStep1
                await greedy.send_raw(encode(*[SyncStep1(b"\x00")] * 500))
                await greedy.send(QueryAwareness())
                answers = 0
                while isinstance(message := await greedy.receive(), SyncStep2):
                    answers += 1
                assert isinstance(message, AwarenessUpdate)
                # Not one 200 KB answer per request: each request found an answer in flight.
                assert 1 <= answers < 50, answers
    server.shutdown()


# -- memory --------------------------------------------------------------------------------------


async def test_an_unloaded_room_leaves_nothing_behind(nursery: trio.Nursery) -> None:
    server = RoomServer(room_grace_period=0)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    refs: list[weakref.ref[Any]] = []
    with trio.fail_after(TIMEOUT):
        for index in range(20):
            async with connect(port, f"visit-{index}") as client:
                await client.join()
                await client.send(SyncUpdate(make_update("visited", index + 1)))
                await client.send(AwarenessUpdate([AwarenessEntry(index + 1, 1, {"n": index})]))
                await client.receive_until(AwarenessUpdate)
                room = server.rooms[f"visit-{index}"]
                refs += [weakref.ref(room), weakref.ref(room.document)]
                refs.append(weakref.ref(room.document.native))
                peers = list(room.peers)
                refs += [weakref.ref(peer) for peer in peers]
                refs += [weakref.ref(peer.connection) for peer in peers]
                del room, peers
        while server.rooms:
            await next(iter(server.rooms.values())).closed.wait()
        await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    alive = [ref() for ref in refs if ref() is not None]
    assert not alive, alive[:5]
    server.shutdown()
