"""The library's exceptions and the WebSocket close codes they map to.

Every error derives from :class:`YSyncError` and knows how a connection should end because of it
(``close_code``, or ``http_status`` before the upgrade) and whose fault it was (``peer_fault``:
the remote side sent something wrong, logged as one WARNING line, or we failed, logged with a
traceback). Errors are mapped to close codes once, where a connection ends.

This module imports nothing, so the sans-IO codec can use it.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "CloseCode",
    "DocumentBrokenError",
    "DocumentError",
    "FrameError",
    "MessageTooBigError",
    "PolicyViolationError",
    "ProtocolError",
    "RoomClosedError",
    "UnsupportedMessageError",
    "YSyncError",
]


class CloseCode(enum.IntEnum):
    """The WebSocket close codes this library sends (RFC 6455, section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    #: Reported, never sent: the connection ended without a close frame.
    ABNORMAL = 1006
    #: The room was deleted (y-websocket does not reconnect after 4400-4499).
    ROOM_DELETED = 4404


class YSyncError(Exception):
    """The root of every error this library raises on purpose."""

    #: How a connection ends because of this error.
    close_code: ClassVar[int] = CloseCode.INTERNAL_ERROR
    #: The HTTP status for the same error before a WebSocket upgrade.
    http_status: ClassVar[int] = 500
    #: Whether the remote side caused it (logged briefly) rather than a fault of ours.
    peer_fault: ClassVar[bool] = False


class ProtocolError(YSyncError, ValueError):
    """Bytes that are not a valid encoding, or a value that cannot be encoded."""

    close_code = CloseCode.INVALID_DATA
    http_status = 400
    peer_fault = True


class UnsupportedMessageError(ProtocolError):
    """A well-formed message of a kind the receiver does not handle (a text frame, say)."""

    close_code = CloseCode.UNSUPPORTED_DATA


class MessageTooBigError(ProtocolError):
    """A message (or its fragments, or the frame announcing it) exceeds a size limit."""

    close_code = CloseCode.MESSAGE_TOO_BIG
    http_status = 413


class FrameError(ProtocolError):
    """A violation of the WebSocket framing protocol."""

    close_code = CloseCode.PROTOCOL_ERROR


class DocumentError(YSyncError, ValueError):
    """The document library refused an update (or a state vector): the input is bad, the
    document is unchanged."""

    close_code = CloseCode.INVALID_DATA
    http_status = 400
    peer_fault = True


class DocumentBrokenError(DocumentError):
    """The document library failed inside an operation (a Rust panic): the document's state can
    no longer be trusted, and whoever holds it must drop it."""

    close_code = CloseCode.INTERNAL_ERROR
    http_status = 500
    peer_fault = False


class PolicyViolationError(YSyncError):
    """A peer exceeded a limit the server sets (rates, counts): closed with 1008."""

    close_code = CloseCode.POLICY_VIOLATION
    http_status = 429
    peer_fault = True


class UnsupportedOperationError(YSyncError):
    """A request this server cannot carry out as configured (deleting a room of a cluster):
    answered 501, logged as the requester's doing."""

    http_status = 501
    peer_fault = True


class RoomClosedError(YSyncError):
    """The room failed or is closing, so a peer cannot join it now; trying again later may
    work."""

    close_code = CloseCode.TRY_AGAIN_LATER
    http_status = 503
