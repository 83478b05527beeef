"""``kill -9`` of ``trio-ysync serve`` under continuous writes loses no broadcast update."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from cliserver import cli_server
from trio_websocket import ConnectionClosed, HandshakeError
from wsclient import connect
from ydocs import insert_text

from trio_ysync.doc import new_document
from trio_ysync.protocol import SyncUpdate

WRITERS = 4


async def write_forever(port: int, writer: int) -> None:
    doc = new_document(client_id=1000 + writer)
    updates: list[bytes] = []
    doc.observe(lambda update, origin: updates.append(update))
    try:
        async with connect(port, "crash") as client:
            await client.join()
            for n in range(100_000):
                insert_text(doc, len(doc.get_text("t")), f"<{writer}.{n}>")
                await client.send(SyncUpdate(updates.pop()))
    except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
        pass  # the server was killed


@pytest.mark.parametrize("store_name", ["rooms.db", "rooms-dir/"])
async def test_kill_9_loses_no_broadcast_update(tmp_path: Path, store_name: str) -> None:
    store = f"{tmp_path}/{store_name}"
    broadcast = new_document()
    with trio.fail_after(60):
        async with (
            cli_server("--store", store) as server,
            connect(server.port, "crash") as observer,
            trio.open_nursery() as nursery,
        ):
            await observer.join()
            for writer in range(WRITERS):
                nursery.start_soon(write_forever, server.port, writer)
            received = 0
            while received < 300:
                message = await observer.receive()
                if isinstance(message, SyncUpdate):
                    broadcast.apply_update(message.update)
                    received += 1
            server.kill()
        seen = broadcast.get_text("t")
        async with cli_server("--store", store) as server, connect(server.port, "crash") as client:
            recovered = new_document()
            recovered.apply_update(await client.join())
    tokens = [token for token in seen.replace(">", ">\n").split() if token]
    assert len(tokens) >= 300
    text = recovered.get_text("t")
    missing = [token for token in tokens if token not in text]
    assert not missing, f"{len(missing)} broadcast updates lost, e.g. {missing[:5]}"
