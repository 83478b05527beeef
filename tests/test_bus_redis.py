"""The Redis room bus against a real redis-server: several buses in one process stand in for
the servers of a cluster, sharing one SQLite store file."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import coredis
import pytest
import trio
from redisserver import RedisServer, redis_server, requires_redis
from tcpproxy import pausable_proxy

from trio_ysync.bus import (
    BusConfigError,
    BusTuning,
    BusUnavailableError,
    FoldOutcome,
    LocalBus,
    RoomBus,
    RoomChannel,
    open_bus,
)
from trio_ysync.bus._redis import RedisBus, decode_updates, encode_updates
from trio_ysync.store import MemoryStore, SQLiteStore, Store, StoredRoom

pytestmark = requires_redis

# Folds happen when a test asks for them; a long block proves that wakes do not wait for it.
TUNING = BusTuning(
    fold_after_entries=100_000,
    fold_interval=3600,
    read_block=60,
    attempts=3,
    retry_delay=0.02,
    max_backoff=0.2,
    command_timeout=3,
)
TIMEOUT = 20  # seconds for anything that involves real Redis round trips


class Recorder:
    """A BusListener that records every callback."""

    def __init__(self, answer: bytes | None = None) -> None:
        self.updates: list[bytes] = []
        self.awareness: list[bytes] = []
        self.queries = 0
        self.lost = 0
        self.answer = answer
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def remote_updates(self, updates: list[bytes]) -> None:
        self.updates.extend(updates)
        self._notify()

    def remote_awareness(self, payload: bytes) -> None:
        self.awareness.append(payload)
        self._notify()

    def awareness_query(self) -> bytes | None:
        self.queries += 1
        self._notify()
        return self.answer

    def lost_position(self) -> None:
        self.lost += 1
        self._notify()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(TIMEOUT):
            while not condition():
                await self._changed.wait()


class GatedStore(Store):
    """A store that can hold a load (after reading) or an append (before writing) until the
    test releases it, to put a concurrent fold exactly where a test wants it; and that tells
    when appends happened."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.loads = 0
        self.appends = 0
        self.hold_load: trio.Event | None = None
        self.hold_append: trio.Event | None = None
        self.held = trio.Event()
        self._appended = trio.Event()

    async def wait_appends(self, count: int) -> None:
        with trio.fail_after(TIMEOUT):
            while self.appends < count:
                await self._appended.wait()

    def shared_identity(self) -> str | None:
        return self.inner.shared_identity()

    async def load(self, room: str) -> StoredRoom:
        stored = await self.inner.load(room)
        self.loads += 1
        if self.hold_load is not None:
            hold, self.hold_load = self.hold_load, None
            self.held.set()
            await hold.wait()
        return stored

    async def append(self, room: str, updates: Sequence[bytes]) -> int:
        if self.hold_append is not None:
            hold, self.hold_append = self.hold_append, None
            self.held.set()
            await hold.wait()
        last_seq = await self.inner.append(room, updates)
        self.appends += 1
        self._appended.set()
        self._appended = trio.Event()
        return last_seq

    async def compact(self, room: str, update: bytes, through_seq: int) -> None:
        await self.inner.compact(room, update, through_seq)

    async def delete(self, room: str) -> None:
        await self.inner.delete(room)

    async def list_rooms(self) -> list[str]:
        return await self.inner.list_rooms()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


@asynccontextmanager
async def cluster(
    url: str, stores: Sequence[Store], tuning: BusTuning = TUNING
) -> AsyncIterator[list[RedisBus]]:
    """One bus per store, all on ``url``."""
    async with AsyncExitStack() as stack:
        buses = []
        for store in stores:
            await stack.enter_async_context(store)
            bus = await stack.enter_async_context(open_bus(url, store, tuning=tuning))
            assert isinstance(bus, RedisBus)
            buses.append(bus)
        yield buses


