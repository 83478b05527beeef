"""Small helpers to edit documents of either library in tests."""

from __future__ import annotations

import trio

from trio_ysync.doc import Document, PycrdtDocument, YPyDocument


def insert_text(doc: Document, index: int, text: str, name: str = "t") -> None:
    """Insert ``text`` into the root text ``name`` in one local transaction."""
    native = doc.native
    if isinstance(doc, YPyDocument):
        ytext = native.get_text(name)
        with native.begin_transaction() as txn:
            ytext.insert(txn, index, text)
    elif isinstance(doc, PycrdtDocument):
        import pycrdt

        native.get(name, type=pycrdt.Text).insert(index, text)
    else:
        raise TypeError(type(doc))


def delete_text(doc: Document, index: int, length: int, name: str = "t") -> None:
    """Delete ``length`` characters at ``index`` of the root text ``name``."""
    native = doc.native
    if isinstance(doc, YPyDocument):
        ytext = native.get_text(name)
        with native.begin_transaction() as txn:
            ytext.delete_range(txn, index, length)
    elif isinstance(doc, PycrdtDocument):
        import pycrdt

        del native.get(name, type=pycrdt.Text)[index : index + length]
    else:
        raise TypeError(type(doc))


async def wait_text(doc: Document, text: str, name: str = "t") -> None:
    """Wait until the root text ``name`` reads ``text``, re-checking after each transaction."""
    changed = trio.Event()

    def on_update(update: bytes, origin: object) -> None:
        changed.set()  # reading the document inside its own callback is not allowed (y-py)

    unobserve = doc.observe(on_update)
    try:
        while doc.get_text(name) != text:
            await changed.wait()
            changed = trio.Event()
    finally:
        unobserve()
