"""Client-side WebSocket frames built by hand (RFC 6455, section 5.2), valid or deliberately not.

wsproto refuses to produce broken frames, so the attacks that need them (reserved bits, unmasked
client frames, bad opcodes, lying length fields) are built here. Valid messages go through the
same builder, so every attack is recorded as the exact bytes that went on the wire.
"""

from __future__ import annotations

import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def masked(payload: bytes, key: bytes) -> bytes:
    """``payload`` XORed with the 4-byte masking ``key``."""
    if not payload:
        return b""
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def frame(
    payload: bytes,
    *,
    opcode: int = OP_BINARY,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = b"\x00\x00\x00\x00",
    length: int | None = None,
) -> bytes:
    """One frame. ``key=None`` leaves it unmasked (forbidden for clients); ``length`` overrides
    the length field, which then lies about the payload that follows."""
    length = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)
    mask_bit = 0 if key is None else 0x80
    if length < 126:
        header = bytes([first, mask_bit | length])
    elif length < 1 << 16:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    if key is None:
        return header + payload
    return header + key + masked(payload, key)


def close_frame(code: int, reason: bytes = b"", *, key: bytes = b"\x00\x00\x00\x00") -> bytes:
    """A client close frame with ``code`` and ``reason`` (the reason is not checked)."""
    return frame(struct.pack("!H", code) + reason, opcode=OP_CLOSE, key=key)


def upgrade_request(target: str, *, version: bytes = b"13", key: bytes | None = None) -> bytes:
    """The HTTP upgrade request of a WebSocket client, optionally with a bad version or key."""
    lines = [
        f"GET {target} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: " + version,
    ]
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    return b"\r\n".join(lines) + b"\r\n\r\n"
