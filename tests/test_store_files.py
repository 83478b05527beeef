"""FileStore: the file format, torn tails, room-name mapping, write errors."""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from permissions import requires_enforced_permissions

from trio_ysync.store import FileStore, StoreError, room_filename
from trio_ysync.store import files as files_module

FILENAME = re.compile(r"[a-z0-9-]{0,40}_[0-9a-f]{32}\.yroom")
BATCHES = [[b"first"], [b"second", b"third"], [b"fourth-update"]]


async def write_batches(directory: Path, room: str = "room") -> Path:
    async with FileStore(directory) as store:
        for batch in BATCHES:
            await store.append(room, batch)
    return directory / room_filename(room)


def last_record_length() -> int:
    """The on-disk length of the last batch's record."""
    (update,) = BATCHES[-1]
    return 8 + 4 + 4 + len(update)


# -- format -------------------------------------------------------------------------------------


async def test_file_layout(tmp_path: Path) -> None:
    path = await write_batches(tmp_path, "Room 1")
    data = path.read_bytes()
    name = b"Room 1"
    header = struct.pack("<8sHHQI", b"YSYNCLOG", 1, 0, 1, len(name)) + name
    assert data.startswith(header + struct.pack("<I", zlib.crc32(header)))
    records = data[len(header) + 4 :]
    length, crc = struct.unpack_from("<II", records)
    payload = records[8 : 8 + length]
    assert payload == struct.pack("<II", 1, 5) + b"first"
    assert crc == zlib.crc32(payload, zlib.crc32(struct.pack("<I", length)))
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, "trio-ysync.lock"])


async def test_compaction_rewrites_the_file_atomically(tmp_path: Path) -> None:
    path = await write_batches(tmp_path)
    async with FileStore(tmp_path, fsync=True) as store:
        await store.compact("room", b"merged", 3)
        assert not list(tmp_path.glob("*.tmp"))
        assert await store.append("room", [b"fifth"]) == 5
    async with FileStore(tmp_path) as store:
        stored = await store.load("room")
    assert stored.updates == [b"merged", b"fourth-update", b"fifth"]
    assert (stored.first_seq, stored.last_seq) == (3, 5)
    first_seq = struct.unpack_from("<Q", path.read_bytes(), 12)[0]
    assert first_seq == 3


async def test_stale_temporary_files_are_removed_on_open(tmp_path: Path) -> None:
    path = await write_batches(tmp_path)
    stale = Path(str(path) + ".tmp")
    stale.write_bytes(b"half a compaction")
    (tmp_path / "notes.txt").write_text("not a room")
    async with FileStore(tmp_path) as store:
        assert not stale.exists()
        assert await store.list_rooms() == ["room"]
    assert (tmp_path / "notes.txt").exists()


# -- torn tails ---------------------------------------------------------------------------------


def expect_cut(loaded: list[bytes]) -> None:
    assert loaded == [b"first", b"second", b"third"]


