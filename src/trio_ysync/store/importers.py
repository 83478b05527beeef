"""Read the stores of the Python peers (ypy-websocket, pycrdt-websocket, pycrdt-store).

Their formats, as their sources define them (all three share them; store version 2):

* ``SQLiteYStore``: one SQLite file, ``PRAGMA user_version = 2``, a table
  ``yupdates(path TEXT NOT NULL, yupdate BLOB, metadata BLOB, timestamp REAL NOT NULL)`` indexed
  on ``(path, timestamp)``, where ``path`` is the document (room) name. Readers order a
  document's rows by ``timestamp``. ypy-websocket 0.12 adds ``documents(path, version)``;
  pycrdt-store adds ``ycheckpoints(path PRIMARY KEY, checkpoint BLOB, timestamp REAL)``, a full
  document state as of ``timestamp``, and can compress ``yupdate`` and ``checkpoint`` with
  user-supplied callbacks.
* ``FileYStore``: one file per document, ``VERSION:2\\n`` and then, per update, three lib0
  ``varUint8Array`` values: the update, the metadata and the timestamp (a little-endian float64).

These functions are blocking; run them in a worker thread from trio code.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..protocol.lib0 import Decoder, ProtocolError

__all__ = ["import_ypy_websocket_file", "import_ypy_websocket_sqlite"]


def _identity(data: bytes) -> bytes:
    return data


def import_ypy_websocket_sqlite(
    path: str | os.PathLike[str], *, decompress: Callable[[bytes], bytes] | None = None
) -> dict[str, list[bytes]]:
    """The updates of every document in a ``SQLiteYStore`` database, by document name.

    Reads the databases of ypy-websocket, pycrdt-websocket and pycrdt-store (opened read-only).
    A document's list starts with its pycrdt-store checkpoint, if it has one, followed by its
    updates in timestamp order (applying both is harmless: updates are idempotent). Rows without
    an update are skipped.

    Args:
        path: The database file.
        decompress: The decompression callback, if pycrdt-store was set up with compression.

    Returns:
        A mapping of document (room) name to its updates, in order.

    Raises:
        ValueError: the file is not such a database.
        sqlite3.Error: the file cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such database file")
    unpack = decompress or _identity
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = {
            str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "yupdates" not in tables:
            raise ValueError(f"{path}: not a ypy-websocket/pycrdt store (no yupdates table)")
        columns = {str(row[1]) for row in db.execute("PRAGMA table_info(yupdates)")}
        if not {"path", "yupdate", "timestamp"} <= columns:
            raise ValueError(f"{path}: unexpected yupdates columns {sorted(columns)}")
        rooms: dict[str, list[bytes]] = {}
        if "ycheckpoints" in tables:
            for name, checkpoint in db.execute("SELECT path, checkpoint FROM ycheckpoints"):
                if checkpoint is not None:
                    rooms.setdefault(str(name), []).append(unpack(bytes(checkpoint)))
        rows = db.execute(
            "SELECT path, yupdate FROM yupdates WHERE yupdate IS NOT NULL"
            " ORDER BY path, timestamp, rowid"
        )
        for name, update in rows:
            rooms.setdefault(str(name), []).append(unpack(bytes(update)))
        return rooms
    finally:
        db.close()


def import_ypy_websocket_file(path: str | os.PathLike[str]) -> list[bytes]:
    """The updates of one ``FileYStore`` file (one document), in order.

    A last entry cut short (those stores write an entry in three writes, without checksums) is
    ignored.

    Args:
        path: The document's file.

    Returns:
        The updates, in order.

    Raises:
        ValueError: the file does not start with a ``VERSION:`` line.
        OSError: the file cannot be read.
    """
    data = Path(path).read_bytes()
    if not data.startswith(b"VERSION:") or b"\n" not in data:
        raise ValueError(f"{path}: not a ypy-websocket/pycrdt FileYStore file")
    decoder = Decoder(data[data.index(b"\n") + 1 :])
    updates = []
    while not decoder.at_end():
        try:
            update = decoder.read_var_uint8_array()
            decoder.read_var_uint8_array()  # metadata
            decoder.read_var_uint8_array()  # timestamp
        except ProtocolError:
            break
        updates.append(update)
    return updates
