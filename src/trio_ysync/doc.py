"""One small interface over y-py and pycrdt documents.

Everything above this module (sync sessions, rooms, the provider) works with a
:class:`Document`, so applications may bring either library's document.

y-py is unmaintained and aborts the whole process on some malformed updates (it trusts length
claims), so servers prefer pycrdt when it is installed; see :func:`default_backend`.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import secrets
import weakref
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from .errors import DocumentBrokenError, DocumentError
from .protocol import EMPTY_STATE_VECTOR, EMPTY_UPDATE, validate_state_vector

__all__ = [
    "Backend",
    "Document",
    "DocumentBrokenError",
    "DocumentError",
    "PycrdtDocument",
    "UpdateCallback",
    "YPyDocument",
    "contained",
    "default_backend",
    "document_json",
    "new_document",
    "wrap_document",
]

Backend = Literal["pycrdt", "y-py"]

#: Called with each non-empty update a transaction produced and the origin it was applied with
#: (``None`` for local edits).
UpdateCallback = Callable[[bytes, object], None]


_T = TypeVar("_T")


def _is_native_panic(exc: BaseException) -> bool:
    # pyo3 turns a Rust panic into ``pyo3_runtime.PanicException``, a BaseException that cannot
    # be imported by name.
    return type(exc).__name__ == "PanicException"


def contained(operation: str, fn: Callable[..., _T], *args: Any) -> _T:
    """Call ``fn(*args)``, a call into a document library, and map what it raises.

    Raises:
        DocumentError: the library refused the input (an ``Exception``).
        DocumentBrokenError: the library failed inside (a Rust panic, which Python sees as a
            ``BaseException``); whatever it was working on can no longer be trusted.
    """
    try:
        return fn(*args)
    except DocumentError:
        raise
    except Exception as exc:
        raise DocumentError(f"{operation} failed: {exc}") from exc
    except BaseException as exc:
        if _is_native_panic(exc):
            raise DocumentBrokenError(f"the document library failed {operation}: {exc}") from exc
        raise


class Document(abc.ABC):
    """A Yjs document of either library, seen through the operations sync needs.

    Every call into the native library is contained here: a refusal (a malformed update or state
    vector) raises :class:`DocumentError` and leaves the document as it was; a failure inside the
    library (a Rust panic, which Python sees as a ``BaseException``) raises
    :class:`DocumentBrokenError`, after which the document must be discarded.
    """

    __slots__ = ("__weakref__", "_applying_origin", "_callback_error", "_callbacks", "_doc")

    def __init__(self, doc: Any) -> None:
        self._doc = doc
        self._callbacks: list[UpdateCallback] = []
        self._applying_origin: object = None
        self._callback_error: BaseException | None = None

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

    def state_vector(self) -> bytes:
        """The encoded state vector.

        Raises:
            DocumentBrokenError: the document library failed.
        """
        return contained("encoding the state vector", self._state_vector)

    def diff(self, state_vector: bytes | None = None) -> bytes:
        """A v1 update with everything the holder of ``state_vector`` lacks (all without one).

        Raises:
            DocumentError: ``state_vector`` is malformed.
            DocumentBrokenError: the document library failed.
        """
        return contained("encoding a diff", self._diff, state_vector)

    def get_text(self, name: str) -> str:
        """The current content of the root text type ``name``."""
        return contained("reading text", self._get_text, name)

    def apply_update(self, update: bytes, origin: object = None) -> None:
        """Apply a v1 update; observers see it with ``origin``.

        Raises:
            DocumentError: the update is malformed (the document is unchanged).
            DocumentBrokenError: the document library failed while applying it.
        """
        previous = self._applying_origin
        self._applying_origin = origin
        try:
            contained("applying an update", self._apply, update)
        finally:
            self._applying_origin = previous
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    @abc.abstractmethod
    def _state_vector(self) -> bytes: ...

    @abc.abstractmethod
    def _diff(self, state_vector: bytes | None) -> bytes: ...

    @abc.abstractmethod
    def _get_text(self, name: str) -> str: ...

    @abc.abstractmethod
    def _apply(self, update: bytes) -> None: ...

    def observe(self, callback: UpdateCallback) -> Callable[[], None]:
        """Call ``callback(update, origin)`` after each transaction that changed something.

        An exception from ``callback`` does not reach the document library: it is raised by the
        :meth:`apply_update` that triggered it, after the update was applied.

        Returns a function that stops the observation.
        """
        self._callbacks.append(callback)

        def unobserve() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unobserve

    def _dispatch(self, update: bytes) -> None:
        if update == EMPTY_UPDATE:
            return
        origin = self._applying_origin
        for callback in list(self._callbacks):
            try:
                callback(update, origin)
            except Exception as exc:
                if self._callback_error is None:
                    self._callback_error = exc


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

    def _state_vector(self) -> bytes:
        import y_py

        return bytes(y_py.encode_state_vector(self._doc))

    def _diff(self, state_vector: bytes | None) -> bytes:
        import y_py

        if state_vector is None:
            return bytes(y_py.encode_state_as_update(self._doc))
        return bytes(y_py.encode_state_as_update(self._doc, state_vector))

    def _get_text(self, name: str) -> str:
        return str(self._doc.get_text(name))

    def _apply(self, update: bytes) -> None:
        import y_py

        y_py.apply_update(self._doc, update)


class PycrdtDocument(Document):
    """A :class:`Document` over a ``pycrdt.Doc``.

    Without a ``doc``, the ``pycrdt.Doc`` is made when it is first needed (an update to apply,
    or :attr:`native`): until then the document is empty and costs a few hundred bytes instead
    of some 5 KiB, which is what thousands of rooms that nobody has written to yet cost a server.
    """

    __slots__ = ("_client_id", "_unobserve")

    def __init__(self, doc: Any = None, *, client_id: int | None = None) -> None:
        super().__init__(doc)
        self._client_id = client_id
        self._unobserve: Callable[[], Any] | None = None
        if doc is not None:
            self._observe_native()

    def _native(self) -> Any:
        if self._doc is None:
            import pycrdt

            self._doc = pycrdt.Doc(client_id=self._client_id)
            self._observe_native()
        return self._doc

    def _observe_native(self) -> None:
        subscription = self._doc.observe(_native_observer(self, lambda event: event.update))
        # pycrdt's own observer wrapper holds the pycrdt.Doc, so an observed document is a
        # cycle through Rust that is never collected: unobserve on close(), or at the latest
        # when this adapter is freed.
        unobserve = weakref.finalize(self, self._doc.unobserve, subscription)
        unobserve.atexit = False
        self._unobserve = unobserve

    @property
    def native(self) -> Any:
        """The wrapped ``pycrdt.Doc`` (made now if it was not yet)."""
        return self._native()

    @property
    def client_id(self) -> int:
        """The document's own client ID."""
        if self._doc is None and self._client_id is not None:
            return self._client_id
        return int(self._native().client_id)

    def close(self) -> None:
        super().close()
        if self._unobserve is not None:
            self._unobserve()

    def _state_vector(self) -> bytes:
        if self._doc is None:
            return EMPTY_STATE_VECTOR
        return bytes(self._doc.get_state())

    def _diff(self, state_vector: bytes | None) -> bytes:
        if self._doc is None:
            if state_vector is not None:
                validate_state_vector(state_vector)  # refused as pycrdt would refuse it
            return EMPTY_UPDATE
        return bytes(self._doc.get_update(state_vector))

    def _get_text(self, name: str) -> str:
        if self._doc is None:
            return ""
        import pycrdt

        return str(self._doc.get(name, type=pycrdt.Text))

    def _apply(self, update: bytes) -> None:
        if self._doc is None and update == EMPTY_UPDATE:
            return  # what a y-websocket client with nothing sends on every connect
        self._native().apply_update(update)


