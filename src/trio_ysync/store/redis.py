"""A store in Redis, so that a cluster of servers on several hosts needs nothing but Redis.

Keys (``P`` is the key prefix, ``T`` a room's tag, see :func:`trio_ysync._redis.room_tag`)::

    P store:id          a random identity, made by the first server (see shared_identity)
    P store:rooms       hash: tag -> room name (list_rooms)
    P store:{T}:log     list: the room's log entries, oldest first
    P store:{T}:meta    hash: first (the sequence number of the first entry)

Every operation is one Lua script, so each is atomic. A commit is as durable as the Redis
server's persistence makes it: with ``appendonly yes`` and ``appendfsync always`` it survives a
crash of Redis and of the machine; with ``appendfsync everysec`` the last second may be lost
when Redis is killed; without AOF, everything since the last snapshot.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import trio
from coredis.tokens import PureToken

from .._redis import DEFAULT_PREFIX, check_prefix, new_client, redis_errors, room_tag
from .base import Store, StoredRoom, StoreError, check_room, check_updates

__all__ = ["RedisStore"]

REDIS_ERRORS = redis_errors()

_T = TypeVar("_T")

# Lua's unpack() is limited by the C stack: push long batches in slices.
_APPEND = """
local n = 0
for i = 3, #ARGV, 1000 do
  n = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local first = tonumber(redis.call('HGET', KEYS[2], 'first'))
if not first then
  first = 1
  redis.call('HSET', KEYS[2], 'first', 1)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
end
return first + n - 1
"""

_LOAD = """
local first = redis.call('HGET', KEYS[2], 'first') or '1'
return {first, redis.call('LRANGE', KEYS[1], 0, -1)}
"""

# Returns -1 when through_seq lies beyond the log, else how many entries were replaced.
_COMPACT = """
local length = redis.call('LLEN', KEYS[1])
local first = tonumber(redis.call('HGET', KEYS[2], 'first') or '1')
local through = tonumber(ARGV[2])
local last = 0
if length > 0 then last = first + length - 1 end
if through > last then return -1 end
if through < first then return 0 end
local count = through - first + 1
redis.call('LTRIM', KEYS[1], count, -1)
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'first', through)
return count
"""

_DELETE = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
return 0
"""


class RedisStore(Store):
    """A :class:`~trio_ysync.store.Store` in a Redis server (``open_store("redis://...")``).

    Servers that use the same Redis server, database and key prefix share the store. It must
    be opened with ``async with`` (coredis keeps its connections in a task group that the
    opening task owns), and closed by the task that opened it.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``).
        prefix: The start of every key name.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.url = url
        self.prefix = check_prefix(prefix)
        self._client = new_client(url, name=f"{prefix}store")
        self._context: Any = None
        self._closed = False
        self._identity: str | None = None
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()
        self._append = self._client.register_script(_APPEND)
        self._load = self._client.register_script(_LOAD)
        self._compact = self._client.register_script(_COMPACT)
        self._delete = self._client.register_script(_DELETE)

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"

    def shared_identity(self) -> str | None:
        """``redis:`` and the random identity this store's data was given in Redis.

        Spelling the URL differently (a host name or its address) does not change it.
        """
        return self._identity

    def _keys(self, room: str) -> tuple[str, tuple[str, str, str]]:
        tag = room_tag(room)
        base = f"{self.prefix}store:{{{tag}}}:"
        return tag, (base + "log", base + "meta", self.prefix + "store:rooms")

    async def _run(self, operation: str, request: Awaitable[_T]) -> _T:
        if self._context is None:
            reason = "closed" if self._closed else "not open: use it with async with"
            raise StoreError(f"{self!r} is {reason}")
        self._running += 1
        self._idle = trio.Event()
        try:
            return await request
        except REDIS_ERRORS as exc:
            raise StoreError(f"{self!r}: {operation} failed: {exc}") from exc
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def _open(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        context = self._client.__asynccontextmanager__()
        try:
            await context.__aenter__()
        except REDIS_ERRORS as exc:
            raise StoreError(f"{self!r}: cannot connect: {exc}") from exc
        self._context = context
        key = self.prefix + "store:id"
        candidate = secrets.token_hex(16)
        await self._run("open", self._client.set(key, candidate, condition=PureToken.NX))
        identity = await self._run("open", self._client.get(key))
        if identity is None:
            raise StoreError(f"{self!r}: the store identity {key!r} vanished while opening")
        self._identity = "redis:" + identity.decode("ascii", "replace")

    async def load(self, room: str) -> StoredRoom:
        check_room(room)
        _, keys = self._keys(room)
        reply: Any = await self._run("load", self._load(keys=keys))
        first, updates = int(reply[0]), [bytes(update) for update in reply[1]]
        if not updates:
            return StoredRoom()
        return StoredRoom(
            updates=updates,
            last_seq=first + len(updates) - 1,
            size_bytes=sum(map(len, updates)),
        )

    async def append(self, room: str, updates: Sequence[bytes]) -> int:
        check_room(room)
        batch = check_updates(updates)
        if not batch:
            return (await self.load(room)).last_seq
        tag, keys = self._keys(room)
        args: tuple[str | bytes, ...] = (tag, room.encode("utf-8"), *batch)
        last_seq: Any = await self._run("append", self._append(keys=keys, args=args))
        return int(last_seq)

    async def compact(self, room: str, update: bytes, through_seq: int) -> None:
        check_room(room)
        (update,) = check_updates([update])
        if through_seq < 0:
            raise ValueError(f"through_seq {through_seq} is outside the log")
        _, keys = self._keys(room)
        request: Awaitable[Any] = self._compact(keys=keys, args=(update, through_seq))
        result: Any = await self._run("compact", request)
        if int(result) < 0:
            raise ValueError(f"through_seq {through_seq} is beyond the room's last entry")

    async def delete(self, room: str) -> None:
        check_room(room)
        tag, keys = self._keys(room)
        await self._run("delete", self._delete(keys=keys, args=(tag,)))

    async def list_rooms(self) -> list[str]:
        names = await self._run("list_rooms", self._client.hvals(self.prefix + "store:rooms"))
        return sorted(bytes(name).decode("utf-8") for name in names)

    async def aclose(self) -> None:
        self._closed = True
        context, self._context = self._context, None
        with trio.CancelScope(shield=True):
            await self._idle.wait()
        if context is not None:
            # Not inside the shield: the context holds coredis's task group, a cancel scope
            # that encloses any scope opened here.
            await context.__aexit__(None, None, None)
