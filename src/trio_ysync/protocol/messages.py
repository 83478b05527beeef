"""Typed y-websocket messages and their wire codec.

One WebSocket binary frame carries one message; newer clients may put several back to back, so
:func:`decode` reads until the frame is exhausted. The layouts follow y-protocols (sync,
awareness, auth) and y-websocket (query awareness).
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ._json import json_depth
from .lib0 import Decoder, Encoder, ProtocolError
from .update import (
    DEFAULT_UPDATE_LIMITS,
    UpdateInfo,
    UpdateLimits,
    validate_state_vector,
    validate_update,
)

__all__ = [
    "AwarenessEntry",
    "AwarenessUpdate",
    "DEFAULT_MESSAGE_LIMITS",
    "JSONValue",
    "Message",
    "MessageLimits",
    "MessageType",
    "PermissionDenied",
    "QueryAwareness",
    "SyncMessageType",
    "SyncStep1",
    "SyncStep2",
    "SyncUpdate",
    "UnknownMessage",
    "decode",
    "decode_awareness_update",
    "encode",
    "encode_awareness_update",
    "encode_json",
    "message_kind",
    "parse_json",
]

#: A parsed JSON value, as ``json.loads`` returns it.
JSONValue = Any


class MessageType(enum.IntEnum):
    """The first varUint of every message."""

    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncMessageType(enum.IntEnum):
    """The varUint after :attr:`MessageType.SYNC`."""

    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


_AUTH_PERMISSION_DENIED = 0


@dataclass(frozen=True, slots=True)
class MessageLimits:
    """Bounds on what one frame may ask of its receiver, checked while decoding.

    Attributes:
        max_messages: messages in one frame (y-websocket clients send one per frame).
        max_awareness_state_bytes: the JSON text of one awareness state, in UTF-8 bytes.
        max_json_depth: nesting of arrays and objects in an awareness state.
        update: the bounds every update and state vector is validated against (see
            :func:`~trio_ysync.protocol.validate_update`).
    """

    max_messages: int = 1000
    max_awareness_state_bytes: int = 256 * 1024
    max_json_depth: int = 64
    update: UpdateLimits = DEFAULT_UPDATE_LIMITS


#: The limits :func:`decode` applies unless told otherwise.
DEFAULT_MESSAGE_LIMITS = MessageLimits()


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """A peer's state vector, asking for everything it lacks."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """The answer to :class:`SyncStep1`: a v1 update with what the asker lacks.

    ``info`` is what :func:`decode` learnt validating the update (``None`` when built by hand).
    """

    update: bytes
    info: UpdateInfo | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """An incremental v1 document update (``info``: as for :class:`SyncStep2`)."""

    update: bytes
    info: UpdateInfo | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's presence: its ID, a clock that orders its changes, and a JSON state.

    A ``state`` of ``None`` (JSON ``null``) means the client has left.
    """

    client_id: int
    clock: int
    state: JSONValue


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    """A batch of awareness entries."""

    entries: list[AwarenessEntry]


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """A request for every awareness state the receiver knows."""


@dataclass(frozen=True, slots=True)
class PermissionDenied:
    """The auth message telling a client it may not access the document."""

    reason: str


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message of a type this codec does not know.

    Its length cannot be known, so ``payload`` holds the rest of the frame and decoding stops
    there. Receivers may ignore it or treat it as an error.
    """

    message_type: int
    payload: bytes


#: Any decoded message.
Message: TypeAlias = (
    SyncStep1
    | SyncStep2
    | SyncUpdate
    | AwarenessUpdate
    | QueryAwareness
    | PermissionDenied
    | UnknownMessage
)


_KINDS: dict[type, str] = {
    SyncStep1: "sync_step1",
    SyncStep2: "sync_step2",
    SyncUpdate: "sync_update",
    AwarenessUpdate: "awareness",
    QueryAwareness: "query_awareness",
    PermissionDenied: "auth",
    UnknownMessage: "unknown",
}


def message_kind(message: Message) -> str:
    """A short name for the message's kind (``"sync_update"``, ``"awareness"``, ...), as
    metrics and logs label it."""
    return _KINDS[type(message)]


def encode_json(value: JSONValue) -> str:
    """Serialize ``value`` the way JavaScript's ``JSON.stringify`` does: compact, raw UTF-8."""
    return json.dumps(
        _javascript_numbers(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _javascript_numbers(value: JSONValue) -> JSONValue:
    # JSON.stringify writes 1.0 as "1" and non-finite numbers as null.
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 1e21:
            return int(value)
        return value
    if isinstance(value, dict):
        return {str(key): _javascript_numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_javascript_numbers(item) for item in value]
    return value


def _reject_constant(name: str) -> None:
    raise ProtocolError(f"invalid JSON constant {name}")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str, max_depth: int = DEFAULT_MESSAGE_LIMITS.max_json_depth) -> JSONValue:
    """Parse untrusted JSON text: nesting bounded by ``max_depth``, only values that can be
    written back as UTF-8 (no lone surrogates), no NaN or Infinity.

    Raises:
        ProtocolError: the text is not such JSON.
    """
    # Parsed first: measuring the depth of text that is not JSON can cost the square of its
    # length, and the parser itself stops at Python's recursion limit.
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"invalid JSON: {exc}") from None
    # Counting brackets is a cheap upper bound; only texts that might be too deep are measured.
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise ProtocolError(f"JSON nested deeper than {max_depth} levels")
    if _SURROGATE_ESCAPE.search(text):
        try:
            encode_json(value).encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("JSON with a lone surrogate cannot be sent on") from None
    return value


