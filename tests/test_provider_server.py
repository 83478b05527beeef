"""The provider against trio-ysync's own RoomServer on 127.0.0.1 (and the bot example against
both servers)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from nodejs import js_client, reference_server, requires_node, ws_url
from ydocs import insert_text, wait_text

from trio_ysync.doc import new_document
from trio_ysync.provider import Backoff, ConnectionStatus, Provider, open_provider
from trio_ysync.server import RoomServer

FAST = Backoff(initial=0.05, maximum=0.5)
EXAMPLES = Path(__file__).parent.parent / "examples"


@asynccontextmanager
async def room_server(port: int = 0) -> AsyncIterator[int]:
    server = RoomServer()
    async with trio.open_nursery() as nursery:
        bound: int = await nursery.start(server.serve, "127.0.0.1", port)
        yield bound
        server.shutdown()


async def wait_states(provider: Provider, states: dict[int, Any]) -> None:
    changes = provider.awareness.changes()
    while provider.awareness.states != states:
        await changes.__anext__()


async def wait_status(provider: Provider, status: ConnectionStatus) -> None:
    async for current in provider.status_changes():
        if current is status:
            return


async def test_two_providers_share_a_room() -> None:
    py = new_document("y-py")
    crdt = new_document("pycrdt")
    with trio.fail_after(20):
        async with (
            room_server() as port,
            open_provider(ws_url(port), py, room="shared") as first,
        ):
            first.awareness.set_local_state({"lib": "y-py"})
            await first.wait_synced()
            insert_text(py, 0, "y-py says hi. ")
            async with open_provider(ws_url(port), crdt, room="shared") as second:
                second.awareness.set_local_state({"lib": "pycrdt"})
                await second.wait_synced()
                await wait_text(crdt, "y-py says hi. ")
                insert_text(crdt, len(crdt.get_text("t")), "pycrdt too.")
                await wait_text(py, "y-py says hi. pycrdt too.")
                both = {py.client_id: {"lib": "y-py"}, crdt.client_id: {"lib": "pycrdt"}}
                await wait_states(first, both)
                await wait_states(second, both)
            # The second provider's removal reaches the first at once.
            with trio.fail_after(5):
                await wait_states(first, {py.client_id: {"lib": "y-py"}})


async def serve(
    server: RoomServer,
    port: int,
    stopped: trio.Event,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await server.serve("127.0.0.1", port, task_status=task_status)
    finally:
        stopped.set()


async def test_server_restart_on_the_same_port_is_rejoined(backend: str) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            first, first_stopped = RoomServer(), trio.Event()
            port = await nursery.start(serve, first, 0, first_stopped)
            provider = Provider(ws_url(port), doc, room="r", backoff=FAST)
            provider.awareness.set_local_state({"who": "provider"})
            await nursery.start(provider.run)
            await provider.wait_synced()
            insert_text(doc, 0, "kept by the provider")
            async with open_provider(ws_url(port), new_document("pycrdt"), room="r") as other:
                await wait_text(other.document, "kept by the provider")

            # The server keeps rooms in memory here: shutting it down loses the document.
            first.shutdown()
            await wait_status(provider, ConnectionStatus.DISCONNECTED)
            await first_stopped.wait()
            assert provider.last_close is not None
            assert provider.last_close[0] == 1001  # going away: reconnect
            second = RoomServer()
            await nursery.start(serve, second, port, trio.Event())
            await provider.wait_synced()
            # The provider refilled the new server when it answered its SyncStep1.
            async with open_provider(ws_url(port), new_document("pycrdt"), room="r") as late:
                await late.wait_synced()
                await wait_text(late.document, "kept by the provider")
                changes = late.awareness.changes()
                while doc.client_id not in late.awareness.states:
                    await changes.__anext__()
                assert late.awareness.remote_states == {doc.client_id: {"who": "provider"}}
            await provider.aclose()
            second.shutdown()


@requires_node
async def test_js_client_and_provider_on_our_server(backend: str) -> None:
    doc = new_document(backend)  # type: ignore[arg-type]
    with trio.fail_after(30):
        async with (
            room_server() as port,
            js_client(ws_url(port), "mixed") as js,
            open_provider(ws_url(port), doc, room="mixed") as provider,
        ):
            await js.wait_synced()
            await provider.wait_synced()
            provider.awareness.set_local_state({"user": "python"})
            insert_text(doc, 0, "py ")
            await js.wait_text("py ")
            await js.insert(3, "js")
            await wait_text(doc, "py js")
            states = await js.wait_awareness_count(2)
            assert states[doc.client_id] == {"user": "python"}
        # (the provider left first: the JS client saw it go before closing)


async def run_bot(url: str, room: str, line: str) -> str:
    result = await trio.run_process(
        [sys.executable, str(EXAMPLES / "provider_bot.py"), url, room, "--line", line],
        capture_stdout=True,
    )
    return result.stdout.decode()


async def test_bot_example_on_our_server() -> None:
    with trio.fail_after(30):
        async with room_server() as port:
            out = await run_bot(ws_url(port), "bots", "first")
            assert out.endswith("--- text ---\nfirst\n")
            async with open_provider(ws_url(port), new_document("pycrdt"), room="bots") as watcher:
                watcher.awareness.set_local_state({"user": "watcher"})
                await watcher.wait_synced()
                out = await run_bot(ws_url(port), "bots", "second")
                assert "{'user': 'watcher'}" in out
                assert out.endswith("--- text ---\nfirst\nsecond\n")
                await wait_text(watcher.document, "first\nsecond\n")


@requires_node
async def test_bot_example_on_the_reference_server() -> None:
    with trio.fail_after(30):
        async with reference_server() as port, js_client(ws_url(port), "bots") as js:
            await js.wait_synced()
            await js.set_awareness({"user": "js"})
            await js.insert(0, "from js\n")
            out = await run_bot(ws_url(port), "bots", "from the bot")
            assert "{'user': 'js'}" in out
            assert out.endswith("--- text ---\nfrom js\nfrom the bot\n")
            await js.wait_text("from js\nfrom the bot\n")
            await js.wait_awareness_count(1)  # the bot left the presence list
