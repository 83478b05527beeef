from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ydocs import insert_text

from trio_ysync.doc import new_document
from trio_ysync.protocol import (
    MAX_CLOCK,
    MAX_SAFE_INTEGER,
    AwarenessEntry,
    AwarenessUpdate,
    Encoder,
    Message,
    PermissionDenied,
    ProtocolError,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    UnknownMessage,
    decode,
    encode,
    encode_json,
)

# The vectors of the design notes, produced by yjs 13.6 with client ID 300.
DESIGN_VECTORS: list[tuple[str, Message]] = [
    ("00 00 01 00", SyncStep1(b"\x00")),
    ("00 00 04 01 ac 02 01", SyncStep1(bytes.fromhex("01ac0201"))),
    ("00 01 02 00 00", SyncStep2(b"\x00\x00")),
    ("00 02 02 00 00", SyncUpdate(b"\x00\x00")),
    ("01 09 01 ac 02 01 04 6e 75 6c 6c", AwarenessUpdate([AwarenessEntry(300, 1, None)])),
    ("03", QueryAwareness()),
    ("02 00 02 6e 6f", PermissionDenied("no")),
]


@pytest.mark.parametrize(("hex_bytes", "message"), DESIGN_VECTORS)
def test_design_vectors(hex_bytes: str, message: Message) -> None:
    frame = bytes.fromhex(hex_bytes)
    assert decode(frame) == [message]
    assert encode(message) == frame


def test_several_messages_in_one_frame() -> None:
    frame = bytes.fromhex("0000010003" + "0002020000")
    messages = [SyncStep1(b"\x00"), QueryAwareness(), SyncUpdate(b"\x00\x00")]
    assert decode(frame) == messages
    assert encode(*messages) == frame


def test_unknown_message_type_keeps_the_rest_of_the_frame() -> None:
    # Type 200 needs two varUint bytes: a reader of msg[0] would misparse it.
    frame = bytes.fromhex("c801") + b"opaque"
    assert decode(frame) == [UnknownMessage(200, b"opaque")]
    assert encode(UnknownMessage(200, b"opaque")) == frame


@pytest.mark.parametrize(
    "hex_bytes",
    [
        "",  # empty frame
        "00",  # sync without subtype
        "0003020000",  # unknown sync subtype
        "000005",  # payload shorter than claimed
        "0101",  # awareness payload truncated
        "0105ff0000000000",  # awareness count far beyond the payload
        "010601010102" + "7b7d"[:2],  # string truncated inside awareness
        "0106010101027b7d" + "00",  # ok awareness then a truncated sync
        "0201",  # unknown auth subtype
        "020005" + "6e6f",  # reason truncated
    ],
)
def test_malformed_frames_raise_protocol_error(hex_bytes: str) -> None:
    with pytest.raises(ProtocolError):
        decode(bytes.fromhex(hex_bytes))


@pytest.mark.parametrize("state_json", [b"{", b"NaN", b"[1,", b"\xff"])
def test_invalid_awareness_json_is_a_protocol_error(state_json: bytes) -> None:
    inner = bytes([1, 1, 1, len(state_json)]) + state_json
    with pytest.raises(ProtocolError):
        decode(bytes([1, len(inner)]) + inner)


def test_deeply_nested_json_is_a_protocol_error() -> None:
    state_json = b"[" * 100_000
    inner = b"\x01\x01\x01" + _var_uint(len(state_json)) + state_json
    with pytest.raises(ProtocolError):
        decode(b"\x01" + _var_uint(len(inner)) + inner)


def _var_uint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


@pytest.mark.parametrize(
    ("state", "text"),
    [
        ({"user": {"name": "Zoë", "color": "#ff0"}}, '{"user":{"name":"Zoë","color":"#ff0"}}'),
        ([1.0, 2.5, -0.0, 1e21], "[1,2.5,0,1e+21]"),
        (None, "null"),
        ("😀", '"😀"'),
    ],
)
def test_json_is_written_like_json_stringify(state: object, text: str) -> None:
    assert encode_json(state) == text


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
client_ids = st.integers(min_value=0, max_value=MAX_SAFE_INTEGER)


def _encode_state_vector(clocks: dict[int, int]) -> bytes:
    encoder = Encoder()
    encoder.write_var_uint(len(clocks))
    for client, clock in clocks.items():
        encoder.write_var_uint(client)
        encoder.write_var_uint(clock)
    return encoder.to_bytes()


def _sample_updates() -> list[bytes]:
    doc = new_document("pycrdt", client_id=300)
    updates = [doc.diff()]
    for text in ("a", "héllo", "😀 emoji", "x" * 300):
        insert_text(doc, 0, text)
        updates.append(doc.diff())
    return updates


# Updates and state vectors must be valid to decode (decode validates them).
state_vectors = st.dictionaries(client_ids, st.integers(0, MAX_CLOCK), max_size=4).map(
    _encode_state_vector
)
updates = st.sampled_from(_sample_updates())

messages = st.one_of(
    st.builds(SyncStep1, state_vectors),
    st.builds(SyncStep2, updates),
    st.builds(SyncUpdate, updates),
    st.builds(
        AwarenessUpdate,
        st.lists(st.builds(AwarenessEntry, client_ids, client_ids, json_values), max_size=5),
    ),
    st.just(QueryAwareness()),
    st.builds(PermissionDenied, st.text()),
)


@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    assert decode(encode(message)) == [message]


@given(st.lists(messages, min_size=1, max_size=4))
def test_frames_of_several_messages_round_trip(batch: list[Message]) -> None:
    assert decode(encode(*batch)) == batch


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    try:
        decoded = decode(frame)
    except ProtocolError:
        return
    assert decoded


@given(messages, st.data())
def test_corrupted_messages_decode_or_raise_protocol_error(
    message: Message, data: st.DataObject
) -> None:
    frame = bytearray(encode(message))
    if not frame:
        return
    index = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    frame[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(frame)))
    with contextlib.suppress(ProtocolError):
        decode(bytes(frame[:cut]))


def test_encode_rejects_foreign_objects() -> None:
    with pytest.raises(TypeError):
        encode("hello")  # type: ignore[arg-type]
