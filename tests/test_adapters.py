"""The rooms mounted in trio-websocket's server and in hypercorn (ASGI, trio worker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import hypercorn.config
import hypercorn.trio
import pytest
import trio
from trio_websocket import serve_websocket
from wsclient import connect, http_get
from ydocs import insert_text

from trio_ysync.adapters import ASGIApp, trio_websocket_handler
from trio_ysync.doc import new_document
from trio_ysync.protocol import AwarenessEntry, AwarenessUpdate, SyncStep1, SyncStep2, SyncUpdate
from trio_ysync.server import RoomServer
from trio_ysync.transport import CloseCode

TIMEOUT = 10


async def start_hypercorn(
    nursery: trio.Nursery, app: Any, shutdown: trio.Event, **settings: Any
) -> int:
    """Serve ``app`` on a free port of 127.0.0.1 until ``shutdown``; ``settings`` are
    hypercorn's (``keep_alive_timeout=...``)."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    for name, value in settings.items():
        setattr(config, name, value)

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn.trio.serve(
            app, config, shutdown_trigger=shutdown.wait, task_status=task_status
        )

    [url] = await nursery.start(serve)
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(params=["trio-websocket", "hypercorn"])
async def port(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[int]:
    async with RoomServer() as server:
        if request.param == "trio-websocket":
            listener = await nursery.start(
                serve_websocket, trio_websocket_handler(server), "127.0.0.1", 0, None
            )
            yield listener.port
        else:
            shutdown = trio.Event()
            yield await start_hypercorn(nursery, ASGIApp(server), shutdown)
            shutdown.set()


async def test_sync_and_awareness_through_the_adapter(port: int) -> None:
    doc = new_document(client_id=5)
    insert_text(doc, 0, "adapted")
    entry = AwarenessEntry(5, 1, {"name": "a"})
    with trio.fail_after(TIMEOUT):
        async with connect(port, "room") as a, connect(port, "room") as b:
            await a.join()
            await b.join()
            await a.send(SyncUpdate(doc.diff()), AwarenessUpdate([entry]))
            # Awareness is broadcast at once, updates once committed: either may come first.
            received = {type(m): m for m in [await b.receive(), await b.receive()]}
            assert received[AwarenessUpdate] == AwarenessUpdate([entry])
            copy = new_document()
            copy.apply_update(received[SyncUpdate].update)  # type: ignore[union-attr]
            assert copy.get_text("t") == "adapted"
        async with connect(port, "room") as late:
            assert isinstance(await late.receive(), SyncStep1)
            await late.send(SyncStep1(b"\x00"))
            answer = await late.receive_until(SyncStep2)
            assert isinstance(answer, SyncStep2)
            copy = new_document()
            copy.apply_update(answer.update)
            assert copy.get_text("t") == "adapted"


async def test_bad_input_closes_only_that_connection(port: int) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(port, "bad") as good:
            await good.join()
            for garbage, code in (
                (b"\x00\x05", CloseCode.INVALID_DATA),
                ("text", CloseCode.UNSUPPORTED_DATA),
            ):
                async with connect(port, "bad") as bad:
                    await bad.send_raw(garbage)
                    assert await bad.close_code() == code
            await good.send(SyncStep1(b"\x00"))
            assert isinstance(await good.receive_until(SyncStep2), SyncStep2)


async def test_health_over_http_with_hypercorn(nursery: trio.Nursery) -> None:
    shutdown = trio.Event()
    async with RoomServer() as server:
        port = await start_hypercorn(nursery, ASGIApp(server), shutdown)
        with trio.fail_after(TIMEOUT):
            assert await http_get(port, "/health") == (200, b"ok\n")
        shutdown.set()
