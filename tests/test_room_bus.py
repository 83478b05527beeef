"""Rooms on a Redis bus, with servers in this process: awareness across servers, and document
answers held while a room catches up. (tests/test_cluster.py runs whole server processes.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from redisserver import redis_server, requires_redis
from tcpproxy import pausable_proxy
from test_bus_redis import GatedStore
from test_cluster import fold_now
from wsclient import TestClient, connect
from ydocs import insert_text

from trio_ysync.bus import BusError, BusTuning, BusUnavailableError, open_bus
from trio_ysync.bus._redis import RedisBus
from trio_ysync.doc import new_document
from trio_ysync.errors import UnsupportedOperationError, YSyncError
from trio_ysync.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
)
from trio_ysync.server import RoomServer
from trio_ysync.store import SQLiteStore, Store

pytestmark = requires_redis

TUNING = BusTuning(attempts=3, retry_delay=0.02, max_backoff=0.2, command_timeout=3)
TIMEOUT = 20


@asynccontextmanager
async def serving(url: str, store: Store) -> AsyncIterator[tuple[RoomServer, int]]:
    """A room server on ``store`` in a cluster on ``url``; its port."""
    async with store, open_bus(url, store, tuning=TUNING) as bus, trio.open_nursery() as nursery:
        server = RoomServer(store, bus=bus, room_grace_period=0)
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        try:
            yield server, port
        finally:
            server.shutdown()


async def awareness(client: TestClient) -> dict[int, object]:
    """The next awareness message: client ID -> state (``None`` for a removal)."""
    message = await client.receive_until(AwarenessUpdate)
    assert isinstance(message, AwarenessUpdate)
    return {entry.client_id: entry.state for entry in message.entries}


def test_bus_errors_are_library_errors() -> None:
    assert issubclass(BusError, YSyncError)
    assert (BusUnavailableError.close_code, BusUnavailableError.http_status) == (1013, 503)


async def test_deleting_a_room_of_a_cluster_is_refused_and_keeps_it(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            redis_server() as redis,
            serving(redis.url, SQLiteStore(tmp_path / "r.db")) as (server, port),
            connect(port, "kept") as client,
        ):
            await client.join()
            with pytest.raises(UnsupportedOperationError) as refused:
                await server.delete_room("kept")
            assert refused.value.http_status == 501
            # The connection and the room go on.
            await client.send(SyncStep1(b"\x00"))
            assert isinstance(await client.receive_until(SyncStep2), SyncStep2)


async def test_awareness_crosses_servers_and_leaves_with_its_server(tmp_path: Path) -> None:
    store = tmp_path / "r.db"
    with trio.fail_after(TIMEOUT):
        async with (
            redis_server() as redis,
            serving(redis.url, SQLiteStore(store)) as (first, first_port),
            serving(redis.url, SQLiteStore(store)) as (_, second_port),
            connect(first_port, "r") as near,
            connect(second_port, "r") as far,
        ):
            await near.join()
            await far.join()
            await near.send(AwarenessUpdate([AwarenessEntry(1, 1, {"name": "near"})]))
            assert await awareness(near) == {1: {"name": "near"}}  # the echo
            assert await awareness(far) == {1: {"name": "near"}}
            async with connect(second_port, "r") as other:
                await other.join()
                await other.send(AwarenessUpdate([AwarenessEntry(2, 1, {"name": "other"})]))
                for client in (near, far):
                    assert await awareness(client) == {2: {"name": "other"}}
            # Its connection closed: everywhere, its state goes, and only its.
            for client in (near, far):
                assert await awareness(client) == {2: None}
            async with connect(second_port, "r") as late:
                await late.join()
                await late.send(QueryAwareness())
                assert await awareness(late) == {1: {"name": "near"}}
            # The first server stops with its client still there: the others drop the state.
            first.shutdown()
            assert await awareness(far) == {1: None}


async def test_a_room_that_catches_up_answers_with_the_caught_up_document(
    tmp_path: Path,
) -> None:
    """While the lagging server loads again (its store read held here), a SyncStep1 waits:
    its answer holds the update the server missed."""
    missed = new_document(client_id=9)
    updates: list[bytes] = []
    missed.observe(lambda update, origin: updates.append(update))
    insert_text(missed, 0, "missed ")
    insert_text(missed, 7, "while lagging")
    path = tmp_path / "r.db"
    gated = GatedStore(SQLiteStore(path))
    with trio.fail_after(TIMEOUT):
        async with (
            redis_server() as redis,
            pausable_proxy(redis.port) as proxy,
            serving(redis.url, SQLiteStore(path)) as (_, port),
            serving(f"redis://127.0.0.1:{proxy.port}/0", gated) as (_, lagging_port),
            SQLiteStore(path) as store,
            open_bus(redis.url, store, tuning=TUNING) as bus,
            connect(port, "r") as writer,
            connect(lagging_port, "r") as reader,
        ):
            assert isinstance(bus, RedisBus)
            await writer.join()
            await reader.join()
            proxy.pause()
            # Two stream entries: a read the paused server had asked for may get the first
            # one, but not the second.
            for update in updates:
                await writer.send(SyncUpdate(update))
                # Acknowledged once committed: a document request answered after it says so.
                await writer.send(SyncStep1(b"\x00"))
                await writer.receive_until(SyncStep2)
            await fold_now(bus, "r")
            gated.hold_load = release = trio.Event()
            proxy.resume()
            await gated.held.wait()  # catching up
            await reader.send(SyncStep1(b"\x00"))
            await trio.testing.wait_all_tasks_blocked(0.05)
            release.set()
            answer = await reader.receive_until(SyncStep2)
            assert isinstance(answer, SyncStep2)
            copy = new_document()
            copy.apply_update(answer.update)
            assert copy.get_text("t") == "missed while lagging"


async def test_a_newcomer_gets_what_other_servers_sent_since_the_last_newcomer(
    tmp_path: Path,
) -> None:
    """The whole-document answer a server keeps for newcomers is renewed by the updates other
    servers send, not only by its own peers'."""
    store = tmp_path / "r.db"
    doc = new_document(client_id=5)
    insert_text(doc, 0, "from the other server")
    with trio.fail_after(TIMEOUT):
        async with (
            redis_server() as redis,
            serving(redis.url, SQLiteStore(store)) as (_, first_port),
            serving(redis.url, SQLiteStore(store)) as (_, second_port),
            connect(second_port, "r") as early,
            connect(first_port, "r") as writer,
        ):
            assert await early.join() == b"\x00\x00"  # the (empty) whole document, kept
            await writer.join()
            await writer.send(SyncUpdate(doc.diff()))
            await early.receive_until(SyncUpdate)
            async with connect(second_port, "r") as late:
                copy = new_document()
                copy.apply_update(await late.join())
                assert copy.get_text("t") == "from the other server"
