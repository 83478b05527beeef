"""Access control on a live server: the authorize hook, tokens, read-only peers, limits.

Refusals happen before the upgrade and before any room is loaded; the same holds through the
built-in server, trio-websocket's and hypercorn's (ASGI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from test_adapters import start_hypercorn
from trio_websocket import ConnectionRejected, serve_websocket
from wsclient import connect
from ydocs import insert_text

from trio_ysync.adapters import ASGIApp, trio_websocket_handler
from trio_ysync.auth import Access, Forbidden, Grant, TokenAuthorizer, Unauthorized, create_token
from trio_ysync.connection import ConnectionRequest
from trio_ysync.doc import new_document
from trio_ysync.limits import Limits
from trio_ysync.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    encode,
)
from trio_ysync.server import RoomServer
from trio_ysync.store import MemoryStore
from trio_ysync.transport import CloseCode

TIMEOUT = 10
SECRET = b"k" * 48


def make_update(text: str, client_id: int) -> bytes:
    doc = new_document(client_id=client_id)
    insert_text(doc, 0, text)
    return doc.diff()


def text_of(update: bytes) -> str:
    doc = new_document()
    doc.apply_update(update)
    return doc.get_text("t")


@dataclass
class Served:
    server: RoomServer
    port: int


async def serve(nursery: trio.Nursery, transport: str, server: RoomServer) -> AsyncIterator[Served]:
    if transport == "wsproto":
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        yield Served(server, port)
        server.shutdown()
        return
    async with server:
        if transport == "trio-websocket":
            listener = await nursery.start(
                serve_websocket, trio_websocket_handler(server), "127.0.0.1", 0, None
            )
            yield Served(server, listener.port)
        else:
            shutdown = trio.Event()
            yield Served(server, await start_hypercorn(nursery, ASGIApp(server), shutdown))
            shutdown.set()


@pytest.fixture(params=["wsproto", "trio-websocket", "hypercorn"])
async def guarded(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[Served]:
    """A server that requires tokens, over each transport."""
    server = RoomServer(MemoryStore(), authorize=TokenAuthorizer(SECRET))
    async for served in serve(nursery, request.param, server):
        yield served


async def refused_status(port: int, room: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(ConnectionRejected) as info:
        async with connect(port, room, headers):
            pass
    return info.value.status_code


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 401),
        (f"?token={create_token(SECRET, 'notes')}x", 401),
        (f"?token={create_token(SECRET, 'notes', ttl=-1)}", 401),
        (f"?token={create_token(b'z' * 48, 'notes')}", 401),
        (f"?token={create_token(SECRET, 'other')}", 403),
    ],
    ids=["none", "tampered", "expired", "foreign", "another room"],
)
async def test_refused_before_the_upgrade_and_no_room_is_loaded(
    guarded: Served, query: str, status: int
) -> None:
    with trio.fail_after(TIMEOUT):
        # The room has content that must not leak.
        async with connect(guarded.port, f"notes?token={create_token(SECRET, 'notes')}") as owner:
            await owner.join()
            await owner.send(SyncUpdate(make_update("secret", 1)))
            await owner.send(QueryAwareness())
            await owner.receive_until(AwarenessUpdate)
        guarded.server.rooms["notes"].stop()
        await guarded.server.rooms["notes"].closed.wait()
        assert await refused_status(guarded.port, f"notes{query}") == status
        assert guarded.server.rooms == {}


async def test_a_valid_token_syncs_and_the_header_works_too(guarded: Served) -> None:
    token = create_token(SECRET, "notes")
    with trio.fail_after(TIMEOUT):
        async with (
            connect(guarded.port, f"notes?token={token}") as a,
            connect(guarded.port, "notes", {"Authorization": f"Bearer {token}"}) as b,
        ):
            await a.join()
            await b.join()
            await a.send(SyncUpdate(make_update("shared", 1)))
            received = await b.receive_until(SyncUpdate)
            assert text_of(received.update) == "shared"  # type: ignore[union-attr]


async def test_read_only_peers_see_everything_and_change_nothing(nursery: trio.Nursery) -> None:
    store = MemoryStore()
    server = RoomServer(store, authorize=TokenAuthorizer(SECRET))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    writer_token = create_token(SECRET, "doc")
    reader_token = create_token(SECRET, "doc", read_only=True)
    with trio.fail_after(TIMEOUT):
        async with (
            connect(port, f"doc?token={writer_token}") as writer,
            connect(port, f"doc?token={reader_token}") as reader,
        ):
            await writer.join()
            await reader.join()
            await writer.send(SyncUpdate(make_update("by the writer", 1)))
            received = await reader.receive_until(SyncUpdate)
            assert text_of(received.update) == "by the writer"  # type: ignore[union-attr]
            # The reader's edits are refused, once with a permission-denied message.
            await reader.send(SyncUpdate(make_update("by the reader", 2)))
            await reader.send(SyncStep2(make_update("offline edit", 3)))
            assert await reader.receive_until(PermissionDenied) == PermissionDenied(
                "read-only access"
            )
            # Its presence is still welcome.
            entry = AwarenessEntry(2, 1, {"user": "viewer"})
            await reader.send(AwarenessUpdate([entry]))
            assert await writer.receive_until(AwarenessUpdate) == AwarenessUpdate([entry])
            await writer.send(SyncStep1(b"\x00"))
            assert text_of((await writer.receive_until(SyncStep2)).update) == "by the writer"  # type: ignore[union-attr]
    stored = await store.load("doc")
    assert text_of_all(stored.updates) == "by the writer"
    server.shutdown()


def text_of_all(updates: list[bytes]) -> str:
    doc = new_document()
    for update in updates:
        doc.apply_update(update)
    return doc.get_text("t")


async def test_rights_belong_to_each_connection(nursery: trio.Nursery) -> None:
    """Unlike servers that check once per room, a later reader does not demote the writer."""
    server = RoomServer(authorize=TokenAuthorizer(SECRET))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        async with connect(port, f"doc?token={create_token(SECRET, 'doc')}") as writer:
            await writer.join()
            async with connect(port, f"doc?token={create_token(SECRET, 'doc', read_only=True)}"):
                await writer.send(SyncUpdate(make_update("still mine", 1)))
                await writer.send(SyncStep1(b"\x00"))
                answer = await writer.receive_until(SyncStep2)
                assert text_of(answer.update) == "still mine"  # type: ignore[union-attr]
    server.shutdown()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_token_that_expires_closes_its_connection_with_4401(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    from test_server_clock import open_client

    async with RoomServer(authorize=TokenAuthorizer(SECRET)) as server:
        short = create_token(SECRET, "r", ttl=30)
        long = create_token(SECRET, "r", ttl=3600)
        brief = await open_client(server, nursery, f"r?token={short}")
        lasting = await open_client(server, nursery, f"r?token={long}")
        start = trio.current_time()
        assert await brief.receive() is None
        assert brief.close_code == Unauthorized.close_code
        assert 28 <= trio.current_time() - start <= 31
        await lasting.send(QueryAwareness())
        assert isinstance(await lasting.receive(), AwarenessUpdate)


async def test_a_custom_hook_sees_the_request_and_names_the_user(nursery: trio.Nursery) -> None:
    seen: list[ConnectionRequest] = []

    async def authorize(request: ConnectionRequest) -> Grant:
        seen.append(request)
        cookie = request.header("cookie") or ""
        if cookie != "session=ada":
            raise Unauthorized("log in first")
        if request.room.startswith("private/"):
            raise Forbidden("not yours")
        return Grant(Access.READ_WRITE, identity="ada")

    server = RoomServer(authorize=authorize)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        assert await refused_status(port, "notes") == 401
        assert await refused_status(port, "private%2Fx", {"Cookie": "session=ada"}) == 403
        async with connect(port, "notes", {"Cookie": "session=ada", "Origin": "https://a"}) as c:
            await c.join()
    assert seen[-1].origin == "https://a"
    assert seen[-1].room == "notes"
    server.shutdown()


@pytest.mark.parametrize(
    ("failure", "status"), [(RuntimeError("hook bug"), 500), (trio.sleep_forever, 503)]
)
async def test_a_failing_or_stuck_hook_refuses_without_loading_a_room(
    nursery: trio.Nursery, failure: object, status: int
) -> None:
    async def authorize(request: ConnectionRequest) -> Grant:
        if isinstance(failure, Exception):
            raise failure
        await trio.sleep_forever()
        raise AssertionError

    server = RoomServer(authorize=authorize, handshake_timeout=0.5)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        assert await refused_status(port, "notes") == status
    assert server.rooms == {}
    server.shutdown()


# -- limits --------------------------------------------------------------------------------------


def via(address: str) -> dict[str, str]:
    """Headers of a client at ``address`` behind one trusted proxy."""
    return {"X-Forwarded-For": address}


async def limited(
    nursery: trio.Nursery, max_message_size: int = 1 << 20, **limits: object
) -> tuple[RoomServer, int]:
    server = RoomServer(
        max_message_size=max_message_size,
        limits=Limits(trusted_proxies=1, **limits),  # type: ignore[arg-type]
    )
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return server, port


async def test_connections_per_address(nursery: trio.Nursery) -> None:
    server, port = await limited(nursery, max_connections_per_address=2)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "r", via("10.0.0.1")), connect(port, "r", via("10.0.0.1")):
            assert await refused_status(port, "r", via("10.0.0.1")) == 429
            async with connect(port, "r", via("10.0.0.2")) as other:
                await other.join()
        # Closed connections no longer count.
        async with connect(port, "r", via("10.0.0.1")) as again:
            await again.join()
    server.shutdown()


async def test_total_connections_and_loaded_rooms(nursery: trio.Nursery) -> None:
    server, port = await limited(nursery, max_connections=2, max_rooms=1)
    with trio.fail_after(TIMEOUT):
        async with connect(port, "one", via("10.0.0.1")) as first:
            await first.join()
            assert await refused_status(port, "two", via("10.0.0.2")) == 503
            async with connect(port, "one", via("10.0.0.3")) as second:
                await second.join()
                assert await refused_status(port, "one", via("10.0.0.4")) == 503
            await first.send(QueryAwareness())
            assert isinstance(await first.receive(), AwarenessUpdate)
    server.shutdown()


async def test_upgrades_per_minute(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    from test_server_clock import open_client

    async with RoomServer(limits=Limits(trusted_proxies=1, upgrades_per_minute=3)) as server:
        request = server.admission
        burst = [ConnectionRequest.from_target("/r", [("x-forwarded-for", "10.0.0.9")])]
        tickets = [request.admit(burst[0]) for _ in range(3)]
        with pytest.raises(Exception, match="too many new connections") as info:
            request.admit(burst[0])
        assert info.value.http_status == 429  # type: ignore[attr-defined]
        await trio.sleep(20)  # a minute's allowance refills over the minute
        tickets.append(request.admit(burst[0]))
        for ticket in tickets:
            ticket.release()
        assert request.open_connections == 0
        # The limit is per address: another one is untouched.
        client = await open_client(server, nursery, "r")
        await client.send(QueryAwareness())


async def test_message_and_byte_rates_close_with_1008(nursery: trio.Nursery) -> None:
    # A burst may be as large as the largest message: 100 KB here.
    server, port = await limited(
        nursery, max_message_size=100_000, messages_per_second=10, bytes_per_second=20_000
    )
    with trio.fail_after(TIMEOUT):
        async with connect(port, "r") as calm, connect(port, "r") as chatty:
            await calm.join()
            await chatty.join()
            for _ in range(60):  # more than the burst of five seconds' worth
                await chatty.send_raw(encode(QueryAwareness()))
            assert await chatty.close_code() == CloseCode.POLICY_VIOLATION
            async with connect(port, "r") as bulky:
                await bulky.join()
                await bulky.send(SyncUpdate(make_update("x" * 60_000, 1)))
                await bulky.send(SyncUpdate(make_update("y" * 60_000, 2)))
                assert await bulky.close_code() == CloseCode.POLICY_VIOLATION
            await calm.send(QueryAwareness())
            assert isinstance(await calm.receive_until(AwarenessUpdate), AwarenessUpdate)
    server.shutdown()


async def test_origin_allow_list(nursery: trio.Nursery) -> None:
    server, port = await limited(nursery, allowed_origins={"https://editor.example"})
    with trio.fail_after(TIMEOUT):
        assert await refused_status(port, "r", {"Origin": "https://evil.example"}) == 403
        async with connect(port, "r", {"Origin": "https://editor.example"}) as browser:
            await browser.join()
        async with connect(port, "r") as not_a_browser:
            await not_a_browser.join()
    server.shutdown()


async def test_refusals_are_logged_once_per_offender(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server, port = await limited(nursery, allowed_origins={"https://ok"})
    with trio.fail_after(TIMEOUT):
        for _ in range(5):
            await refused_status(port, "r", {"Origin": "https://evil", **via("10.1.1.1")})
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert "10.1.1.1" in refusals[0].getMessage()
    server.shutdown()
