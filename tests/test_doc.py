from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest
from ydocs import insert_text

from trio_ysync.doc import (
    Backend,
    Document,
    DocumentError,
    default_backend,
    new_document,
    wrap_document,
)


def test_empty_document_encodings(make_doc: Callable[..., Document]) -> None:
    doc = make_doc(300)
    assert doc.client_id == 300
    assert doc.state_vector() == b"\x00"
    assert doc.diff() == b"\x00\x00"


def test_state_vector_after_one_insert(make_doc: Callable[..., Document]) -> None:
    doc = make_doc(300)
    insert_text(doc, 0, "x")
    # Client 300 at clock 1, as yjs writes it (the design notes' SyncStep1 vector).
    assert doc.state_vector() == bytes.fromhex("01ac0201")


def test_diff_against_state_vector_carries_only_the_missing_part(
    make_doc: Callable[..., Document],
) -> None:
    source, target = make_doc(1), make_doc(2)
    insert_text(source, 0, "abc")
    target.apply_update(source.diff())
    insert_text(source, 3, "def")
    target.apply_update(source.diff(target.state_vector()))
    assert target.get_text("t") == "abcdef"
    assert len(source.diff(target.state_vector())) < len(source.diff())


def test_observe_reports_local_and_remote_updates(
    make_doc: Callable[..., Document], backend: Backend
) -> None:
    source, target = make_doc(1), make_doc(2)
    seen: list[tuple[bytes, object]] = []
    stop = target.observe(lambda update, origin: seen.append((update, origin)))
    insert_text(target, 0, "local")
    insert_text(source, 0, "remote")
    target.apply_update(source.diff(), origin="peer")
    assert [origin for _, origin in seen] == [None, "peer"]
    stop()
    insert_text(target, 0, "more")
    assert len(seen) == 2
    # What observers receive are real updates another document can apply.
    copy = new_document(backend)
    for update, _ in seen:
        copy.apply_update(update)
    assert sorted(copy.get_text("t")) == sorted("localremote")


def test_an_update_that_changes_nothing_is_not_reported(make_doc: Callable[..., Document]) -> None:
    doc = make_doc()
    seen: list[bytes] = []
    doc.observe(lambda update, origin: seen.append(update))
    doc.apply_update(b"\x00\x00")
    assert seen == []


@pytest.mark.parametrize("update", [b"\x05\xff", b"\x01", b"\x01\x01\xac"])
def test_malformed_update_raises_document_error(
    make_doc: Callable[..., Document], update: bytes
) -> None:
    with pytest.raises(DocumentError):
        make_doc().apply_update(update)


def test_updates_cross_between_libraries() -> None:
    pytest.importorskip("y_py", reason="y-py ships no wheels past Python 3.12")
    ypy, crdt = new_document("y-py"), new_document("pycrdt")
    insert_text(ypy, 0, "from y-py ")
    insert_text(crdt, 0, "from pycrdt")
    crdt.apply_update(ypy.diff(crdt.state_vector()))
    ypy.apply_update(crdt.diff(ypy.state_vector()))
    assert ypy.get_text("t") == crdt.get_text("t")


def test_wrap_document_recognises_native_documents(make_doc: Callable[..., Document]) -> None:
    doc = make_doc()
    assert wrap_document(doc) is doc
    wrapped = wrap_document(doc.native)
    assert type(wrapped) is type(doc)
    assert wrapped.native is doc.native
    with pytest.raises(TypeError):
        wrap_document(object())


def test_default_backend_prefers_pycrdt() -> None:
    assert default_backend() == "pycrdt"


def test_new_documents_draw_32_bit_client_ids(backend: Backend) -> None:
    # yjs draws 32-bit IDs, and y-py disagrees with yrs on ordering clients above 2**32.
    assert all(new_document(backend).client_id < 2**32 for _ in range(50))


def test_a_closed_adapter_reports_nothing(make_doc: Callable[..., Document]) -> None:
    doc = make_doc()
    seen: list[bytes] = []
    doc.observe(lambda update, origin: seen.append(update))
    doc.close()
    insert_text(doc, 0, "quiet")
    assert seen == []
    assert doc.get_text("t") == "quiet"


class _Observer:
    def on_update(self, update: bytes, origin: object) -> None:
        pass


def test_an_adapter_dropped_without_close_frees_what_it_observes(
    make_doc: Callable[..., Document],
) -> None:
    # The native libraries hold their observers from Rust, out of the garbage collector's
    # sight: an observer holding the adapter made every room the server ever loaded immortal.
    doc = make_doc()
    observer = _Observer()
    doc.observe(observer.on_update)
    insert_text(doc, 0, "x")
    observer_ref = weakref.ref(observer)
    del doc, observer
    gc.collect()
    assert observer_ref() is None


def test_a_pycrdt_document_is_freed_once_its_adapter_is() -> None:
    pytest.importorskip("pycrdt")
    doc = new_document("pycrdt")
    insert_text(doc, 0, "x")
    native = weakref.ref(doc.native)
    del doc
    gc.collect()
    assert native() is None


def test_a_closed_pycrdt_document_is_freed_and_closing_twice_is_harmless() -> None:
    pytest.importorskip("pycrdt")
    doc = new_document("pycrdt")
    doc.close()
    doc.close()
    native = weakref.ref(doc.native)
    del doc
    gc.collect()
    assert native() is None


def test_an_empty_pycrdt_document_makes_its_native_document_when_first_written() -> None:
    pytest.importorskip("pycrdt")
    doc = new_document("pycrdt", client_id=7)
    seen: list[tuple[bytes, object]] = []
    doc.observe(lambda update, origin: seen.append((update, origin)))
    # Reading an empty document needs no native document (what thousands of rooms cost).
    assert doc.client_id == 7
    assert doc.state_vector() == b"\x00"
    assert doc.diff() == doc.diff(b"\x00") == b"\x00\x00"
    assert doc.get_text("t") == ""
    doc.apply_update(b"\x00\x00")  # a newcomer's empty SyncStep2 changes nothing
    assert doc._doc is None
    # A malformed state vector is refused as pycrdt refuses it.
    with pytest.raises(DocumentError):
        doc.diff(b"\x05\xff")
    source = new_document("pycrdt", client_id=8)
    insert_text(source, 0, "hello")
    doc.apply_update(source.diff(), origin="peer")
    assert doc._doc is not None
    assert doc.client_id == doc.native.client_id == 7
    assert doc.get_text("t") == "hello"
    assert seen == [(source.diff(), "peer")]
    assert doc.diff(b"\x00") == source.diff()
