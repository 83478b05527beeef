"""A bare y-websocket test client: our codec over trio-websocket, for end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from trio_ysync.protocol import Message, SyncStep1, SyncStep2, decode, encode


class TestClient:
    """Sends and receives y-websocket messages; one message per frame, as y-websocket does."""

    __test__ = False  # not a pytest test class

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, *messages: Message) -> None:
        for message in messages:
            await self.ws.send_message(encode(message))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send_message(data)

    async def receive(self) -> Message:
        """The next message (frames of several messages are split)."""
        messages = decode(await self.ws.get_message())  # type: ignore[arg-type]
        assert len(messages) == 1, "the server must send one message per frame"
        return messages[0]

    async def receive_until(self, kind: type[Message]) -> Message:
        """Skip messages until one of ``kind`` arrives."""
        while True:
            message = await self.receive()
            if isinstance(message, kind):
                return message

    async def join(self) -> bytes:
        """The handshake as y-websocket does it: the server's SyncStep1 comes first; answer it
        with an empty SyncStep2, send our own SyncStep1 and return the update that answers it
        (the whole document)."""
        first = await self.receive()
        assert isinstance(first, SyncStep1), first
        await self.send(SyncStep2(b"\x00\x00"), SyncStep1(b"\x00"))
        answer = await self.receive_until(SyncStep2)
        assert isinstance(answer, SyncStep2)
        return answer.update

    async def close_code(self) -> int | None:
        """Wait for the server to close the connection; its close code."""
        try:
            while True:
                await self.ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code


@asynccontextmanager
async def connect(
    port: int, room: str, headers: dict[str, str] | None = None
) -> AsyncIterator[TestClient]:
    """A client of ``room`` (which may carry a query string: ``notes?token=...``)."""
    extra = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    async with open_websocket_url(f"ws://127.0.0.1:{port}/{room}", extra_headers=extra) as ws:
        yield TestClient(ws)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET; the status code and the body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body
