"""How rooms use their store: write-ahead, group commit, loading first, failures."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import trio
import trio.testing
from trio_websocket import ConnectionClosed
from wsclient import connect
from ydocs import delete_text, insert_text

from trio_ysync.doc import new_document
from trio_ysync.protocol import QueryAwareness, SyncStep1, SyncStep2, SyncUpdate
from trio_ysync.server import RoomServer
from trio_ysync.store import MemoryStore, StoredRoom, StoreError
from trio_ysync.transport import CloseCode

TIMEOUT = 10


class GatedStore(MemoryStore):
    """A memory store whose commits (and loads) wait until the test opens a gate."""

    durable = True  # stands for a disk store: rooms write ahead of broadcasting

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.gate.set()
        self.batches: list[list[bytes]] = []
        self.failures_left = 0

    async def load(self, room: str) -> StoredRoom:
        await self.gate.wait()
        return await super().load(room)

    async def append(self, room: str, updates: Sequence[bytes]) -> int:
        await self.gate.wait()
        if self.failures_left:
            self.failures_left -= 1
            raise StoreError("disk on fire")
        self.batches.append(list(updates))
        return await super().append(room, updates)


async def serve(nursery: trio.Nursery, store: MemoryStore, compact_after_updates: int = 500) -> int:
    """Start a room server over ``store`` on 127.0.0.1; its port."""
    server = RoomServer(store, compact_after_updates=compact_after_updates)
    port: int = await nursery.start(server.serve, "127.0.0.1", 0)
    return port


def update(text: str, client_id: int) -> bytes:
    doc = new_document(client_id=client_id)
    insert_text(doc, 0, text)
    return doc.diff()


def text_of(*updates: bytes) -> str:
    doc = new_document()
    for item in updates:
        doc.apply_update(item)
    return doc.get_text("t")


async def test_updates_are_broadcast_only_after_their_commit_and_batched(
    nursery: trio.Nursery,
) -> None:
    store = GatedStore()
    port = await serve(nursery, store)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "wal") as writer, connect(port, "wal") as reader:
            await writer.join()
            await reader.join()
            store.gate = trio.Event()  # commits now wait
            await writer.send(SyncUpdate(update("a", 1)))
            # Let the first commit start and block, then send two more while it is in flight.
            await trio.testing.wait_all_tasks_blocked(0.05)
            await writer.send(SyncUpdate(update("b", 2)), SyncUpdate(update("c", 3)))
            await writer.send(QueryAwareness())
            await writer.receive()  # the server has handled everything we sent
            assert store.batches == []
            # A newcomer is not told about uncommitted content either.
            async with connect(port, "wal") as newcomer:
                assert isinstance(await newcomer.receive(), SyncStep1)
                await newcomer.send(SyncStep1(b"\x00"))
                await trio.testing.wait_all_tasks_blocked(0.05)
                store.gate.set()
                answer = await newcomer.receive_until(SyncStep2)
                assert isinstance(answer, SyncStep2)
                assert sorted(text_of(answer.update)) == ["a", "b", "c"]
            received = [await reader.receive_until(SyncUpdate) for _ in range(3)]
            assert sorted(text_of(*(m.update for m in received))) == ["a", "b", "c"]  # type: ignore[union-attr]
    # One commit for the first update, one for the two that waited behind it.
    assert [len(batch) for batch in store.batches] == [1, 2]


async def test_a_commit_batch_reaches_each_receiver_in_one_write(
    nursery: trio.Nursery, server_writes: list[int]
) -> None:
    store = GatedStore()
    port = await serve(nursery, store)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "batch") as writer, connect(port, "batch") as reader:
            await writer.join()
            await reader.join()
            store.gate = trio.Event()
            await writer.send(SyncUpdate(update("a", 1)))
            await trio.testing.wait_all_tasks_blocked(0.05)  # its commit waits at the gate
            for client_id, text in enumerate("bcd", 2):
                await writer.send(SyncUpdate(update(text, client_id)))
            await writer.send(QueryAwareness())
            await writer.receive()  # the server has handled everything we sent
            server_writes.clear()
            store.gate.set()
            received = [await reader.receive_until(SyncUpdate) for _ in range(4)]
            assert sorted(text_of(*(m.update for m in received))) == ["a", "b", "c", "d"]  # type: ignore[union-attr]
    assert [len(batch) for batch in store.batches] == [1, 3]
    # The reader got the first commit's update in one write and the next three in one more.
    assert len(server_writes) == 2, server_writes


async def test_peers_wait_for_the_stored_document_before_anything_is_answered(
    nursery: trio.Nursery,
) -> None:
    store = GatedStore()
    await store.append("loaded", [update("stored", 9)])
    store.gate = trio.Event()
    port = await serve(nursery, store)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as clients:

            async def client() -> None:
                async with connect(port, "loaded") as c:
                    assert text_of(await c.join()) == "stored"

            for _ in range(3):
                clients.start_soon(client)
            await trio.testing.wait_all_tasks_blocked(0.05)
            store.gate.set()


async def test_a_failing_store_closes_the_room_visibly_and_the_server_goes_on(
    nursery: trio.Nursery,
) -> None:
    store = GatedStore()
    port = await serve(nursery, store)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "doomed") as writer, connect(port, "doomed") as reader:
            await writer.join()
            await reader.join()
            store.failures_left = 100  # more than the room retries
            await writer.send(SyncUpdate(update("lost?", 1)))
            assert await reader.close_code() == CloseCode.INTERNAL_ERROR
            assert await writer.close_code() == CloseCode.INTERNAL_ERROR
        store.failures_left = 0
        # Nothing that was not committed was ever broadcast, and the room can be used again:
        # the writer's edit comes back when it reconnects and syncs.
        async with connect(port, "doomed") as again:
            assert text_of(await again.join()) == ""
            await again.send(SyncStep2(update("lost?", 1)), SyncStep1(b"\x00"))
            # The answer to a SyncStep1 waits for the commit of what came before it.
            assert text_of((await again.receive_until(SyncStep2)).update) == "lost?"  # type: ignore[union-attr]
        assert text_of(*(u for batch in store.batches for u in batch)) == "lost?"


async def test_a_transient_store_error_is_retried(nursery: trio.Nursery) -> None:
    store = GatedStore()
    port = await serve(nursery, store)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "flaky") as writer, connect(port, "flaky") as reader:
            await writer.join()
            await reader.join()
            store.failures_left = 2
            await writer.send(SyncUpdate(update("kept", 1)))
            received = await reader.receive_until(SyncUpdate)
            assert text_of(received.update) == "kept"  # type: ignore[union-attr]
    assert store.failures_left == 0


async def test_a_long_edited_document_keeps_a_bounded_log(nursery: trio.Nursery) -> None:
    store = MemoryStore()
    port = await serve(nursery, store, compact_after_updates=50)
    doc = new_document(client_id=77)
    updates: list[bytes] = []
    all_updates: list[bytes] = []
    doc.observe(lambda item, origin: updates.append(item))
    with trio.fail_after(30):
        async with connect(port, "long") as writer:
            await writer.join()
            for n in range(2000):
                insert_text(doc, 0, f"{n % 10}")
                if len(doc.get_text("t")) > 20:
                    delete_text(doc, 20, 1)
                for item in updates:
                    await writer.send(SyncUpdate(item))
                all_updates.extend(updates)
                updates.clear()
            await writer.send(SyncStep1(b"\x00"))
            answer = await writer.receive_until(SyncStep2)
    stored = await store.load("long")
    # The compacted log holds exactly the document the clients have...
    assert text_of(*stored.updates) == doc.get_text("t") == text_of(answer.update)  # type: ignore[union-attr]
    # ...in about the space of the document: a snapshot plus at most as much again of updates
    # (each of which is bigger in the log than in a snapshot), not the 2000 edits' history.
    history = sum(map(len, all_updates))
    snapshot = len(doc.diff())
    assert stored.size_bytes <= 2 * snapshot + 2_000, (stored.size_bytes, snapshot, history)
    assert stored.size_bytes < history / 2


async def test_a_memory_store_does_not_delay_broadcasts(nursery: trio.Nursery) -> None:
    store = GatedStore()
    store.durable = False  # type: ignore[misc]
    port = await serve(nursery, store)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "fast") as writer, connect(port, "fast") as reader:
            await writer.join()
            await reader.join()
            store.gate = trio.Event()  # commits now wait, forever
            await writer.send(SyncUpdate(update("now", 1)))
            received = await reader.receive_until(SyncUpdate)
            assert text_of(received.update) == "now"  # type: ignore[union-attr]
            store.gate.set()


class BuggyStore(MemoryStore):
    """A store with a bug (not a StoreError) in the commits and compactions of one room."""

    async def append(self, room: str, updates: Sequence[bytes]) -> int:
        if room == "buggy":
            raise RuntimeError("a bug in the store")
        return await super().append(room, updates)

    async def compact(self, room: str, update: bytes, through_seq: int) -> None:
        if room == "buggy-compaction":
            raise RuntimeError("a bug in compaction")
        await super().compact(room, update, through_seq)


async def test_a_bug_in_a_rooms_background_work_fails_that_room_only(
    nursery: trio.Nursery,
) -> None:
    # A room's commits and compactions run in the server's nursery: a bug in them must close
    # that room's peers (1011), never end the server or touch the other rooms.
    port = await serve(nursery, BuggyStore(), compact_after_updates=2)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "fine") as bystander:
            await bystander.join()
            for room in ("buggy", "buggy-compaction"):
                async with connect(port, room) as writer:
                    await writer.join()
                    with contextlib.suppress(ConnectionClosed):  # closed as it fails
                        for number in range(5):
                            await writer.send(SyncUpdate(update(f"{number}", 10 + number)))
                    assert await writer.close_code() == CloseCode.INTERNAL_ERROR
            await bystander.send(SyncUpdate(update("still here", 1)), SyncStep1(b"\x00"))
            answer = await bystander.receive_until(SyncStep2)
            assert text_of(answer.update) == "still here"  # type: ignore[union-attr]
