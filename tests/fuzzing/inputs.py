"""What the attackers send: mutated real messages, structure-aware garbage, known killers and
frame-level garbage, each drawn from a ``random.Random`` so a seed replays the same inputs.

An :class:`Attack` is the exact bytes written on the socket (after the WebSocket handshake, or
instead of it), so a suspect can be replayed, or copied into a regression test, byte for byte.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from trio_ysync.protocol import MAX_SAFE_INTEGER, Encoder

from .corpus import Corpus
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    close_frame,
    frame,
    upgrade_request,
)

#: What the attacker does after writing an attack: carry on, drop the TCP connection at once,
#: or open a fresh connection to the same room and sync (the server must still serve it).
After = Literal["go-on", "disconnect", "join"]


@dataclass(frozen=True)
class Attack:
    """One input: ``wire`` is written as it is; ``message`` is the WebSocket message it carries,
    if it carries exactly one (what a regression test would send through any client)."""

    kind: str
    wire: bytes
    message: bytes | None = None
    before_handshake: bool = False
    after: After = "go-on"


@dataclass(frozen=True)
class Limits:
    """What the generators need to know about the server under attack."""

    max_message_size: int


# -- lib0 building blocks --------------------------------------------------------------------


def var_uint(value: int) -> bytes:
    encoder = Encoder()
    encoder.write_var_uint(value)
    return encoder.to_bytes()


def var_bytes(data: bytes) -> bytes:
    return var_uint(len(data)) + data


def sync_message(subtype: int, payload: bytes) -> bytes:
    """A sync message (type 0): SyncStep1 = 0, SyncStep2 = 1, Update = 2, others unknown."""
    return b"\x00" + var_uint(subtype) + var_bytes(payload)


def awareness_message(entries: list[tuple[int, int, bytes]]) -> bytes:
    """An awareness message whose JSON states are raw bytes (so they may be invalid UTF-8)."""
    inner = var_uint(len(entries)) + b"".join(
        var_uint(client) + var_uint(clock) + var_bytes(state) for client, clock, state in entries
    )
    return b"\x01" + var_bytes(inner)


def nested_any_update(depth: int, *, client: int = 1, container: int = 0x75) -> bytes:
    """A v1 update of one Item whose ContentAny holds ``depth`` nested arrays (``0x75``) or
    objects (``0x76``, each with the key "a") around a null: one client, clock 0, parent the
    root type "t", an empty delete set."""
    opening = b"\x75\x01" if container == 0x75 else b"\x76\x01\x01a"
    struct = b"\x08" + b"\x01" + var_bytes(b"t") + b"\x01" + opening * depth + b"\x7e"
    return b"\x01\x01" + var_uint(client) + b"\x00" + struct + b"\x00"


def nested_json(depth: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"null" + b"}" * depth


# -- mutations ---------------------------------------------------------------------------------

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x75, 0x76, 0x7E)


def _huge_var_uint(rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return var_uint(MAX_SAFE_INTEGER)
    if choice == 1:
        return b"\xff" * rng.randrange(1, 12) + b"\x7f"  # past 53 bits
    if choice == 2:
        return b"\x80" * rng.randrange(1, 9)  # never terminated
    if choice == 3:
        return b"\x80" * rng.randrange(1, 7) + b"\x00"  # non-minimal zero
    if choice == 4:
        return var_uint(rng.choice((2**31, 2**32 - 1, 2**32, 2**53 - 2)))
    return var_uint(rng.randrange(128, 2**20))


def mutate(data: bytes, rng: random.Random, corpus: Corpus) -> bytes:
    """1 to 4 random edits: bit flips, byte sets, truncations, insertions, deletions,
    duplications, splices with other corpus messages and corrupted varUints."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        size = len(buffer)
        at = rng.randrange(size + 1)
        op = rng.randrange(8)
        if op == 0 and size:
            buffer[at % size] ^= 1 << rng.randrange(8)
        elif op == 1 and size:
            buffer[at % size] = rng.choice(_INTERESTING)
        elif op == 2:
            del buffer[at:]
        elif op == 3:
            buffer[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 4:
            del buffer[at : at + rng.randint(1, 8)]
        elif op == 5:
            end = min(size, at + rng.randint(1, 16))
            buffer[at:at] = buffer[at:end] * rng.randint(1, 4)
        elif op == 6:
            other = rng.choice(corpus.messages + corpus.updates)
            start = rng.randrange(len(other) + 1)
            buffer[at:] = other[start:]
        else:
            # Replace the varUint at this position with a wrong one.
            end = at
            while end < size and buffer[end] & 0x80:
                end += 1
            buffer[at : end + 1] = _huge_var_uint(rng)
    return bytes(buffer[: 256 * 1024])


# -- generators --------------------------------------------------------------------------------

Generator = Callable[[random.Random, Corpus, Limits], Attack]

ODD_JSON: tuple[bytes, ...] = (
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'{"user":"\\ud800"}',
    b"1e999",
    b"-1e999",
    b"123456789012345678901234567890123456789",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"[NaN]",
    b'"\xff\xfe"',
    b"\xc3\x28",
    b"{",
    b"",
    b"null",
    b"0",
    b"false",
    b'""',
    b'{"a":1,"a":2}',
    b'{"__proto__":{"x":1}}',
    b'"' + b"\\u0000" * 100 + b'"',
)


def _message_attack(
    kind: str, message: bytes, rng: random.Random, after: After = "go-on"
) -> Attack:
    return Attack(kind, frame(message, key=rng.randbytes(4)), message, after=after)


def real_message(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    return _message_attack("real-message", rng.choice(corpus.messages), rng)


def mutated_message(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    return _message_attack("mutated-message", mutate(rng.choice(corpus.messages), rng, corpus), rng)


def mutated_update(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    update = mutate(rng.choice(corpus.updates), rng, corpus)
    return _message_attack("mutated-update", sync_message(rng.choice((1, 2)), update), rng)


def mutated_state_vector(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    state_vector = mutate(rng.choice(corpus.state_vectors), rng, corpus)
    return _message_attack("mutated-state-vector", sync_message(0, state_vector), rng)


def mutated_awareness(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    inner = mutate(rng.choice(corpus.awareness), rng, corpus)
    return _message_attack("mutated-awareness", b"\x01" + var_bytes(inner), rng)


def wrong_length(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """A sync or awareness message whose outer length field lies."""
    payload = rng.choice(corpus.updates + corpus.state_vectors)
    head = rng.choice((b"\x00\x00", b"\x00\x01", b"\x00\x02", b"\x01"))
    lengths = (
        var_uint(len(payload) + rng.randint(1, 64)),
        var_uint(max(0, len(payload) - rng.randint(1, 64))),
        _huge_var_uint(rng),
    )
    return _message_attack("wrong-length", head + rng.choice(lengths) + payload, rng)


def unknown_type(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    message_type = rng.choice((4, 5, 9, 100, 127, 128, 2**32, MAX_SAFE_INTEGER))
    head = var_uint(message_type) if rng.random() < 0.8 else _huge_var_uint(rng)
    return _message_attack("unknown-type", head + rng.randbytes(rng.randrange(16)), rng)


def unknown_sync_subtype(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    subtype = rng.choice((3, 4, 127, 128, 2**40))
    message = sync_message(subtype, rng.choice(corpus.updates))
    return _message_attack("unknown-sync-subtype", message, rng)


def auth_message(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    subtype = rng.choice((0, 0, 1, 2, 255))
    reason = rng.choice((b"no", b"\xff\xfe", b"", rng.randbytes(8)))
    return _message_attack("auth", b"\x02" + var_uint(subtype) + var_bytes(reason), rng)


def query_awareness(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    return _message_attack("query-awareness", b"\x03" * rng.choice((1, 2, 50, 1000)), rng)


def awareness_odd_json(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    if rng.random() < 0.3:
        state = nested_json(rng.choice((10, 100, 999, 1000, 5000, 50_000)), rng)
    else:
        state = rng.choice(ODD_JSON)
    client = rng.choice((1, rng.randrange(2**32), MAX_SAFE_INTEGER))
    message = awareness_message([(client, rng.randint(1, 5), state)])
    return _message_attack("awareness-odd-json", message, rng)


def awareness_odd_entries(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """Awareness with odd client IDs and clocks, many entries, or a count that lies."""
    choice = rng.randrange(4)
    if choice == 0:
        count = rng.choice((100, 2000))
        entries = [(rng.randrange(2**53), rng.randrange(2**53), b"{}") for _ in range(count)]
        message = awareness_message(entries)
    elif choice == 1:
        message = awareness_message([(rng.randrange(2**32), 0, b"null")] * rng.randint(1, 20))
    elif choice == 2:
        inner = _huge_var_uint(rng) + var_uint(1) + var_uint(1) + var_bytes(b"{}")
        message = b"\x01" + var_bytes(inner)
    else:
        big = rng.randbytes(rng.choice((1000, 100_000)))
        message = awareness_message([(7, 1, b'"' + big.hex().encode() + b'"')])
    return _message_attack("awareness-odd-entries", message, rng)


def query_amplification(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """Many awareness states, then many queries for all of them, in one frame: each query
    costs the server an encoding of every state (and the reply's bytes)."""
    entries = [(rng.randrange(2**53), 1, b"{}") for _ in range(rng.choice((100, 2000)))]
    queries = b"\x03" * rng.choice((10, 1000))
    return _message_attack("query-amplification", awareness_message(entries) + queries, rng)


def huge_state_vector(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    choice = rng.randrange(4)
    if choice == 0:
        count = rng.choice((1, 10, 1000))
        body = var_uint(count) + b"".join(
            var_uint(rng.randrange(2**53)) + var_uint(rng.randrange(2**53)) for _ in range(count)
        )
    elif choice == 1:
        body = _huge_var_uint(rng) + b"\x01\x01"
    elif choice == 2:
        body = b"\xff\xff"
    else:
        body = b"\x01" + var_uint(MAX_SAFE_INTEGER) + _huge_var_uint(rng)
    return _message_attack("huge-state-vector", sync_message(0, body), rng)


def concatenated(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """Several messages in one frame, some of them mutated."""
    parts = []
    for _ in range(rng.randint(2, 20)):
        message = rng.choice(corpus.messages)
        parts.append(mutate(message, rng, corpus) if rng.random() < 0.2 else message)
    return _message_attack("concatenated", b"".join(parts), rng)


def many_tiny(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """Thousands of tiny messages in one frame, up to as many as the largest message holds."""
    tiny = rng.choice((b"\x03", b"\x00\x00\x01\x00", b"\x00\x02\x02\x00\x00", b"\x01\x01\x00"))
    count = rng.choice((1000, 3000, 10_000, limits.max_message_size // len(tiny)))
    return _message_attack("many-tiny", tiny * count, rng)


def deep_any(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    depth = rng.choice((50, 500, 2000, 10_000, 30_000))
    update = nested_any_update(
        depth, client=rng.randrange(1, 2**32), container=rng.choice((0x75, 0x76))
    )
    return _message_attack("deep-any", sync_message(rng.choice((1, 2)), update), rng)


def empty_message(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    return _message_attack("empty-message", b"", rng)


# -- the known killers (each crashed or broke the server when this fuzzer was written) --------

KILLER_DIVIDE_BY_ZERO = bytes.fromhex("01020700040101610174000000")
KILLER_INDEX_OUT_OF_BOUNDS = bytes.fromhex("010207ffffffff0f006fc407020703015a00")
KILLER_PENDING = bytes.fromhex("01010701000000")


def _killer(name: str, message: bytes, rng: random.Random, after: After = "go-on") -> Attack:
    return _message_attack(f"killer:{name}", message, rng, after)


def killer_divide_by_zero(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    return _killer("divide-by-zero", sync_message(rng.choice((1, 2)), KILLER_DIVIDE_BY_ZERO), rng)


def killer_index_out_of_bounds(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    message = sync_message(rng.choice((1, 2)), KILLER_INDEX_OUT_OF_BOUNDS)
    return _killer("index-out-of-bounds", message, rng)


def killer_pending_then_join(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    message = sync_message(rng.choice((1, 2)), KILLER_PENDING)
    return _killer("pending-then-join", message, rng, after="join")


def killer_deep_any(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    message = sync_message(rng.choice((1, 2)), nested_any_update(26_000))
    return _killer("deep-any-26k", message, rng)


def killer_update_then_bad_state_vector(
    rng: random.Random, corpus: Corpus, limits: Limits
) -> Attack:
    message = sync_message(2, rng.choice(corpus.updates)) + sync_message(0, b"\xff\xff")
    return _killer("update-then-bad-state-vector", message, rng)


def killer_lone_surrogate(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    message = awareness_message([(rng.randrange(1, 2**32), 1, b'"\\ud800"')])
    return _killer("awareness-lone-surrogate", message, rng)


def killer_deep_json(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    message = awareness_message([(rng.randrange(1, 2**32), 1, b"[" * 1000 + b"]" * 1000)])
    return _killer("awareness-deep-json", message, rng)


# -- frame-level garbage -----------------------------------------------------------------------


def _frame_attack(kind: str, wire: bytes, after: After = "go-on") -> Attack:
    return Attack(kind, wire, after=after)


def bad_opcode(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    opcode = rng.choice((3, 4, 5, 6, 7, 0xB, 0xC, 0xF))
    return _frame_attack(
        "frame:bad-opcode", frame(rng.choice(corpus.messages), opcode=opcode, key=rng.randbytes(4))
    )


def reserved_bits(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    wire = frame(rng.choice(corpus.messages), rsv=rng.randint(1, 7), key=rng.randbytes(4))
    return _frame_attack("frame:reserved-bits", wire)


def unmasked(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    return _frame_attack("frame:unmasked", frame(rng.choice(corpus.messages), key=None))


def text_frame(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    text = rng.choice((b"hello", b"\xff\xfe\xfd", b"\xed\xa0\x80", "é".encode()))
    return _frame_attack("frame:text", frame(text, opcode=OP_TEXT, key=rng.randbytes(4)))


def fragmented(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """A real message in several fragments, with pings between them."""
    message = rng.choice(corpus.messages)
    cuts = sorted(rng.randrange(len(message) + 1) for _ in range(rng.randint(1, 6)))
    pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    wire = b""
    for index, piece in enumerate(pieces):
        opcode = OP_BINARY if index == 0 else OP_CONTINUATION
        wire += frame(piece, opcode=opcode, fin=index == len(pieces) - 1, key=rng.randbytes(4))
        if rng.random() < 0.3:
            wire += frame(b"p", opcode=OP_PING, key=rng.randbytes(4))
    return Attack("frame:fragmented", wire, message)


def zero_continuations(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """A message followed by thousands of empty continuation frames before its last one."""
    message = rng.choice(corpus.messages)
    key = rng.randbytes(4)
    count = rng.choice((100, 1000, 5000, 20_000, 200_000))
    empty = frame(b"", opcode=OP_CONTINUATION, fin=False, key=key)
    wire = (
        frame(message, fin=False, key=key)
        + empty * count
        + frame(b"", opcode=OP_CONTINUATION, key=key)
    )
    return Attack("frame:zero-continuations", wire, message)


def orphan_continuation(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    wire = frame(
        rng.choice(corpus.messages),
        opcode=OP_CONTINUATION,
        fin=rng.random() < 0.5,
        key=rng.randbytes(4),
    )
    return _frame_attack("frame:orphan-continuation", wire)


def bad_control(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    key = rng.randbytes(4)
    choice = rng.randrange(5)
    if choice == 0:
        wire = frame(rng.randbytes(200), opcode=OP_PING, key=key)  # control frames max 125
    elif choice == 1:
        wire = frame(b"ab", opcode=OP_PING, fin=False, key=key)  # fragmented control frame
    elif choice == 2:
        wire = close_frame(rng.choice((0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535)), key=key)
    elif choice == 3:
        wire = frame(b"\x03", opcode=OP_CLOSE, key=key)  # a 1-byte close payload
    else:
        wire = close_frame(1000, b"\xff\xfe", key=key)  # reason not UTF-8
    return _frame_attack("frame:bad-control", wire)


def oversize_header(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """A header announcing more than the server accepts, with a little of it, then gone."""
    announced = rng.choice((limits.max_message_size + 1, 2**32, 2**62, 2**64 - 1))
    wire = frame(rng.randbytes(rng.choice((0, 10, 4096))), key=rng.randbytes(4), length=announced)
    return _frame_attack("frame:oversize-header", wire, after="disconnect")


def oversize_message(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """More than the maximum message size, whole or in fragments: the server must say 1009."""
    size = limits.max_message_size + 1
    key = rng.randbytes(4)
    if rng.random() < 0.5:
        wire = frame(bytes(size), key=key)
    else:
        chunk = size // 4 + 1
        pieces = [bytes(chunk)] * 4
        wire = b"".join(
            frame(piece, opcode=OP_BINARY if i == 0 else OP_CONTINUATION, fin=i == 3, key=key)
            for i, piece in enumerate(pieces)
        )
    return _frame_attack("frame:oversize-message", wire)


def abrupt_disconnect(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    """Half a frame, then the TCP connection is dropped."""
    whole = frame(rng.choice(corpus.messages), key=rng.randbytes(4))
    return _frame_attack(
        "frame:abrupt-disconnect", whole[: rng.randrange(1, len(whole))], after="disconnect"
    )


def random_bytes(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    return _frame_attack("frame:random-bytes", rng.randbytes(rng.randint(1, 512)))


# -- before the handshake ----------------------------------------------------------------------


def handshake_abort(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    request = upgrade_request("/fuzz-0", key=b"dGhlIHNhbXBsZSBub25jZQ==")
    return Attack(
        "handshake:abort",
        request[: rng.randrange(len(request))],
        before_handshake=True,
        after="disconnect",
    )


def handshake_garbage(rng: random.Random, corpus: Corpus, limits: Limits) -> Attack:
    choice = rng.randrange(5)
    if choice == 0:
        wire = rng.randbytes(rng.randint(1, 2048))
    elif choice == 1:
        wire = upgrade_request("/fuzz-0", version=b"12", key=b"dGhlIHNhbXBsZSBub25jZQ==")
    elif choice == 2:
        wire = upgrade_request("/fuzz-0")  # no Sec-WebSocket-Key
    elif choice == 3:
        wire = (
            b"GET /" + b"a" * rng.choice((100, 10_000, 100_000)) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    else:
        wire = b"GET /fuzz-0 HTTP/1.1\r\n" + b"X: y\r\n" * rng.choice((100, 5000)) + b"\r\n"
    return Attack("handshake:garbage", wire, before_handshake=True)


# kind -> (weight, generator); the weights favour what reaches the document library.
GENERATORS: dict[str, tuple[int, Generator]] = {
    "real-message": (4, real_message),
    "mutated-message": (12, mutated_message),
    "mutated-update": (20, mutated_update),
    "mutated-state-vector": (6, mutated_state_vector),
    "mutated-awareness": (6, mutated_awareness),
    "wrong-length": (4, wrong_length),
    "unknown-type": (2, unknown_type),
    "unknown-sync-subtype": (2, unknown_sync_subtype),
    "auth": (1, auth_message),
    "query-awareness": (2, query_awareness),
    "awareness-odd-json": (4, awareness_odd_json),
    "awareness-odd-entries": (2, awareness_odd_entries),
    "query-amplification": (1, query_amplification),
    "huge-state-vector": (3, huge_state_vector),
    "concatenated": (4, concatenated),
    "many-tiny": (1, many_tiny),
    "deep-any": (1, deep_any),
    "empty-message": (1, empty_message),
    "killer:divide-by-zero": (1, killer_divide_by_zero),
    "killer:index-out-of-bounds": (1, killer_index_out_of_bounds),
    "killer:pending-then-join": (1, killer_pending_then_join),
    "killer:deep-any-26k": (1, killer_deep_any),
    "killer:update-then-bad-state-vector": (1, killer_update_then_bad_state_vector),
    "killer:awareness-lone-surrogate": (1, killer_lone_surrogate),
    "killer:awareness-deep-json": (1, killer_deep_json),
    "frame:bad-opcode": (1, bad_opcode),
    "frame:reserved-bits": (1, reserved_bits),
    "frame:unmasked": (1, unmasked),
    "frame:text": (1, text_frame),
    "frame:fragmented": (3, fragmented),
    "frame:zero-continuations": (1, zero_continuations),
    "frame:orphan-continuation": (1, orphan_continuation),
    "frame:bad-control": (2, bad_control),
    "frame:oversize-header": (1, oversize_header),
    "frame:oversize-message": (1, oversize_message),
    "frame:abrupt-disconnect": (2, abrupt_disconnect),
    "frame:random-bytes": (1, random_bytes),
    "handshake:abort": (1, handshake_abort),
    "handshake:garbage": (1, handshake_garbage),
}


def select_kinds(patterns: list[str]) -> list[str]:
    """The kinds matching ``patterns`` (shell globs; ``-glob`` excludes; none means all)."""
    included = [p for p in patterns if not p.startswith("-")]
    excluded = [p[1:] for p in patterns if p.startswith("-")]
    kinds = [
        kind
        for kind in GENERATORS
        if (not included or any(fnmatch.fnmatchcase(kind, p) for p in included))
        and not any(fnmatch.fnmatchcase(kind, p) for p in excluded)
    ]
    if not kinds:
        raise ValueError(f"no attack kind matches {patterns}")
    return kinds


class AttackSource:
    """Draws attacks of the selected kinds by weight from one attacker's ``random.Random``."""

    def __init__(
        self, rng: random.Random, corpus: Corpus, limits: Limits, kinds: list[str]
    ) -> None:
        self.rng = rng
        self.corpus = corpus
        self.limits = limits
        self._generators = [GENERATORS[kind][1] for kind in kinds]
        self._weights = [GENERATORS[kind][0] for kind in kinds]

    def next(self) -> Attack:
        [generate] = self.rng.choices(self._generators, self._weights)
        return generate(self.rng, self.corpus, self.limits)
