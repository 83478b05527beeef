"""The server-wide timer heap, under trio's MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_ysync.timers import Timers


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_callbacks_run_in_deadline_order_at_their_time(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    timers = Timers()
    await nursery.start(timers.run)
    calls: list[tuple[str, float]] = []
    done = trio.Event()
    start = trio.current_time()
    timers.call_later(5, lambda: calls.append(("late", trio.current_time() - start)))
    timers.call_later(1, lambda: calls.append(("early", trio.current_time() - start)))
    timers.call_later(7, done.set)
    await done.wait()
    assert calls == [("early", 1), ("late", 5)]


async def test_an_earlier_deadline_wakes_the_runner(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    timers = Timers()
    await nursery.start(timers.run)
    timers.call_later(1000, lambda: None)
    await trio.testing.wait_all_tasks_blocked()
    fired = trio.Event()
    start = trio.current_time()
    timers.call_later(2, fired.set)
    await fired.wait()
    assert trio.current_time() - start == 2


async def test_cancelled_timers_never_run_and_do_not_pile_up(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    timers = Timers()
    await nursery.start(timers.run)
    ran: list[int] = []
    for index in range(1000):
        timers.call_later(3600 + index, lambda index=index: ran.append(index)).cancel()
    assert len(timers) == 0
    assert len(timers._heap) < 200  # rebuilt, not kept until an hour from now
    keep = timers.call_later(1, lambda: ran.append(-1))
    await trio.sleep(2)
    assert ran == [-1]
    assert not keep.pending


async def test_a_failing_callback_is_logged_and_the_others_run(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    timers = Timers()
    await nursery.start(timers.run)
    done = trio.Event()

    def broken() -> None:
        raise RuntimeError("bug")

    timers.call_later(1, broken)
    timers.call_later(1, done.set)
    await done.wait()
    assert "a timer callback failed" in caplog.text