def encode_awareness_update(entries: list[AwarenessEntry]) -> bytes:
    """Encode the inner awareness payload (without the message type and length prefix)."""
    encoder = Encoder()
    encoder.write_var_uint(len(entries))
    for entry in entries:
        encoder.write_var_uint(entry.client_id)
        encoder.write_var_uint(entry.clock)
        encoder.write_var_string(encode_json(entry.state))
    return encoder.to_bytes()


def decode_awareness_update(
    payload: bytes, limits: MessageLimits = DEFAULT_MESSAGE_LIMITS
) -> list[AwarenessEntry]:
    """Decode the inner awareness payload written by :func:`encode_awareness_update`.

    Raises:
        ProtocolError: the payload is malformed, or a state exceeds ``limits``.
    """
    decoder = Decoder(payload)
    count = decoder.read_var_uint()
    # Each entry takes at least three bytes, which bounds the count without trusting it.
    if count * 3 > decoder.remaining:
        raise ProtocolError(f"awareness update claims {count} entries in {decoder.remaining} bytes")
    entries = []
    for _ in range(count):
        client_id = decoder.read_var_uint()
        clock = decoder.read_var_uint()
        text = decoder.read_var_string()
        if len(text) > limits.max_awareness_state_bytes:  # characters: at most the bytes
            raise ProtocolError(f"awareness state over {limits.max_awareness_state_bytes} bytes")
        state = parse_json(text, limits.max_json_depth)
        entries.append(AwarenessEntry(client_id, clock, state))
    return entries


def _write(encoder: Encoder, message: Message) -> None:
    if isinstance(message, SyncUpdate):
        encoder.write_var_uint(MessageType.SYNC)
        encoder.write_var_uint(SyncMessageType.UPDATE)
        encoder.write_var_uint8_array(message.update)
    elif isinstance(message, SyncStep1):
        encoder.write_var_uint(MessageType.SYNC)
        encoder.write_var_uint(SyncMessageType.STEP1)
        encoder.write_var_uint8_array(message.state_vector)
    elif isinstance(message, SyncStep2):
        encoder.write_var_uint(MessageType.SYNC)
        encoder.write_var_uint(SyncMessageType.STEP2)
        encoder.write_var_uint8_array(message.update)
    elif isinstance(message, AwarenessUpdate):
        encoder.write_var_uint(MessageType.AWARENESS)
        encoder.write_var_uint8_array(encode_awareness_update(message.entries))
    elif isinstance(message, QueryAwareness):
        encoder.write_var_uint(MessageType.QUERY_AWARENESS)
    elif isinstance(message, PermissionDenied):
        encoder.write_var_uint(MessageType.AUTH)
        encoder.write_var_uint(_AUTH_PERMISSION_DENIED)
        encoder.write_var_string(message.reason)
    elif isinstance(message, UnknownMessage):
        encoder.write_var_uint(message.message_type)
        encoder.write_bytes(message.payload)
    else:
        raise TypeError(f"not a y-websocket message: {message!r}")


def encode(*messages: Message) -> bytes:
    """Encode one message, or several back to back in one frame."""
    encoder = Encoder()
    for message in messages:
        _write(encoder, message)
    return encoder.to_bytes()


def _read(decoder: Decoder, limits: MessageLimits) -> Message:
    message_type = decoder.read_var_uint()
    if message_type == MessageType.SYNC:
        sync_type = decoder.read_var_uint()
        payload = decoder.read_var_uint8_array()
        if sync_type == SyncMessageType.STEP1:
            validate_state_vector(payload, limits.update)
            return SyncStep1(payload)
        if sync_type == SyncMessageType.STEP2:
            return SyncStep2(payload, validate_update(payload, limits.update))
        if sync_type == SyncMessageType.UPDATE:
            return SyncUpdate(payload, validate_update(payload, limits.update))
        raise ProtocolError(f"unknown sync message type {sync_type}")
    if message_type == MessageType.AWARENESS:
        return AwarenessUpdate(decode_awareness_update(decoder.read_var_uint8_array(), limits))
    if message_type == MessageType.QUERY_AWARENESS:
        return QueryAwareness()
    if message_type == MessageType.AUTH:
        auth_type = decoder.read_var_uint()
        if auth_type != _AUTH_PERMISSION_DENIED:
            raise ProtocolError(f"unknown auth message type {auth_type}")
        return PermissionDenied(decoder.read_var_string())
    return UnknownMessage(message_type, decoder.read_rest())


def decode(frame: bytes, limits: MessageLimits = DEFAULT_MESSAGE_LIMITS) -> list[Message]:
    """Decode every message in one frame.

    Everything is checked before it is returned, so the messages are safe to act on: updates
    and state vectors are validated (:func:`~trio_ysync.protocol.validate_update`), awareness
    states parsed within ``limits``. A frame is accepted or refused as a whole.

    Raises:
        ProtocolError: the frame is empty, truncated or otherwise malformed, or exceeds
            ``limits``.
    """
    decoder = Decoder(frame)
    if decoder.at_end():
        raise ProtocolError("empty frame")
    messages: list[Message] = []
    while not decoder.at_end():
        if len(messages) == limits.max_messages:
            raise ProtocolError(f"more than {limits.max_messages} messages in one frame")
        messages.append(_read(decoder, limits))
    return messages
