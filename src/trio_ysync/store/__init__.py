"""Durable storage of rooms: an append-only log of Yjs updates per room, with compaction.

Open a store with :func:`open_store` (SQLite is the default for a server), use it as an async
context manager, and see :class:`Store` for the contract every store follows.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .base import Store, StoredRoom, StoreError
from .files import FileStore, room_filename
from .importers import import_ypy_websocket_file, import_ypy_websocket_sqlite
from .memory import MemoryStore
from .merge import merge_updates
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "FileStore",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoredRoom",
    "import_ypy_websocket_file",
    "import_ypy_websocket_sqlite",
    "merge_updates",
    "open_store",
    "room_filename",
]


def __getattr__(name: str) -> Any:
    # RedisStore imports coredis, an optional dependency: only when it is asked for.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(
    spec: str | os.PathLike[str],
    *,
    fsync: bool = False,
    create: bool = True,
    redis_prefix: str | None = None,
) -> Store:
    """The store that ``spec`` names; it opens its files on ``async with`` or first use.

    * ``"memory"``: a :class:`MemoryStore`.
    * a ``redis://``, ``rediss://`` or ``unix://`` URL: a
      :class:`~trio_ysync.store.redis.RedisStore` (needs coredis:
      ``pip install 'trio-ysync[redis]'``; open it with ``async with``).
    * a path ending in ``.db``, ``.sqlite`` or ``.sqlite3``: a :class:`SQLiteStore`.
    * an existing directory, or a path ending in ``/``: a :class:`FileStore` (write
      ``./memory/`` for a directory named ``memory``).

    Args:
        spec: What to open.
        fsync: Make every commit durable against power loss, not only against the process being
            killed (ignored for memory; for Redis, its own ``appendfsync`` setting decides).
        create: Create the file or directory if it does not exist. Tools that only read a
            store pass ``False``, so a mistyped path is an error rather than a new empty store.
        redis_prefix: The start of the Redis key names (Redis only; default ``trio-ysync:``).

    Raises:
        ValueError: ``spec`` names none of these.
    """
    text = os.fspath(spec)
    if text.startswith(_REDIS_SCHEMES):
        from .redis import RedisStore

        if redis_prefix is None:
            return RedisStore(text)
        return RedisStore(text, prefix=redis_prefix)
    if redis_prefix is not None:
        raise ValueError("redis_prefix is for Redis stores only")
    if text == "memory":
        return MemoryStore()
    if text.lower().endswith(_SQLITE_SUFFIXES):
        return SQLiteStore(text, fsync=fsync, create=create)
    if text.endswith(("/", os.sep)) or os.path.isdir(text):
        return FileStore(text, fsync=fsync, create=create)
    raise ValueError(
        f"cannot tell which store {text!r} means: use 'memory', a path ending in "
        f"{', '.join(_SQLITE_SUFFIXES)} (SQLite), a directory ending in '/' (files) or a "
        "redis:// URL"
    )
