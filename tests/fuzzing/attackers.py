"""Attacking connections: each opens WebSocket connections to the server, one after the other,
and writes attacks on them while a reader task records what comes back."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import trio
import trio.lowlevel
from rawclient import RawClient
from wsproto.events import BytesMessage, CloseConnection, Pong
from wsproto.utilities import RemoteProtocolError

from .frames import close_frame, frame
from .inputs import Attack, AttackSource
from .ledger import Ledger, find_leak

#: Rooms with names a server may handle badly (percent-decoded by the server); attackers visit
#: them now and then. None of them decodes to the name of another room.
ODD_ROOMS = (
    "odd-%00",
    "odd-%ff%fe",
    "odd-" + "x" * 2000,
    "odd-..%2F..%2Fodd",
    "odd-%2e%2e%2f%2e%2e",
    "odd-%C3%A9%F0%9F%98%80",
    "odd-a%2Fb",
    "odd-%25",
)

#: Bytes an attacker reads from one connection before it gives up on it: an input that makes
#: the server answer with this much is an amplification attack (and would make the fuzzer,
#: not the server, the bottleneck).
FLOOD_BYTES = 4 * 1024 * 1024
#: Attacks written on one connection before the attacker moves on to a fresh one.
MAX_ATTACKS_PER_CONNECTION = 30
ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
    EOFError,
    RemoteProtocolError,
)


@dataclass(frozen=True)
class Link:
    """How to reach the server, how long to wait for it, and where to record what happens."""

    port: int
    ledger: Ledger
    #: Each honest room's secret: no connection to another room may ever receive it.
    secrets: dict[str, bytes]
    timeout: float


async def wait_any(*events: trio.Event) -> None:
    """Return once any of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(_wait_then_cancel, event, nursery.cancel_scope)


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class Conversation:
    """One WebSocket connection of an attacker: a handshake, then raw bytes out, events in."""

    def __init__(self, link: Link, room: str) -> None:
        self.link = link
        self.ledger = link.ledger
        self.secrets = link.secrets
        self.room = room
        self.id = link.ledger.open_connection()
        self.client: RawClient | None = None
        self.closed = trio.Event()
        #: How the connection ended: the server's close code, or what happened instead.
        self.outcome = "client dropped"
        self.synced = trio.Event()
        #: The payloads of the pongs received: the server has handled everything sent before
        #: the matching ping.
        self.pongs: list[bytes] = []
        self.ponged = trio.Event()

    async def open(self) -> bool:
        """Connect and complete the WebSocket handshake; ``False`` (recorded) if it fails."""
        try:
            with trio.fail_after(self.link.timeout):
                stream = await trio.open_tcp_stream("127.0.0.1", self.link.port)
                self.client = RawClient(stream, answer_pings=False)
                await self.client.handshake(quote(self.room, safe="%/"))
        except trio.TooSlowError:
            self.outcome = "handshake timeout"
        except (*ERRORS, AssertionError) as exc:
            self.outcome = f"handshake failed ({type(exc).__name__})"
        else:
            return True
        self.finish()
        return False

    async def read(self) -> None:
        """Record every event until the connection ends; look for other rooms' secrets."""
        assert self.client is not None
        received = 0
        tail = b""  # a message may arrive in parts: a secret may straddle two
        try:
            while True:
                event = await self.client.next_event()
                if isinstance(event, BytesMessage):
                    payload = bytes(event.data)
                    received += len(payload)
                    if received > FLOOD_BYTES:
                        self.outcome = f"flooded (over {FLOOD_BYTES >> 20} MiB received)"
                        break
                    leaked = find_leak(self.room, tail + payload, self.secrets)
                    tail = payload[-64:]
                    if leaked is not None:
                        self.ledger.leak(self.room, leaked, f"attacker connection {self.id}")
                    if payload.startswith(b"\x00\x01"):
                        self.synced.set()
                elif isinstance(event, Pong):
                    self.pongs.append(bytes(event.payload))
                    self.ponged.set()
                elif isinstance(event, CloseConnection):
                    self.outcome = str(event.code)
                    break
        except EOFError:
            self.outcome = "dropped by server"
        except ERRORS as exc:
            self.outcome = f"reset ({type(exc).__name__})"
        self.closed.set()

    async def write(self, data: bytes) -> bool:
        assert self.client is not None
        try:
            await self.client.send_raw(data)
        except ERRORS:
            return False
        return True

    def finish(self, outcome: str | None = None) -> None:
        self.ledger.close_connection(self.id, outcome or self.outcome)


