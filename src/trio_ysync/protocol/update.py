"""Validation of Yjs v1 updates and state vectors, before they reach a native document library.

The document libraries (yrs through pycrdt or y-py) trust their input: a malformed update can
make them panic (``pyo3_runtime.PanicException``, a ``BaseException``), overflow the native stack
or misread the rest of the bytes. :func:`validate_update` walks a whole update the way yjs reads
it and accepts only what both yjs and yrs read the same way and can apply safely:

- every length and count fits in the bytes that are really there, and every byte is consumed;
- strings are valid UTF-8 (yrs reads them unchecked); content lengths are counted as yjs counts
  them (UTF-16 code units for strings);
- no struct, client section or delete range is empty (yjs trips over empty items too); every
  clock, and every client's clock after its last struct, is at most :data:`MAX_CLOCK` (2**31 - 1);
  client IDs fit in 53 bits (lib0's integers);
- references to the item's own client point back in time (an item cannot follow itself);
- nesting of ``Any`` values and of JSON text is bounded, and JSON text parses as JSON;
- each client appears once (yjs keeps the last section of a repeated client, yrs keeps all);
- the two encodings yrs reads differently from yjs are refused unless allowed: legacy JSON content
  (yrs reads one string more than the count says) and ``XmlHook`` types (yrs skips the name).

Validation is a pure function of the bytes: updates that are well formed but still unsafe for a
particular document (they depend on state it lacks) are the document library's to handle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from ._json import json_depth
from .lib0 import ProtocolError, read_var_uint

__all__ = [
    "DEFAULT_UPDATE_LIMITS",
    "EMPTY_STATE_VECTOR",
    "EMPTY_UPDATE",
    "MAX_CLOCK",
    "UpdateInfo",
    "UpdateLimits",
    "validate_state_vector",
    "validate_update",
]

#: The update that changes nothing (no structs, no deletes), as every library encodes it.
EMPTY_UPDATE = b"\x00\x00"

#: The state vector of a document that holds nothing.
EMPTY_STATE_VECTOR = b"\x00"

#: The largest clock accepted. yrs stores clocks as ``u32``, but a struct at clock 2**31 or
#: above, once the clocks before it arrive, makes yrs panic (found by fuzzing: it searches
#: blocks with signed arithmetic), so the bound is 2**31 - 1, which no real client reaches (two
#: billion edits by one client ID). A client's clock after its last struct, and the end of every
#: delete range, must not exceed it.
MAX_CLOCK = 2**31 - 1


@dataclass(frozen=True)
class UpdateLimits:
    """Bounds that :func:`validate_update` and :func:`validate_state_vector` enforce.

    Counts are also bounded by the byte size (every struct, range and client takes at least two
    bytes); these limits let a server cap them further than its message size limit does.
    """

    #: How deeply ``Any`` values (arrays and objects) and JSON text may nest. yrs recurses per
    #: level when it reads, writes or drops a value and overflows its stack some thousands of
    #: levels down; serde_json, which parses yrs's JSON content, stops at 128.
    max_depth: int = 100
    #: Distinct clients in the struct sections, in the delete set, or in a state vector. A
    #: document gains one client per editing session, so long-lived documents carry thousands.
    max_clients: int = 100_000
    #: Structs (items, GC and Skip ranges) in one update.
    max_structs: int = 4_000_000
    #: Delete-set ranges in one update.
    max_delete_ranges: int = 4_000_000
    #: Accept legacy JSON content (content ref 2, written by yjs before 13). yrs reads one string
    #: more than the count says, so the rest of such an update means something else to it.
    allow_json_content: bool = False
    #: Accept ``XmlHook`` types (type ref 5). yrs does not read the hook name that yjs writes, so
    #: it misreads everything after one; it also writes hooks without names.
    allow_xml_hooks: bool = False


#: The limits used when none are given.
DEFAULT_UPDATE_LIMITS = UpdateLimits()


class UpdateInfo(NamedTuple):
    """Facts about a valid update, gathered while validating it."""

    #: Size of the update in bytes.
    size: int
    #: Number of structs (items, GC and Skip ranges).
    structs: int
    #: For each client with structs: (clock of its first struct, clock after its last struct),
    #: Skip ranges included.
    clocks: Mapping[int, tuple[int, int]]
    #: Number of delete-set ranges.
    delete_ranges: int
    #: Clients with ranges in the delete set.
    delete_clients: frozenset[int]
    #: For each client that origins, right origins and parents of *another* client's structs
    #: name, or that the delete set names: the clock just after the furthest one named. With
    #: :attr:`clocks`, what a document must already hold for the update to apply whole.
    references: Mapping[int, int] = MappingProxyType({})

    @property
    def is_empty(self) -> bool:
        """Whether the update changes nothing: no structs and no deletions."""
        return self.structs == 0 and self.delete_ranges == 0

    @property
    def clients(self) -> frozenset[int]:
        """Every client the update touches (with structs or deletions)."""
        return frozenset(self.clocks) | self.delete_clients

    def held_by(self, state_vector: Mapping[int, int]) -> bool:
        """Whether a document at ``state_vector`` holds all of the update: its structs, and
        every clock it names (origins, parents, delete ranges), so none of it can be pending
        there."""
        for client, (_, end) in self.clocks.items():
            if end > state_vector.get(client, 0):
                return False
        return all(
            needed <= state_vector.get(client, 0) for client, needed in self.references.items()
        )

    def needs_more_than(self, state_vector: Mapping[int, int]) -> bool:
        """Whether applying the update to a document at ``state_vector`` would leave part of it
        pending: some client's structs start after the document's last clock of that client,
        or the update names clocks of other clients that neither the document nor the update
        holds (its origins, parents and delete ranges)."""
        clocks = self.clocks
        for client, (start, _) in clocks.items():
            if start > state_vector.get(client, 0):
                return True
        for client, needed in self.references.items():
            if needed > state_vector.get(client, 0) and (
                client not in clocks or needed > clocks[client][1]
            ):
                return True
        return False


# Struct info byte: the low five bits are the content ref, the high three flag what follows.
_HAS_ORIGIN = 0x80
_HAS_RIGHT_ORIGIN = 0x40
_HAS_PARENT_SUB = 0x20
_GC = 0
_SKIP = 10
_DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC = range(1, 10)
# Type refs: Array, Map, Text, XmlElement, XmlFragment, XmlHook, XmlText.
_XML_ELEMENT = 3
_XML_HOOK = 5
_LAST_TYPE_REF = 6

# lib0 Any tags.
_ANY_UNDEFINED = 127
_ANY_NULL = 126
_ANY_INTEGER = 125
_ANY_FLOAT32 = 124
_ANY_FLOAT64 = 123
_ANY_BIGINT = 122
_ANY_FALSE = 121
_ANY_TRUE = 120
_ANY_STRING = 119
_ANY_OBJECT = 118
_ANY_ARRAY = 117
_ANY_BYTES = 116
# A lib0 varInt holds at most 53 bits: 6 in the first byte and 7 in each of seven more.
_MAX_VAR_INT_BYTES = 8


def validate_update(
    update: bytes | bytearray | memoryview, limits: UpdateLimits = DEFAULT_UPDATE_LIMITS
) -> UpdateInfo:
    """Check that ``update`` is a well-formed Yjs v1 update within ``limits``.

    Returns what was learnt on the way. Raises :class:`~trio_ysync.protocol.ProtocolError`
    naming the first problem and its byte offset.
    """
    data = update if isinstance(update, bytes) else bytes(update)
    try:
        return _walk_update(data, limits)
    except IndexError:
        # Reads index the bytes directly; running off the end is how truncation shows.
        raise ProtocolError("update is truncated") from None


def validate_state_vector(
    data: bytes | bytearray | memoryview, limits: UpdateLimits = DEFAULT_UPDATE_LIMITS
) -> dict[int, int]:
    """Check an encoded state vector and return it as ``{client: clock}``.

    Raises :class:`~trio_ysync.protocol.ProtocolError` if it is malformed, repeats a client,
    holds a clock above :data:`MAX_CLOCK` or more clients than ``limits.max_clients``.
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    count, pos = read_var_uint(raw, 0)
    if count > limits.max_clients:
        raise ProtocolError(f"state vector has {count} clients, more than {limits.max_clients}")
    if count * 2 > len(raw) - pos:
        raise ProtocolError(f"state vector claims {count} clients in {len(raw)} bytes")
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_var_uint(raw, pos)
        clock, pos = read_var_uint(raw, pos)
        if clock > MAX_CLOCK:
            raise ProtocolError(
                f"state vector clock {clock} of client {client} exceeds {MAX_CLOCK}"
            )
        if client in clocks:
            raise ProtocolError(f"state vector repeats client {client}")
        clocks[client] = clock
    if pos != len(raw):
        raise ProtocolError(f"{len(raw) - pos} bytes after the state vector")
    return clocks


