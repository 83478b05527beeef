"""Operators' functions over any store, behind the ``trio-ysync store ...`` commands."""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from ..doc import Backend, new_document
from ..protocol import validate_update
from .base import Store
from .importers import import_ypy_websocket_sqlite
from .merge import merge_updates

__all__ = [
    "CompactionResult",
    "compact_all",
    "compact_room",
    "export_room",
    "import_room",
    "import_ypy_websocket",
]


@dataclass(frozen=True)
class CompactionResult:
    """What compacting one room did.

    Attributes:
        room: The room name.
        entries_before: How many log entries were replaced by one.
        size_before: Their total size in bytes.
        size_after: The size of the update that replaced them.
    """

    room: str
    entries_before: int
    size_before: int
    size_after: int


async def export_room(store: Store, room: str, *, backend: Backend | None = None) -> bytes:
    """The room's whole document as one Yjs v1 update (``Y.applyUpdate`` accepts it).

    Args:
        store: The store.
        room: The room name.
        backend: The document library used to merge the log.

    Returns:
        The update.

    Raises:
        LookupError: the store holds no such room.
        StoreError: the store could not be read.
        DocumentError: the stored log holds a malformed update.
    """
    stored = await store.load(room)
    if not stored.updates:
        raise LookupError(f"no room {room!r} in {store!r}")
    return await trio.to_thread.run_sync(merge_updates, stored.updates, backend)


def _check_update(update: bytes, backend: Backend | None) -> None:
    validate_update(update)
    new_document(backend).apply_update(update)


async def import_room(
    store: Store,
    room: str,
    update: bytes,
    *,
    replace: bool = False,
    backend: Backend | None = None,
) -> int:
    """Store ``update`` (for example one made by ``Y.encodeStateAsUpdate``) in a room.

    The update is first validated and applied to an empty document. By default it is appended,
    so it merges with what the room holds (Yjs updates combine). With ``replace=True`` it
    replaces the room's log instead, in one atomic compaction.

    Args:
        store: The store.
        room: The room name.
        update: A Yjs v1 update.
        replace: Replace the stored content instead of merging with it.
        backend: The document library used to check the update.

    Returns:
        The room's last sequence number.

    Raises:
        ProtocolError: the update is malformed (nothing is stored).
        DocumentError: the document library refused it (nothing is stored).
        StoreError: the update could not be stored.
    """
    update = bytes(update)
    await trio.to_thread.run_sync(_check_update, update, backend)
    if replace:
        stored = await store.load(room)
        if stored.last_seq:
            await store.compact(room, update, stored.last_seq)
            return stored.last_seq
    return await store.append(room, [update])


async def compact_room(
    store: Store, room: str, *, backend: Backend | None = None
) -> CompactionResult | None:
    """Replace the room's log by one merged update (:func:`merge_updates`).

    Entries appended while the merge runs stay after the merged one. This is safe while a server
    uses the store, as long as it appends through the same store object.

    Args:
        store: The store.
        room: The room name.
        backend: The document library used to merge.

    Returns:
        What was compacted, or ``None`` if the log had fewer than two entries.

    Raises:
        StoreError: the store could not be read or written.
        DocumentError: the log holds a malformed update (nothing is changed).
    """
    stored = await store.load(room)
    if len(stored.updates) < 2:
        return None
    merged = await trio.to_thread.run_sync(merge_updates, stored.updates, backend)
    await store.compact(room, merged, stored.last_seq)
    return CompactionResult(room, len(stored.updates), stored.size_bytes, len(merged))


async def compact_all(store: Store, *, backend: Backend | None = None) -> list[CompactionResult]:
    """Compact every room of the store, one after the other (see :func:`compact_room`).

    Args:
        store: The store.
        backend: The document library used to merge.

    Returns:
        One result per room that was compacted.

    Raises:
        StoreError: the store could not be read or written (earlier rooms stay compacted).
        DocumentError: a room's log holds a malformed update.
    """
    results = []
    for room in await store.list_rooms():
        result = await compact_room(store, room, backend=backend)
        if result is not None:
            results.append(result)
    return results


async def import_ypy_websocket(
    store: Store,
    path: str | os.PathLike[str],
    *,
    merge: bool = True,
    backend: Backend | None = None,
) -> list[str]:
    """Copy every document of a ypy-websocket / pycrdt ``SQLiteYStore`` database into rooms.

    Each document becomes the room of the same name (its content is merged with the room's, if
    the room exists). See :func:`~trio_ysync.store.import_ypy_websocket_sqlite`.

    Args:
        store: The destination store.
        path: The peer's database file.
        merge: Store each document as one merged update rather than its whole history.
        backend: The document library used to check and merge.

    Returns:
        The names of the rooms written.

    Raises:
        ValueError: the file is not such a database.
        ProtocolError: a document holds a malformed update (earlier rooms stay imported).
        DocumentError: the document library refused one (earlier rooms stay imported).
        StoreError: a room could not be written.
    """
    documents = await trio.to_thread.run_sync(import_ypy_websocket_sqlite, path)
    rooms = []
    for room, updates in sorted(documents.items()):
        # Merging also checks every update; without it, check them before storing any.
        merged = await trio.to_thread.run_sync(merge_updates, updates, backend)
        await store.append(room, [merged] if merge else updates)
        rooms.append(room)
    return rooms
