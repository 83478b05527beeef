"""Real yjs + y-websocket clients (Node) against ``trio-ysync serve``."""

from __future__ import annotations

import trio
from cliserver import cli_server
from nodejs import js_client, requires_node, ws_url
from wsclient import connect

from trio_ysync.protocol import SyncStep1, SyncUpdate

pytestmark = requires_node
TIMEOUT = 30


async def test_concurrent_edits_converge_and_late_joiners_get_everything() -> None:
    with trio.fail_after(TIMEOUT):
        async with cli_server("--store", "memory") as server:
            url = ws_url(server.port)
            async with (
                js_client(url, "doc", name="a") as a,
                js_client(url, "doc", name="b") as b,
                js_client(url, "doc", name="c") as c,
            ):
                for client in (a, b, c):
                    await client.wait_synced()
                async with trio.open_nursery() as nursery:
                    for index, client in enumerate((a, b, c)):
                        for n in range(5):
                            nursery.start_soon(client.insert, 0, f"[{index}.{n}]")
                # Fifteen inserts of five characters, made concurrently from three clients.
                await a.wait_until(lambda: len(a.text) == 15 * 5)
                await b.wait_until(lambda: len(b.text) == 15 * 5)
                await c.wait_until(lambda: len(c.text) == 15 * 5)
                texts = {a.text, b.text, c.text}
                assert len(texts) == 1, texts
                async with js_client(url, "doc", name="late") as late:
                    await late.wait_synced()
                    await late.wait_text(a.text)


async def test_awareness_appears_reaches_newcomers_and_disappears_within_a_second() -> None:
    with trio.fail_after(TIMEOUT):
        async with cli_server("--store", "memory") as server:
            url = ws_url(server.port)
            async with js_client(url, "presence", name="a") as a:
                await a.wait_synced()
                await a.set_awareness({"user": {"name": "a"}})
                async with js_client(url, "presence", name="b") as b:
                    # The newcomer receives a's state on connect, without a asking.
                    await b.wait_until(lambda: a.client_id in b.awareness)
                    assert b.awareness[a.client_id] == {"user": {"name": "a"}}
                    await b.set_awareness({"user": {"name": "b"}})
                    await a.wait_until(lambda: b.client_id in a.awareness)
                    # Kill b's process: only the server can tell a that b is gone.
                    b._process.kill()
                    with trio.fail_after(1):
                        await a.wait_until(lambda: b.client_id not in a.awareness)
                assert set(a.awareness) == {a.client_id}


async def test_a_two_megabyte_update_goes_through() -> None:
    with trio.fail_after(TIMEOUT):
        async with cli_server("--store", "memory") as server:
            url = ws_url(server.port)
            async with js_client(url, "big", name="a") as a, js_client(url, "big", name="b") as b:
                await a.wait_synced()
                await b.wait_synced()
                await a.insert_big(2 * 1024 * 1024)
                await b.wait_until(lambda: len(b.text) == 2 * 1024 * 1024)
                async with js_client(url, "big", name="late") as late:
                    await late.wait_until(lambda: len(late.text) == 2 * 1024 * 1024)


async def test_garbage_from_one_socket_does_not_disturb_the_others() -> None:
    with trio.fail_after(TIMEOUT):
        async with cli_server("--store", "memory") as server:
            url = ws_url(server.port)
            async with js_client(url, "g", name="a") as a, js_client(url, "g", name="b") as b:
                await a.wait_synced()
                await b.wait_synced()
                for garbage in (b"\xff\xff\xff", b"\x00\x02\x05\x01\x02", "text", b"\x00\x09"):
                    async with connect(server.port, "g") as bad:
                        await bad.send(SyncStep1(b"\x00"))
                        await bad.send_raw(garbage)
                        assert await bad.close_code() in (1003, 1007)
                await a.insert(0, "still ")
                await b.insert(0, "here ")
                await a.wait_until(lambda: len(a.text) == len("still here "))
                await b.wait_text(a.text)
                # A malformed update inside a well-formed message is rejected the same way.
                async with connect(server.port, "g") as bad:
                    await bad.send(SyncUpdate(bytes([1, 200, 200, 200, 200, 200, 200, 1])))
                    assert await bad.close_code() == 1007
                await a.insert(0, "!")
                await b.wait_text(a.text)
                assert a.text.startswith("!")
