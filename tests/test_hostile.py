"""Hostile clients against a real ``trio-ysync serve``: each input closes only its sender.

Every input here once crashed the whole server, stalled every room or poisoned one. The server
runs as a subprocess, so an input that still crashes it fails the test instead of killing
pytest. For each input: the sender is closed with the code that says whose fault it was, the
server logs one WARNING line and no traceback, the room keeps broadcasting and storing later
edits, and clients of another room notice nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from attacks import (
    DIVIDE_BY_ZERO,
    HUGE_CLIENT,
    MALFORMED_STATE_VECTOR,
    UNTERMINATED_JSON,
    ZERO_LENGTH_GC,
    awareness,
    client_frame,
    format_update,
    frame_header,
    nested_any_update,
    nested_json,
    sync_step1,
    sync_step2,
    sync_update,
)
from cliserver import cli_server
from rawclient import RawClient
from wsclient import connect, http_get
from ydocs import insert_text

from trio_ysync.doc import new_document
from trio_ysync.protocol import AwarenessUpdate, QueryAwareness, SyncUpdate
from trio_ysync.transport import CloseCode

TIMEOUT = 30
MiB = 1024 * 1024


def make_update(text: str, client_id: int) -> bytes:
    doc = new_document(client_id=client_id)
    insert_text(doc, 0, text)
    return doc.diff()


@dataclass(frozen=True)
class Attack:
    #: What is written after the handshake: each item is one WebSocket message, or raw frame
    #: bytes when ``raw``.
    sends: Sequence[bytes]
    code: int
    raw: bool = False


ATTACKS = {
    "divide-by-zero update": Attack([sync_update(DIVIDE_BY_ZERO)], CloseCode.INVALID_DATA),
    "divide-by-zero SyncStep2": Attack([sync_step2(DIVIDE_BY_ZERO)], CloseCode.INVALID_DATA),
    "client 0xffffffff": Attack([sync_update(HUGE_CLIENT)], CloseCode.INVALID_DATA),
    "zero-length GC": Attack([sync_update(ZERO_LENGTH_GC)], CloseCode.INVALID_DATA),
    "Any nested 26k deep": Attack([sync_update(nested_any_update(26_000))], CloseCode.INVALID_DATA),
    "update, then a malformed state vector": Attack(
        [sync_update(make_update("smuggled", 66)) + sync_step1(MALFORMED_STATE_VECTOR)],
        CloseCode.INVALID_DATA,
    ),
    "awareness with a lone surrogate": Attack(
        [awareness(77, 1, '{"secret":"\\ud800"}')], CloseCode.INVALID_DATA
    ),
    "awareness nested 1000 deep": Attack(
        [awareness(77, 1, nested_json(1000))], CloseCode.INVALID_DATA
    ),
    "awareness JSON that never ends": Attack(
        [awareness(77, 1, UNTERMINATED_JSON)], CloseCode.INVALID_DATA
    ),
    "format JSON that never ends": Attack(
        [sync_update(format_update(UNTERMINATED_JSON))], CloseCode.INVALID_DATA
    ),
    "16 MiB of query-awareness": Attack([b"\x03" * (16 * MiB)], CloseCode.INVALID_DATA),
    "16 MiB of SyncStep1": Attack([sync_step1(b"\x00") * (4 * MiB)], CloseCode.INVALID_DATA),
    "zero-length continuation frames": Attack(
        [client_frame(0x2, fin=False) + client_frame(0x0, fin=False) * 100_000],
        CloseCode.MESSAGE_TOO_BIG,
        raw=True,
    ),
    "a header announcing 1 TiB": Attack(
        [frame_header(0x2, 1 << 40)], CloseCode.MESSAGE_TOO_BIG, raw=True
    ),
}


async def attack(port: int, room: str, plan: Attack) -> int | None:
    """Connect to ``room``, send the attack, and return the close code the server sent."""
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
    async with client.stream:
        await client.handshake(room)
        try:
            for data in plan.sends:
                await (client.send_raw(data) if plan.raw else client.send_bytes(data))
        except trio.BrokenResourceError:
            pass  # closed while we were still sending: the close frame is read below
        while await client.receive() is not None:
            pass
    return client.close_code


def text_of(update: bytes) -> str:
    doc = new_document()
    doc.apply_update(update)
    return doc.get_text("t")


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("name", list(ATTACKS))
async def test_hostile_input_closes_only_its_sender(tmp_path: Path, store: str, name: str) -> None:
    store_arg = "memory" if store == "memory" else str(tmp_path / "rooms.db")
    with trio.fail_after(TIMEOUT):
        async with (
            cli_server("--store", store_arg, capture_stderr=True) as server,
            connect(server.port, "target") as a,
            connect(server.port, "target") as b,
            connect(server.port, "other") as bystander,
        ):
            await a.join()
            await b.join()
            await bystander.join()
            await a.send(SyncUpdate(make_update("before", 1)))
            await b.receive_until(SyncUpdate)

            assert await attack(server.port, "target", ATTACKS[name]) == ATTACKS[name].code

            # The room goes on: a later edit is broadcast, and a newcomer gets everything.
            await a.send(SyncUpdate(make_update("after", 2)))
            assert isinstance(await b.receive_until(SyncUpdate), SyncUpdate)
            async with connect(server.port, "target") as newcomer:
                assert sorted(text_of(await newcomer.join())) == sorted("beforeafter")
            # The other room noticed nothing: its connection still answers.
            await bystander.send(QueryAwareness())
            assert await bystander.receive() == AwarenessUpdate([])
        log = server.log_lines
        assert not [line for line in log if "Traceback" in line or " ERROR " in line], log
        warnings = [line for line in log if " WARNING " in line]
        assert len(warnings) == 1, log
        assert f"closing with {ATTACKS[name].code}" in warnings[0]
        if store == "sqlite":
            async with (
                cli_server("--store", store_arg) as server,
                connect(server.port, "target") as reader,
            ):
                assert sorted(text_of(await reader.join())) == sorted("beforeafter")


@pytest.mark.parametrize("path", ["/%ff", "/%fe", "/a%zz", "/tab%09room", "/"])
async def test_unusable_room_paths_are_refused_with_400(path: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with cli_server("--store", "memory", capture_stderr=True) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(
                    f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n".encode()
                )
                answer = b""
                while chunk := await stream.receive_some():
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert await http_get(server.port, "/health") == (200, b"ok\n")
        assert not [line for line in server.log_lines if "Traceback" in line]
