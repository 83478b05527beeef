"""Bounded, non-blocking fan-out of events to async iterators.

A publisher never waits for its subscribers: each subscription keeps either the last few items
(older ones are dropped) or one coalesced item, so memory stays bounded whatever a slow consumer
does. Subscriptions are held weakly: an iterator that is dropped unsubscribes itself.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

__all__ = ["Feed", "Subscription"]

T = TypeVar("T")


class Subscription(Generic[T]):
    """An async iterator over the items a :class:`Feed` publishes after it was created.

    It ends once the feed is closed and every pending item was consumed.
    """

    def __init__(self, maxlen: int, coalesce: Callable[[T, T], T] | None) -> None:
        self._items: deque[T] = deque(maxlen=maxlen)
        self._coalesce = coalesce
        self._closed = False
        self._wakeup = trio.Event()

    def _push(self, item: T) -> None:
        if self._coalesce is not None and self._items:
            self._items.append(self._coalesce(self._items.pop(), item))
        else:
            self._items.append(item)
        self._wakeup.set()

    def _close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        await trio.lowlevel.checkpoint()
        if not self._items:  # pragma: no cover - nothing else consumes our items
            raise StopAsyncIteration
        return self._items.popleft()


class Feed(Generic[T]):
    """Publishes items to every live :class:`Subscription`.

    Args:
        maxlen: how many unconsumed items a subscription keeps; the oldest are dropped.
        coalesce: if given, a subscription merges unconsumed items into one with it instead.
    """

    def __init__(self, maxlen: int = 32, coalesce: Callable[[T, T], T] | None = None) -> None:
        self._maxlen = maxlen
        self._coalesce = coalesce
        self._subscriptions: weakref.WeakSet[Subscription[T]] = weakref.WeakSet()
        self.closed = False

    def subscribe(self, *initial: T) -> Subscription[T]:
        """A new subscription, starting with ``initial`` items."""
        subscription: Subscription[T] = Subscription(self._maxlen, self._coalesce)
        for item in initial:
            subscription._push(item)
        if self.closed:
            subscription._close()
        else:
            self._subscriptions.add(subscription)
        return subscription

    def publish(self, item: T) -> None:
        """Hand ``item`` to every subscription; never blocks."""
        for subscription in list(self._subscriptions):
            subscription._push(item)

    def close(self) -> None:
        """End every subscription (after its pending items)."""
        self.closed = True
        for subscription in list(self._subscriptions):
            subscription._close()
        self._subscriptions.clear()
