"""The y-protocols sync handshake as a small state machine.

Each side sends :class:`SyncStep1` (its state vector) on connect and answers the other's
:class:`SyncStep1` with :class:`SyncStep2` (what the other lacks). Afterwards both sides exchange
:class:`SyncUpdate` messages. A side counts as synced once it has received the peer's
:class:`SyncStep2`.
"""

from __future__ import annotations

from typing import Protocol

from .messages import Message, SyncStep1, SyncStep2, SyncUpdate

__all__ = ["SyncDocument", "SyncSession"]


class SyncDocument(Protocol):
    """What the handshake needs from a document (see :mod:`trio_ysync.doc`)."""

    def state_vector(self) -> bytes:
        """The document's encoded state vector."""
        ...

    def diff(self, state_vector: bytes | None = None) -> bytes:
        """A v1 update with everything the holder of ``state_vector`` lacks."""
        ...

    def apply_update(self, update: bytes, origin: object = None) -> None:
        """Apply a v1 update; raise ``ValueError`` if it is malformed."""
        ...


class SyncSession:
    """One side of the sync handshake with one peer.

    Args:
        document: the local document.
        origin: passed to :meth:`SyncDocument.apply_update` for everything this peer sends, so
            observers can tell remote changes from local ones.
    """

    def __init__(self, document: SyncDocument, origin: object = None) -> None:
        self.document = document
        self.origin = origin
        #: Whether the peer's SyncStep2 has arrived: this side holds everything the peer had.
        self.synced = False
        #: Whether this side has answered the peer's SyncStep1: the peer can now apply anything.
        self.peer_answered = False

    def start(self) -> SyncStep1:
        """The message to send when the connection opens."""
        return SyncStep1(self.document.state_vector())

    def receive(self, message: SyncStep1 | SyncStep2 | SyncUpdate) -> list[Message]:
        """Handle one sync message from the peer; return the messages to send back.

        Raises:
            ValueError: the update in the message could not be applied.
        """
        if isinstance(message, SyncStep1):
            self.peer_answered = True
            return [SyncStep2(self.document.diff(message.state_vector))]
        self.document.apply_update(message.update, self.origin)
        if isinstance(message, SyncStep2):
            self.synced = True
        return []
