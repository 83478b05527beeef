"""The room bus: how a room hears of the updates and awareness that other servers accepted.

A server alone uses the :class:`LocalBus`, which has nobody to tell. Servers that share rooms
(``trio-ysync serve --redis URL``) each open a Redis bus: every update a room accepts is
written to the room's Redis stream before anyone sees it (write-ahead), every server reads the
streams of the rooms it holds, and one server at a time folds a stream into the shared store.
Awareness goes over Redis pub/sub. See ``docs/scaling.rst``.

What the room does with a bus::

    channel = await bus.attach(name, listener)  # listener: a BusListener
    catchup = await channel.load()              # apply catchup.all_updates(), then serve
    await channel.publish(updates)              # before broadcasting them (write-ahead)
    channel.publish_awareness(payload)          # what local peers changed
    await channel.detach()                      # on unload
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._redis import DEFAULT_PREFIX
from ..store.base import Store

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]
from ._base import (
    BusConfigError,
    BusError,
    BusListener,
    BusTuning,
    BusUnavailableError,
    Catchup,
    FoldOutcome,
    FoldResult,
    LocalBus,
    RoomBus,
    RoomChannel,
)

__all__ = [
    "DEFAULT_PREFIX",
    "BusConfigError",
    "BusError",
    "BusListener",
    "BusTuning",
    "BusUnavailableError",
    "Catchup",
    "FoldOutcome",
    "FoldResult",
    "LocalBus",
    "RoomBus",
    "RoomChannel",
    "open_bus",
]


@asynccontextmanager
async def open_bus(
    url: str | None,
    store: Store,
    *,
    prefix: str = DEFAULT_PREFIX,
    tuning: BusTuning | None = None,
) -> AsyncIterator[RoomBus]:
    """The bus of this server process, for the duration of the block.

    Args:
        url: ``None`` for a server alone (a :class:`LocalBus`), or the Redis server of the
            cluster: ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS,
            ``unix://`` for a socket). Needs coredis (``pip install 'trio-ysync[redis]'``).
        store: The store rooms load from. In a cluster, every server's store must be the same
            one (a SQLite file on one host, or a Redis store); the bus checks that.
        prefix: The start of every Redis key name, to share a Redis database.
        tuning: Fold, retry and timeout settings (Redis only).

    Raises:
        BusConfigError: the store cannot be shared, or is not the one the cluster uses.
        BusUnavailableError: Redis could not be reached.
    """
    if url is None:
        await trio.lowlevel.checkpoint()
        yield LocalBus(store)
        return
    from ._redis import open_redis_bus  # imports coredis: only when asked for

    try:
        async with open_redis_bus(url, store, prefix=prefix, tuning=tuning or BusTuning()) as bus:
            yield bus
    except BaseExceptionGroup as group:
        # The bus's task groups (coredis's and ours) wrap whatever crosses them: a lone error,
        # the caller's own included, comes out as itself.
        _raise_single(group)
        raise


def _raise_single(group: BaseExceptionGroup[BaseException]) -> None:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending and len(leaves) < 2:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and not pending:
        (exc,) = leaves
        context = exc.__context__
        try:
            raise exc
        finally:
            exc.__context__ = context
