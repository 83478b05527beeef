"""Vectors encoded by the real yjs / y-protocols / lib0 decode here, and the reverse."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
from nodejs import decode_with_js, requires_node, run_vectors

from trio_ysync.doc import Backend, Document
from trio_ysync.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    Decoder,
    Message,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    encode,
)

pytestmark = requires_node
TIMEOUT = 30


def from_description(description: dict[str, Any]) -> Message:
    kind = description["type"]
    if kind == "sync_step1":
        return SyncStep1(bytes.fromhex(description["state_vector"]))
    if kind == "sync_step2":
        return SyncStep2(bytes.fromhex(description["update"]))
    if kind == "sync_update":
        return SyncUpdate(bytes.fromhex(description["update"]))
    if kind == "awareness":
        return AwarenessUpdate(
            [
                AwarenessEntry(entry["client_id"], entry["clock"], entry["state"])
                for entry in description["entries"]
            ]
        )
    if kind == "query_awareness":
        return QueryAwareness()
    if kind == "permission_denied":
        return PermissionDenied(description["reason"])
    raise AssertionError(f"unexpected description {description}")


@pytest.fixture(scope="module")
def js_vectors() -> dict[str, Any]:
    return trio.run(run_vectors)  # type: ignore[no-any-return]


def test_the_design_vectors_are_what_yjs_produces(js_vectors: dict[str, Any]) -> None:
    design = {v["name"]: v["hex"] for v in js_vectors["vectors"] if v["name"].startswith("design/")}
    assert design == {
        "design/sync_step1_empty": "00000100",
        "design/sync_step1_one_insert": "00000401ac0201",
        "design/sync_step2_empty": "0001020000",
        "design/update_empty": "0002020000",
        "design/awareness_removal": "0109" + "01ac0201046e756c6c",
        "design/query_awareness": "03",
        "design/permission_denied_no": "0200026e6f",
    }


def test_every_js_vector_decodes_and_reencodes_byte_for_byte(js_vectors: dict[str, Any]) -> None:
    assert len(js_vectors["vectors"]) >= 20
    for vector in js_vectors["vectors"]:
        frame = bytes.fromhex(vector["hex"])
        descriptions = vector.get("messages") or [vector["message"]]
        expected = [from_description(d) for d in descriptions]
        assert decode(frame) == expected, vector["name"]
        assert encode(*expected) == frame, vector["name"]


def test_awareness_states_are_written_as_json_stringify_writes_them(
    js_vectors: dict[str, Any],
) -> None:
    for vector in js_vectors["vectors"]:
        for description in vector.get("messages") or [vector["message"]]:
            for entry in description.get("entries", []):
                # Object key order is JavaScript's, which json.loads keeps.
                assert (
                    json.dumps(
                        json.loads(entry["state_json"]), separators=(",", ":"), ensure_ascii=False
                    )
                    == (entry["state_json"])
                ), vector["name"]


def test_js_documents_load_into_both_libraries(
    js_vectors: dict[str, Any], make_doc: Callable[..., Document], backend: Backend
) -> None:
    assert js_vectors["docs"]
    for js_doc in js_vectors["docs"]:
        doc = make_doc()
        doc.apply_update(bytes.fromhex(js_doc["doc_update"]))
        assert doc.get_text(js_doc["text_name"]) == js_doc["text"], js_doc["name"]
        expected = parse_state_vector(bytes.fromhex(js_doc["state_vector"]))
        if backend == "y-py":
            # y-py keeps client IDs as 32-bit numbers: it truncates larger ones (yjs and pycrdt
            # allow 53 bits), which is why servers use pycrdt.
            expected = {client & 0xFFFFFFFF: clock for client, clock in expected.items()}
        # Entry order is the libraries' own: compare the vectors as clocks by client.
        assert parse_state_vector(doc.state_vector()) == expected, js_doc["name"]


def parse_state_vector(state_vector: bytes) -> dict[int, int]:
    decoder = Decoder(state_vector)
    return {
        decoder.read_var_uint(): decoder.read_var_uint() for _ in range(decoder.read_var_uint())
    }


async def test_frames_encoded_here_decode_in_javascript(make_doc: Callable[..., Document]) -> None:
    doc = make_doc(5_000_000)
    updates: list[bytes] = []
    doc.observe(lambda update, origin: updates.append(update))
    from ydocs import insert_text

    insert_text(doc, 0, "héllo 😀")
    messages: list[Message] = [
        SyncStep1(doc.state_vector()),
        SyncStep2(doc.diff()),
        SyncUpdate(updates[0]),
        AwarenessUpdate(
            [
                AwarenessEntry(300, 1, None),
                AwarenessEntry(2**53 - 1, 7, {"user": {"name": "Zoë 😀", "n": [1, 2.5, None]}}),
            ]
        ),
        QueryAwareness(),
        PermissionDenied("nope ✋"),
    ]
    with trio.fail_after(TIMEOUT):
        decoded = await decode_with_js([encode(m) for m in messages])
    assert [[from_description(d) for d in frame] for frame in decoded] == [[m] for m in messages]
