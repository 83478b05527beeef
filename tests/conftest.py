from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
from redisserver import shared_redis_server

from trio_ysync.doc import Backend, Document, new_document

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
