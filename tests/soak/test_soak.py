"""A one-minute soak for CI (the long runs are ``nox -s soak``; see soak.py).

It takes about two minutes: the clients join, a minute of traffic, the convergence check, the
wait for the rooms to unload, and the documents measured in a fresh process. Leave it out with
``pytest -m "not soak"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soak
from nodejs import requires_node

pytestmark = [pytest.mark.soak, requires_node]

#: Half the issue's 40 rooms: CI machines have two cores that the clients share with the server.
ROOMS = 20


def test_a_minute_of_steady_traffic(tmp_path: Path) -> None:
    results = tmp_path / "soak.json"
    status = soak.main(
        [
            "--minutes",
            "1",
            "--rooms",
            str(ROOMS),
            "--sample-every",
            "2",
            "--json",
            str(results),
            "--workdir",
            str(tmp_path),
        ]
    )
    report = json.loads(results.read_text())
    # Convergence, every short-lived room and join, descriptors back to where they started.
    assert report["failures"] == []
    assert status == 0
    figures = report["servers"]["trio-ysync"]["summary"]
    # Half a minute is too short for the 10 % rule (allocator and SQLite cache warm-up are
    # of the same size as the documents' growth), but not for a leak: before the fixes this
    # soak grew by ~5 MB in its second half, for ~0.4 MB of documents (after them ~1.2 MB).
    assert figures["second_half_growth_kib"] <= 2 * figures["documents_growth_kib"] + 2048
