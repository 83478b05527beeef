from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
from redisserver import shared_redis_server

from trio_ysync.doc import Backend, Document, new_document
from trio_ysync.transport import ServerWebSocket

BACKENDS: list[Backend] = [
    backend
    for backend, module in (("pycrdt", "pycrdt"), ("y-py", "y_py"))
    if importlib.util.find_spec(module) is not None
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each installed document library in turn."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_doc(backend: Backend):  # type: ignore[no-untyped-def]
    """A factory of empty documents of the current backend."""

    def make(client_id: int | None = None) -> Document:
        return new_document(backend, client_id=client_id)

    return make


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server shared by the session (tests keep apart by key prefix)."""
    with shared_redis_server() as url:
        yield url


@pytest.fixture
def server_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the writes the server's WebSocket connections hand their sockets at once
    (as they happen; clear it to count from a point on)."""
    writes: list[int] = []
    write_now = ServerWebSocket._write_now

    def counting_write_now(self: ServerWebSocket, data: bytes) -> bytes:
        writes.append(len(data))
        return write_now(self, data)

    monkeypatch.setattr(ServerWebSocket, "_write_now", counting_write_now)
    return writes
