"""A store with one append-only file per room, in one directory.

File format (all integers little-endian)::

    header:  magic "YSYNCLOG" | u16 format version (1) | u16 flags (0) | u64 first_seq
             | u32 name length | room name (UTF-8) | u32 CRC-32 of the header before it
    records: u32 payload length | u32 CRC-32 of (length field + payload) | payload
    payload: u32 n | n x (u32 length | update)

One record holds one appended batch, so a batch is stored whole or not at all. Entry ``i`` of the
file has sequence number ``first_seq + i``. A file is created complete (header and first record)
under a temporary name and renamed into place, and compaction rewrites it the same way, so a
header is never torn; only the last record can be, and loading cuts it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from .base import (
    StoredRoom,
    StoreError,
    ThreadedStore,
    check_room,
    check_updates,
    compaction_count,
    path_problem,
)

__all__ = ["FORMAT_VERSION", "MAGIC", "SUFFIX", "FileStore", "room_filename"]

_log = logging.getLogger(__name__)

MAGIC = b"YSYNCLOG"
FORMAT_VERSION = 1
#: The suffix of room files; anything else in the directory is ignored.
SUFFIX = ".yroom"
_LOCK_NAME = "trio-ysync.lock"
_TMP = ".tmp"
_TORN = ".torn"

_HEADER = struct.Struct("<8sHHQI")  # magic, version, flags, first_seq, name length
_U32 = struct.Struct("<I")
_RECORD = struct.Struct("<II")  # payload length, CRC-32
_MAX_U32 = 0xFFFFFFFF

_SLUG_MAX = 40
_DIGEST_CHARS = 32  # 128 bits of SHA-256
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NOT_SLUG = re.compile("[^a-z0-9]+")

_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)


def room_filename(room: str) -> str:
    """The file name of ``room``'s log: a readable slug, then a hash of the exact name.

    The result matches ``[a-z0-9-]{0,40}_[0-9a-f]{32}\\.yroom``: no path separators, no dots
    but the suffix's, no reserved device names, at most 87 characters, and distinct even on
    case-insensitive file systems. The slug only aids humans (it keeps ASCII letters and
    digits); the name is identified by 128 bits of its SHA-256, and the file's header holds the
    exact name, which loading checks.

    Raises:
        TypeError: ``room`` is not a string.
        ValueError: ``room`` is not valid Unicode.
    """
    check_room(room)
    digest = hashlib.sha256(room.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    # Lower-case ASCII only: the mapping must not depend on the Unicode database version.
    slug = _NOT_SLUG.sub("-", room.translate(_ASCII_LOWER)).strip("-")[:_SLUG_MAX].rstrip("-")
    return f"{slug}_{digest}{SUFFIX}"


class _CorruptError(Exception):
    pass


def _encode_header(room: str, first_seq: int) -> bytes:
    name = room.encode("utf-8")
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, first_seq, len(name)) + name
    return head + _U32.pack(zlib.crc32(head))


def _header_length(data: bytes) -> int:
    """The header's length, from its fixed part (at least ``_HEADER.size`` bytes)."""
    magic, version, _flags, _first_seq, name_length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _CorruptError("not a trio-ysync room file (bad magic)")
    if version != FORMAT_VERSION:
        raise _CorruptError(f"unsupported file format version {version}")
    return _HEADER.size + int(name_length) + _U32.size


def _decode_header(data: bytes) -> tuple[str, int, int]:
    """The room name, first sequence number and header length."""
    if len(data) < _HEADER.size:
        raise _CorruptError("truncated header")
    end = _header_length(data)
    if len(data) < end:
        raise _CorruptError("truncated header")
    (crc,) = _U32.unpack_from(data, end - _U32.size)
    if zlib.crc32(data[: end - _U32.size]) != crc:
        raise _CorruptError("header checksum mismatch")
    first_seq = int(_HEADER.unpack_from(data)[3])
    try:
        name = data[_HEADER.size : end - _U32.size].decode("utf-8")
    except UnicodeDecodeError:
        raise _CorruptError("room name is not UTF-8") from None
    return name, first_seq, end


def _encode_record(updates: Sequence[bytes]) -> bytes:
    parts = [_U32.pack(len(updates))]
    for update in updates:
        parts += (_U32.pack(len(update)), update)
    payload = b"".join(parts)
    if len(payload) > _MAX_U32:
        raise ValueError("a batch of updates must stay below 4 GiB")
    length = _U32.pack(len(payload))
    return length + _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


