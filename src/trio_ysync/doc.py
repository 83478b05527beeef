"""One small interface over y-py and pycrdt documents.

Everything above this module (sync sessions, rooms, the provider) works with a
:class:`Document`, so applications may bring either library's document.

y-py is unmaintained and aborts the whole process on some malformed updates (it trusts length
claims), so servers prefer pycrdt when it is installed; see :func:`default_backend`.
"""

from __future__ import annotations

import abc
import importlib.util
import secrets
import weakref
from collections.abc import Callable
from typing import Any, Literal

__all__ = [
    "Backend",
    "Document",
    "DocumentError",
    "PycrdtDocument",
    "UpdateCallback",
    "YPyDocument",
    "default_backend",
    "new_document",
    "wrap_document",
]

Backend = Literal["pycrdt", "y-py"]

#: Called with each non-empty update a transaction produced and the origin it was applied with
#: (``None`` for local edits).
UpdateCallback = Callable[[bytes, object], None]

# An update that changes nothing: no clients, an empty delete set.
_EMPTY_UPDATE = b"\x00\x00"


class DocumentError(ValueError):
    """An update could not be applied to a document."""


class Document(abc.ABC):
    """A Yjs document of either library, seen through the operations sync needs."""

    __slots__ = ("__weakref__", "_applying_origin", "_callbacks", "_doc")

    def __init__(self, doc: Any) -> None:
        self._doc = doc
        self._callbacks: list[UpdateCallback] = []
        self._applying_origin: object = None

    @property
    def native(self) -> Any:
        """The wrapped ``y_py.YDoc`` or ``pycrdt.Doc``."""
        return self._doc

    @property
    def client_id(self) -> int:
        """The document's own client ID."""
        return int(self._doc.client_id)

    def close(self) -> None:
        """Stop observing the native document: this adapter's observers hear nothing more."""
        self._callbacks.clear()

    @abc.abstractmethod
    def state_vector(self) -> bytes:
        """The encoded state vector."""

    @abc.abstractmethod
    def diff(self, state_vector: bytes | None = None) -> bytes:
        """A v1 update with everything the holder of ``state_vector`` lacks (all without one)."""

    @abc.abstractmethod
    def get_text(self, name: str) -> str:
        """The current content of the root text type ``name``."""

    @abc.abstractmethod
    def _apply(self, update: bytes) -> None: ...

    def apply_update(self, update: bytes, origin: object = None) -> None:
        """Apply a v1 update; observers see it with ``origin``.

        Raises:
            DocumentError: the update is malformed.
        """
        previous = self._applying_origin
        self._applying_origin = origin
        try:
            self._apply(update)
        except ValueError as exc:
            raise DocumentError(str(exc)) from exc
        finally:
            self._applying_origin = previous

    def observe(self, callback: UpdateCallback) -> Callable[[], None]:
        """Call ``callback(update, origin)`` after each transaction that changed something.

        Returns a function that stops the observation.
        """
        self._callbacks.append(callback)

        def unobserve() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unobserve

    def _dispatch(self, update: bytes) -> None:
        if update == _EMPTY_UPDATE:
            return
        origin = self._applying_origin
        for callback in list(self._callbacks):
            callback(update, origin)


def _native_observer(
    document: Document, read_update: Callable[[Any], bytes]
) -> Callable[[Any], None]:
    """An observer for the native document that holds the adapter weakly.

    The native libraries keep their observers alive from Rust, where Python's garbage collector
    cannot see them: an observer holding the adapter would close a cycle (adapter -> native
    document -> observer -> adapter) that is never collected, and with it everything the
    adapter's callbacks reach (for a server: every room ever loaded).
    """
    adapter = weakref.ref(document)

    def observer(event: Any) -> None:
        target = adapter()
        if target is not None:
            target._dispatch(read_update(event))

    return observer


