"""The default store: every room in one SQLite database file, in WAL mode.

Layout (schema version 1, kept in ``PRAGMA user_version``; ``PRAGMA application_id`` marks the
file as ours)::

    rooms(name TEXT PRIMARY KEY, last_seq INTEGER)
    updates(room TEXT, seq INTEGER, data BLOB, size INTEGER, PRIMARY KEY (room, seq))

Older layouts are upgraded in place, inside the same transaction that checks the version, so an
upgrade either completes or leaves the file as it was. Version 0, the layout before the version
mark existed, had only ``updates(room, seq, data)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

from .base import (
    StoredRoom,
    StoreError,
    ThreadedStore,
    check_room,
    check_updates,
    compaction_count,
    path_problem,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStore"]

_log = logging.getLogger(__name__)

#: ``PRAGMA application_id`` of trio-ysync databases ("ysyn").
APPLICATION_ID = 0x7973796E

#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1

_SCHEMA_V1 = (
    "CREATE TABLE rooms (name TEXT NOT NULL PRIMARY KEY, last_seq INTEGER NOT NULL)",
    "CREATE TABLE updates ("
    " room TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, size INTEGER NOT NULL,"
    " PRIMARY KEY (room, seq))",
)


def _tables(db: sqlite3.Connection) -> set[str]:
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {str(row[0]) for row in rows}


def _is_version_0(db: sqlite3.Connection, tables: set[str]) -> bool:
    if tables != {"updates"}:
        return False
    columns = [str(row[1]) for row in db.execute("PRAGMA table_info(updates)").fetchall()]
    return columns == ["room", "seq", "data"]


def _create_schema(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1:
        db.execute(statement)


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    """Version 0 had ``updates(room, seq, data)`` and derived everything else from it."""
    db.execute("ALTER TABLE updates ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE updates SET size = length(data)")
    db.execute(_SCHEMA_V1[0])
    db.execute(
        "INSERT INTO rooms (name, last_seq) SELECT room, MAX(seq) FROM updates GROUP BY room"
    )


#: ``_MIGRATIONS[v]`` upgrades a database from version ``v`` to ``v + 1``.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _migrate_0_to_1}


@contextmanager
def _transaction(db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    db.execute(begin)
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    try:
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class SQLiteStore(ThreadedStore):
    """A :class:`~trio_ysync.store.Store` in one SQLite database file.

    The database runs in WAL mode. With ``fsync=False`` it uses ``synchronous=NORMAL``: a
    committed append survives the process being killed, but the last commits may be lost on
    power failure. ``fsync=True`` uses ``synchronous=FULL``: commits also survive power loss.

    The file is opened (created, or upgraded from an older schema) by ``async with`` or on first
    use; all database work runs in a worker thread, one operation at a time.

    Args:
        path: The database file.
        fsync: Make every commit durable against power loss.
        timeout: How many seconds to wait for another process's lock before failing.
        create: Create the file if it does not exist; with ``False`` a missing file is a
            :class:`~trio_ysync.store.StoreError` (for tools that only read a store).
    """

    _wrapped_errors: ClassVar[tuple[type[Exception], ...]] = (OSError, sqlite3.Error)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        timeout: float = 5.0,
        create: bool = True,
    ) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.fsync = fsync
        self.create = create
        self._timeout = timeout
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def shared_identity(self) -> str:
        """``sqlite:``, the host name and the file's absolute path (symbolic links resolved):
        processes on one host share the file, SQLite's locks keep their commits apart."""
        return f"sqlite:{socket.gethostname()}:{os.path.realpath(self.path)}"

    # -- opening and closing ------------------------------------------------------------------

    def _open_sync(self) -> None:
        existed = self.path == ":memory:" or os.path.exists(self.path)
        if not existed and not self.create:
            raise StoreError(f"no store at {self.path}: the file does not exist")
        try:
            self._db = self._connect()
        except BaseException as exc:
            if not existed:  # leave nothing behind from a failed start
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(OSError):
                        os.unlink(self.path + suffix)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open {self.path}: {self._open_problem(exc)}") from exc
            raise

    def _open_problem(self, exc: sqlite3.Error) -> str:
        """Why the database could not be opened: SQLite's messages do not say."""
        if type(exc) is sqlite3.DatabaseError and "not a database" in str(exc):
            return "not an SQLite database (a damaged file, or another kind of file)"
        return path_problem(self.path, directory=False) or str(exc)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            # Refuse a foreign or newer file before changing anything in it (even its mode).
            # One read transaction: another process may create the schema meanwhile, and its
            # tables must not be seen without the application id it writes with them.
            with _transaction(db, "BEGIN"):
                self._schema_version(db)
            # Only effective before the first table exists: lets deletes return space to the OS.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode != "wal" and self.path != ":memory:":
                raise StoreError(f"{self!r}: cannot switch to WAL mode (journal_mode={mode})")
            db.execute(f"PRAGMA synchronous = {'FULL' if self.fsync else 'NORMAL'}")
            self._upgrade(db)
        except BaseException:
            db.close()
            raise
        return db

    def _schema_version(self, db: sqlite3.Connection) -> int | None:
        """The schema version of the file (``None`` for an empty one).

        Raises:
            StoreError: the file belongs to another application, or to a newer trio-ysync.
        """
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        tables = _tables(db)
        if app_id != APPLICATION_ID:
            if not tables:
                return None
            if not (app_id == 0 and version == 0 and _is_version_0(db, tables)):
                if "yupdates" in tables:
                    raise StoreError(
                        f"{self.path} is a ypy-websocket / pycrdt-websocket database, not a "
                        f"trio-ysync store: copy its rooms into one with `trio-ysync store "
                        f"import-ypy {self.path} --store NEW.db` (or import_ypy_websocket_sqlite)"
                    )
                raise StoreError(f"{self.path} is not a trio-ysync database")
            # Version 0 was written before the application id and the version were.
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this trio-ysync "
                f"understands ({SCHEMA_VERSION}); upgrade trio-ysync"
            )
        return version

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Create the schema or bring it up to :data:`SCHEMA_VERSION`, in one transaction."""
        with _transaction(db):
            version = self._schema_version(db)  # again: another process may have upgraded it
            if version is None:
                _create_schema(db)
                version = SCHEMA_VERSION
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](db)
                version += 1
            # Both pragmas live in the database header and are part of the transaction.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "the store is open while an operation runs"
        return self._db

    def _last_seq(self, room: str) -> int:
        row = self._conn.execute("SELECT last_seq FROM rooms WHERE name = ?", (room,)).fetchone()
        return 0 if row is None else int(row[0])

    def _reclaim_space(self) -> None:
        """Return free pages to the file system; the commit before it stands either way."""
        try:
            # Each step of incremental_vacuum frees one page, and execute() takes one step;
            # executescript() runs statements to completion.
            self._conn.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as exc:
            _log.warning("%r: could not reclaim free pages: %s", self, exc)

    # -- operations -----------------------------------------------------------------------------

    async def load(self, room: str) -> StoredRoom:
        check_room(room)

        def load() -> StoredRoom:
            db = self._conn
            with _transaction(db, "BEGIN"):
                last_seq = self._last_seq(room)
                rows = db.execute(
                    "SELECT seq, data FROM updates WHERE room = ? ORDER BY seq", (room,)
                ).fetchall()
            updates = [bytes(data) for _, data in rows]
            first_seq = last_seq - len(rows) + 1
            if [seq for seq, _ in rows] != list(range(first_seq, last_seq + 1)):
                raise StoreError(f"{self!r}: the log of room {room!r} is inconsistent")
            return StoredRoom(updates, last_seq, sum(map(len, updates)))

        return await self._run("load", load)

    async def append(self, room: str, updates: Sequence[bytes]) -> int:
        check_room(room)
        batch = check_updates(updates)

        def append() -> int:
            db = self._conn
            if not batch:
                return self._last_seq(room)
            with _transaction(db):
                first = self._last_seq(room) + 1
                db.executemany(
                    "INSERT INTO updates (room, seq, data, size) VALUES (?, ?, ?, ?)",
                    [(room, first + i, update, len(update)) for i, update in enumerate(batch)],
                )
                last_seq = first + len(batch) - 1
                db.execute(
                    "INSERT INTO rooms (name, last_seq) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq",
                    (room, last_seq),
                )
            return last_seq

        return await self._run("append", append)

    async def compact(self, room: str, update: bytes, through_seq: int) -> None:
        check_room(room)
        (update,) = check_updates([update])

        def compact() -> None:
            db = self._conn
            with _transaction(db):
                last_seq = self._last_seq(room)
                row = db.execute("SELECT MIN(seq) FROM updates WHERE room = ?", (room,)).fetchone()
                first_seq = last_seq + 1 if row[0] is None else int(row[0])
                if not compaction_count(first_seq, last_seq, through_seq):
                    return
                db.execute("DELETE FROM updates WHERE room = ? AND seq <= ?", (room, through_seq))
                db.execute(
                    "INSERT INTO updates (room, seq, data, size) VALUES (?, ?, ?, ?)",
                    (room, through_seq, update, len(update)),
                )
            self._reclaim_space()

        await self._run("compact", compact)

    async def delete(self, room: str) -> None:
        check_room(room)

        def delete() -> None:
            db = self._conn
            with _transaction(db):
                db.execute("DELETE FROM updates WHERE room = ?", (room,))
                db.execute("DELETE FROM rooms WHERE name = ?", (room,))
            self._reclaim_space()

        await self._run("delete", delete)

    async def list_rooms(self) -> list[str]:
        def list_rooms() -> list[str]:
            rows = self._conn.execute("SELECT name FROM rooms").fetchall()
            return sorted(str(row[0]) for row in rows)

        return await self._run("list_rooms", list_rooms)
