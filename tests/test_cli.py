"""The ``trio-ysync`` command: serve with graceful shutdown, and the store commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio
from cliserver import cli_server
from wsclient import connect
from ydocs import insert_text

from trio_ysync.doc import new_document
from trio_ysync.protocol import SyncStep1, SyncStep2, SyncUpdate
from trio_ysync.transport import CloseCode


def run_cli(*args: str, stdin: bytes = b"") -> bytes:
    result = subprocess.run(
        [sys.executable, "-m", "trio_ysync", *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return result.stdout


async def test_sigterm_closes_clients_with_going_away_and_keeps_the_data(tmp_path: Path) -> None:
    store = str(tmp_path / "rooms.db")
    doc = new_document(client_id=7)
    insert_text(doc, 0, "persisted")
    with trio.fail_after(30):
        async with cli_server("--store", store) as server, connect(server.port, "notes") as client:
            await client.join()
            await client.send(SyncUpdate(doc.diff()), SyncStep1(b"\x00"))
            await client.receive_until(SyncStep2)  # answered after the commit
            server.terminate()
            assert await client.close_code() == CloseCode.GOING_AWAY
            assert await server.process.wait() == 0

    assert run_cli("store", "--store", store, "list") == b"notes\n"
    exported = tmp_path / "notes.bin"
    run_cli("store", "--store", store, "export", "notes", "-o", str(exported))
    copy = new_document()
    copy.apply_update(exported.read_bytes())
    assert copy.get_text("t") == "persisted"

    run_cli("store", "--store", store, "import", "copy", "-", stdin=exported.read_bytes())
    assert run_cli("store", "--store", store, "list").split() == [b"copy", b"notes"]
    run_cli("store", "--store", store, "compact")
    assert run_cli("store", "--store", store, "export", "copy") == exported.read_bytes()


def test_export_of_an_unknown_room_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_ysync",
            "store",
            "--store",
            str(tmp_path / "x.db"),
            "export",
            "nope",
        ],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"nope" in result.stderr
