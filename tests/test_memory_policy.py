"""The process memory policy of ``trio-ysync serve`` (trio_ysync._memory)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_ysync import _memory


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_serving_freezes_startup_and_raises_the_thresholds(restored_gc: None) -> None:
    before = gc.get_freeze_count()
    _memory.tune_garbage_collector()
    assert gc.get_threshold() == _memory.SERVING_GC_THRESHOLDS
    assert gc.get_freeze_count() > before


async def test_freed_memory_is_released_once_per_interval(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[float, int]] = []

    def trim(pad: int) -> int:
        calls.append((trio.current_time(), pad))
        return 1

    monkeypatch.setattr(_memory, "_malloc_trim", lambda: trim)
    start = trio.current_time()
    with trio.move_on_after(2.5 * _memory.RELEASE_INTERVAL):
        await _memory.release_freed_memory()
    assert calls == [
        (start + _memory.RELEASE_INTERVAL, 0),
        (start + 2 * _memory.RELEASE_INTERVAL, 0),
    ]


async def test_without_malloc_trim_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "_malloc_trim", lambda: None)
    with trio.fail_after(1):  # returns at once instead of sleeping an interval
        await _memory.release_freed_memory()
