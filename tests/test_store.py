"""The store contract, checked on every store: memory, SQLite, files and Redis."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nodejs import NODE_DIR, requires_node
from ydocs import delete_text, insert_text

from trio_ysync.doc import Backend, Document, new_document
from trio_ysync.protocol import ProtocolError
from trio_ysync.store import (
    FileStore,
    MemoryStore,
    RedisStore,
    SQLiteStore,
    Store,
    StoredRoom,
    StoreError,
    merge_updates,
    open_store,
)
from trio_ysync.store.admin import (
    compact_all,
    compact_room,
    export_room,
    import_room,
)
from trio_ysync.store.merge import with_pending

StoreFactory = Callable[[], Store]
StoreMaker = Callable[[Path], Store]

# Room names that break naive file or key mappings.
HOSTILE_NAMES = [
    "",
    "../x",
    "../../etc/passwd",
    "a/b",
    "a\\b",
    ".",
    "..",
    "CON",
    "con",
    "Con",
    "nul.txt",
    "AUX",
    "com1",
    "x" * 10_000,
    "é",
    "e\u0301",
    "\x00",
    " space ",
    "dot.",
    "🎉 party",
    "C:\\Windows",
    "room?id=1&x=%2F",
]


def key_prefix(location: Path) -> str:
    """A Redis key prefix of its own for each location (tests share one Redis server)."""
    return "test-" + hashlib.sha256(str(location).encode()).hexdigest()[:16] + ":"


def store_maker(kind: str, request: pytest.FixtureRequest) -> StoreMaker:
    """Makes a store of ``kind`` for a location; the same location reopens the same data."""
    if kind == "memory":
        return lambda location: MemoryStore()
    if kind == "sqlite":
        return lambda location: SQLiteStore(location / "rooms.db")
    if kind == "file":
        return lambda location: FileStore(location / "rooms")
    url = request.getfixturevalue("redis_url")
    return lambda location: RedisStore(url, prefix=key_prefix(location))


@pytest.fixture(params=["memory", "sqlite", "file", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "file", "redis"])
def durable_kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_store(kind: str, request: pytest.FixtureRequest) -> StoreMaker:
    return store_maker(kind, request)


@pytest.fixture
def store_factory(make_store: StoreMaker, tmp_path: Path) -> StoreFactory:
    """Opens a store of the current kind; durable kinds reopen the same data."""
    return lambda: make_store(tmp_path)


@pytest.fixture
def durable_factory(
    durable_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> StoreFactory:
    make = store_maker(durable_kind, request)
    return lambda: make(tmp_path)


class Recorder:
    """Collects the updates a document produces."""

    def __init__(self, doc: Document) -> None:
        self.updates: list[bytes] = []
        doc.observe(lambda update, origin: self.updates.append(update))

    def take(self) -> list[bytes]:
        updates, self.updates = self.updates, []
        return updates


def text_of(updates: list[bytes], backend: Backend | None = None) -> str:
    doc = new_document(backend)
    for update in updates:
        doc.apply_update(update)
    return doc.get_text("t")


def edits(backend: Backend, words: list[str], client_id: int = 1) -> tuple[list[bytes], str]:
    """One update per word typed at the end of the text, and the final text."""
    doc = new_document(backend, client_id)
    recorder = Recorder(doc)
    for word in words:
        insert_text(doc, len(doc.get_text("t")), word)
    return recorder.take(), doc.get_text("t")


# -- basics -------------------------------------------------------------------------------------


async def test_unknown_room_is_empty(store_factory: StoreFactory) -> None:
    async with store_factory() as store:
        assert await store.load("nobody") == StoredRoom()
        assert await store.load("nobody") == StoredRoom(updates=[], last_seq=0, size_bytes=0)
        assert await store.append("nobody", []) == 0
        await store.delete("nobody")
        await store.compact("nobody", b"\x00\x00", 0)
        with pytest.raises(ValueError, match="through_seq"):
            await store.compact("nobody", b"\x00\x00", 1)
        assert await store.list_rooms() == []


async def test_append_numbers_entries_in_order(store_factory: StoreFactory) -> None:
    async with store_factory() as store:
        assert await store.append("r", [b"a", b"bb"]) == 2
        assert await store.append("r", [b"ccc"]) == 3
        assert await store.append("r", []) == 3
        assert await store.append("other", [bytearray(b"x")]) == 1
        stored = await store.load("r")
        assert stored == StoredRoom([b"a", b"bb", b"ccc"], last_seq=3, size_bytes=6)
        assert stored.first_seq == 1
        assert await store.list_rooms() == ["other", "r"]
        await store.delete("r")
        assert await store.load("r") == StoredRoom()
        assert await store.list_rooms() == ["other"]
        assert await store.append("r", [b"again"]) == 1


async def test_append_rejects_a_single_update_and_non_bytes(store_factory: StoreFactory) -> None:
    async with store_factory() as store:
        with pytest.raises(TypeError):
            await store.append("r", b"abc")
        with pytest.raises(TypeError):
            await store.append("r", ["text"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="surrogate"):
            await store.append("\ud800", [b"x"])
        assert await store.list_rooms() == []


async def test_restart_keeps_content(durable_factory: StoreFactory, backend: Backend) -> None:
    alice = new_document(backend, 1)
    bob = new_document(backend, 2)
    recorder = Recorder(alice)
    async with durable_factory() as store:
        for word in ["hello", " ", "world"]:
            insert_text(alice, len(alice.get_text("t")), word)
            await store.append("doc", recorder.take())
        bob.apply_update(alice.diff())
        state = bob.state_vector()
        insert_text(bob, 0, "[bob] ")
        bob_update = bob.diff(state)
        alice.apply_update(bob_update)
        recorder.take()
        await store.append("doc", [bob_update])

    async with durable_factory() as store:
        stored = await store.load("doc")
        assert stored.last_seq == 4
        assert text_of(stored.updates, backend) == alice.get_text("t")
        # Compact, append more, restart again.
        await compact_room(store, "doc", backend=backend)
        delete_text(alice, 0, 6)
        await store.append("doc", recorder.take())
        expected = alice.get_text("t")
        assert expected == "hello world"

    async with durable_factory() as store:
        stored = await store.load("doc")
        assert (stored.first_seq, stored.last_seq, len(stored.updates)) == (4, 5, 2)
        assert text_of(stored.updates, backend) == expected
        assert await store.list_rooms() == ["doc"]


async def test_closed_store_raises(store_factory: StoreFactory) -> None:
    store = store_factory()
    async with store:
        await store.append("r", [b"x"])
    await store.aclose()  # closing twice is harmless
    with pytest.raises(StoreError, match="closed"):
        await store.append("r", [b"y"])
    with pytest.raises(StoreError, match="closed"):
        await store.load("r")
    with pytest.raises(StoreError, match="closed"):
        await store.compact("r", b"x", 1)
    with pytest.raises(StoreError, match="closed"):
        await store.delete("r")
    with pytest.raises(StoreError, match="closed"):
        await store.list_rooms()


async def test_store_opens_on_first_use_without_async_with(store_factory: StoreFactory) -> None:
    store = store_factory()
    if isinstance(store, RedisStore):
        # coredis runs its connections in a task group: the opening task must own it.
        with pytest.raises(StoreError, match="async with"):
            await store.append("r", [b"x"])
        return
    try:
        assert await store.append("r", [b"x"]) == 1
    finally:
        await store.aclose()


# -- compaction ---------------------------------------------------------------------------------


async def test_compact_keeps_entries_after_through_seq(
    store_factory: StoreFactory, backend: Backend
) -> None:
    updates, text = edits(backend, ["a", "b", "c", "d", "e"])
    async with store_factory() as store:
        assert await store.append("r", updates[:3]) == 3
        assert await store.append("r", updates[3:]) == 5
        merged = merge_updates(updates[:3], backend)
        await store.compact("r", merged, 3)
        stored = await store.load("r")
        assert stored.updates == [merged, updates[3], updates[4]]
        assert (stored.first_seq, stored.last_seq) == (3, 5)
        assert stored.size_bytes == len(merged) + len(updates[3]) + len(updates[4])
        assert text_of(stored.updates, backend) == text == "abcde"

        # A stale compaction (an earlier one covered more) changes nothing.
        await store.compact("r", merge_updates(updates[:2], backend), 2)
        assert (await store.load("r")).updates == [merged, updates[3], updates[4]]

        # Appends continue after the last entry; compacting through a middle entry again.
        assert await store.append("r", [b"\x00\x00"]) == 6
        merged2 = merge_updates([merged, updates[3]], backend)
        await store.compact("r", merged2, 4)
        stored = await store.load("r")
        assert stored.updates == [merged2, updates[4], b"\x00\x00"]
        assert (stored.first_seq, stored.last_seq) == (4, 6)

        # Through the last entry: one entry left.
        everything = merge_updates(stored.updates, backend)
        await store.compact("r", everything, 6)
        assert await store.load("r") == StoredRoom([everything], 6, len(everything))
        assert text_of([everything], backend) == "abcde"

        with pytest.raises(ValueError, match="through_seq"):
            await store.compact("r", everything, 7)
        with pytest.raises(ValueError, match="through_seq"):
            await store.compact("r", everything, -1)
        assert await store.load("r") == StoredRoom([everything], 6, len(everything))


async def test_compaction_keeps_content_and_bounds_size(
    store_factory: StoreFactory, backend: Backend
) -> None:
    """A long editing session with periodic compaction: the log stays small.

    The text is typed at the end and trimmed at the start (a chat, a log window), so the
    document's own state stays small; without compaction the log would grow with every edit.
    """
    doc = new_document(backend, 42)
    recorder = Recorder(doc)
    appended = 0
    largest = 0
    async with store_factory() as store:
        for step in range(3000):
            insert_text(doc, len(doc.get_text("t")), "abc"[step % 3])
            if len(doc.get_text("t")) > 30:
                delete_text(doc, 0, 1)
            batch = recorder.take()
            appended += sum(map(len, batch))
            seq = await store.append("session", batch)
            if step % 100 == 99:
                result = await compact_room(store, "session", backend=backend)
                assert result is not None
                assert result.size_after <= len(doc.diff()) + 16
                stored = await store.load("session")
                assert (stored.last_seq, len(stored.updates)) == (seq, 1)
                assert text_of(stored.updates, backend) == doc.get_text("t")
            largest = max(largest, (await store.load("session")).size_bytes)
        if isinstance(store, FileStore):
            on_disk = max(entry.stat().st_size for entry in os.scandir(store.directory))
            assert on_disk < 8_000
        stored = await store.load("session")
    assert appended > 50_000  # what the log would hold without compaction
    assert largest < 3_000
    assert text_of(stored.updates, backend) == doc.get_text("t")


async def test_compaction_is_as_small_as_the_document_state(backend: Backend) -> None:
    """Random edits fragment the document: compaction reaches the size of its own state."""
    doc = new_document(backend, 7)
    recorder = Recorder(doc)
    async with MemoryStore() as store:
        for step in range(600):
            length = len(doc.get_text("t"))
            insert_text(doc, (step * 13) % (length + 1), "xyz"[step % 3])
            if length >= 20:
                delete_text(doc, (step * 7) % length, 1 + step % 2)
            await store.append("r", recorder.take())
            if step % 50 == 49:
                result = await compact_room(store, "r", backend=backend)
                assert result is not None
                assert result.size_after <= len(doc.diff()) + 16
        assert text_of((await store.load("r")).updates, backend) == doc.get_text("t")


async def test_concurrent_appends_keep_every_update(store_factory: StoreFactory) -> None:
    tasks, per_task = 8, 25
    seqs: list[int] = []

    async def writer(store: Store, task: int) -> None:
        for i in range(per_task):
            batch = [f"{task}:{i}:{j}".encode() for j in range(i % 3 + 1)]
            seq = await store.append("busy", batch)
            seqs.extend(range(seq - len(batch) + 1, seq + 1))

    async with store_factory() as store:
        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(writer, store, task)
        stored = await store.load("busy")

    expected = {
        f"{task}:{i}:{j}".encode()
        for task in range(tasks)
        for i in range(per_task)
        for j in range(i % 3 + 1)
    }
    assert len(stored.updates) == len(expected) == stored.last_seq
    assert set(stored.updates) == expected
    assert sorted(seqs) == list(range(1, stored.last_seq + 1))
    for task in range(tasks):  # each writer's own updates stay in its order
        mine = [u for u in stored.updates if u.startswith(f"{task}:".encode())]
        assert mine == sorted(mine, key=lambda u: tuple(map(int, u.split(b":")[1:])))


async def test_concurrent_edits_and_compactions_keep_content(
    store_factory: StoreFactory, backend: Backend
) -> None:
    """Clients append while compactions run: every client's text survives."""
    texts: dict[int, str] = {}

    async def client(store: Store, client_id: int) -> None:
        doc = new_document(backend, client_id)
        recorder = Recorder(doc)
        for i in range(30):
            # Each client writes its own root text, so the final content is predictable.
            insert_text(doc, i, chr(ord("a") + client_id), name=f"c{client_id}")
            await store.append("shared", recorder.take())
        texts[client_id] = doc.get_text(f"c{client_id}")

    async def compactor(store: Store, done: trio.Event) -> None:
        while not done.is_set():
            await compact_room(store, "shared", backend=backend)
            await trio.lowlevel.checkpoint()

    async with store_factory() as store:
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(compactor, store, done)
            async with trio.open_nursery() as clients:
                for client_id in range(1, 6):
                    clients.start_soon(client, store, client_id)
            done.set()
        stored = await store.load("shared")

    doc = new_document(backend)
    for update in stored.updates:
        doc.apply_update(update)
    for client_id, text in texts.items():
        assert doc.get_text(f"c{client_id}") == text == chr(ord("a") + client_id) * 30


