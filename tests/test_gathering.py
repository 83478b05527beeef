"""Messages sent while one read is worked on reach each receiver in one write."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from rawclient import RawClient
from wsproto.events import BytesMessage
from ydocs import insert_text

from trio_ysync.connection import (
    MessageHandler,
    OutgoingMessage,
    QueuedConnection,
    gathering_sends,
)
from trio_ysync.doc import new_document
from trio_ysync.errors import CloseCode
from trio_ysync.protocol import SyncStep1, SyncStep2, SyncUpdate, decode, encode
from trio_ysync.server import RoomServer

TIMEOUT = 10


class WriteRecorder(QueuedConnection):
    """A connection whose socket takes everything at once and remembers each write."""

    def __init__(self) -> None:
        super().__init__(max_buffered_bytes=1 << 20, close_timeout=5, name="recorder")
        self.writes: list[bytes] = []

    def _write_now(self, data: bytes) -> bytes:
        self.writes.append(data)
        return b""

    def _announce_close(self, code: int, reason: str) -> None:
        self._queue(b"<close>")

    async def _write(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))
        await trio.lowlevel.checkpoint()

    async def _read_all(self, on_message: MessageHandler) -> None:
        await trio.sleep_forever()

    async def _release(self) -> None:
        await trio.lowlevel.checkpoint()


def message(text: str) -> OutgoingMessage:
    return OutgoingMessage(text.encode())


async def ignore(payload: bytes) -> None:
    await trio.lowlevel.checkpoint()


@pytest.fixture
async def recorder(nursery: trio.Nursery) -> WriteRecorder:
    connection = WriteRecorder()
    nursery.start_soon(connection.run, ignore)
    await trio.testing.wait_all_tasks_blocked()
    return connection


async def test_without_a_gathering_each_message_is_written_at_once(
    recorder: WriteRecorder,
) -> None:
    recorder.send(message("a"))
    recorder.send(message("b"))
    assert recorder.writes == [b"a", b"b"]


async def test_what_a_gathering_collects_is_written_once_when_it_ends(
    recorder: WriteRecorder,
) -> None:
    other = WriteRecorder()
    with gathering_sends():
        for text in "abc":
            recorder.send(message(text))
        other.send(message("x"))
        assert recorder.writes == other.writes == []
    assert recorder.writes == [b"abc"]
    assert other.writes == [b"x"]
    assert recorder.bytes_written == recorder.bytes_queued == 3


async def test_a_release_in_the_middle_writes_what_is_ready_and_gathering_goes_on(
    recorder: WriteRecorder,
) -> None:
    with gathering_sends() as gathering:
        recorder.send(message("a"))
        recorder.send(message("b"))
        gathering.release()  # as a reader does before it lets other tasks run
        assert recorder.writes == [b"ab"]
        recorder.send(message("c"))
        recorder.send(message("d"))
        assert recorder.writes == [b"ab"]
    assert recorder.writes == [b"ab", b"cd"]


async def test_other_tasks_sending_meanwhile_keep_the_order(
    recorder: WriteRecorder, nursery: trio.Nursery
) -> None:
    go = trio.Event()
    sent = trio.Event()

    async def send_from_elsewhere() -> None:
        await go.wait()
        recorder.send(message("2"))
        sent.set()

    nursery.start_soon(send_from_elsewhere)  # not in the gathering
    await trio.testing.wait_all_tasks_blocked()
    with gathering_sends():
        recorder.send(message("1"))
        go.set()
        await sent.wait()
        recorder.send(message("3"))
        assert recorder.writes == []
    assert recorder.writes == [b"123"]
    recorder.send(message("4"))
    assert recorder.writes == [b"123", b"4"]


async def test_a_task_started_inside_a_gathering_writes_at_once_after_it(
    recorder: WriteRecorder, nursery: trio.Nursery
) -> None:
    release = trio.Event()
    done = trio.Event()

    async def send_later() -> None:
        await release.wait()
        recorder.send(message("late"))
        done.set()

    with gathering_sends():
        nursery.start_soon(send_later)  # inherits the gathering through its context
        recorder.send(message("early"))
    release.set()
    await done.wait()
    assert recorder.writes == [b"early", b"late"]


async def test_closing_writes_what_was_gathered_before_the_close(
    recorder: WriteRecorder,
) -> None:
    with gathering_sends():
        recorder.send(message("a"))
        recorder.send(message("b"))
        recorder.close(CloseCode.NORMAL)
        recorder.send(message("after the close"))
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.writes == [b"ab", b"<close>"]


async def test_a_connection_that_is_gone_drops_what_it_gathered(
    recorder: WriteRecorder,
) -> None:
    with gathering_sends():
        recorder.send(message("a"))
        recorder._mark_closed(CloseCode.GOING_AWAY)  # the reader met a broken socket
    assert recorder.writes == []


async def test_a_connection_still_writing_queues_under_its_limit_as_before(
    nursery: trio.Nursery,
) -> None:
    class Stuck(WriteRecorder):
        def _write_now(self, data: bytes) -> bytes:
            return data  # the peer reads nothing: the socket takes nothing

        async def _write(self, chunks: list[bytes]) -> None:
            await trio.sleep_forever()

    stuck = Stuck()
    stuck._outgoing.limit = 10
    nursery.start_soon(stuck.run, ignore)
    await trio.testing.wait_all_tasks_blocked()
    stuck.send(message("0123456789"))  # waits for the writer, which never gets it out
    with gathering_sends():
        # Nothing to gain from gathering behind a writer: the queue and its limit apply.
        stuck.send(message("more"))
        assert stuck.close_code == CloseCode.TRY_AGAIN_LATER


# -- over real sockets ---------------------------------------------------------------------------


def updates(count: int) -> list[bytes]:
    doc = new_document(client_id=7)
    result = []
    for index in range(count):
        before = doc.state_vector()
        insert_text(doc, index, "x")
        result.append(doc.diff(before))
    return result


async def synced_client(port: int, room: str) -> RawClient:
    """A client of ``room`` that has asked for the document and got it."""
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
    await client.handshake(room)
    assert isinstance(await client.receive(), SyncStep1)
    await client.send(SyncStep1(b"\x00"))
    assert isinstance(await client.receive(), SyncStep2)
    return client


async def receive_updates(client: RawClient, count: int) -> list[bytes]:
    """The next ``count`` updates ``client`` receives, however they are framed."""
    received: list[bytes] = []
    while len(received) < count:
        payload = await client.receive_bytes()
        assert payload is not None
        received.extend(m.update for m in decode(payload) if isinstance(m, SyncUpdate))
    return received


async def test_updates_that_arrive_together_reach_a_receiver_in_one_write(
    nursery: trio.Nursery, server_writes: list[int]
) -> None:
    server = RoomServer()
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    sent = updates(50)
    with trio.fail_after(TIMEOUT):
        writer = await synced_client(port, "together")
        receiver = await synced_client(port, "together")
        server_writes.clear()
        frames = b"".join(writer.ws.send(BytesMessage(encode(SyncUpdate(u)))) for u in sent)
        await writer.send_raw(frames)  # one TCP write: the server reads them together
        received = await receive_updates(receiver, len(sent))
    assert received == sent
    # The writer gets nothing back (no echo); the receiver 50 messages in a few writes (one
    # per read of the server), never one write each.
    assert 1 <= len(server_writes) <= 3, server_writes
    server.shutdown()


async def test_updates_from_one_read_of_the_bus_reach_a_peer_in_one_write(
    nursery: trio.Nursery, server_writes: list[int]
) -> None:
    server = RoomServer()
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    sent = updates(20)
    with trio.fail_after(TIMEOUT):
        peer = await synced_client(port, "shared")
        server_writes.clear()
        server.rooms["shared"].remote_updates(sent)  # as the bus hands over one read
        received = await receive_updates(peer, len(sent))
    assert received == sent
    assert len(server_writes) == 1, server_writes
    server.shutdown()