def document_json(update: bytes) -> dict[str, Any]:
    """The root shared types of the document ``update`` holds, as JSON values (what JavaScript's
    ``doc.toJSON()`` gives): texts as strings, maps as objects, arrays as arrays, XML as a
    string of XML, empty roots as ``None``.

    An update does not say which type each root is (a client decides when it reads it), so each
    root is read the ways that find content, each time in a fresh pycrdt document.

    Raises:
        DocumentError: the update is malformed, or the document library failed.
    """
    import pycrdt

    def read(root: str, kind: Any) -> Any:
        doc: Any = pycrdt.Doc()
        doc.apply_update(update)
        return doc.get(root, type=kind)

    def describe(root: str) -> Any:
        if len(mapping := read(root, pycrdt.Map)):
            return mapping.to_py()
        if text := str(read(root, pycrdt.Text)):
            return text
        array = read(root, pycrdt.Array)
        if not len(array):
            return None
        try:
            return array.to_py()
        except ValueError:  # XML elements: no plain value
            return str(read(root, pycrdt.XmlFragment))

    def describe_all() -> dict[str, Any]:
        doc: Any = pycrdt.Doc()
        doc.apply_update(update)
        return {root: describe(root) for root in sorted(doc.keys())}

    return contained("reading the document as JSON", describe_all)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache  # every new room asks: search the file system for the modules only once
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
        return PycrdtDocument(client_id=client_id)
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
