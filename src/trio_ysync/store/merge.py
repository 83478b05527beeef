"""Squash a log of updates into one update, without losing anything."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from ..doc import Backend, contained, new_document
from ..protocol import EMPTY_UPDATE, validate_state_vector, validate_update

__all__ = ["merge_updates", "with_pending"]


def merge_updates(updates: Iterable[bytes], backend: Backend | None = None) -> bytes:
    """One update with the content of all of ``updates``, for compaction.

    The updates are applied to a fresh document of ``backend`` (default:
    :func:`~trio_ysync.doc.default_backend`) and its full state is encoded
    (:meth:`~trio_ysync.doc.Document.diff`), so deleted content is garbage-collected and the
    result is usually much smaller than the log.

    A document keeps aside, as *pending*, the parts of updates whose dependencies it has not seen
    (an update from a client whose earlier updates are missing), and neither y-py nor pycrdt
    includes them when encoding its state. When pycrdt is installed, those parts (and every
    delete) are merged into the result, so applying it together with updates that arrive later
    gives the same document as applying the original log would. Without pycrdt they are dropped
    (they are not part of the document's visible content).

    This is CPU-bound: call it in a worker thread (``trio.to_thread.run_sync``) for large logs.

    Args:
        updates: Yjs v1 updates, in log order.
        backend: The document library to integrate with.

    Returns:
        A Yjs v1 update that ``Y.applyUpdate`` accepts.

    Raises:
        ProtocolError: an update is malformed (see :func:`~trio_ysync.protocol.validate_update`).
        DocumentError: the document library refused an update.
    """
    updates = [bytes(update) for update in updates]
    doc = new_document(backend)
    for update in updates:
        validate_update(update)
        doc.apply_update(update)
    return with_pending(doc.diff(), updates)


def with_pending(snapshot: bytes, updates: list[bytes]) -> bytes:
    """``snapshot`` (a document's encoded state) plus what ``updates`` hold that it lacks.

    A document's state leaves out pending structs (whose dependencies it has not seen) and the
    deletes of those; this merges them back in from the log the document was built from, with
    pycrdt's update merging (no document is built). Without pycrdt, ``snapshot`` is returned.

    Raises:
        DocumentError: an update is malformed (or the merge failed:
            :class:`~trio_ysync.doc.DocumentBrokenError`).
    """
    if not updates or importlib.util.find_spec("pycrdt") is None:
        return snapshot
    import pycrdt

    def merge() -> bytes:
        state = bytes(pycrdt.get_state(snapshot))
        # An update whose structs and every clock it names are below the snapshot's state
        # vector was integrated whole: it has nothing pending. Rooms apply no other kind, so
        # usually nothing is left to merge. Checking is linear in the log; pycrdt's merge is
        # not, and holds the GIL throughout (a log of 20,000 typed characters: 1.8 s in which
        # the event loop stood still, against 76 ms of checking).
        covered = validate_state_vector(state)
        rest_of_log = [u for u in updates if not validate_update(u).held_by(covered)]
        if not rest_of_log:
            return snapshot
        # Everything in those updates that the document has not integrated: pending structs,
        # and the whole delete set (which includes deletes of pending items).
        rest = bytes(pycrdt.get_update(pycrdt.merge_updates(*rest_of_log), state))
        if rest == EMPTY_UPDATE:
            return snapshot
        return bytes(pycrdt.merge_updates(snapshot, rest))

    return contained("merging updates", merge)
