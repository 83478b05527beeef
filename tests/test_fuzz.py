"""A short, bounded fuzz run against ``trio-ysync serve --store memory`` must break nothing:
no crash, no traceback, every honest edit delivered, nothing leaked across rooms.

The longer runs are ``nox -s fuzz``; see tests/fuzz.py.
"""

from __future__ import annotations

from pathlib import Path

import trio
from fuzzing import FuzzConfig, fuzz


async def test_short_fuzz_run_breaks_nothing(tmp_path: Path) -> None:
    config = FuzzConfig(
        seed=20240611,
        seconds=8,
        messages=3000,
        store="memory",
        connections=12,
        out_dir=tmp_path,
        replay_limit=40,
        replay_seconds=20,
    )
    with trio.fail_after(240):
        summary = await fuzz(config)
    assert summary.ok, summary.text()