def _walk_update(data: bytes, limits: UpdateLimits) -> UpdateInfo:
    # One flat loop with local names and the short varUint cases inlined: this runs on every
    # update a server receives, so it makes no objects per struct beyond the strings it checks.
    size = len(data)
    max_depth = limits.max_depth
    allow_json = limits.allow_json_content
    allow_hooks = limits.allow_xml_hooks
    var_uint = read_var_uint

    sections, pos = var_uint(data, 0)
    if sections > limits.max_clients:
        raise ProtocolError(f"update has {sections} clients, more than {limits.max_clients}")
    max_structs = limits.max_structs
    structs = 0
    clocks: dict[int, tuple[int, int]] = {}
    references: dict[int, int] = {}
    # Origins name a client in up to eight bytes, nearly always the section's own client or the
    # one named last: compare the encoded bytes instead of decoding them again.
    other_bytes = b""
    other_client = -1
    for _ in range(sections):
        count, pos = var_uint(data, pos)
        structs += count
        if structs > max_structs:
            raise ProtocolError(f"update has more than {max_structs} structs")
        if count * 2 > size - pos:
            raise ProtocolError(f"{count} structs claimed at byte {pos}, too few bytes left")
        if count == 0:
            # Never written by yjs or yrs; yrs indexes the last struct of a client's list.
            raise ProtocolError(f"client section without structs at byte {pos - 1}")
        client_start = pos
        client, pos = var_uint(data, pos)
        client_bytes = data[client_start:pos]
        if client in clocks:
            raise ProtocolError(f"update repeats client {client}")
        clock, pos = var_uint(data, pos)
        start = clock
        for _ in range(count):
            info = data[pos]
            pos += 1
            ref = info & 0x1F
            if ref in (_GC, _SKIP):
                if info != ref:
                    raise ProtocolError(f"invalid struct info byte {info:#04x} at byte {pos - 1}")
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = var_uint(data, pos)
                if length == 0:
                    kind = "GC" if ref == _GC else "Skip"
                    raise ProtocolError(f"{kind} struct of length 0 at byte {pos - 1}")
                clock += length
                continue
            if ref > _DOC:
                raise ProtocolError(f"invalid content ref {ref} at byte {pos - 1}")
            if info & _HAS_ORIGIN:
                if data.startswith(client_bytes, pos):
                    id_client = client
                    pos += len(client_bytes)
                elif other_bytes and data.startswith(other_bytes, pos):
                    id_client = other_client
                    pos += len(other_bytes)
                else:
                    id_start = pos
                    id_client, pos = var_uint(data, pos)
                    other_bytes = data[id_start:pos]
                    other_client = id_client
                id_clock = data[pos]
                if id_clock < 0x80:
                    pos += 1
                elif data[pos + 1] < 0x80:
                    id_clock = (id_clock & 0x7F) | data[pos + 1] << 7
                    pos += 2
                else:
                    id_clock, pos = var_uint(data, pos)
                if id_client == client:
                    if id_clock >= clock:
                        raise ProtocolError(f"origin clock {id_clock} out of range at byte {pos}")
                elif id_clock >= MAX_CLOCK:
                    raise ProtocolError(f"origin clock {id_clock} out of range at byte {pos}")
                elif id_clock >= references.get(id_client, 0):
                    references[id_client] = id_clock + 1
            if info & _HAS_RIGHT_ORIGIN:
                if data.startswith(client_bytes, pos):
                    id_client = client
                    pos += len(client_bytes)
                elif other_bytes and data.startswith(other_bytes, pos):
                    id_client = other_client
                    pos += len(other_bytes)
                else:
                    id_start = pos
                    id_client, pos = var_uint(data, pos)
                    other_bytes = data[id_start:pos]
                    other_client = id_client
                id_clock = data[pos]
                if id_clock < 0x80:
                    pos += 1
                elif data[pos + 1] < 0x80:
                    id_clock = (id_clock & 0x7F) | data[pos + 1] << 7
                    pos += 2
                else:
                    id_clock, pos = var_uint(data, pos)
                if id_client == client:
                    if id_clock >= clock:
                        raise ProtocolError(
                            f"right origin clock {id_clock} out of range at byte {pos}"
                        )
                elif id_clock >= MAX_CLOCK:
                    raise ProtocolError(f"right origin clock {id_clock} out of range at byte {pos}")
                elif id_clock >= references.get(id_client, 0):
                    references[id_client] = id_clock + 1
            if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
                parent_info = data[pos]
                pos += 1
                if parent_info == 1:
                    pos = _skip_string(data, pos)
                elif parent_info == 0:
                    id_client, pos = var_uint(data, pos)
                    id_clock, pos = var_uint(data, pos)
                    if id_clock >= (clock if id_client == client else MAX_CLOCK):
                        raise ProtocolError(f"parent clock {id_clock} out of range at byte {pos}")
                    if id_client != client and id_clock >= references.get(id_client, 0):
                        references[id_client] = id_clock + 1
                else:
                    raise ProtocolError(f"invalid parent info {parent_info} at byte {pos - 1}")
                if info & _HAS_PARENT_SUB:
                    pos = _skip_string(data, pos)

            if ref == _STRING:
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = var_uint(data, pos)
                end = pos + length
                if end > size:
                    raise ProtocolError(f"string content at byte {pos} runs past the end")
                try:
                    text = data[pos:end].decode()
                except UnicodeDecodeError:
                    raise ProtocolError(f"invalid UTF-8 in string content at byte {pos}") from None
                pos = end
                # yjs counts UTF-16 code units: one per character, two beyond the BMP (whose
                # characters take four bytes in UTF-8, so an ASCII-length text has none).
                if len(text) != length:
                    length = len(text.encode("utf-16-le")) >> 1
            elif ref == _ANY:
                count_any, pos = var_uint(data, pos)
                if count_any > size - pos:
                    raise ProtocolError(f"{count_any} values claimed at byte {pos}")
                for _ in range(count_any):
                    pos = _skip_any(data, pos, max_depth)
                length = count_any
            elif ref == _DELETED:
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = var_uint(data, pos)
            elif ref == _FORMAT:
                pos = _skip_string(data, pos)
                pos = _skip_json(data, pos, max_depth)
                length = 1
            elif ref == _TYPE:
                type_ref = data[pos]
                pos += 1
                if type_ref > _LAST_TYPE_REF:
                    raise ProtocolError(f"invalid type ref {type_ref} at byte {pos - 1}")
                if type_ref == _XML_ELEMENT:
                    pos = _skip_string(data, pos)
                elif type_ref == _XML_HOOK:
                    if not allow_hooks:
                        raise ProtocolError(f"XmlHook type at byte {pos - 1} is not accepted")
                    pos = _skip_string(data, pos)
                length = 1
            elif ref == _EMBED:
                pos = _skip_json(data, pos, max_depth)
                length = 1
            elif ref == _BINARY:
                length, pos = var_uint(data, pos)
                pos += length
                if pos > size:
                    raise ProtocolError("binary content runs past the end")
                length = 1
            elif ref == _DOC:
                pos = _skip_string(data, pos)
                if data[pos] != _ANY_OBJECT:
                    raise ProtocolError(f"subdocument options at byte {pos} are not an object")
                pos = _skip_any(data, pos, max_depth)
                length = 1
            else:  # _JSON
                if not allow_json:
                    raise ProtocolError(f"legacy JSON content at byte {pos - 1} is not accepted")
                length, pos = var_uint(data, pos)
                if length > size - pos:
                    raise ProtocolError(f"{length} JSON values claimed at byte {pos}")
                for _ in range(length):
                    pos = _skip_json(data, pos, max_depth, undefined_allowed=True)
            if length == 0:
                raise ProtocolError(f"empty content in the struct ending at byte {pos}")
            clock += length
        if clock > MAX_CLOCK:
            raise ProtocolError(f"client {client} reaches clock {clock}, beyond {MAX_CLOCK}")
        clocks[client] = (start, clock)

    if data[pos] == 0:  # the usual empty delete set
        delete_ranges, delete_clients, pos = 0, _NO_CLIENTS, pos + 1
    else:
        delete_ranges, delete_clients, pos = _walk_delete_set(data, pos, limits, references)
    if pos != size:
        raise ProtocolError(f"{size - pos} bytes after the end of the update")
    return UpdateInfo(size, structs, clocks, delete_ranges, delete_clients, references)


