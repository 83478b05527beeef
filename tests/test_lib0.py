from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_ysync.protocol import MAX_SAFE_INTEGER, Decoder, Encoder, ProtocolError


def encoded(write: str, value: object) -> bytes:
    encoder = Encoder()
    getattr(encoder, write)(value)
    return encoder.to_bytes()


@pytest.mark.parametrize(
    ("value", "hex_bytes"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (2**32, "8080808010"),
        (MAX_SAFE_INTEGER, "ffffffffffffff0f"),
    ],
)
def test_var_uint_vectors(value: int, hex_bytes: str) -> None:
    assert encoded("write_var_uint", value).hex() == hex_bytes
    assert Decoder(bytes.fromhex(hex_bytes)).read_var_uint() == value


def test_var_string_counts_utf8_bytes() -> None:
    assert encoded("write_var_string", "héllo").hex() == "0668c3a96c6c6f"
    assert Decoder(bytes.fromhex("0668c3a96c6c6f")).read_var_string() == "héllo"


@given(st.integers(min_value=0, max_value=MAX_SAFE_INTEGER))
def test_var_uint_round_trip(value: int) -> None:
    decoder = Decoder(encoded("write_var_uint", value))
    assert decoder.read_var_uint() == value
    assert decoder.at_end()


@given(st.text())
def test_var_string_round_trip(text: str) -> None:
    decoder = Decoder(encoded("write_var_string", text))
    assert decoder.read_var_string() == text
    assert decoder.at_end()


@given(st.binary())
def test_var_uint8_array_round_trip(data: bytes) -> None:
    decoder = Decoder(encoded("write_var_uint8_array", data))
    assert decoder.read_var_uint8_array() == data
    assert decoder.at_end()


@pytest.mark.parametrize("value", [-1, MAX_SAFE_INTEGER + 1, 2**64])
def test_encoder_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ProtocolError):
        Encoder().write_var_uint(value)


@pytest.mark.parametrize(
    ("hex_bytes", "reason"),
    [
        ("", "truncated"),
        ("80", "truncated"),
        ("ffffffffffffff7f", "53 bits"),  # 2**56 - 1
        ("8080808080808080" + "01", "53 bits"),  # nine groups
        ("8080808080808010", "53 bits"),  # exactly 2**53
    ],
)
def test_decoder_rejects_bad_var_uint(hex_bytes: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Decoder(bytes.fromhex(hex_bytes)).read_var_uint()


def test_length_claim_beyond_input_is_rejected_before_allocating() -> None:
    # Claims 2**53 - 1 bytes; allocating that would exhaust memory long before failing.
    frame = bytes.fromhex("ffffffffffffff0f") + b"abc"
    with pytest.raises(ProtocolError, match="exceeds"):
        Decoder(frame).read_var_uint8_array()


def test_invalid_utf8_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        Decoder(b"\x02\xc3\x28").read_var_string()


def test_remaining_and_read_rest() -> None:
    decoder = Decoder(b"\x05abc")
    assert decoder.read_var_uint() == 5
    assert decoder.remaining == 3
    assert decoder.read_rest() == b"abc"
    assert decoder.at_end()