@pytest.mark.parametrize("cut", range(1, 8 + 4 + 4 + len(b"fourth-update")))
async def test_truncated_last_record_is_cut(tmp_path: Path, cut: int) -> None:
    path = await write_batches(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    async with FileStore(tmp_path) as store:
        stored = await store.load("room")
        expect_cut(stored.updates)
        assert stored.last_seq == 3
        assert path.stat().st_size == len(data) - last_record_length()
        # The next append lands right after the valid part.
        assert await store.append("room", [b"after"]) == 4
    async with FileStore(tmp_path) as store:
        assert (await store.load("room")).updates == [b"first", b"second", b"third", b"after"]


@pytest.mark.parametrize(
    "damage",
    ["garbage tail", "zero tail", "bad checksum", "bad payload", "bad length", "empty record"],
)
async def test_damaged_tail_is_cut_and_kept_aside(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = await write_batches(tmp_path)
    data = bytearray(path.read_bytes())
    valid = len(data)
    if damage == "garbage tail":
        data += os.urandom(37)
    elif damage == "zero tail":  # blocks allocated but never written (power loss)
        data += bytes(4096)
    elif damage == "empty record":
        data += struct.pack("<II", 0, zlib.crc32(struct.pack("<I", 0)))
    else:
        valid -= last_record_length()
        offset = {"bad checksum": valid + 4, "bad payload": len(data) - 1, "bad length": valid}
        data[offset[damage]] ^= 0x40
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="trio_ysync.store.files"):
        async with FileStore(tmp_path) as store:
            stored = await store.load("room")
            assert await store.append("room", [b"next"]) == stored.last_seq + 1
    assert "torn tail" in caplog.text
    assert stored.updates[:3] == [b"first", b"second", b"third"]
    appended_damage = damage in ("garbage tail", "zero tail", "empty record")
    assert stored.updates[3:] == ([b"fourth-update"] if appended_damage else [])
    assert path.stat().st_size == valid + 8 + 4 + 4 + len(b"next")
    assert Path(str(path) + ".torn").read_bytes() == bytes(data[valid:])

    async with FileStore(tmp_path) as store:
        assert (await store.load("room")).updates == [*stored.updates, b"next"]
        await store.delete("room")
    assert not Path(str(path) + ".torn").exists()


async def test_torn_tail_is_cut_before_an_append_without_load(tmp_path: Path) -> None:
    path = await write_batches(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    async with FileStore(tmp_path) as store:
        assert await store.append("room", [b"new"]) == 4
    async with FileStore(tmp_path) as store:
        assert (await store.load("room")).updates == [b"first", b"second", b"third", b"new"]


@pytest.mark.parametrize("damage", ["magic", "checksum", "short"])
async def test_damaged_header_is_an_error_not_an_empty_room(tmp_path: Path, damage: str) -> None:
    path = await write_batches(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[0] ^= 1
    elif damage == "checksum":
        data[20] ^= 1
    else:
        del data[10:]
    path.write_bytes(bytes(data))
    async with FileStore(tmp_path) as store:
        with pytest.raises(StoreError, match=path.name):
            await store.load("room")
        with pytest.raises(StoreError):
            await store.append("room", [b"x"])
        assert await store.list_rooms() == []  # skipped, with a warning
    assert path.read_bytes() == bytes(data)  # left for an operator to look at


async def test_a_file_holding_another_room_is_an_error(tmp_path: Path) -> None:
    path = await write_batches(tmp_path, "a")
    os.replace(path, tmp_path / room_filename("b"))
    async with FileStore(tmp_path) as store:
        with pytest.raises(StoreError, match="holds room 'a'"):
            await store.load("b")
        assert await store.list_rooms() == []


# -- room names -----------------------------------------------------------------------------------


@given(st.text())
def test_room_filename_is_safe(room: str) -> None:
    name = room_filename(room)
    assert FILENAME.fullmatch(name)
    assert len(name) <= 87
    assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
    assert room_filename(room) == name


@given(st.lists(st.text(), unique=True, min_size=2))
def test_room_filenames_never_collide(rooms: list[str]) -> None:
    names = [room_filename(room) for room in rooms]
    # Not even on case-insensitive file systems.
    assert len({name.casefold() for name in names}) == len(rooms)


def test_room_filename_examples() -> None:
    assert room_filename("My Doc").startswith("my-doc_")
    assert room_filename("../x").startswith("x_")
    assert room_filename("").startswith("_")
    assert room_filename("x" * 1000).startswith("x" * 40 + "_")
    assert room_filename("CON").startswith("con_")
    assert room_filename("Doc") != room_filename("doc")
    with pytest.raises(ValueError, match="surrogate"):
        room_filename("\udcff")
    with pytest.raises(TypeError):
        room_filename(b"room")  # type: ignore[arg-type]


async def test_traversal_names_stay_inside_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "rooms"
    names = ["../escape", "../../escape", "/etc/passwd", "a/../../b", "..", ".", "~", "C:\\x"]
    async with FileStore(directory) as store:
        for name in names:
            await store.append(name, [name.encode()])
        assert await store.list_rooms() == sorted(names)
    assert sorted(os.listdir(tmp_path)) == ["rooms"]
    files = sorted(os.listdir(directory))
    assert files == sorted([*map(room_filename, names), "trio-ysync.lock"])


# -- write errors -------------------------------------------------------------------------------


async def test_failed_write_raises_and_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await write_batches(tmp_path)
    size = path.stat().st_size
    real_write_all = files_module._write_all

    def torn_write(fd: int, data: bytes) -> None:
        real_write_all(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    async with FileStore(tmp_path) as store:
        await store.load("room")
        monkeypatch.setattr(files_module, "_write_all", torn_write)
        with pytest.raises(StoreError, match="No space left") as info:
            await store.append("room", [b"lost"])
        assert isinstance(info.value.__cause__, OSError)
        assert path.stat().st_size == size  # the partial record was taken back
        with pytest.raises(StoreError):
            await store.append("new room", [b"lost"])  # creating a file fails too
        assert not list(tmp_path.glob("*.tmp"))
        with pytest.raises(StoreError):
            await store.compact("room", b"merged", 3)
        monkeypatch.setattr(files_module, "_write_all", real_write_all)
        assert await store.append("room", [b"kept"]) == 5
        stored = await store.load("room")
    assert stored.updates == [b"first", b"second", b"third", b"fourth-update", b"kept"]


async def test_failed_fsync_raises_and_takes_the_record_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await write_batches(tmp_path)
    size = path.stat().st_size

    def failing_sync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    async with FileStore(tmp_path, fsync=True) as store:
        monkeypatch.setattr(files_module, "_sync_fd", failing_sync)
        with pytest.raises(StoreError, match="Input/output error"):
            await store.append("room", [b"not durable"])
        assert path.stat().st_size == size
        monkeypatch.undo()
        assert await store.append("room", [b"durable"]) == 5


async def test_room_path_taken_by_a_directory_raises(tmp_path: Path) -> None:
    (tmp_path / room_filename("room")).mkdir()
    async with FileStore(tmp_path) as store:
        with pytest.raises(StoreError):
            await store.append("room", [b"x"])
        with pytest.raises(StoreError):
            await store.load("room")


@requires_enforced_permissions
async def test_read_only_directory_raises(tmp_path: Path) -> None:
    await write_batches(tmp_path)
    tmp_path.chmod(0o500)
    try:
        async with FileStore(tmp_path) as store:
            with pytest.raises(StoreError, match="Permission denied"):
                await store.append("new room", [b"x"])
            with pytest.raises(StoreError, match="Permission denied"):
                await store.compact("room", b"merged", 3)
            assert (await store.load("room")).last_seq == 4
    finally:
        tmp_path.chmod(0o700)


async def test_unusable_directory_raises_on_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError):
        async with FileStore(tmp_path / "file"):
            pass


@pytest.mark.skipif(sys.platform == "win32", reason="advisory lock is POSIX only")
async def test_one_store_per_directory(tmp_path: Path) -> None:
    async with FileStore(tmp_path):
        with pytest.raises(StoreError, match="in use"):
            async with FileStore(tmp_path):
                pass
    async with FileStore(tmp_path) as store:  # released on close
        await store.append("r", [b"x"])


async def test_a_missing_parent_directory_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"directory .*typo does not exist"):
        async with FileStore(tmp_path / "typo" / "rooms"):
            pass
    with pytest.raises(StoreError, match="no store at"):
        async with FileStore(tmp_path / "rooms", create=False):
            pass
    assert list(tmp_path.iterdir()) == []
    async with FileStore(tmp_path / "rooms") as store:  # its own directory is created
        await store.append("r", [b"x"])
