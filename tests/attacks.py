"""Hostile inputs, built byte by byte: each one once crashed, stalled or poisoned the server.

Shared by the hostile-client tests and the fuzzer. Never apply these updates to a document in
the test process: some of them make the native document library panic or overflow its stack.
"""

from __future__ import annotations

import struct

from trio_ysync.protocol import Encoder


def var_uint(value: int) -> bytes:
    encoder = Encoder()
    encoder.write_var_uint(value)
    return encoder.to_bytes()


def var_bytes(data: bytes) -> bytes:
    return var_uint(len(data)) + data


def sync_update(update: bytes) -> bytes:
    """A sync Update message (``00 02 <len> <update>``)."""
    return b"\x00\x02" + var_bytes(update)


def sync_step2(update: bytes) -> bytes:
    """A SyncStep2 message (``00 01 <len> <update>``)."""
    return b"\x00\x01" + var_bytes(update)


def sync_step1(state_vector: bytes) -> bytes:
    """A SyncStep1 message (``00 00 <len> <state vector>``)."""
    return b"\x00\x00" + var_bytes(state_vector)


def awareness(client_id: int, clock: int, json_text: str) -> bytes:
    """An awareness message with one entry whose state is ``json_text``, unchecked."""
    entry = var_uint(client_id) + var_uint(clock) + var_bytes(json_text.encode("utf-8"))
    return b"\x01" + var_bytes(var_uint(1) + entry)


#: A String item and then a GC struct of length 0: divide by zero inside yrs.
DIVIDE_BY_ZERO = bytes.fromhex("01020700040101610174000000")
#: Client 0xffffffff, an invalid content reference, an out-of-range clock.
HUGE_CLIENT = bytes.fromhex("010207ffffffff0f006fc407020703015a00")
#: A GC struct of length 0 alone: it applies, and the next diff panics.
ZERO_LENGTH_GC = bytes.fromhex("01010701000000")
#: A valid SyncStep1 state vector claims a count it does not hold.
MALFORMED_STATE_VECTOR = b"\xff\xff"


def nested_any_update(depth: int) -> bytes:
    """One Item of Any content: an array inside an array ... ``depth`` levels deep, in the root
    type ``a`` (about 26,000 levels overflow the native stack)."""
    nested = b"\x75\x01" * depth + b"\x7e"  # 117 = array of one element ... 126 = null
    struct_ = b"\x08" + b"\x01" + var_bytes(b"a") + b"\x01" + nested
    return b"\x01\x01" + var_uint(1) + var_uint(0) + struct_ + b"\x00"


def format_update(value_json: str) -> bytes:
    """One Format item in the root text ``t`` whose value is the JSON text ``value_json``,
    unchecked."""
    content = var_bytes(b"bold") + var_bytes(value_json.encode("utf-8"))
    struct_ = b"\x06" + b"\x01" + var_bytes(b"t") + content
    return b"\x01\x01" + var_uint(1) + var_uint(0) + struct_ + b"\x00"


#: Brackets, then a string that never ends, full of escaped quotes: a depth check that scans
#: strings with a backtracking pattern before the text is known to be JSON takes time that
#: grows with the square of its length (minutes for this one).
UNTERMINATED_JSON = "[" * 70 + '"' + '\\"' * 100_000


def nested_json(depth: int) -> str:
    """JSON arrays nested ``depth`` deep."""
    return "[" * depth + "]" * depth


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A masked client frame (mask 0, so the payload is sent as it is)."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + b"\x00\x00\x00\x00" + payload


def frame_header(opcode: int, length: int) -> bytes:
    """Just the header of a final, masked frame announcing ``length`` bytes."""
    return struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length) + b"\x00\x00\x00\x00"