def sqlite_stores(tmp_path: Path, count: int) -> list[Store]:
    """``count`` stores on one SQLite file, as separate server processes would open it."""
    return [SQLiteStore(tmp_path / "rooms.db") for _ in range(count)]


@asynccontextmanager
async def client(server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    async with coredis.Redis.from_url(server.url) as redis_client:
        yield redis_client


async def joined(bus: RoomBus, room: str, listener: Recorder) -> RoomChannel:
    channel = await bus.attach(room, listener)
    await channel.load()
    return channel


def numbered(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


async def stream_order(server: RedisServer, bus: RedisBus, room: str) -> list[tuple[str, bytes]]:
    """(origin, update) for every update in the room's stream, in stream order."""
    from trio_ysync.bus._redis import _RoomKeys

    async with client(server) as redis_client:
        entries = await redis_client.xrange(_RoomKeys.of(bus.prefix, room).stream)
    return [
        (entry.field_values[b"o"].decode(), update)
        for entry in entries
        if b"u" in entry.field_values
        for update in decode_updates(entry.field_values[b"u"])
    ]


# -- delivery ---------------------------------------------------------------------------------


def test_update_batches_round_trip() -> None:
    for batch in ([], [b""], [b"a"], [b"x" * 300, b"", b"\x00\xff"]):
        assert decode_updates(encode_updates(batch)) == batch


async def test_updates_reach_the_other_servers_in_stream_order_never_the_origin(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(redis.url, sqlite_stores(tmp_path, 3)) as (a, b, c):
        recorders = [Recorder() for _ in range(3)]
        channels = [
            await joined(bus, "r", rec) for bus, rec in zip((a, b, c), recorders, strict=True)
        ]
        sent_a, sent_b = numbered("a", 60), numbered("b", 30)

        async def publish(channel: RoomChannel, updates: list[bytes]) -> None:
            start, size = 0, 1
            while start < len(updates):  # batches of one to three
                await channel.publish(updates[start : start + size])
                start, size = start + size, size % 3 + 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish, channels[0], sent_a)
            nursery.start_soon(publish, channels[1], sent_b)
        rec_a, rec_b, rec_c = recorders
        await rec_c.wait_until(lambda: len(rec_c.updates) >= 90)
        await rec_b.wait_until(lambda: len(rec_b.updates) >= 60)
        await rec_a.wait_until(lambda: len(rec_a.updates) >= 30)

        order = await stream_order(redis, a, "r")
        assert sorted(update for _, update in order) == sorted(sent_a + sent_b)
        assert rec_c.updates == [update for _, update in order]
        assert rec_b.updates == [u for origin, u in order if origin == a.server_id] == sent_a
        assert rec_a.updates == [u for origin, u in order if origin == b.server_id] == sent_b
        # Nothing more arrives, and nobody heard its own updates.
        await channels[2].publish([b"last"])
        await rec_a.wait_until(lambda: rec_a.updates[-1:] == [b"last"])
        assert len(rec_a.updates) == 31
        assert len(rec_c.updates) == 90


async def test_one_reader_connection_whatever_the_number_of_rooms(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b):
        recorders = {f"room {i}": Recorder() for i in range(40)}
        for room, recorder in recorders.items():
            await joined(a, room, recorder)
        writer = await joined(b, "room 39", Recorder())
        await writer.publish([b"hello"])
        await recorders["room 39"].wait_until(lambda: recorders["room 39"].updates == [b"hello"])
        async with client(redis) as redis_client:
            clients = await redis_client.client_list()
        mine = [c for c in clients if str(c["name"]).startswith(a.prefix + a.server_id)]
        readers = [c for c in mine if c["name"] == f"{a.prefix}{a.server_id}:reader"]
        assert len(readers) == 1
        assert len(mine) == 3  # commands, reader, awareness subscriber
        assert mine == [c for c in clients if c["name"] and a.server_id in str(c["name"])]


async def test_attaching_a_room_wakes_the_blocked_reader(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The reader blocks for 60 s; a room attached meanwhile is read at once."""
    async with cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b):
        await joined(a, "first", Recorder())
        later = Recorder()
        await joined(a, "second", later)
        writer = await joined(b, "second", Recorder())
        await writer.publish([b"x"])
        with trio.fail_after(5):  # far less than the 60 s block
            await later.wait_until(lambda: later.updates == [b"x"])


async def test_detached_room_stops_receiving_and_can_attach_again(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b):
        first = Recorder()
        channel = await joined(a, "r", first)
        writer = await joined(b, "r", Recorder())
        await writer.publish([b"1"])
        await first.wait_until(lambda: first.updates == [b"1"])
        await channel.detach()
        await channel.detach()  # twice is harmless
        with pytest.raises(RuntimeError, match="detached"):
            await channel.publish([b"no"])
        await writer.publish([b"2"])
        second = Recorder()
        channel = await a.attach("r", second)
        with pytest.raises(RuntimeError, match="attached already"):
            await a.attach("r", Recorder())
        catchup = await channel.load()
        assert set(catchup.all_updates()) == {b"1", b"2"}
        await writer.publish([b"3"])
        await second.wait_until(lambda: second.updates == [b"3"])
        assert first.updates == [b"1"]


# -- loading, folding and trimming ------------------------------------------------------------


async def test_load_returns_the_store_then_the_stream(redis: RedisServer, tmp_path: Path) -> None:
    async with cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b):
        writer = await joined(a, "r", Recorder())
        await writer.publish(numbered("u", 5))
        result = await a.fold("r")
        assert (result.outcome, result.entries) == (FoldOutcome.FOLDED, 1)
        await writer.publish([b"after fold"])

        catchup = await (await b.attach("r", Recorder())).load()
        assert catchup.stored.updates == numbered("u", 5)
        assert catchup.updates == [b"after fold"]
        assert (await a.fold("r")).outcome is FoldOutcome.FOLDED
        assert (await a.fold("r")).outcome is FoldOutcome.NOTHING
        assert (await b.store.load("r")).updates == [*numbered("u", 5), b"after fold"]


async def test_a_fold_takes_a_bounded_batch(redis: RedisServer, tmp_path: Path) -> None:
    tuning = dataclasses.replace(TUNING, fold_batch=3)
    async with cluster(redis.url, sqlite_stores(tmp_path, 1), tuning) as (a,):
        writer = await joined(a, "r", Recorder())
        for update in numbered("u", 7):
            await writer.publish([update])
        assert [(await a.fold("r")).entries for _ in range(4)] == [3, 3, 1, 0]
        assert (await a.store.load("r")).updates == numbered("u", 7)
        for update in numbered("v", 5):
            await writer.publish([update])
        await writer.detach()  # folds everything, batch after batch
        assert (await a.store.load("r")).updates == [*numbered("u", 7), *numbered("v", 5)]


async def test_any_room_name_makes_safe_keys(redis: RedisServer, tmp_path: Path) -> None:
    names = ["", "\x00", "a:b{c}", "../x", "é" * 5000, "🎉 party", "room?id=1&x=%2F"]
    async with cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b):
        recorders = {name: Recorder() for name in names}
        writers = {}
        for name in names:
            await joined(b, name, recorders[name])
            writers[name] = await joined(a, name, Recorder())
        for i, name in enumerate(names):
            await writers[name].publish([f"update {i}".encode()])
        for i, name in enumerate(names):
            recorder = recorders[name]
            await recorder.wait_until(lambda r=recorder, i=i: r.updates == [f"update {i}".encode()])
        async with client(redis) as redis_client:
            keys = await redis_client.keys("*")
        assert max(map(len, keys)) < 100


async def test_a_lagging_server_learns_it_lost_entries_and_reloads(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A fold trims entries a paused server has not read: it must say so, never skip them."""
    async with (
        pausable_proxy(redis.port) as proxy,
        cluster(redis.url, sqlite_stores(tmp_path, 1)) as (a,),
        cluster(f"redis://127.0.0.1:{proxy.port}/0", sqlite_stores(tmp_path, 1)) as (b,),
    ):
        writer = await joined(a, "r", Recorder())
        lagging = Recorder()
        channel = await joined(b, "r", lagging)
        proxy.pause()
        sent = numbered("u", 8)
        for update in sent:
            await writer.publish([update])
        assert (await a.fold("r")).outcome is FoldOutcome.FOLDED
        proxy.resume()
        await lagging.wait_until(lambda: lagging.lost == 1)
        received = list(lagging.updates)
        assert received == sent[: len(received)]  # a prefix: nothing skipped silently
        assert len(received) < len(sent)

        catchup = await channel.load()
        assert catchup.all_updates() == sent
        await writer.publish([b"live again"])
        await lagging.wait_until(lambda: lagging.updates[-1:] == [b"live again"])
        assert lagging.lost == 1


async def test_load_starts_over_when_a_fold_overtakes_it(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The interleaving that would lose updates: the loader reads the store, a fold appends to
    it and trims the stream, then the loader reads the stream."""
    gated = GatedStore(SQLiteStore(tmp_path / "rooms.db"))
    async with cluster(redis.url, [SQLiteStore(tmp_path / "rooms.db"), gated]) as (a, b):
        writer = await joined(a, "r", Recorder())
        sent = numbered("u", 6)
        await writer.publish(sent[:3])
        await writer.publish(sent[3:])
        channel = await b.attach("r", Recorder())
        gated.hold_load = release = trio.Event()
        result = []
        async with trio.open_nursery() as nursery:

            async def load() -> None:
                result.append(await channel.load())

            nursery.start_soon(load)
            await gated.held.wait()  # the loader has read the (empty) store
            assert (await a.fold("r")).outcome is FoldOutcome.FOLDED
            release.set()
        (catchup,) = result
        assert gated.loads == 2  # the fold mark sent it back to the store
        assert catchup.all_updates() == sent


async def test_a_stale_lock_holder_cannot_move_the_position(
    redis: RedisServer, tmp_path: Path
) -> None:
    gated = GatedStore(SQLiteStore(tmp_path / "rooms.db"))
    async with (
        cluster(redis.url, [gated, SQLiteStore(tmp_path / "rooms.db")]) as (a, b),
        client(redis) as redis_client,
    ):
        from trio_ysync.bus._redis import _RoomKeys

        keys = _RoomKeys.of(a.prefix, "r")
        writer = await joined(b, "r", Recorder())
        await writer.publish([b"1", b"2"])
        gated.hold_append = release = trio.Event()
        results = []
        async with trio.open_nursery() as nursery:

            async def fold() -> None:
                results.append(await a.fold("r"))

            nursery.start_soon(fold)
            await gated.held.wait()  # a holds the lock and is about to append
            assert (await b.fold("r")).outcome is FoldOutcome.LOCKED
            await redis_client.delete([keys.lock])  # a's lease runs out
            await writer.publish([b"3"])
            by_b = await b.fold("r")
            assert by_b.outcome is FoldOutcome.FOLDED
            release.set()
        assert results[0].outcome is FoldOutcome.STALE
        assert await redis_client.get(keys.folded) == by_b.through.encode()
        entries = await redis_client.xrange(keys.stream)
        assert [e.field_values.get(b"t") for e in entries] == [by_b.through.encode()]
        assert await redis_client.exists([keys.lock]) == 0
        # The stale holder's append happened anyway: duplicates, which Yjs ignores.
        stored = (await b.store.load("r")).updates
        assert set(stored) == {b"1", b"2", b"3"}


async def test_the_fold_task_folds_by_count_and_by_age(redis: RedisServer, tmp_path: Path) -> None:
    tuning = BusTuning(fold_after_entries=5, fold_interval=0.5, retry_delay=0.02)
    store = GatedStore(SQLiteStore(tmp_path / "rooms.db"))  # shared: either bus may fold
    async with cluster(redis.url, [store], tuning) as (a,), open_bus(redis.url, store) as b:
        await joined(b, "r", Recorder())
        writer = await joined(a, "r", Recorder())
        for update in numbered("u", 5):
            await writer.publish([update])
        await store.wait_appends(1)  # five entries: folded at once
        assert (await store.load("r")).updates == numbered("u", 5)
        await writer.publish([b"old"])
        await store.wait_appends(2)  # one entry: folded once it is half a second old
        assert (await store.load("r")).updates == [*numbered("u", 5), b"old"]
        assert store.appends == 2  # one server folded each time, the other was locked out


async def test_detaching_folds_what_is_left(redis: RedisServer, tmp_path: Path) -> None:
    async with cluster(redis.url, sqlite_stores(tmp_path, 1)) as (a,), client(redis) as rc:
        channel = await joined(a, "r", Recorder())
        await channel.publish([b"1", b"2"])
        await channel.publish([b"3"])
        await channel.detach()
        assert (await a.store.load("r")).updates == [b"1", b"2", b"3"]
        from trio_ysync.bus._redis import _RoomKeys

        assert await rc.xlen(_RoomKeys.of(a.prefix, "r").stream) == 1  # the fold mark


# -- awareness --------------------------------------------------------------------------------


async def test_awareness_goes_to_the_others_and_answers_queries(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(redis.url, sqlite_stores(tmp_path, 3)) as (a, b, c):
        rec_a, rec_b = Recorder(answer=b"states of a"), Recorder(answer=None)
        chan_a = await joined(a, "r", rec_a)
        await joined(b, "r", rec_b)
        # b's load asked the others: a answered.
        await rec_b.wait_until(lambda: rec_b.awareness == [b"states of a"])
        chan_a.publish_awareness(b"change by a")
        await rec_b.wait_until(lambda: rec_b.awareness[-1:] == [b"change by a"])
        rec_c = Recorder()
        chan_c = await joined(c, "r", rec_c)
        await rec_c.wait_until(lambda: rec_c.awareness == [b"states of a"])
        chan_c.query_awareness()
        await rec_c.wait_until(lambda: rec_c.awareness == [b"states of a"] * 2)
        # Queries reach every other server (a's own, sent while b attached, may reach b too).
        await rec_a.wait_until(lambda: rec_a.queries == 3)  # b's load, c's load, c's query
        await rec_b.wait_until(lambda: rec_b.queries >= 2)  # c's load, c's query
        assert rec_c.queries == 0
        assert rec_a.awareness == []  # its own messages never come back; b and c sent none


# -- failures ---------------------------------------------------------------------------------


async def test_publish_fails_after_bounded_retries_while_redis_is_down(tmp_path: Path) -> None:
    async with (
        redis_server(aof=True) as redis,
        cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b),
    ):
        channel = await joined(a, "r", Recorder())
        listener = Recorder()
        await joined(b, "r", listener)
        await redis.stop()
        with trio.fail_after(TIMEOUT), pytest.raises(BusUnavailableError) as caught:
            await channel.publish([b"not acknowledged"])
        assert caught.value.close_code == 1013
        await redis.start()
        await channel.publish([b"after"])
        await listener.wait_until(lambda: b"after" in listener.updates)


async def test_redis_killed_and_restarted_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """AOF with appendfsync always: what publish acknowledged survives kill -9 of Redis; the
    reader resumes from its position, with no gap and no duplicate."""
    async with (
        redis_server(aof=True, appendfsync="always") as redis,
        cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b),
    ):
        writer = await joined(a, "r", Recorder())
        listener = Recorder()
        await joined(b, "r", listener)
        acknowledged = []
        for update in numbered("before ", 20):
            await writer.publish([update])
            acknowledged.append(update)
        await redis.kill()
        with pytest.raises(BusUnavailableError):
            await writer.publish([b"while down"])
        await redis.start()
        for update in numbered("after ", 20):
            await writer.publish([update])
            acknowledged.append(update)
        await listener.wait_until(lambda: listener.updates[-1:] == [acknowledged[-1]])
        assert listener.lost == 0
        # "while down" may or may not have reached Redis before the kill; nothing else differs.
        assert [u for u in listener.updates if u != b"while down"] == acknowledged
        async with cluster(redis.url, sqlite_stores(tmp_path, 1)) as (c,):
            loaded = (await (await c.attach("r", Recorder())).load()).all_updates()
            assert [u for u in loaded if u != b"while down"] == acknowledged


async def test_redis_that_lost_its_data_makes_every_room_reload(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b):
        writer = await joined(a, "r", Recorder())
        listener = Recorder()
        channel = await joined(b, "r", listener)
        await writer.publish([b"1"])
        await listener.wait_until(lambda: listener.updates == [b"1"])
        await redis.restart(kill=True)  # no AOF: everything is gone
        await listener.wait_until(lambda: listener.lost == 1)
        await channel.load()
        await writer.publish([b"2"])
        await listener.wait_until(lambda: listener.updates[-1:] == [b"2"])


async def test_killed_reader_connection_resumes_without_gap_or_duplicate(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(redis.url, sqlite_stores(tmp_path, 2)) as (a, b), client(redis) as rc:
        writer = await joined(a, "r", Recorder())
        listener = Recorder()
        await joined(b, "r", listener)
        sent = numbered("u", 60)
        for i, update in enumerate(sent):
            await writer.publish([update])
            if i % 20 == 10:
                for entry in await rc.client_list():
                    if entry["name"] == f"{b.prefix}{b.server_id}:reader":
                        await rc.client_kill(identifier=int(entry["id"]))
        await listener.wait_until(lambda: len(listener.updates) >= len(sent))
        assert listener.updates == sent
        assert listener.lost == 0


# -- configuration ----------------------------------------------------------------------------


async def test_a_store_other_than_the_clusters_is_refused(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(redis.url, [SQLiteStore(tmp_path / "a.db")]):
        with pytest.raises(BusConfigError, match="same store"):
            async with cluster(redis.url, [SQLiteStore(tmp_path / "b.db")]):
                pass  # pragma: no cover
        with pytest.raises(BusConfigError, match="cannot be shared"):
            async with cluster(redis.url, [MemoryStore()]):
                pass  # pragma: no cover
        # Another prefix is another cluster.
        async with open_bus(redis.url, SQLiteStore(tmp_path / "b.db"), prefix="other:") as bus:
            assert isinstance(bus, RedisBus)


async def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    async with redis_server() as server:
        url = server.url
    with trio.fail_after(TIMEOUT), pytest.raises(BusUnavailableError):
        async with open_bus(url, SQLiteStore(tmp_path / "a.db"), tuning=TUNING):
            pass  # pragma: no cover


async def test_local_bus(tmp_path: Path) -> None:
    async with MemoryStore() as store, open_bus(None, store) as bus:
        assert isinstance(bus, LocalBus)
        assert not bus.persists
        await store.append("r", [b"stored"])
        channel = await bus.attach("r", Recorder())
        with pytest.raises(RuntimeError, match="attached already"):
            await bus.attach("r", Recorder())
        catchup = await channel.load()
        assert catchup.all_updates() == [b"stored"]
        await channel.publish([b"nothing happens"])
        channel.publish_awareness(b"")
        channel.query_awareness()
        await channel.detach()
        assert (await store.load("r")).updates == [b"stored"]
        await bus.attach("r", Recorder())
