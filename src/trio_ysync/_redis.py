"""What the Redis store and the Redis room bus share: clients, key names and errors.

coredis is an optional dependency (``pip install 'trio-ysync[redis]'``): this module imports it
only when a client is made, so the rest of the package works without it.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import coredis

__all__ = ["DEFAULT_PREFIX", "check_prefix", "new_client", "redis_errors", "room_tag"]

#: The key prefix of everything trio-ysync keeps in Redis, unless told otherwise.
DEFAULT_PREFIX = "trio-ysync:"


def _import_coredis() -> None:
    try:
        importlib.import_module("coredis")
    except ImportError as exc:
        raise ImportError("Redis support needs coredis: pip install 'trio-ysync[redis]'") from exc


def redis_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "Redis did not do it": unreachable, timed out, loading its
    data after a restart, or refusing the command."""
    _import_coredis()
    import coredis.exceptions

    return (coredis.exceptions.RedisError, OSError, TimeoutError, trio.TooSlowError)


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can start Redis key names, else :class:`ValueError`.

    Braces are refused: the part of a key between braces is its Redis Cluster hash tag, and
    the keys of one room carry a tag of their own so that they live in one slot.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"the key prefix is a string, not {type(prefix).__name__}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"the key prefix {prefix!r} must not contain braces")
    return prefix


def room_tag(room: str) -> str:
    """A fixed-length, key-safe name for ``room``, so its keys stay short whatever it holds.

    128 bits of BLAKE2b: two room names never meet in practice.
    """
    return hashlib.blake2b(room.encode("utf-8"), digest_size=16).hexdigest()


def new_client(url: str, *, name: str) -> coredis.Redis[bytes]:
    """A coredis client for ``url`` (``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://...`` or ``unix://...``) named ``name`` in ``CLIENT LIST``.

    Enter it with ``async with`` (coredis runs its connections in a task group it opens there).
    Responses stay bytes, and coredis does not retry on its own: callers decide what is safe to
    repeat.
    """
    _import_coredis()
    import coredis
    import coredis.retry

    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        url,
        decode_responses=False,
        retry_policy=coredis.retry.NoRetryPolicy(),
        client_name=name,
    )
    return client
