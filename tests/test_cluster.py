"""``trio-ysync serve --redis`` processes sharing rooms through one real redis-server.

Every test starts its own redis-server and its own server processes (sharing one SQLite file);
clients are real y-websocket clients (Node) or our own test client where a test must count
every update.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import coredis
import trio
from cliserver import ServerProcess, cli_server
from nodejs import js_client, requires_node, ws_url
from redisserver import redis_server, requires_redis
from tcpproxy import pausable_proxy
from trio_websocket import ConnectionClosed, HandshakeError
from wsclient import TestClient, connect
from ydocs import insert_text

from trio_ysync.bus import FoldOutcome, open_bus
from trio_ysync.bus._redis import RedisBus, _RoomKeys
from trio_ysync.doc import new_document
from trio_ysync.protocol import SyncStep1, SyncStep2, SyncUpdate
from trio_ysync.store import SQLiteStore

pytestmark = requires_redis

TIMEOUT = 90  # several server processes and Node clients on a loaded machine
TOKEN = re.compile(r"<\d+\.\d+>")


@asynccontextmanager
async def servers(
    redis_urls: Sequence[str], store: Path, *args: str
) -> AsyncIterator[list[ServerProcess]]:
    """One ``trio-ysync serve --redis URL --store STORE`` per URL, started together; rooms
    unload as soon as their last client leaves."""
    started: dict[int, ServerProcess] = {}
    all_started = trio.Event()
    stop = trio.Event()

    async def run(index: int, url: str) -> None:
        options = ("--redis", url, "--store", str(store), "--room-grace-period", "0", *args)
        async with cli_server(*options, capture_stderr=True) as server:
            started[index] = server
            if len(started) == len(redis_urls):
                all_started.set()
            await stop.wait()

    async with trio.open_nursery() as nursery:
        for index, url in enumerate(redis_urls):
            nursery.start_soon(run, index, url)
        await all_started.wait()
        try:
            yield [started[index] for index in range(len(redis_urls))]
        finally:
            stop.set()


def tokens(text: str) -> set[str]:
    return set(TOKEN.findall(text))


async def document_text(port: int, room: str) -> str:
    """The room's text as a new client of the server on ``port`` receives it."""
    async with connect(port, room) as client:
        doc = new_document()
        doc.apply_update(await client.join())
        return doc.get_text("t")


async def fold_now(bus: RedisBus, room: str) -> None:
    """Fold what the room's stream holds into the store (and trim it), now.

    A server may hold the room's fold lock (in another process: no event to wait on); its fold
    takes milliseconds, then this one folds whatever that one left.
    """
    while (await bus.fold(room)).outcome is FoldOutcome.LOCKED:  # noqa: ASYNC110
        await trio.sleep(0.05)


class Observer:
    """A client that applies every update the server broadcasts to a document of its own."""

    def __init__(self) -> None:
        self.doc = new_document()
        self.updates = 0
        self.joined = trio.Event()
        self._changed = trio.Event()

    @property
    def tokens(self) -> set[str]:
        return tokens(self.doc.get_text("t"))

    async def run(self, port: int, room: str) -> None:
        """Until the connection ends (the server died) or the task is cancelled."""
        try:
            async with connect(port, room) as client:
                self.doc.apply_update(await client.join())
                self.joined.set()
                while True:
                    message = await client.receive()
                    if isinstance(message, SyncUpdate):
                        self.doc.apply_update(message.update)
                        self.updates += 1
                        self._changed.set()
                        self._changed = trio.Event()
        except (ConnectionClosed, HandshakeError, trio.BrokenResourceError):
            pass

    async def wait_until(self, condition: object) -> None:
        assert callable(condition)
        while not condition():
            await self._changed.wait()