# -- room names ---------------------------------------------------------------------------------


async def test_hostile_room_names_round_trip(store_factory: StoreFactory, tmp_path: Path) -> None:
    async with store_factory() as store:
        for i, name in enumerate(HOSTILE_NAMES):
            await store.append(name, [f"update {i}".encode()])
        assert await store.list_rooms() == sorted(HOSTILE_NAMES)
        for i, name in enumerate(HOSTILE_NAMES):
            assert (await store.load(name)).updates == [f"update {i}".encode()]
        await store.delete("../x")
        assert "../x" not in await store.list_rooms()
        assert (await store.load("..")).updates == [b"update 6"]
    # Nothing was written outside the store's own file or directory.
    assert sorted(os.listdir(tmp_path)) in ([], ["rooms"], ["rooms.db"])


room_names = st.text(max_size=60) | st.text(alphabet="./\\:aA", max_size=8)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(room_names, unique=True, max_size=8))
async def test_any_room_names_round_trip(make_store: StoreMaker, names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with make_store(Path(directory)) as store:
            for i, name in enumerate(names):
                await store.append(name, [i.to_bytes(2, "big")])
            assert await store.list_rooms() == sorted(names)
            for i, name in enumerate(names):
                assert (await store.load(name)).updates == [i.to_bytes(2, "big")]


# -- factory ------------------------------------------------------------------------------------


def test_open_store_picks_the_store(tmp_path: Path) -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    for name in ("a.db", "a.sqlite", "a.sqlite3", "A.DB"):
        store = open_store(str(tmp_path / name), fsync=True)
        assert isinstance(store, SQLiteStore)
        assert store.fsync
    assert isinstance(open_store(str(tmp_path / "new") + "/"), FileStore)
    assert isinstance(open_store(tmp_path), FileStore)  # an existing directory
    with pytest.raises(ValueError, match="cannot tell"):
        open_store(str(tmp_path / "rooms"))
    redis = open_store("redis://127.0.0.1:6379/2", redis_prefix="app:")
    assert isinstance(redis, RedisStore)
    assert (redis.url, redis.prefix) == ("redis://127.0.0.1:6379/2", "app:")
    with pytest.raises(ValueError, match="Redis"):
        open_store("memory", redis_prefix="app:")


# -- merging and operators' functions -----------------------------------------------------------


def test_merge_updates_is_content_identical(backend: Backend) -> None:
    updates, text = edits(backend, ["one", " two", " three"])
    merged = merge_updates(updates, backend)
    assert text_of([merged], backend) == text
    for other in ("pycrdt", "y-py"):
        assert text_of([merged], other) == text  # type: ignore[arg-type]
    assert merge_updates([], backend) == b"\x00\x00"
    with pytest.raises(ProtocolError):  # validated before any document sees it
        merge_updates([b"\xff\xff\xff"], backend)


def test_merge_updates_keeps_updates_waiting_for_dependencies(backend: Backend) -> None:
    """An update whose predecessor is missing survives merging (a document would drop it)."""
    first, second = edits(backend, ["abc", "def"])[0]
    merged = merge_updates([second], backend)
    assert text_of([merged], backend) == ""
    assert text_of([first, merged], backend) == "abcdef"
    # Applied before its dependency, the merged update behaves as the original did (y-py never
    # integrates a held-back update once its dependency arrives; pycrdt does).
    assert text_of([merged, first], backend) == text_of([second, first], backend)
    if backend == "pycrdt":
        assert text_of([merged, first], backend) == "abcdef"


async def test_export_and_import_room(store_factory: StoreFactory, backend: Backend) -> None:
    updates, text = edits(backend, ["exported", " text"])
    async with store_factory() as store:
        with pytest.raises(LookupError):
            await export_room(store, "r")
        await store.append("r", updates)
        exported = await export_room(store, "r", backend=backend)
        assert text_of([exported], backend) == text

        assert await import_room(store, "copy", exported, backend=backend) == 1
        assert text_of((await store.load("copy")).updates, backend) == text

        # Importing merges with what is there; replace=True replaces it.
        other, other_text = edits(backend, ["other"], client_id=9)
        await import_room(store, "copy", merge_updates(other, backend), backend=backend)
        merged_text = text_of((await store.load("copy")).updates, backend)
        assert merged_text in (text + other_text, other_text + text)
        await import_room(store, "copy", exported, replace=True, backend=backend)
        stored = await store.load("copy")
        assert (stored.updates, stored.last_seq) == ([exported], 2)

        with pytest.raises(ProtocolError):
            await import_room(store, "bad", b"\xff\xff\xff", backend=backend)
        assert "bad" not in await store.list_rooms()


async def test_compact_all(store_factory: StoreFactory, backend: Backend) -> None:
    contents = {}
    async with store_factory() as store:
        for i, room in enumerate(["a", "b", "c"]):
            updates, contents[room] = edits(backend, [room] * (i + 1), client_id=i + 1)
            await store.append(room, updates)
        results = await compact_all(store, backend=backend)
        # "a" has one entry only: nothing to compact.
        assert [(r.room, r.entries_before) for r in results] == [("b", 2), ("c", 3)]
        for room, text in contents.items():
            stored = await store.load(room)
            assert len(stored.updates) == 1
            assert text_of(stored.updates, backend) == text
        assert await compact_all(store, backend=backend) == []


@requires_node
async def test_exported_update_is_accepted_by_yjs(tmp_path: Path) -> None:
    updates, text = edits("pycrdt", ["héllo", " wörld 🎉"])
    async with SQLiteStore(tmp_path / "r.db") as store:
        await store.append("r", updates)
        exported = await export_room(store, "r")
    script = (
        "import * as Y from 'yjs';"
        "let hex = '';"
        "for await (const chunk of process.stdin) hex += chunk;"
        "const doc = new Y.Doc();"
        "Y.applyUpdate(doc, new Uint8Array(Buffer.from(hex.trim(), 'hex')));"
        "process.stdout.write(doc.getText('t').toString());"
    )
    with trio.fail_after(30):
        result = await trio.run_process(
            ["node", "--input-type=module", "-e", script],
            cwd=NODE_DIR,
            stdin=exported.hex().encode(),
            capture_stdout=True,
        )
    assert result.stdout.decode() == text


# -- crash ----------------------------------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import trio
    from trio_ysync.doc import new_document
    from trio_ysync.store import open_store

    async def main(spec, *prefix):
        store = open_store(spec, **({"redis_prefix": prefix[0]} if prefix else {}))
        async with store:
            doc = new_document("pycrdt", 5)
            updates = []
            doc.observe(lambda update, origin: updates.append(update))
            text = doc.native.get("t", type=__import__("pycrdt").Text)
            for char in "acknowledged":
                text.insert(len(text), char)
                seq = await store.append("room", updates)
                updates.clear()
                print(seq, flush=True)
            # Killed with the store open: no close, no WAL checkpoint, no flush.
            os.kill(os.getpid(), signal.SIGKILL)

    trio.run(main, *sys.argv[1:])
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
async def test_acknowledged_appends_survive_a_killed_process(
    durable_kind: str, durable_factory: StoreFactory, tmp_path: Path
) -> None:
    store = durable_factory()
    if isinstance(store, RedisStore):
        args = [store.url, store.prefix]
    elif isinstance(store, SQLiteStore):
        args = [store.path]
    else:
        args = [str(tmp_path / "rooms") + "/"]
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-c", _KILLED_WRITER, *args],
            capture_stdout=True,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    assert result.returncode == -signal.SIGKILL
    acknowledged = [int(line) for line in result.stdout.split()]
    assert acknowledged == list(range(1, 13))
    async with store:
        stored = await store.load("room")
    assert stored.last_seq == 12
    assert text_of(stored.updates) == "acknowledged"


def test_with_pending_adds_only_what_the_document_holds_back() -> None:
    pytest.importorskip("pycrdt")
    (first, second), _ = edits("pycrdt", ["abc", "def"])
    whole = new_document("pycrdt")
    for update in (first, second):
        whole.apply_update(update)
    # A log the document integrated whole: the snapshot is the answer, nothing to merge.
    snapshot = whole.diff()
    assert with_pending(snapshot, [first, second]) == snapshot
    # A document that got only the second edit holds it back (pending): it must survive.
    waiting = new_document("pycrdt")
    waiting.apply_update(second)
    kept = with_pending(waiting.diff(), [second])
    assert text_of([kept], "pycrdt") == ""
    assert text_of([first, kept], "pycrdt") == "abcdef"


def test_with_pending_keeps_a_deletion_that_arrived_before_its_text() -> None:
    pytest.importorskip("pycrdt")
    writer = new_document("pycrdt", client_id=1)
    insert_text(writer, 0, "abcdef")
    typed = writer.diff()
    before = writer.state_vector()
    delete_text(writer, 1, 2)
    deleted = writer.diff(before)
    for log in ([deleted, typed], [deleted]):
        doc = new_document("pycrdt")
        for update in log:
            doc.apply_update(update)
        result = with_pending(doc.diff(), log)
        assert text_of([result], "pycrdt") == text_of(log, "pycrdt")
        assert text_of([result, typed], "pycrdt") == "adef"
