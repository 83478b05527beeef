from __future__ import annotations

from collections.abc import Callable

import pytest
from ydocs import insert_text

from trio_ysync.doc import Document, DocumentError
from trio_ysync.protocol import SyncStep1, SyncStep2, SyncUpdate, decode, encode
from trio_ysync.protocol.sync import SyncSession


def exchange(a: SyncSession, b: SyncSession) -> None:
    """Run the handshake both ways through the wire encoding."""
    for sender, receiver in ((a, b), (b, a)):
        for message in decode(encode(sender.start())):
            assert isinstance(message, SyncStep1)
            for reply in receiver.receive(message):
                for decoded in decode(encode(reply)):
                    assert isinstance(decoded, SyncStep2)
                    sender.receive(decoded)


def test_handshake_converges_two_documents(make_doc: Callable[..., Document]) -> None:
    left, right = make_doc(1), make_doc(2)
    insert_text(left, 0, "hello ")
    insert_text(right, 0, "world")
    a, b = SyncSession(left, origin="b"), SyncSession(right, origin="a")
    assert not a.synced
    exchange(a, b)
    assert a.synced
    assert b.synced
    assert a.peer_answered
    assert b.peer_answered
    assert left.get_text("t") == right.get_text("t")
    assert sorted(left.get_text("t").split()) == ["hello", "world"]


def test_updates_are_applied_with_the_session_origin(make_doc: Callable[..., Document]) -> None:
    source, target = make_doc(1), make_doc(2)
    seen: list[tuple[bytes, object]] = []
    target.observe(lambda update, origin: seen.append((update, origin)))
    updates: list[bytes] = []
    source.observe(lambda update, origin: updates.append(update))
    insert_text(source, 0, "abc")
    session = SyncSession(target, origin="peer")
    assert session.receive(SyncUpdate(updates[0])) == []
    assert not session.synced
    assert target.get_text("t") == "abc"
    assert [origin for _, origin in seen] == ["peer"]


def test_malformed_update_raises_document_error(make_doc: Callable[..., Document]) -> None:
    session = SyncSession(make_doc())
    with pytest.raises(DocumentError):
        session.receive(SyncUpdate(b"\x05\xff"))
