"""A wsproto client over any trio stream (memory streams under a MockClock, or TCP)."""

from __future__ import annotations

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Request,
)

from trio_ysync.protocol import Message, decode, encode


class RawClient:
    """Speaks WebSocket over ``stream``, answering pings unless told not to."""

    def __init__(self, stream: trio.abc.Stream, *, answer_pings: bool = True) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer_pings = answer_pings
        self.pings = 0
        self.close_code: int | None = None
        self._events: list[Event] = []

    async def handshake(self, room: str) -> None:
        await self.stream.send_all(self.ws.send(Request(host="test", target=f"/{room}")))
        event = await self._next_event()
        assert isinstance(event, AcceptConnection), event

    async def send(self, *messages: Message) -> None:
        for message in messages:
            await self.send_bytes(encode(message))

    async def send_bytes(self, data: bytes, *, raw: bool = False) -> None:
        """Send ``data`` as one binary message, or as raw bytes on the wire (frames made by
        hand) when ``raw``."""
        await self.stream.send_all(data if raw else self.ws.send(BytesMessage(data)))

    async def receive(self) -> Message | None:
        """The next message, or ``None`` once the server closed the connection."""
        while True:
            event = await self._next_event()
            if isinstance(event, BytesMessage):
                [message] = decode(bytes(event.data))
                return message
            if isinstance(event, CloseConnection):
                self.close_code = event.code
                return None

    async def _next_event(self) -> Event:
        while not self._events:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed the stream")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Ping):
                    self.pings += 1
                    if self.answer_pings:
                        await self.stream.send_all(self.ws.send(event.response()))
                else:
                    self._events.append(event)
        return self._events.pop(0)
