"""Access control with real y-websocket clients (Node): tokens through every transport,
read-only viewers, and ``trio-ysync serve --auth-secret-file``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from cliserver import cli_server
from nodejs import js_client, requires_node, ws_url
from test_access import Served, serve

from trio_ysync.auth import TokenAuthorizer, create_token
from trio_ysync.server import RoomServer
from trio_ysync.store import MemoryStore

pytestmark = requires_node

TIMEOUT = 30
SECRET = b"interop-secret-" * 4


@pytest.fixture(params=["wsproto", "trio-websocket", "hypercorn"])
async def guarded(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[Served]:
    server = RoomServer(MemoryStore(), authorize=TokenAuthorizer(SECRET))
    async for served in serve(nursery, request.param, server):
        yield served


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({}, 401),
        ({"token": create_token(SECRET, "notes") + "x"}, 401),
        ({"token": create_token(SECRET, "notes", ttl=-1)}, 401),
        ({"token": create_token(SECRET, "other")}, 403),
    ],
    ids=["no token", "tampered", "expired", "another room"],
)
async def test_y_websocket_without_a_valid_token_gets_nothing(
    guarded: Served, params: dict[str, str], status: int
) -> None:
    url = ws_url(guarded.port)
    with trio.fail_after(TIMEOUT):
        async with js_client(
            url, "notes", params={"token": create_token(SECRET, "notes")}
        ) as owner:
            await owner.wait_synced()
            await owner.insert(0, "confidential")
            async with js_client(url, "notes", params=params, name="intruder") as intruder:
                # Refused at the upgrade: y-websocket reports the failed connection (and would
                # retry); it never gets a byte of the room.
                event = await intruder.wait_event(
                    lambda e: e.get("event") == "connection_error", since=0
                )
                assert str(status) in event["message"], event
                assert intruder.text == ""
                assert not intruder.synced
                assert not [e for e in intruder.events if e.get("event") == "text"]


async def test_y_websocket_with_a_token_syncs_and_a_viewer_only_reads(guarded: Served) -> None:
    url = ws_url(guarded.port)
    writer_token = create_token(SECRET, "doc", subject="writer")
    viewer_token = create_token(SECRET, "doc", read_only=True, subject="viewer")
    with trio.fail_after(TIMEOUT):
        async with (
            js_client(url, "doc", params={"token": writer_token}, name="writer") as writer,
            js_client(url, "doc", params={"token": viewer_token}, name="viewer") as viewer,
        ):
            await writer.wait_synced()
            await viewer.wait_synced()
            await writer.insert(0, "written")
            await viewer.wait_text("written")  # live edits reach the viewer
            mark = len(viewer.events)
            await viewer.insert(0, "vandalism ")
            denied = await viewer.wait_event(
                lambda e: e.get("event") == "permission_denied", since=mark
            )
            assert denied["reason"] == "read-only access"
            await writer.insert(7, "!")
            await viewer.wait_text("vandalism written!")  # its local copy diverges, ...
            assert await writer.get_text() == "written!"  # ... nobody else's
        async with js_client(url, "doc", params={"token": writer_token}, name="later") as later:
            await later.wait_synced()
            assert await later.get_text() == "written!"


async def test_an_expiring_token_closes_the_connection_with_4401(guarded: Served) -> None:
    with trio.fail_after(TIMEOUT):
        token = create_token(SECRET, "brief", ttl=2)
        async with js_client(ws_url(guarded.port), "brief", params={"token": token}) as client:
            await client.wait_synced()
            closed = await client.wait_event(lambda e: e.get("event") == "closed", since=0)
            assert closed["code"] == 4401


async def test_serve_with_a_secret_file_requires_tokens_and_keeps_viewers_out_of_the_store(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    store = str(tmp_path / "rooms.db")
    options = ("--store", store, "--auth-secret-file", str(secret))
    writer = {"token": create_token(SECRET, "team/plan", subject="ann")}
    viewer = {"token": create_token(SECRET, "team/", prefix=True, read_only=True)}
    with trio.fail_after(TIMEOUT):
        async with cli_server(*options, capture_stderr=True) as server:
            url = ws_url(server.port)
            async with (
                js_client(url, "team/plan", params=writer) as ann,
                js_client(url, "team/plan", params=viewer) as guest,
                js_client(url, "team/plan", name="anonymous") as anonymous,
            ):
                await ann.wait_synced()
                await guest.wait_synced()
                await ann.insert(0, "plan")
                await guest.wait_text("plan")
                await guest.insert(4, " (guest edit)")
                await anonymous.wait_event(
                    lambda e: e.get("event") in ("connection_error", "connection_close"), since=0
                )
                await ann.insert(0, "!")  # not where the guest typed: no concurrent order
                await guest.wait_text("!plan (guest edit)")
        log = "\n".join(server.log_lines)
        assert "Traceback" not in log
        async with (
            cli_server(*options) as server,
            js_client(ws_url(server.port), "team/plan", params=writer) as reader,
        ):
            await reader.wait_synced()
            assert await reader.get_text() == "!plan"