def _decode_batch(payload: memoryview) -> list[bytes] | None:
    if len(payload) < _U32.size:
        return None
    (count,) = _U32.unpack_from(payload)
    pos = _U32.size
    updates = []
    for _ in range(count):
        if len(payload) - pos < _U32.size:
            return None
        (length,) = _U32.unpack_from(payload, pos)
        pos += _U32.size
        if len(payload) - pos < length:
            return None
        updates.append(bytes(payload[pos : pos + length]))
        pos += length
    if count == 0 or pos != len(payload):
        return None
    return updates


def _decode_records(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """The entries of the valid records from ``pos``, and where the valid part ends."""
    view = memoryview(data)
    entries: list[bytes] = []
    while len(data) - pos >= _RECORD.size:
        length, crc = _RECORD.unpack_from(data, pos)
        start = pos + _RECORD.size
        end = start + length
        if end > len(data):
            break
        if zlib.crc32(view[start:end], zlib.crc32(view[pos : pos + _U32.size])) != crc:
            break
        batch = _decode_batch(view[start:end])
        if batch is None:
            break
        entries += batch
        pos = end
    return entries, pos


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_fd(fd: int) -> None:
    if sys.platform == "darwin":  # fsync does not flush the drive's cache on macOS
        import fcntl

        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


def _sync_directory(directory: str) -> None:
    """Make renames and unlinks in ``directory`` durable (not possible, nor needed, on Windows)."""
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _RoomState:
    """What the store knows about a room's file, kept once the file has been checked."""

    first_seq: int
    count: int
    size_bytes: int
    end: int  # the file length

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


class FileStore(ThreadedStore):
    """A :class:`~trio_ysync.store.Store` with one append-only file per room.

    Each append writes one checksummed record with a single ``write`` (and ``fsync`` with
    ``fsync=True``), so a committed append survives the process being killed, and with
    ``fsync=True`` also power loss. When a room is first loaded or appended to, a torn tail (a
    partial record, or one whose checksum fails, left by a crash during a write) is cut off
    (truncated); the bytes cut are kept in a ``.torn`` file next to the log for inspection.
    Compaction writes a new file and renames it over the old one.

    File names come from :func:`room_filename`, so any room name is safe. One process at a time
    may use a directory: the store holds an advisory lock file in it (on POSIX systems).

    Args:
        directory: The directory of the room files. If missing, it is created (but not its
            parent: a mistyped path fails instead of growing a tree of directories).
        fsync: Make every commit durable against power loss.
        create: Create the directory if it does not exist; with ``False`` a missing directory
            is a :class:`~trio_ysync.store.StoreError` (for tools that only read a store).
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, fsync: bool = False, create: bool = True
    ) -> None:
        super().__init__()
        self.directory = os.fspath(directory)
        self.fsync = fsync
        self.create = create
        self._states: dict[str, _RoomState] = {}
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"FileStore({self.directory!r})"

    # -- opening and closing ------------------------------------------------------------------

    def _open_sync(self) -> None:
        if not os.path.isdir(self.directory):
            if not self.create:
                raise StoreError(f"no store at {self.directory}: the directory does not exist")
            try:
                os.mkdir(self.directory)
            except OSError as exc:
                problem = path_problem(self.directory, directory=True) or exc.strerror or exc
                raise StoreError(f"cannot create {self.directory}: {problem}") from exc
        try:
            self._lock_directory()
        except OSError as exc:
            problem = path_problem(self.directory, directory=True) or exc.strerror or exc
            raise StoreError(f"cannot open {self.directory}: {problem}") from exc
        for entry in os.scandir(self.directory):
            # Left by a crash while a file was being created or compacted; never renamed.
            if entry.name.endswith(SUFFIX + _TMP):
                os.unlink(entry.path)

    def _lock_directory(self) -> None:
        if sys.platform == "win32":
            return
        import fcntl

        fd = os.open(
            os.path.join(self.directory, _LOCK_NAME), os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self!r}: the directory is in use by another store") from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _close_sync(self) -> None:
        self._states.clear()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the lock

    # -- files ----------------------------------------------------------------------------------

    def _path(self, room: str) -> str:
        return os.path.join(self.directory, room_filename(room))

    def _scan(self, room: str) -> tuple[_RoomState, list[bytes]] | None:
        """Read and check the room's file, cut a torn tail, and remember its state."""
        path = self._path(room)
        self._states.pop(room, None)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        try:
            name, first_seq, header_end = _decode_header(data)
        except _CorruptError as exc:
            raise StoreError(f"{self!r}: {path}: {exc}") from None
        if name != room:
            raise StoreError(f"{self!r}: {path} holds room {name!r}, not {room!r}")
        entries, end = _decode_records(data, header_end)
        if end < len(data):
            self._cut_tail(path, data, end)
        state = _RoomState(first_seq, len(entries), sum(map(len, entries)), end)
        self._states[room] = state
        return state, entries

    def _cut_tail(self, path: str, data: bytes, end: int) -> None:
        _log.warning(
            "%s: cutting off a torn tail of %d bytes at offset %d (kept in %s)",
            path,
            len(data) - end,
            end,
            path + _TORN,
        )
        with open(path + _TORN, "ab") as torn:
            torn.write(data[end:])
            if self.fsync:
                torn.flush()
                _sync_fd(torn.fileno())
        with open(path, "r+b") as file:
            file.truncate(end)
            if self.fsync:
                _sync_fd(file.fileno())

    def _state(self, room: str) -> _RoomState | None:
        state = self._states.get(room)
        if state is None:
            scanned = self._scan(room)
            state = None if scanned is None else scanned[0]
        return state

    def _write_new(self, path: str, content: bytes) -> None:
        """Put a complete file at ``path`` atomically (a temporary file, then a rename)."""
        tmp = path + _TMP
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_BINARY | _O_CLOEXEC, 0o644)
            try:
                _write_all(fd, content)
                if self.fsync:
                    _sync_fd(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if self.fsync:
            _sync_directory(self.directory)

    def _append_record(self, room: str, state: _RoomState, record: bytes) -> None:
        path = self._path(room)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | _O_BINARY | _O_CLOEXEC)
        try:
            try:
                _write_all(fd, record)
                if self.fsync:
                    _sync_fd(fd)
            except BaseException:
                # Not committed: take back whatever part was written, and check the file again
                # before the next operation uses it.
                self._states.pop(room, None)
                try:
                    os.ftruncate(fd, state.end)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
        state.end += len(record)

    # -- operations -----------------------------------------------------------------------------

    async def load(self, room: str) -> StoredRoom:
        check_room(room)

        def load() -> StoredRoom:
            scanned = self._scan(room)
            if scanned is None:
                return StoredRoom()
            state, entries = scanned
            return StoredRoom(entries, state.last_seq, state.size_bytes)

        return await self._run("load", load)

    async def append(self, room: str, updates: Sequence[bytes]) -> int:
        check_room(room)
        batch = check_updates(updates)

        def append() -> int:
            state = self._state(room)
            if not batch:
                return 0 if state is None else state.last_seq
            record = _encode_record(batch)
            size = sum(map(len, batch))
            if state is None:
                content = _encode_header(room, 1) + record
                self._write_new(self._path(room), content)
                state = self._states[room] = _RoomState(1, len(batch), size, len(content))
            else:
                self._append_record(room, state, record)
                state.count += len(batch)
                state.size_bytes += size
            return state.last_seq

        return await self._run("append", append)

    async def compact(self, room: str, update: bytes, through_seq: int) -> None:
        check_room(room)
        (update,) = check_updates([update])

        def compact() -> None:
            scanned = self._scan(room)
            if scanned is None:
                compaction_count(1, 0, through_seq)  # raises unless through_seq is 0
                return
            state, entries = scanned
            count = compaction_count(state.first_seq, state.last_seq, through_seq)
            if not count:
                return
            rest = entries[count:]
            content = _encode_header(room, through_seq) + _encode_record([update])
            if rest:
                content += _encode_record(rest)
            del self._states[room]
            self._write_new(self._path(room), content)
            self._states[room] = _RoomState(
                through_seq, 1 + len(rest), len(update) + sum(map(len, rest)), len(content)
            )

        await self._run("compact", compact)

    async def delete(self, room: str) -> None:
        check_room(room)

        def delete() -> None:
            self._states.pop(room, None)
            path = self._path(room)
            for name in (path, path + _TORN):
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
            if self.fsync:
                _sync_directory(self.directory)

        await self._run("delete", delete)

    async def list_rooms(self) -> list[str]:
        def list_rooms() -> list[str]:
            names = []
            for entry in os.scandir(self.directory):
                if not entry.name.endswith(SUFFIX) or not entry.is_file():
                    continue
                try:
                    with open(entry.path, "rb") as file:
                        head = file.read(_HEADER.size)
                        if len(head) == _HEADER.size:
                            head += file.read(_header_length(head) - _HEADER.size)
                    name = _decode_header(head)[0]
                except _CorruptError as exc:
                    _log.warning("%s: skipped, not a readable room file: %s", entry.path, exc)
                    continue
                if room_filename(name) != entry.name:
                    _log.warning(
                        "%s: skipped, it holds room %r under another name", entry.path, name
                    )
                    continue
                names.append(name)
            return sorted(names)

        return await self._run("list_rooms", list_rooms)
