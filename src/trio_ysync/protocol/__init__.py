"""Sans-IO Yjs protocols: lib0 encoding, y-websocket messages, awareness, the sync handshake, and
validation of updates and state vectors.

Nothing here performs I/O or imports trio, so the codec can be used from any event loop.
"""

from .awareness import OUTDATED_TIMEOUT, RENEW_INTERVAL, Awareness, AwarenessChange
from .lib0 import MAX_SAFE_INTEGER, Decoder, Encoder, ProtocolError
from .messages import (
    DEFAULT_MESSAGE_LIMITS,
    AwarenessEntry,
    AwarenessUpdate,
    JSONValue,
    Message,
    MessageLimits,
    MessageType,
    PermissionDenied,
    QueryAwareness,
    SyncMessageType,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    UnknownMessage,
    decode,
    decode_awareness_update,
    encode,
    encode_awareness_update,
    encode_json,
    message_kind,
    parse_json,
)
from .sync import SyncDocument, SyncSession
from .update import (
    DEFAULT_UPDATE_LIMITS,
    EMPTY_STATE_VECTOR,
    EMPTY_UPDATE,
    MAX_CLOCK,
    UpdateInfo,
    UpdateLimits,
    validate_state_vector,
    validate_update,
)

__all__ = [
    "DEFAULT_MESSAGE_LIMITS",
    "DEFAULT_UPDATE_LIMITS",
    "EMPTY_STATE_VECTOR",
    "EMPTY_UPDATE",
    "MAX_CLOCK",
    "MAX_SAFE_INTEGER",
    "OUTDATED_TIMEOUT",
    "RENEW_INTERVAL",
    "Awareness",
    "AwarenessChange",
    "AwarenessEntry",
    "AwarenessUpdate",
    "Decoder",
    "Encoder",
    "JSONValue",
    "Message",
    "MessageLimits",
    "MessageType",
    "PermissionDenied",
    "ProtocolError",
    "QueryAwareness",
    "SyncDocument",
    "SyncMessageType",
    "SyncSession",
    "SyncStep1",
    "SyncStep2",
    "SyncUpdate",
    "UnknownMessage",
    "UpdateInfo",
    "UpdateLimits",
    "decode",
    "decode_awareness_update",
    "encode",
    "encode_awareness_update",
    "encode_json",
    "message_kind",
    "parse_json",
    "validate_state_vector",
    "validate_update",
]
