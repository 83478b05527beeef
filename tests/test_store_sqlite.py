"""SQLiteStore: WAL and durability settings, schema upgrades, refusing foreign files, errors."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from permissions import requires_enforced_permissions
from ydocs import insert_text

from trio_ysync.doc import Backend, new_document
from trio_ysync.store import SQLiteStore, StoredRoom, StoreError
from trio_ysync.store import sqlite as sqlite_module


def text_of(updates: list[bytes], backend: Backend) -> str:
    doc = new_document(backend)
    for update in updates:
        doc.apply_update(update)
    return doc.get_text("t")


def typed_updates(backend: Backend, text: str, client_id: int) -> list[bytes]:
    doc = new_document(backend, client_id)
    updates: list[bytes] = []
    doc.observe(lambda update, origin: updates.append(update))
    for i, char in enumerate(text):
        insert_text(doc, i, char)
    return updates


def make_version_0(path: Path, rooms: dict[str, list[bytes]]) -> None:
    """The layout before schema versions: no size column, no rooms table, user_version 0."""
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE updates (room TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,"
        " PRIMARY KEY (room, seq))"
    )
    for room, updates in rooms.items():
        db.executemany(
            "INSERT INTO updates VALUES (?, ?, ?)",
            [(room, seq, update) for seq, update in enumerate(updates, start=1)],
        )
    db.commit()
    db.close()


def pragma(path: Path, name: str) -> object:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize(("fsync", "synchronous"), [(False, 1), (True, 2)])
async def test_wal_mode_and_synchronous_level(
    tmp_path: Path, fsync: bool, synchronous: int
) -> None:
    path = tmp_path / "rooms.db"
    async with SQLiteStore(path, fsync=fsync) as store:
        await store.append("r", [b"x"])
        # synchronous is per connection: ask the store's own (NORMAL = 1, FULL = 2).
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
    assert pragma(path, "journal_mode") == "wal"
    assert pragma(path, "user_version") == sqlite_module.SCHEMA_VERSION
    assert pragma(path, "application_id") == sqlite_module.APPLICATION_ID
    assert pragma(path, "auto_vacuum") == 2  # incremental


async def test_upgrade_from_version_0_keeps_everything(tmp_path: Path, backend: Backend) -> None:
    path = tmp_path / "old.db"
    rooms = {
        "notes": typed_updates(backend, "written before the upgrade", 1),
        "../odd name": typed_updates(backend, "odd", 2),
    }
    make_version_0(path, rooms)
    assert pragma(path, "journal_mode") == "delete"

    async with SQLiteStore(path) as store:
        assert await store.list_rooms() == sorted(rooms)
        for room, updates in rooms.items():
            stored = await store.load(room)
            assert stored.updates == updates
            assert stored.last_seq == len(updates)
            assert stored.size_bytes == sum(map(len, updates))
        assert text_of((await store.load("notes")).updates, backend) == (
            "written before the upgrade"
        )
        # Appends continue the old numbering.
        more = typed_updates(backend, "!", 3)
        assert await store.append("notes", more) == len(rooms["notes"]) + 1

    assert pragma(path, "user_version") == 1
    assert pragma(path, "journal_mode") == "wal"
    async with SQLiteStore(path) as store:  # opening an upgraded file changes nothing
        stored = await store.load("notes")
        assert stored.updates == rooms["notes"] + more
        assert text_of((await store.load("../odd name")).updates, backend) == "odd"


async def test_failed_upgrade_leaves_the_old_database_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    make_version_0(path, {"r": [b"one", b"two"]})
    real_migration = sqlite_module._MIGRATIONS[0]

    def crashing_migration(db: sqlite3.Connection) -> None:
        real_migration(db)  # every change made...
        raise sqlite3.OperationalError("disk I/O error")  # ...and then the upgrade fails

    monkeypatch.setitem(sqlite_module._MIGRATIONS, 0, crashing_migration)
    with pytest.raises(StoreError, match="disk I/O error"):
        async with SQLiteStore(path):
            pass
    assert pragma(path, "user_version") == 0
    db = sqlite3.connect(path)
    assert [row[1] for row in db.execute("PRAGMA table_info(updates)")] == ["room", "seq", "data"]
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'rooms'").fetchone() is None
    assert db.execute("SELECT data FROM updates ORDER BY seq").fetchall() == [(b"one",), (b"two",)]
    db.close()

    monkeypatch.undo()
    async with SQLiteStore(path) as store:
        assert (await store.load("r")).updates == [b"one", b"two"]


async def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with SQLiteStore(path) as store:
        await store.append("r", [b"x"])
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        async with SQLiteStore(path):
            pass
    assert pragma(path, "user_version") == 99


@pytest.mark.parametrize("kind", ["ypy-websocket", "other app", "not sqlite"])
async def test_foreign_files_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "foreign.db"
    if kind == "not sqlite":
        path.write_bytes(b"this is not a database" * 100)
    else:
        db = sqlite3.connect(path)
        if kind == "ypy-websocket":
            db.execute(
                "CREATE TABLE yupdates (path TEXT NOT NULL, yupdate BLOB, metadata BLOB,"
                " timestamp REAL NOT NULL)"
            )
            db.execute("PRAGMA user_version = 2")
        else:
            db.execute("CREATE TABLE updates (id INTEGER PRIMARY KEY, body TEXT)")
        db.commit()
        db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        async with SQLiteStore(path):
            pass
    if kind == "ypy-websocket":
        assert "import_ypy_websocket_sqlite" in str(info.value)
    assert path.read_bytes() == before


async def test_a_schema_created_by_another_process_while_checking_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Servers of a cluster open one file at once. Here another opens it (creating the schema)
    # right between this one's reading the application id and listing the tables.
    path = tmp_path / "shared.db"
    sqlite3.connect(path).execute("PRAGMA journal_mode = WAL").fetchone()
    list_tables = sqlite_module._tables
    other_opened = False

    def tables_after_another_open(db: sqlite3.Connection) -> set[str]:
        nonlocal other_opened
        if not other_opened:
            other_opened = True
            other = SQLiteStore(str(path))
            other._open_sync()
            other._close_sync()
        return list_tables(db)

    monkeypatch.setattr(sqlite_module, "_tables", tables_after_another_open)
    async with SQLiteStore(str(path)) as store:
        assert other_opened
        await store.append("r", [b"\x00\x00"])
        assert (await store.load("r")).updates == [b"\x00\x00"]


async def test_locked_database_raises_and_keeps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    async with SQLiteStore(path, timeout=0) as store:
        await store.append("r", [b"one"])
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(StoreError, match="locked") as info:
                await store.append("r", [b"two"])
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            with pytest.raises(StoreError, match="locked"):
                await store.compact("r", b"merged", 1)
            # Readers are not blocked in WAL mode.
            assert (await store.load("r")).updates == [b"one"]
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await store.append("r", [b"three"]) == 2
        assert (await store.load("r")).updates == [b"one", b"three"]


async def test_unopenable_path_raises(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        async with SQLiteStore(tmp_path / "missing" / "dir" / "rooms.db"):
            pass


@requires_enforced_permissions
async def test_read_only_database_raises(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    async with SQLiteStore(path) as store:
        await store.append("r", [b"one"])
    path.chmod(0o400)
    try:
        with pytest.raises(StoreError, match="readonly"):
            async with SQLiteStore(path) as store:
                await store.append("r", [b"two"])
    finally:
        for file in tmp_path.glob("rooms.db*"):  # SQLite gives -wal and -shm the same mode
            file.chmod(0o600)
    async with SQLiteStore(path) as store:
        assert (await store.load("r")).updates == [b"one"]


async def test_delete_and_compaction_return_space(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    big = os.urandom(200_000)
    async with SQLiteStore(path) as store:
        for i in range(10):
            await store.append("big", [big[i:]])
        full = path.stat().st_size + Path(f"{path}-wal").stat().st_size
        await store.compact("big", b"small", 10)
        await store.append("r", [b"x"])
        await store.delete("big")
    assert path.stat().st_size < full / 10  # the WAL was checkpointed into a smaller file


async def test_a_reader_does_not_create_a_missing_database(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(StoreError, match="no store at"):
        async with SQLiteStore(path, create=False):
            pass
    assert list(tmp_path.iterdir()) == []


async def test_open_errors_say_why(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"directory .*missing does not exist"):
        async with SQLiteStore(tmp_path / "missing" / "rooms.db"):
            pass
    (tmp_path / "junk.db").write_bytes(b"this is no database, " * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        async with SQLiteStore(tmp_path / "junk.db"):
            pass
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        async with SQLiteStore(tmp_path / "dir.db"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.db", "junk.db"]


async def test_operations_that_arrive_together_share_a_thread_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect storm loads thousands of rooms at once: one thread round trip each would
    dominate, so the ones waiting go together."""
    trips = 0
    run_sync = trio.to_thread.run_sync

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal trips
        trips += 1
        return await run_sync(*args, **kwargs)

    async with SQLiteStore(tmp_path / "rooms.db") as store:
        await store.append("r7", [b"\x00\x00"])
        monkeypatch.setattr(trio.to_thread, "run_sync", counted)
        loaded: dict[str, StoredRoom] = {}

        async def load(room: str) -> None:
            loaded[room] = await store.load(room)

        async with trio.open_nursery() as nursery:
            for index in range(200):
                nursery.start_soon(load, f"r{index}")
    assert len(loaded) == 200
    assert loaded["r7"].updates == [b"\x00\x00"]
    assert trips <= 3, trips
