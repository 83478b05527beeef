"""One task for every deadline of a server: token expiries, pings, awareness expiry.

Thousands of connections and rooms each waiting on a timer of their own would be thousands of
sleeping tasks and cancel scopes. :class:`Timers` keeps every deadline in one heap and runs the
due callbacks from one task, so an idle connection or room costs a heap entry, not a task.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["Timer", "TimerScope", "Timers"]

logger = logging.getLogger("trio_ysync.timers")


class Timer:
    """A scheduled call; :meth:`cancel` it if it is no longer wanted."""

    __slots__ = ("_timers", "callback", "deadline")

    def __init__(self, timers: Timers, deadline: float, callback: Callable[[], None]) -> None:
        self._timers: Timers | None = timers
        self.deadline = deadline
        self.callback: Callable[[], None] | None = callback

    @property
    def pending(self) -> bool:
        """Whether it is still to be called."""
        return self.callback is not None

    def cancel(self) -> None:
        """Do not call it (harmless after it ran or was cancelled)."""
        timers, self._timers = self._timers, None
        if self.callback is not None:
            self.callback = None  # let go of whatever it refers to
            if timers is not None:
                timers._cancelled()


class TimerScope:
    """A cancel scope that a timer cancels: ``with timers.scope_after(10):``.

    The same as ``trio.move_on_after`` for the code inside, but the deadline is an entry in the
    server's timer heap instead of one in trio's, which costs less to set and to take back when
    thousands of connections each need one for their handshake.
    """

    __slots__ = ("scope", "timer")

    def __init__(self, timers: Timers, delay: float) -> None:
        self.scope = trio.CancelScope()
        self.timer = timers.call_later(delay, self.scope.cancel)

    def __enter__(self) -> trio.CancelScope:
        return self.scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        self.timer.cancel()
        return self.scope.__exit__(*exc_info)


class Timers:
    """Calls plain functions at trio-clock deadlines, from one task.

    Start it with ``await nursery.start(timers.run)``; until then (and after it stops) timers are
    kept but nothing is called. Callbacks must not block and should not raise: an exception is
    logged and the others still run.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._wakeup = trio.Event()
        self._cancelled_count = 0

    def __len__(self) -> int:
        """How many timers are pending."""
        return len(self._heap) - self._cancelled_count

    def _cancelled(self) -> None:
        # Cancelled timers stay in the heap until they are due; rebuild it once they are the
        # majority, so connections that come and go with far deadlines cannot grow it.
        self._cancelled_count += 1
        if self._cancelled_count > 64 and self._cancelled_count * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].pending]
            heapq.heapify(self._heap)
            self._cancelled_count = 0

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` once the trio clock reaches ``deadline``."""
        timer = Timer(self, deadline, callback)
        if not self._heap or deadline < self._heap[0][0]:
            self._wakeup.set()
        heapq.heappush(self._heap, (deadline, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` after ``delay`` seconds."""
        return self.call_at(trio.current_time() + delay, callback)

    def scope_after(self, delay: float) -> TimerScope:
        """A cancel scope cancelled after ``delay`` seconds (see :class:`TimerScope`)."""
        return TimerScope(self, delay)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run due callbacks until cancelled."""
        task_status.started()
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                timer = heapq.heappop(self._heap)[2]
                callback = timer.callback
                if callback is None:
                    self._cancelled_count -= 1
                    continue
                timer.callback = None
                timer._timers = None
                try:
                    callback()
                except Exception:
                    logger.exception("a timer callback failed")
                # While it waits, the task must not keep the last callback's object alive.
                del timer, callback
            self._wakeup = trio.Event()
            with trio.move_on_at(self._heap[0][0] if self._heap else math.inf):
                await self._wakeup.wait()
