"""The provider against a server that requires tokens: fixed and refreshed tokens."""

from __future__ import annotations

import pycrdt
import pytest
import trio
from ydocs import wait_text

from trio_ysync.auth import TokenAuthorizer, create_token
from trio_ysync.provider import (
    Backoff,
    ConnectionStatus,
    PermanentDisconnect,
    Provider,
    open_provider,
)
from trio_ysync.server import RoomServer

TIMEOUT = 20
SECRET = b"provider-secret-" * 3
FAST = Backoff(initial=0.05, maximum=0.2)


async def guarded_server(nursery: trio.Nursery) -> tuple[RoomServer, str]:
    server = RoomServer(authorize=TokenAuthorizer(SECRET))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{port}"


async def test_a_fixed_token_syncs(nursery: trio.Nursery) -> None:
    server, url = await guarded_server(nursery)
    token = create_token(SECRET, "notes")
    with trio.fail_after(TIMEOUT):
        async with (
            open_provider(url, pycrdt.Doc(), room="notes", token=token) as first,
            open_provider(url, pycrdt.Doc(), room="notes", token=token) as second,
        ):
            await first.wait_synced()
            await second.wait_synced()
            first.document.native.get("t", type=pycrdt.Text).insert(0, "hello")
            await wait_text(second.document, "hello")
    server.shutdown()


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, 4401), (create_token(SECRET, "other"), 4403), ("not-a-token", 4401)],
    ids=["missing", "another room", "garbage"],
)
async def test_a_refused_fixed_token_stops_and_says_why(
    nursery: trio.Nursery, token: str | None, code: int
) -> None:
    server, url = await guarded_server(nursery)
    provider = Provider(url, pycrdt.Doc(), room="notes", token=token, backoff=FAST)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(PermanentDisconnect) as info:
            await provider.run()
        assert [status async for status in provider.status_changes()] == [
            ConnectionStatus.DISCONNECTED
        ]
        assert info.value.code == code
        assert str(code - 4000) in info.value.reason
        assert provider.stop_reason is info.value
        assert "HTTP" in (provider.last_error or "")
    server.shutdown()


async def test_a_token_function_gets_a_fresh_token_after_expiry(nursery: trio.Nursery) -> None:
    server, url = await guarded_server(nursery)
    issued: list[str] = []

    async def fresh_token() -> str:
        # The first token is already expired, the next ones last one second: the server
        # refuses the first attempt and closes the later connections with 4401 when they
        # expire; the provider comes back each time with a new one.
        token = create_token(SECRET, "notes", ttl=-1 if not issued else 1)
        issued.append(token)
        return token

    writer_token = create_token(SECRET, "notes")
    with trio.fail_after(TIMEOUT):
        async with (
            open_provider(url, pycrdt.Doc(), room="notes", token=fresh_token, backoff=FAST) as p,
            open_provider(url, pycrdt.Doc(), room="notes", token=writer_token) as writer,
        ):
            await writer.wait_synced()
            await p.wait_synced()
            text = writer.document.native.get("t", type=pycrdt.Text)
            text.insert(0, "one")
            await wait_text(p.document, "one")
            connections = 0
            async for status in p.status_changes():  # two expiries, two reconnections
                connections += status is ConnectionStatus.CONNECTED
                if connections == 3:
                    break
            text.insert(3, " two")
            await wait_text(p.document, "one two")
            assert p.stop_reason is None
    server.shutdown()


async def test_a_fixed_token_that_expires_stops_the_provider(nursery: trio.Nursery) -> None:
    server, url = await guarded_server(nursery)
    token = create_token(SECRET, "notes", ttl=1)
    provider = Provider(url, pycrdt.Doc(), room="notes", token=token)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(PermanentDisconnect) as info:
            await provider.run()  # syncs, then the server closes at expiry
        assert info.value.code == 4401
        assert provider.last_close is not None
        assert provider.last_close[0] == 4401
    server.shutdown()
