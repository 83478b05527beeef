"""Small helpers to edit documents of either library in tests."""

from __future__ import annotations

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
