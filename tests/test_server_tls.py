"""wss:// with an ssl.SSLContext."""

from __future__ import annotations

import ssl
from functools import partial

import trio
import trustme
from trio_websocket import open_websocket_url

from trio_ysync.protocol import SyncStep1, decode, encode
from trio_ysync.server import RoomServer


async def test_serve_with_tls(nursery: trio.Nursery) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    server = RoomServer()
    port = await nursery.start(partial(server.serve, ssl_context=server_context), "127.0.0.1", 0)
    with trio.fail_after(10):
        async with open_websocket_url(
            f"wss://127.0.0.1:{port}/secure", ssl_context=client_context
        ) as ws:
            assert decode(await ws.get_message()) == [SyncStep1(b"\x00")]  # type: ignore[arg-type]
            await ws.send_message(encode(SyncStep1(b"\x00")))
            assert decode(await ws.get_message())[0].update == b"\x00\x00"  # type: ignore[arg-type,union-attr]
    server.shutdown()
