"""Importers of the Python peers' stores, checked against databases built by hand."""

from __future__ import annotations

import sqlite3
import struct
import zlib
from pathlib import Path

import pytest
from ydocs import insert_text

from trio_ysync.doc import Backend, new_document
from trio_ysync.protocol import ProtocolError
from trio_ysync.protocol.lib0 import Encoder
from trio_ysync.store import (
    SQLiteStore,
    import_ypy_websocket_file,
    import_ypy_websocket_sqlite,
)
from trio_ysync.store.admin import import_ypy_websocket


def text_of(updates: list[bytes], backend: Backend | None = None) -> str:
    doc = new_document(backend)
    for update in updates:
        doc.apply_update(update)
    return doc.get_text("t")


def typed_updates(text: str, client_id: int) -> list[bytes]:
    doc = new_document("pycrdt", client_id)
    updates: list[bytes] = []
    doc.observe(lambda update, origin: updates.append(update))
    for i, char in enumerate(text):
        insert_text(doc, i, char)
    return updates


def make_ystore_db(
    path: Path, rows: list[tuple[str, bytes | None, float]], *, flavour: str = "ypy-websocket"
) -> None:
    """A SQLiteYStore database as ypy-websocket / pycrdt-websocket / pycrdt-store create it."""
    db = sqlite3.connect(path)
    if flavour == "ypy-websocket":  # 0.12 also keeps a documents table
        db.execute("CREATE TABLE documents (path TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    db.execute(
        "CREATE TABLE yupdates (path TEXT NOT NULL, yupdate BLOB, metadata BLOB,"
        " timestamp REAL NOT NULL)"
    )
    db.execute("CREATE INDEX idx_yupdates_path_timestamp ON yupdates (path, timestamp)")
    if flavour == "pycrdt-store":
        db.execute(
            "CREATE TABLE ycheckpoints (path TEXT NOT NULL, checkpoint BLOB NOT NULL,"
            " timestamp REAL NOT NULL, PRIMARY KEY(path))"
        )
    db.execute("PRAGMA user_version = 2")
    db.executemany("INSERT INTO yupdates VALUES (?, ?, ?, ?)", [(p, u, b"", t) for p, u, t in rows])
    db.commit()
    db.close()


@pytest.mark.parametrize("flavour", ["ypy-websocket", "pycrdt-websocket"])
def test_import_sqlite_ystore(tmp_path: Path, flavour: str) -> None:
    notes = typed_updates("notes", 1)
    draft = typed_updates("draft", 2)
    # Inserted out of order: readers order a document's rows by timestamp.
    rows = [("room/notes", u, 100.0 + i) for i, u in reversed(list(enumerate(notes)))]
    rows += [("draft", u, 50.0 + i) for i, u in enumerate(draft)]
    rows.append(("draft", None, 10.0))  # a row without an update is skipped
    path = tmp_path / "ystore.db"
    make_ystore_db(path, rows, flavour=flavour)

    documents = import_ypy_websocket_sqlite(path)
    assert documents == {"room/notes": notes, "draft": draft}
    assert text_of(documents["room/notes"]) == "notes"


def test_import_pycrdt_store_with_checkpoint_and_compression(tmp_path: Path) -> None:
    updates = typed_updates("checkpointed and more", 3)
    checkpoint = new_document("pycrdt")
    for update in updates[:12]:
        checkpoint.apply_update(update)
    path = tmp_path / "ystore.db"
    rows = [("doc", zlib.compress(u), float(i)) for i, u in enumerate(updates)]
    make_ystore_db(path, rows, flavour="pycrdt-store")
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO ycheckpoints VALUES (?, ?, ?)", ("doc", zlib.compress(checkpoint.diff()), 11.5)
    )
    db.commit()
    db.close()

    documents = import_ypy_websocket_sqlite(path, decompress=zlib.decompress)
    assert documents["doc"][0] == checkpoint.diff()
    assert documents["doc"][1:] == updates
    assert text_of(documents["doc"]) == "checkpointed and more"


def test_import_refuses_other_databases(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(ValueError, match="yupdates"):
        import_ypy_websocket_sqlite(path)
    with pytest.raises(ValueError, match="no such"):
        import_ypy_websocket_sqlite(tmp_path / "missing.db")


def test_import_file_ystore(tmp_path: Path) -> None:
    updates = typed_updates("file store", 4)
    encoder = Encoder()
    for i, update in enumerate(updates):
        encoder.write_var_uint8_array(update)
        encoder.write_var_uint8_array(b"metadata")
        encoder.write_var_uint8_array(struct.pack("<d", 1000.0 + i))
    data = b"VERSION:2\n" + encoder.to_bytes()
    path = tmp_path / "doc.y"
    path.write_bytes(data)
    assert import_ypy_websocket_file(path) == updates
    # Those stores write an entry in three writes: a crash can leave one cut short.
    path.write_bytes(data + b"\x20partial")
    assert import_ypy_websocket_file(path) == updates
    path.write_bytes(b"not a ystore")
    with pytest.raises(ValueError, match="FileYStore"):
        import_ypy_websocket_file(path)


async def test_import_into_a_store(tmp_path: Path, backend: Backend) -> None:
    notes = typed_updates("imported notes", 5)
    path = tmp_path / "ystore.db"
    make_ystore_db(path, [("notes", u, float(i)) for i, u in enumerate(notes)])
    async with SQLiteStore(tmp_path / "rooms.db") as store:
        assert await import_ypy_websocket(store, path, backend=backend) == ["notes"]
        stored = await store.load("notes")
        assert len(stored.updates) == 1
        assert text_of(stored.updates, backend) == "imported notes"
        assert await import_ypy_websocket(store, path, merge=False, backend=backend) == ["notes"]
        stored = await store.load("notes")
        assert stored.updates[1:] == notes
        assert text_of(stored.updates, backend) == "imported notes"


async def test_import_of_a_malformed_update_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ystore.db"
    make_ystore_db(path, [("bad", b"\xff\xff\xff", 1.0)])
    async with SQLiteStore(tmp_path / "rooms.db") as store:
        with pytest.raises(ProtocolError):
            await import_ypy_websocket(store, path)
        assert await store.list_rooms() == []