class Writer:
    """Inserts numbered tokens ``<writer.n>`` into a document of its own and sends them."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.doc = new_document(client_id=1000 + number)
        self.sent = 0
        self._pending: list[bytes] = []
        self.doc.observe(lambda update, origin: self._pending.append(update))

    async def write(self, client: TestClient, count: int) -> None:
        for _ in range(count):
            insert_text(self.doc, len(self.doc.get_text("t")), f"<{self.number}.{self.sent}>")
            self.sent += 1
            await client.send(SyncUpdate(self._pending.pop()))

    async def write_forever(self, port: int, room: str) -> None:
        """Until the server dies or the task is cancelled."""
        try:
            async with connect(port, room) as client:
                await client.join()
                await self.write(client, 100_000)
        except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
            pass

    async def rejoin(self, client: TestClient) -> None:
        """The handshake of a client that has edits of its own: answer the server's SyncStep1
        with everything the server lacks (as y-websocket does after a reconnection)."""
        greeting = await client.receive()
        assert isinstance(greeting, SyncStep1), greeting
        await client.send(SyncStep2(self.doc.diff(greeting.state_vector)), SyncStep1(b"\x00"))
        await client.receive_until(SyncStep2)


# -- real y-websocket clients spread over three servers ---------------------------------------


@requires_node
async def test_clients_on_three_servers_converge_share_presence_and_rooms_come_back(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with redis_server() as redis, servers([redis.url] * 3, tmp_path / "r.db") as farm:
            urls = [ws_url(server.port) for server in farm]
            async with (
                js_client(urls[0], "doc", name="a") as a,
                js_client(urls[1], "doc", name="b") as b,
            ):
                for client in (a, b):
                    await client.wait_synced()
                async with trio.open_nursery() as nursery:
                    for index, client in enumerate((a, b)):
                        for n in range(5):
                            nursery.start_soon(client.insert, 0, f"<{index}.{n}>")
                await a.wait_until(lambda: len(tokens(a.text)) == 10)
                await b.wait_text(a.text)
                # A late joiner on the third server, which has not loaded the room yet.
                async with js_client(urls[2], "doc", name="c") as c:
                    await c.wait_synced()
                    await c.wait_text(a.text)
                    await c.insert(0, "<2.0>")
                    for client in (a, b):
                        await client.wait_text(c.text)

                    # Presence appears everywhere...
                    clients = (a, b, c)
                    for client in clients:
                        await client.set_awareness({"user": {"name": client.name}})
                    for client in clients:
                        for other in clients:
                            await client.wait_until(
                                lambda c=client, o=other: (
                                    c.awareness.get(o.client_id) == {"user": {"name": o.name}}
                                )
                            )
                    # ...and disappears everywhere when a client's process dies.
                    b._process.kill()
                    for client in (a, c):
                        await client.wait_until(lambda c=client: b.client_id not in c.awareness)
                    final = c.text
            # Every server unloads the room (and folds what is left), then loads it again.
            for server in farm:
                await server.wait_for_log("room 'doc': unloaded")
            for server in farm:
                assert await document_text(server.port, "doc") == final
    assert len(tokens(final)) == 11


# -- kill -9 of one server -----------------------------------------------------------------


async def test_kill_9_of_one_server_during_writes_loses_no_update_a_client_received(
    tmp_path: Path,
) -> None:
    observers = [Observer() for _ in range(3)]
    with trio.fail_after(TIMEOUT):
        async with redis_server() as redis, servers([redis.url] * 3, tmp_path / "r.db") as farm:
            async with trio.open_nursery() as nursery:
                for server, observer in zip(farm, observers, strict=True):
                    nursery.start_soon(observer.run, server.port, "crash")
                    await observer.joined.wait()
                for number, server in enumerate(farm):
                    nursery.start_soon(Writer(number).write_forever, server.port, "crash")
                last = observers[2]
                await last.wait_until(lambda: last.updates >= 150)
                farm[0].kill()
                received = last.updates
                await last.wait_until(lambda: last.updates >= received + 50)
                nursery.cancel_scope.cancel()
            seen = set().union(*(observer.tokens for observer in observers))
            survivors = [await document_text(server.port, "crash") for server in farm[1:]]
    assert len(seen) >= 200
    assert tokens(observers[0].doc.get_text("t")), "the killed server broadcast nothing"
    for text in survivors:
        missing = seen - tokens(text)
        assert not missing, f"{len(missing)} received updates lost, e.g. {sorted(missing)[:5]}"


# -- Redis restarted mid-session -----------------------------------------------------------


async def test_redis_restarted_mid_session_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """AOF with appendfsync always: while Redis is down, a write is refused (the writer is
    closed with 1013, nothing is acknowledged); once it is back, the servers reconnect, the
    room loads again, and every acknowledged update is there."""
    writer = Writer(1)
    observer = Observer()
    with trio.fail_after(TIMEOUT):
        async with (
            redis_server(aof=True, appendfsync="always") as redis,
            servers([redis.url] * 2, tmp_path / "r.db") as (first, second),
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(observer.run, second.port, "r")
                await observer.joined.wait()
                async with connect(first.port, "r") as client:
                    await client.join()
                    await writer.write(client, 20)
                    await observer.wait_until(lambda: len(observer.tokens) == 20)
                    await redis.kill()
                    await writer.write(client, 1)
                    assert await client.close_code() == 1013
                await first.wait_for_log("cannot publish")
                await redis.start()
                # Like y-websocket, the writer reconnects until the room can load again.
                while True:
                    try:
                        async with connect(first.port, "r") as client:
                            await writer.rejoin(client)
                            await writer.write(client, 20)
                            await observer.wait_until(lambda: len(observer.tokens) == 41)
                            break
                    except HandshakeError:  # 503 while the room cannot load yet
                        print("RETRY")
                        await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
            acknowledged = observer.doc.get_text("t")
            assert acknowledged == writer.doc.get_text("t")
            # Loaded again from Redis and the store by both servers.
            for server in (first, second):
                await server.wait_for_log("room 'r': unloaded")
                assert await document_text(server.port, "r") == acknowledged


# -- the whole cluster restarted -------------------------------------------------------------


async def test_the_whole_cluster_restarted_brings_every_room_back(tmp_path: Path) -> None:
    store = tmp_path / "r.db"
    rooms = ["alpha", "beta", "gamma"]
    writers = {room: Writer(index) for index, room in enumerate(rooms)}
    with trio.fail_after(TIMEOUT):
        async with redis_server() as redis, SQLiteStore(store) as shared:

            async def write(farm: list[ServerProcess], index: int, count: int) -> None:
                """Room ``index`` written on server ``index``, observed on the next one."""
                room = rooms[index]
                writer = writers[room]
                observer = Observer()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(observer.run, farm[(index + 1) % 3].port, room)
                    await observer.joined.wait()
                    async with connect(farm[index].port, room) as client:
                        await writer.rejoin(client)
                        await writer.write(client, count)
                        await observer.wait_until(lambda: len(observer.tokens) == writer.sent)
                    nursery.cancel_scope.cancel()

            async def write_everywhere(farm: list[ServerProcess], count: int) -> None:
                async with trio.open_nursery() as nursery:
                    for index in range(len(rooms)):
                        nursery.start_soon(write, farm, index, count)

            async with (
                servers([redis.url] * 3, store) as farm,
                open_bus(redis.url, shared) as bus,
                coredis.Redis.from_url(redis.url) as admin,
            ):
                assert isinstance(bus, RedisBus)
                await write_everywhere(farm, 5)
                for room in rooms:
                    # Into the store, then keep the servers from folding: what follows stays in
                    # the streams only.
                    await fold_now(bus, room)
                    await admin.set(_RoomKeys.of(bus.prefix, room).lock, "the test")
                await write_everywhere(farm, 5)
                for server in farm:
                    server.kill()
                for room in rooms:
                    stored = new_document()
                    for update in (await shared.load(room)).updates:
                        stored.apply_update(update)
                    assert len(tokens(stored.get_text("t"))) == 5
                    keys = _RoomKeys.of(bus.prefix, room)
                    assert await admin.xlen(keys.stream) > 1  # the second five, unfolded
                    await admin.delete([keys.lock])
            async with servers([redis.url] * 3, store) as farm:
                for room in rooms:
                    expected = writers[room].doc.get_text("t")
                    assert len(tokens(expected)) == 10
                    for server in farm:
                        assert await document_text(server.port, room) == expected


# -- a lagging server ------------------------------------------------------------------------


async def test_a_server_that_lagged_behind_a_trim_catches_up(tmp_path: Path) -> None:
    """The second server reads Redis through a proxy that the test pauses; meanwhile the
    first server's writes are folded into the store and trimmed from the stream. The lagging
    server must notice the gap and load again, and its client must get every update."""
    writer = Writer(1)
    near, far = Observer(), Observer()
    store = tmp_path / "r.db"
    with trio.fail_after(TIMEOUT):
        async with (
            redis_server() as redis,
            pausable_proxy(redis.port) as proxy,
            servers([redis.url, f"redis://127.0.0.1:{proxy.port}/0"], store) as (first, lagging),
            SQLiteStore(store) as shared,
            open_bus(redis.url, shared) as bus,
            trio.open_nursery() as nursery,
        ):
            assert isinstance(bus, RedisBus)
            nursery.start_soon(near.run, first.port, "r")
            nursery.start_soon(far.run, lagging.port, "r")
            await near.joined.wait()
            await far.joined.wait()
            proxy.pause()
            async with connect(first.port, "r") as client:
                await client.join()
                for count in range(1, 11):  # one stream entry each
                    await writer.write(client, 1)
                    await near.wait_until(lambda c=count: len(near.tokens) == c)
            await fold_now(bus, "r")
            proxy.resume()
            await lagging.wait_for_log("entries were trimmed before this server read them")
            await far.wait_until(lambda: far.tokens == near.tokens)
            assert await document_text(lagging.port, "r") == near.doc.get_text("t")
            nursery.cancel_scope.cancel()


# -- the command line ----------------------------------------------------------------------


async def serve_fails(*args: str, says: str, cwd: Path) -> None:
    """``trio-ysync serve ARGS`` fails at once with one line on stderr and status 1."""
    result = await trio.run_process(
        [sys.executable, "-m", "trio_ysync", "serve", "--port", "0", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=cwd,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("trio-ysync: error: "), stderr
    assert says in stderr, stderr


async def test_servers_that_do_not_fit_the_cluster_refuse_to_start(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with redis_server() as redis:
            async with redis_server() as gone:
                unreachable = gone.url
            async with SQLiteStore(tmp_path / "cluster.db") as store, open_bus(redis.url, store):
                pass  # the cluster now uses cluster.db
            async with trio.open_nursery() as nursery:
                for args, says in [
                    (("--store", "other.db"), "every server of a cluster must use the same store"),
                    (("--store", "memory"), "cannot be shared between servers"),
                    (("--store", "other.db", "--workers", "2"), "must use the same store"),
                ]:
                    nursery.start_soon(
                        partial(serve_fails, "--redis", redis.url, *args, says=says, cwd=tmp_path)
                    )
                nursery.start_soon(
                    partial(serve_fails, "--redis", unreachable, says="Redis", cwd=tmp_path)
                )


def worker_pids(server: ServerProcess) -> dict[int, int]:
    found = re.findall(r"worker (\d+): process (\d+)", server.stderr.decode())
    return {int(index): int(pid) for index, pid in found}


async def process_exit(pid: int) -> None:
    """Wait until process ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_two_workers_serve_one_port_and_share_rooms(tmp_path: Path) -> None:
    store = str(tmp_path / "r.db")
    options = ("--workers", "2", "--redis-prefix", "deployment-b:", "--store", store)
    with trio.fail_after(TIMEOUT):
        async with (
            redis_server() as redis,
            cli_server("--redis", redis.url, *options, capture_stderr=True) as server,
            coredis.Redis.from_url(redis.url) as admin,
            AsyncExitStack() as stack,
        ):
            await server.wait_for_log("worker 2: process")
            # Connections until each worker has some (the kernel picks; 40 all on one worker
            # would be a one in 2**39 chance).
            clients: list[TestClient] = []
            while not all(
                f"INFO worker {index} trio_ysync.server: room 'shared': loading".encode()
                in server.stderr
                for index in (1, 2)
            ):
                assert len(clients) < 40, server.log_lines
                client = await stack.enter_async_context(connect(server.port, "shared"))
                await client.join()
                clients.append(client)
            writer = Writer(1)
            await writer.write(clients[0], 1)
            for client in clients[1:]:
                message = await client.receive_until(SyncUpdate)
                assert isinstance(message, SyncUpdate)
                doc = new_document()
                doc.apply_update(message.update)
                assert doc.get_text("t") == "<1.0>"
            keys = await admin.keys("*")
            assert keys
            assert all(key.startswith(b"deployment-b:") for key in keys), keys
        # SIGTERM to the parent (cli_server's exit): the workers stop gracefully.
        assert server.process.returncode == 0, server.log_lines
        for pid in worker_pids(server).values():
            await process_exit(pid)


