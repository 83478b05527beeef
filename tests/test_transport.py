"""The server's WebSocket connection over memory streams."""

from __future__ import annotations

import trio
import trio.testing
from rawclient import RawClient
from ydocs import insert_text

from trio_ysync.doc import new_document
from trio_ysync.protocol import AwarenessEntry, AwarenessUpdate, SyncStep1, SyncStep2, SyncUpdate
from trio_ysync.server import RoomServer


class RecordingStream(trio.abc.Stream):
    """A stream that remembers how many bytes each read asked for."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.requests: list[int | None] = []

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self.requests.append(max_bytes)
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_reads_stay_small_for_small_messages_and_grow_for_a_large_one(
    nursery: trio.Nursery,
) -> None:
    # Every read allocates the size it asks for: asking for 64 KiB per 100-byte message left
    # the C heap riddled with holes (RSS grew ~10 MB/min under steady traffic in the soak).
    client_stream, server_stream = trio.testing.memory_stream_pair()
    recording = RecordingStream(server_stream)
    server = RoomServer()
    async with server:
        nursery.start_soon(server.serve_stream, recording)
        client = RawClient(client_stream)
        await client.handshake("reads")
        assert isinstance(await client.receive(), SyncStep1)
        await client.send(SyncStep1(b"\x00"))
        assert isinstance(await client.receive(), SyncStep2)
        for clock in range(1, 20):
            await client.send(AwarenessUpdate([AwarenessEntry(5, clock, {"cursor": clock})]))
            assert isinstance(await client.receive(), AwarenessUpdate)
        small = len(recording.requests)
        big = new_document()
        insert_text(big, 0, "x" * 300_000)
        await client.send(SyncUpdate(big.diff()), AwarenessUpdate([AwarenessEntry(5, 99, {})]))
        assert isinstance(await client.receive(), AwarenessUpdate)  # after the update
        assert server.rooms["reads"].document.get_text("t") == "x" * 300_000
        server.shutdown()
    assert set(recording.requests[:small]) == {4096}
    assert max(recording.requests[small:]) == 65536
    assert recording.requests[-1] == 4096  # small again once the large message was in