async def join_and_sync(link: Link, room: str) -> str:
    """A well-behaved client joins ``room`` and asks for the document: "synced", or what
    happened instead."""
    conversation = Conversation(link, room)
    if not await conversation.open():
        return f"not connected ({conversation.outcome})"
    assert conversation.client is not None
    result = "synced"
    async with conversation.client.stream, trio.open_nursery() as nursery:
        nursery.start_soon(conversation.read)
        await conversation.write(frame(b"\x00\x00\x01\x00"))  # SyncStep1 of an empty document
        with trio.move_on_after(link.timeout) as scope:
            await wait_any(conversation.synced, conversation.closed)
        if scope.cancelled_caught:
            result = "no answer"
        elif not conversation.synced.is_set():
            result = f"closed ({conversation.outcome})"
        await conversation.write(close_frame(1000))
        nursery.cancel_scope.cancel()
    conversation.finish()
    return result


class Attacker:
    """One attacking client: connection after connection until the budget or the time is spent."""

    def __init__(self, source: AttackSource, link: Link, rooms: list[str]) -> None:
        self.rng = source.rng
        self.source = source
        self.link = link
        self.ledger = link.ledger
        self.rooms = rooms

    def _room(self) -> str:
        if self.rng.random() < 0.05:
            return self.rng.choice(ODD_ROOMS)
        return self.rng.choice(self.rooms)

    async def run(self) -> None:
        while not self.ledger.exhausted.is_set():
            attack = self.source.next()
            if attack.before_handshake:
                await self._before_handshake(attack)
            else:
                await self._connection(self._room(), attack)

    async def _before_handshake(self, attack: Attack) -> None:
        conversation = Conversation(self.link, "(no room)")
        if self.ledger.take(conversation.id, "(no room)", attack) is None:
            conversation.finish("budget spent")
            return
        conversation.finish(await send_before_handshake(self.link.port, attack))

    async def _connection(self, room: str, attack: Attack) -> None:
        conversation = Conversation(self.link, room)
        if not await conversation.open():
            # A server that died is reported on its own; do not hammer its closed port.
            with trio.move_on_after(1.0):
                await self.ledger.server_died.wait()
            return
        assert conversation.client is not None
        async with conversation.client.stream, trio.open_nursery() as nursery:
            nursery.start_soon(conversation.read)
            dropped = await self._attack(conversation, attack)
            # End politely and give the server a moment to answer the close.
            if (
                not dropped
                and not conversation.closed.is_set()
                and await conversation.write(close_frame(1000, key=self.rng.randbytes(4)))
            ):
                with trio.move_on_after(1.0):
                    await conversation.closed.wait()
            nursery.cancel_scope.cancel()
        conversation.finish()

    async def _attack(self, conversation: Conversation, attack: Attack) -> bool:
        """Write attacks until the connection ends; ``True`` if we dropped it ourselves."""
        for _ in range(self.rng.randint(1, MAX_ATTACKS_PER_CONNECTION)):
            while attack.before_handshake:
                attack = self.source.next()
            if self.ledger.take(conversation.id, conversation.room, attack) is None:
                return False
            if not await conversation.write(attack.wire):
                return False
            if attack.after == "disconnect":
                return True
            if attack.after == "join":
                outcome = await join_and_sync(self.link, conversation.room)
                if outcome != "synced":
                    await self.ledger.honest_failure(
                        f"a fresh client joining room {conversation.room!r} after "
                        f"{attack.kind} was not served: {outcome}"
                    )
            if conversation.closed.is_set():
                return False
            await trio.lowlevel.checkpoint()
            attack = self.source.next()
        return False


async def send_before_handshake(port: int, attack: Attack) -> str:
    """Write ``attack`` where the HTTP upgrade request belongs; what the server answered."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return "connect failed"
    outcome = "client dropped"
    async with stream:
        try:
            await stream.send_all(attack.wire)
            if attack.after != "disconnect":
                with trio.move_on_after(1.0):
                    outcome = _http_status(await stream.receive_some(4096))
        except ERRORS as exc:
            outcome = f"reset ({type(exc).__name__})"
    return outcome


def _http_status(answer: bytes) -> str:
    if not answer:
        return "dropped by server"
    first = answer.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0].startswith(b"HTTP/"):
        return f"http {first[1].decode(errors='replace')}"
    return "non-HTTP answer"