_NO_CLIENTS: frozenset[int] = frozenset()


def _walk_delete_set(
    data: bytes, pos: int, limits: UpdateLimits, references: dict[int, int]
) -> tuple[int, frozenset[int], int]:
    var_uint = read_var_uint
    count, pos = var_uint(data, pos)
    if count > limits.max_clients:
        raise ProtocolError(f"delete set has {count} clients, more than {limits.max_clients}")
    max_ranges = limits.max_delete_ranges
    ranges = 0
    clients: set[int] = set()
    for _ in range(count):
        client, pos = var_uint(data, pos)
        if client in clients:
            raise ProtocolError(f"delete set repeats client {client}")
        clients.add(client)
        n, pos = var_uint(data, pos)
        ranges += n
        if ranges > max_ranges:
            raise ProtocolError(f"delete set has more than {max_ranges} ranges")
        if n * 2 > len(data) - pos:
            raise ProtocolError(f"{n} delete ranges claimed at byte {pos}, too few bytes left")
        for _ in range(n):
            clock = data[pos]
            if clock < 0x80:
                pos += 1
            elif data[pos + 1] < 0x80:
                clock = (clock & 0x7F) | data[pos + 1] << 7
                pos += 2
            else:
                clock, pos = var_uint(data, pos)
            length = data[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = var_uint(data, pos)
            if length == 0:
                raise ProtocolError(f"delete range of length 0 at byte {pos - 1}")
            if clock + length > MAX_CLOCK:
                raise ProtocolError(f"delete range of client {client} ends beyond {MAX_CLOCK}")
            if clock + length > references.get(client, 0):
                references[client] = clock + length
    return ranges, frozenset(clients), pos


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    """Read the varString at ``pos``; return it and the position after it."""
    length = data[pos]
    if length < 0x80:
        pos += 1
    else:
        length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError(f"string at byte {pos} runs past the end")
    try:
        return data[pos:end].decode(), end
    except UnicodeDecodeError:
        raise ProtocolError(f"invalid UTF-8 in the string at byte {pos}") from None


def _skip_string(data: bytes, pos: int) -> int:
    """Check the varString at ``pos``; return the position after it."""
    return _read_string(data, pos)[1]


def _skip_any(data: bytes, pos: int, max_depth: int) -> int:
    """Check one lib0 ``Any`` value at ``pos``; return the position after it.

    Iterative, so nesting costs a list entry rather than a Python frame.
    """
    # The open containers, innermost last: values still to read, times two, plus one for objects
    # (whose entries each start with a key).
    open_containers: list[int] = []
    remaining = 1
    in_object = False
    while True:
        while remaining == 0:
            if not open_containers:
                return pos
            outer = open_containers.pop()
            remaining = outer >> 1
            in_object = bool(outer & 1)
        remaining -= 1
        if in_object:
            pos = _skip_string(data, pos)
        tag = data[pos]
        pos += 1
        if tag == _ANY_STRING:
            pos = _skip_string(data, pos)
        elif tag == _ANY_INTEGER:
            pos = _skip_var_int(data, pos)
        elif tag in (_ANY_OBJECT, _ANY_ARRAY):
            count, pos = read_var_uint(data, pos)
            if count > len(data) - pos:
                raise ProtocolError(f"{count} values claimed at byte {pos}")
            if len(open_containers) >= max_depth:
                raise ProtocolError(f"values nested deeper than {max_depth} at byte {pos}")
            if count:
                open_containers.append(remaining << 1 | in_object)
                remaining = count
                in_object = tag == _ANY_OBJECT
        elif tag in (_ANY_TRUE, _ANY_FALSE, _ANY_NULL, _ANY_UNDEFINED):
            pass
        elif tag in (_ANY_FLOAT64, _ANY_BIGINT):
            pos += 8
        elif tag == _ANY_FLOAT32:
            pos += 4
        elif tag == _ANY_BYTES:
            length, pos = read_var_uint(data, pos)
            pos += length
        else:
            raise ProtocolError(f"invalid value tag {tag} at byte {pos - 1}")
        if pos > len(data):
            raise ProtocolError("value runs past the end")


def _skip_var_int(data: bytes, pos: int) -> int:
    """Check a lib0 varInt (sign bit in the first byte) of at most 53 bits."""
    for i in range(_MAX_VAR_INT_BYTES):
        byte = data[pos + i]
        if byte < 0x80:
            if i == _MAX_VAR_INT_BYTES - 1 and byte > 0x1F:
                break  # 6 + 6 * 7 bits before it: the eighth byte may add only five more
            return pos + i + 1
    raise ProtocolError(f"integer at byte {pos} exceeds 53 bits")


def _skip_json(data: bytes, pos: int, max_depth: int, *, undefined_allowed: bool = False) -> int:
    """Check the varString of JSON text at ``pos``; return the position after it."""
    text, end = _read_string(data, pos)
    if undefined_allowed and text == "undefined":
        return end
    # Parsed first: measuring the depth of text that is not JSON can cost the square of its
    # length, and the parser itself stops at Python's recursion limit.
    try:
        _JSON_DECODER.decode(text)
    except (ValueError, RecursionError):
        raise ProtocolError(f"invalid JSON at byte {pos}") from None
    # Counting brackets is a cheap upper bound of the depth; measure only when it is too high.
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise ProtocolError(f"JSON at byte {pos} nests deeper than {max_depth}")
    return end


def _reject_constant(name: str) -> float:
    # Python's json accepts NaN and Infinity; JSON.parse and serde_json do not.
    raise ValueError(f"{name} is not JSON")


# Integers parse as floats: the text only has to be JSON, and int() refuses very long digit runs.
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=float)