class YPyDocument(Document):
    """A :class:`Document` over a ``y_py.YDoc``."""

    __slots__ = ("_subscription",)

    def __init__(self, doc: Any = None) -> None:
        import y_py

        super().__init__(y_py.YDoc() if doc is None else doc)
        # The event is only valid inside the callback: read the update there.
        # y-py cannot unsubscribe (close() silences the adapter instead).
        self._subscription = self._doc.observe_after_transaction(
            _native_observer(self, lambda event: event.get_update())
        )

    def state_vector(self) -> bytes:
        import y_py

        return bytes(y_py.encode_state_vector(self._doc))

    def diff(self, state_vector: bytes | None = None) -> bytes:
        import y_py

        if state_vector is None:
            return bytes(y_py.encode_state_as_update(self._doc))
        return bytes(y_py.encode_state_as_update(self._doc, state_vector))

    def get_text(self, name: str) -> str:
        return str(self._doc.get_text(name))

    def _apply(self, update: bytes) -> None:
        import y_py

        try:
            y_py.apply_update(self._doc, update)
        except Exception as exc:  # y-py's EncodingException is not importable
            raise ValueError(str(exc)) from exc
        except BaseException as exc:
            # A Rust panic surfaces as pyo3's PanicException, a BaseException.
            if type(exc).__name__ == "PanicException":
                raise ValueError(str(exc)) from exc
            raise


class PycrdtDocument(Document):
    """A :class:`Document` over a ``pycrdt.Doc``."""

    __slots__ = ("_unobserve",)

    def __init__(self, doc: Any = None) -> None:
        import pycrdt

        super().__init__(pycrdt.Doc() if doc is None else doc)
        subscription = self._doc.observe(_native_observer(self, lambda event: event.update))
        # pycrdt's own observer wrapper holds the pycrdt.Doc, so an observed document is a
        # cycle through Rust that is never collected: unobserve on close(), or at the latest
        # when this adapter is freed.
        self._unobserve = weakref.finalize(self, self._doc.unobserve, subscription)
        self._unobserve.atexit = False

    def close(self) -> None:
        super().close()
        self._unobserve()

    def state_vector(self) -> bytes:
        return bytes(self._doc.get_state())

    def diff(self, state_vector: bytes | None = None) -> bytes:
        return bytes(self._doc.get_update(state_vector))

    def get_text(self, name: str) -> str:
        import pycrdt

        return str(self._doc.get(name, type=pycrdt.Text))

    def _apply(self, update: bytes) -> None:
        self._doc.apply_update(update)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def default_backend() -> Backend:
    """pycrdt if it is installed (it rejects malformed updates safely), else y-py."""
    if _installed("pycrdt"):
        return "pycrdt"
    if _installed("y_py"):
        return "y-py"
    raise RuntimeError("neither pycrdt nor y-py is installed; pip install 'trio-ysync[pycrdt]'")


def new_document(backend: Backend | None = None, client_id: int | None = None) -> Document:
    """A new empty document of ``backend`` (default: :func:`default_backend`).

    Without a ``client_id`` a random 32-bit one is drawn, as yjs does. pycrdt would draw 53 bits,
    and y-py orders concurrent inserts of clients above 2**32 differently from yrs and yjs, so
    documents mixing the two would diverge.
    """
    backend = backend or default_backend()
    if client_id is None:
        client_id = secrets.randbits(32)
    if backend == "pycrdt":
        import pycrdt

        return PycrdtDocument(pycrdt.Doc(client_id=client_id))
    if backend == "y-py":
        import y_py

        return YPyDocument(y_py.YDoc(client_id=client_id))
    raise ValueError(f"unknown document backend {backend!r}")


def wrap_document(doc: Any) -> Document:
    """Wrap a ``y_py.YDoc`` or ``pycrdt.Doc`` (a :class:`Document` is returned as it is)."""
    if isinstance(doc, Document):
        return doc
    if type(doc).__module__.split(".")[0] == "pycrdt":
        return PycrdtDocument(doc)
    if _installed("y_py"):
        import y_py

        if isinstance(doc, y_py.YDoc):
            return YPyDocument(doc)
    raise TypeError(f"not a y-py or pycrdt document: {type(doc).__name__}")