async def test_a_worker_that_dies_stops_the_others_and_the_parent_fails(tmp_path: Path) -> None:
    store = str(tmp_path / "r.db")
    with trio.fail_after(TIMEOUT):
        async with (
            redis_server() as redis,
            cli_server(
                "--workers", "2", "--redis", redis.url, "--store", store, capture_stderr=True
            ) as server,
        ):
            await server.wait_for_log("worker 2: process")
            pids = worker_pids(server)
            os.kill(pids[1], signal.SIGKILL)
            assert await server.process.wait() == 1
            await process_exit(pids[2])
            await server.wait_for_log("trio-ysync: error: worker 1 exited with status -9")


async def test_a_worker_stops_when_its_parent_dies(tmp_path: Path) -> None:
    """The parent of workers gives each one a pipe as standard input: when it ends, the
    parent is gone (even killed with SIGKILL), and the worker stops."""
    store = str(tmp_path / "r.db")
    command = [sys.executable, "-m", "trio_ysync", "serve", "--port", "0", "--store", store]
    with trio.fail_after(TIMEOUT):
        async with redis_server() as redis:
            options = ["--redis", redis.url, "--workers", "2", "--worker-index", "1"]
            worker = await trio.lowlevel.open_process(
                [*command, *options],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                assert worker.stdout is not None and worker.stdin is not None
                assert b"serving ws://" in await worker.stdout.receive_some()
                await worker.stdin.aclose()
                assert await worker.wait() == 0
            finally:
                with trio.CancelScope(shield=True):
                    worker.kill()
                    await worker.wait()
                    for stream in (worker.stdout, worker.stderr):
                        assert stream is not None
                        await stream.aclose()
