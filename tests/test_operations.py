"""Operating the server: hooks, metrics, connection logs, and the HTTP API for documents."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing
from cliserver import cli_server
from nodejs import js_client, requires_node, ws_url
from prometheus_client.parser import text_string_to_metric_families
from wsclient import connect, http_get
from ydocs import insert_text

from trio_ysync.auth import create_token
from trio_ysync.doc import new_document
from trio_ysync.hooks import (
    ConnectionClosed,
    ConnectionOpened,
    DocumentChanged,
    RoomLoaded,
    RoomUnloaded,
    ServerHooks,
)
from trio_ysync.metrics import Metrics
from trio_ysync.protocol import AwarenessUpdate, QueryAwareness, SyncUpdate
from trio_ysync.server import RoomServer

TIMEOUT = 30
SECRET = b"operations-secret-" * 3


def make_update(text: str, client_id: int) -> bytes:
    doc = new_document(client_id=client_id)
    insert_text(doc, 0, text)
    return doc.diff()


# -- hooks ---------------------------------------------------------------------------------------


class Recorder(ServerHooks):
    def __init__(self) -> None:
        self.events: list[object] = []
        self.changed = trio.Event()

    async def connection_opened(self, event: ConnectionOpened) -> None:
        self.events.append(event)

    async def connection_closed(self, event: ConnectionClosed) -> None:
        self.events.append(event)

    async def room_loaded(self, event: RoomLoaded) -> None:
        self.events.append(event)

    async def room_unloaded(self, event: RoomUnloaded) -> None:
        self.events.append(event)

    async def document_changed(self, event: DocumentChanged) -> None:
        self.events.append(event)
        self.changed.set()


class Stuck(ServerHooks):
    """A hook that never returns and one that always fails: neither may hold up a room."""

    async def document_changed(self, event: DocumentChanged) -> None:
        await trio.sleep_forever()

    async def connection_opened(self, event: ConnectionOpened) -> None:
        raise RuntimeError("hook bug")


async def test_hooks_see_the_life_of_a_room_in_order_and_cannot_block_it(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    server = RoomServer(room_grace_period=0, hooks=[Stuck(), recorder])
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    update = make_update("hooked", 7)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "hooked?token=x") as writer, connect(port, "hooked") as reader:
            await writer.join()
            await reader.join()
            await writer.send(SyncUpdate(update))
            await reader.receive_until(SyncUpdate)  # the stuck hook held nothing up
            await recorder.changed.wait()
        room = server.rooms.get("hooked")
        if room is not None:
            await room.closed.wait()
        await trio.testing.wait_all_tasks_blocked()
    kinds = [type(event).__name__ for event in recorder.events]
    assert kinds == [
        "RoomLoaded",
        "ConnectionOpened",
        "ConnectionOpened",
        "DocumentChanged",
        "ConnectionClosed",
        "ConnectionClosed",
        "RoomUnloaded",
    ], kinds
    changed = recorder.events[3]
    assert isinstance(changed, DocumentChanged)
    assert (changed.room, changed.update) == ("hooked", update)
    closed = recorder.events[4]
    assert isinstance(closed, ConnectionClosed)
    assert closed.code == 1000 and closed.duration >= 0
    assert "hook Stuck failed on ConnectionOpened" in caplog.text
    server.shutdown()


# -- metrics -------------------------------------------------------------------------------------


async def scrape(port: int, token: str | None = None) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    async with stream:
        await stream.send_all(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    values = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


@requires_node
async def test_metrics_move_as_real_clients_connect_edit_and_leave(nursery: trio.Nursery) -> None:
    server = RoomServer(metrics=Metrics(), room_grace_period=0)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    url = ws_url(port)
    with trio.fail_after(TIMEOUT):
        before = await scrape(port)
        assert before["trio_ysync_connections{}"] == 0
        async with js_client(url, "m", name="a") as a, js_client(url, "m", name="b") as b:
            await a.wait_synced()
            await b.wait_synced()
            await a.insert(0, "counted")
            await b.wait_text("counted")
            during = await scrape(port)
            assert during["trio_ysync_connections{}"] == 2
            assert during["trio_ysync_rooms{}"] == 1
            assert during["trio_ysync_messages_received_total{kind=sync_update}"] >= 1
            assert during["trio_ysync_messages_sent_total{kind=sync_update}"] >= 1
            assert during["trio_ysync_committed_updates_total{}"] >= 1
            assert during["trio_ysync_room_load_seconds_count{}"] == 1
        while server.rooms:
            await next(iter(server.rooms.values())).closed.wait()
        after = await scrape(port)
    assert after["trio_ysync_connections{}"] == 0
    assert after["trio_ysync_rooms{}"] == 0
    closed = sum(v for k, v in after.items() if k.startswith("trio_ysync_connections_closed_total"))
    assert closed == 2
    server.shutdown()


async def test_metrics_behind_a_token_and_refusals_counted(nursery: trio.Nursery) -> None:
    server = RoomServer(metrics=Metrics(), metrics_token="scrape-me")
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        status, _ = await http_get(port, "/metrics")
        assert status == 401
        assert (await http_get(port, "/%ff"))[0] == 426  # plain HTTP: not an upgrade
        values = await scrape(port, "scrape-me")
        assert values["trio_ysync_connections{}"] == 0
    server.shutdown()


# -- logs ----------------------------------------------------------------------------------------


async def test_one_log_line_per_connection_open_and_close(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trio_ysync.server")
    server = RoomServer(authorize=_named("ada"))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "logged") as client:
            await client.join()
        await trio.testing.wait_all_tasks_blocked()
    lines = [r for r in caplog.records if getattr(r, "event", None)]
    assert [r.event for r in lines] == ["connection_opened", "connection_closed"]  # type: ignore[attr-defined]
    opened, closed = lines
    assert "identity 'ada'" in opened.getMessage()
    assert closed.room == "logged" and closed.code == 1000  # type: ignore[attr-defined]
    assert "127.0.0.1" in closed.getMessage()
    server.shutdown()


def _named(identity: str):  # type: ignore[no-untyped-def]
    from trio_ysync.auth import Grant

    async def authorize(request: object) -> Grant:
        return Grant(identity=identity)

    return authorize


async def test_serve_logs_json_lines(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            cli_server("--store", "memory", "--log-format", "json", capture_stderr=True) as server,
            connect(server.port, "json-room") as client,
        ):
            await client.join()
            await client.send(QueryAwareness())
            await client.receive_until(AwarenessUpdate)
    records = [json.loads(line) for line in server.log_lines if line.startswith("{")]
    assert records and len(records) == len(server.log_lines), server.log_lines
    closed = [r for r in records if r.get("event") == "connection_closed"]
    assert closed and closed[0]["room"] == "json-room" and closed[0]["code"] == 1000


# -- the HTTP API --------------------------------------------------------------------------------


def curl(*args: str) -> tuple[int, bytes]:
    """Run curl; the HTTP status and the body."""
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, check=True, timeout=20
    )
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body


@requires_node
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_reads_and_writes_a_room_a_js_client_edits(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    token = create_token(SECRET, "shared/notes")
    admin = create_token(SECRET, "", prefix=True)
    with trio.fail_after(TIMEOUT):
        async with cli_server(
            "--store", str(tmp_path / "r.db"), "--auth-secret-file", str(secret)
        ) as server:
            base = f"http://127.0.0.1:{server.port}/api/rooms"
            room = f"{base}/shared%2Fnotes"
            async with js_client(
                ws_url(server.port), "shared/notes", params={"token": token}
            ) as js:
                await js.wait_synced()
                await js.insert(0, "from js")
                # Read as an update and as JSON.
                status, update = await trio.to_thread.run_sync(
                    curl, "-H", f"Authorization: Bearer {token}", room
                )
                assert status == 200
                doc = new_document()
                doc.apply_update(update)
                assert doc.get_text("t") == "from js"
                status, body = await trio.to_thread.run_sync(curl, f"{room}/json?token={token}")
                assert (status, json.loads(body)) == (200, {"t": "from js"})
                # Write: the connected client sees it.
                (tmp_path / "u.bin").write_bytes(make_update("curl says hi, ", 4242))
                status, _ = await trio.to_thread.run_sync(
                    curl, "-X", "POST", "--data-binary", f"@{tmp_path / 'u.bin'}",
                    f"{room}?token={token}",
                )  # fmt: skip
                assert status == 204
                await js.wait_until(lambda: "curl says hi" in js.text)
                # Refused without a token, or with garbage.
                assert (await trio.to_thread.run_sync(curl, room))[0] == 401
                status, _ = await trio.to_thread.run_sync(
                    curl, "-X", "POST", "--data-binary", "garbage", f"{room}?token={token}"
                )
                assert status == 400
                # Listing and deleting need a server-wide token.
                assert (await trio.to_thread.run_sync(curl, f"{base}?token={token}"))[0] == 403
                status, body = await trio.to_thread.run_sync(curl, f"{base}?token={admin}")
                assert status == 200
                assert json.loads(body) == {"rooms": [{"name": "shared/notes", "loaded": True}]}
                mark = len(js.events)
                status, _ = await trio.to_thread.run_sync(
                    curl, "-X", "DELETE", f"{room}?token={admin}"
                )
                assert status == 204
                closed = await js.wait_event(lambda e: e.get("event") == "closed", since=mark)
                assert closed["code"] == 4404
            status, body = await trio.to_thread.run_sync(curl, f"{base}?token={admin}")
            assert json.loads(body) == {"rooms": []}
            assert (await trio.to_thread.run_sync(curl, f"{room}?token={token}"))[0] == 404
