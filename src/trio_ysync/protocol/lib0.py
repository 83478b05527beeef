"""lib0 binary encoding: the variable-length integers, byte arrays and strings Yjs uses.

Only the subset the y-websocket protocols need is implemented. Decoding is bounds checked:
malformed input raises :class:`ProtocolError` and never makes the decoder allocate a size the
input merely claims.
"""

from __future__ import annotations

from ..errors import ProtocolError

__all__ = ["MAX_SAFE_INTEGER", "Decoder", "Encoder", "ProtocolError", "read_var_uint"]

#: The largest integer lib0 encodes losslessly (JavaScript's ``Number.MAX_SAFE_INTEGER``).
MAX_SAFE_INTEGER = 2**53 - 1

# Eight 7-bit groups hold 56 bits, enough for any safe integer; a ninth group is always an error.
_MAX_VAR_UINT_BYTES = 8


def read_var_uint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Read the varUint starting at ``data[pos]``; return it and the position after it.

    Unrolled, because the update validator (:mod:`.update`) reads several per struct.
    """
    try:
        byte = data[pos]
        if byte < 0x80:
            return byte, pos + 1
        value = byte & 0x7F
        byte = data[pos + 1]
        if byte < 0x80:
            return value | byte << 7, pos + 2
        value |= (byte & 0x7F) << 7
        byte = data[pos + 2]
        if byte < 0x80:
            return value | byte << 14, pos + 3
        value |= (byte & 0x7F) << 14
        byte = data[pos + 3]
        if byte < 0x80:
            return value | byte << 21, pos + 4
        value |= (byte & 0x7F) << 21
        byte = data[pos + 4]
        if byte < 0x80:
            return value | byte << 28, pos + 5
        value |= (byte & 0x7F) << 28
        byte = data[pos + 5]
        if byte < 0x80:
            return value | byte << 35, pos + 6
        value |= (byte & 0x7F) << 35
        byte = data[pos + 6]
        if byte < 0x80:
            return value | byte << 42, pos + 7
        value |= (byte & 0x7F) << 42
        byte = data[pos + _MAX_VAR_UINT_BYTES - 1]
    except IndexError:
        raise ProtocolError("truncated varUint") from None
    # The eighth group holds bits 49 to 55, of which only four fit in 53 bits.
    if byte < 0x80 and byte <= MAX_SAFE_INTEGER >> 49:
        return value | byte << 49, pos + _MAX_VAR_UINT_BYTES
    raise ProtocolError("varUint exceeds 53 bits")


class Encoder:
    """Appends lib0-encoded values to a growing buffer."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write_var_uint(self, value: int) -> None:
        """Write an unsigned integer, 7 bits per byte, least significant group first."""
        if value < 0 or value > MAX_SAFE_INTEGER:
            raise ProtocolError(f"varUint out of range: {value}")
        buffer = self._buffer
        while value > 0x7F:
            buffer.append(0x80 | (value & 0x7F))
            value >>= 7
        buffer.append(value)

    def write_var_uint8_array(self, data: bytes) -> None:
        """Write a byte string prefixed by its length."""
        self.write_var_uint(len(data))
        self._buffer += data

    def write_var_string(self, text: str) -> None:
        """Write a string as UTF-8, prefixed by its length in bytes (not characters)."""
        self.write_var_uint8_array(text.encode("utf-8"))

    def write_bytes(self, data: bytes) -> None:
        """Write raw bytes with no length prefix."""
        self._buffer += data

    def to_bytes(self) -> bytes:
        """Return everything written so far."""
        return bytes(self._buffer)


class Decoder:
    """Reads lib0-encoded values from a byte string, checking every bound."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data).toreadonly()
        self._pos = 0

    @property
    def remaining(self) -> int:
        """How many bytes are left to read."""
        return len(self._data) - self._pos

    def at_end(self) -> bool:
        """Whether every byte has been read."""
        return self._pos >= len(self._data)

    def read_var_uint(self) -> int:
        """Read an unsigned integer of at most 53 bits."""
        value, self._pos = read_var_uint(self._data, self._pos)
        return value

    def read_var_uint8_array(self) -> bytes:
        """Read a length-prefixed byte string."""
        length = self.read_var_uint()
        # Check the claim against what is really there before slicing anything.
        if length > self.remaining:
            raise ProtocolError(f"length {length} exceeds the {self.remaining} bytes left")
        start = self._pos
        self._pos = start + length
        return bytes(self._data[start : self._pos])

    def read_var_string(self) -> str:
        """Read a length-prefixed UTF-8 string."""
        raw = self.read_var_uint8_array()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"invalid UTF-8 in string: {exc}") from None

    def read_rest(self) -> bytes:
        """Read every byte that is left."""
        rest = bytes(self._data[self._pos :])
        self._pos = len(self._data)
        return rest
