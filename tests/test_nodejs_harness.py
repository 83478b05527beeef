"""Checks of the Node.js interop harness itself (tests/nodejs.py, tests/js), using only JS code:
the vector generator, the JS decoder, and real y-websocket clients on the reference server."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from nodejs import (
    JsDecodeError,
    decode_with_js,
    decode_with_js_results,
    js_client,
    reference_server,
    requires_node,
    run_vectors,
    ws_url,
)

pytestmark = requires_node

TIMEOUT = 20

# The table of DESIGN.md ("Test vectors produced by yjs 13.6 (client ID 300)").
DESIGN_VECTORS = {
    "design/sync_step1_empty": "00 00 01 00",
    "design/sync_step1_one_insert": "00 00 04 01 ac 02 01",
    "design/sync_step2_empty": "00 01 02 00 00",
    "design/update_empty": "00 02 02 00 00",
    "design/awareness_removal": "01 09 01 ac 02 01 04 6e 75 6c 6c",
    "design/query_awareness": "03",
    "design/permission_denied_no": "02 00 02 6e 6f",
}


def _expected_messages(vector: dict[str, Any]) -> list[dict[str, Any]]:
    return vector["messages"] if "messages" in vector else [vector["message"]]


async def test_vectors_match_design_table() -> None:
    with trio.fail_after(TIMEOUT):
        data = await run_vectors()
    assert data["generator"]["yjs"].startswith("13.6.")
    by_name = {v["name"]: v for v in data["vectors"]}
    for name, spaced_hex in DESIGN_VECTORS.items():
        assert by_name[name]["hex"] == spaced_hex.replace(" ", ""), name
    assert by_name["design/awareness_removal"]["message"] == {
        "type": "awareness",
        "entries": [{"client_id": 300, "clock": 1, "state": None, "state_json": "null"}],
    }
    assert {d["name"] for d in data["docs"]} >= {
        "doc/single_client",
        "doc/two_clients_with_deletes",
    }


async def test_js_decoder_reads_every_vector() -> None:
    with trio.fail_after(TIMEOUT):
        data = await run_vectors()
        vectors = data["vectors"]
        decoded = await decode_with_js([bytes.fromhex(v["hex"]) for v in vectors])
    assert decoded == [_expected_messages(v) for v in vectors]


async def test_js_decoder_reports_malformed_frames() -> None:
    frames = [
        bytes.fromhex("0000040001"),  # state vector shorter than its length prefix
        bytes.fromhex("03ff"),  # a query, then a truncated varUint
    ]
    with trio.fail_after(TIMEOUT):
        results = await decode_with_js_results(frames)
        assert "error" in results[0]
        assert results[0]["messages"] == []
        assert "error" in results[1]
        assert results[1]["messages"] == [{"type": "query_awareness"}]
        with pytest.raises(JsDecodeError):
            await decode_with_js(frames)


async def test_two_js_clients_through_reference_server() -> None:
    with trio.fail_after(TIMEOUT):
        async with reference_server() as port:
            url = ws_url(port)
            async with (
                js_client(url, "harness", name="a") as a,
                js_client(url, "harness", name="b") as b,
            ):
                await a.wait_synced()
                await b.wait_synced()

                await a.insert(0, "héllo")
                await b.wait_text("héllo")
                await b.insert(5, " 😀 wörld")
                await a.wait_text("héllo 😀 wörld")
                assert await b.get_text() == "héllo 😀 wörld"
                await a.insert_big(100_000)
                await b.wait_text("héllo 😀 wörld" + "x" * 100_000)

                # A fresh provider's {} state has clock 0, which peers ignore: set explicit ones.
                await a.set_awareness({"user": {"name": "a"}})
                await b.set_awareness({"user": {"name": "b", "emoji": "🐍"}})
                seen_by_a = await a.wait_awareness_count(2)
                seen_by_b = await b.wait_awareness_count(2)
                assert seen_by_a == seen_by_b
                assert a.client_id is not None
                assert b.client_id is not None
                assert seen_by_a[b.client_id] == {"user": {"name": "b", "emoji": "🐍"}}

                # Disappear: b leaves, the server broadcasts its removal.
                mark = len(b.events)
                await b.disconnect()
                closed = await b.wait_event(lambda e: e["event"] == "connection_close", since=mark)
                assert closed["code"] is None  # closed locally: no close event from the server
                assert await a.wait_awareness_count(1) == {a.client_id: {"user": {"name": "a"}}}

                # Reappear: after a reconnect the same clock is ignored by peers that saw the
                # removal, so both sides bump their clocks by setting a state again.
                await b.connect()
                await b.wait_synced()
                await b.set_awareness({"user": {"name": "b2"}})
                await a.set_awareness({"user": {"name": "a2"}})
                await a.wait_awareness_count(2)
                await b.wait_awareness_count(2)
                assert a.awareness[b.client_id] == {"user": {"name": "b2"}}

                # Closing a client (process exits) removes it from the others' awareness.
                async with js_client(url, "harness", name="c") as c:
                    await c.wait_synced()
                    await c.set_awareness({"user": {"name": "c"}})
                    await a.wait_awareness_count(3)
                assert set(await a.wait_awareness_count(2)) == {a.client_id, b.client_id}
            assert a.exited
            assert b.exited
