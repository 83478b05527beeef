"""Replay suspects one by one against fresh servers, to find the inputs that do the harm.

Each suspect goes to a room of its own on a new connection, followed by a WebSocket ping: its
pong proves that the server handled everything before it. Then a well-behaved client joins
the room and syncs, which catches inputs that only hurt later joiners. A server that dies is
started again for the next suspect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trio

from .attackers import Conversation, Link, join_and_sync, send_before_handshake, wait_any
from .frames import OP_PING, close_frame, frame
from .inputs import Attack
from .ledger import Ledger, Sent
from .target import Target, describe_exit, run_target

SENTINEL = b"fuzz-replay-sentinel"


@dataclass(frozen=True)
class Verdict:
    """What one suspect did to a fresh server."""

    entry: Sent
    #: How the server treated the connection that sent it (a close code, "handled", ...).
    answer: str
    #: What happened to a client joining the same room afterwards.
    joiner: str
    #: "alive" or how the server died.
    server: str
    tracebacks: int
    panics: int

    @property
    def harmful(self) -> bool:
        return (
            self.server != "alive"
            or self.tracebacks > 0
            or self.panics > 0
            or self.joiner != "synced"
        )

    def describe(self) -> str:
        attack = self.entry.attack
        if self.server != "alive":
            effect = f"KILLS THE SERVER ({self.server})"
        elif self.tracebacks or self.panics:
            effect = f"{self.tracebacks} traceback(s), {self.panics} panic(s) in the server log"
        elif self.joiner != "synced":
            effect = f"the next client of the room is not served ({self.joiner})"
        else:
            effect = "harmless"
        data = attack.message if attack.message is not None else attack.wire
        shown = data[:48].hex() + (f"... ({len(data)} bytes)" if len(data) > 48 else "")
        what = "message" if attack.message is not None else "wire bytes"
        return f"{attack.kind} [{what} {shown}]: {effect}; server answered {self.answer}"


class Replayer:
    """Replays entries against servers it starts (and starts again after a crash)."""

    def __init__(self, store: str, directory: Path, max_message_size: int, timeout: float) -> None:
        self.store = store
        self.directory = directory
        self.max_message_size = max_message_size
        self.timeout = timeout

    async def replay(self, entries: list[Sent]) -> list[Verdict]:
        """Replay every entry in order, each in a room of its own; one verdict per entry."""
        verdicts: list[Verdict] = []
        server_runs = 0
        while len(verdicts) < len(entries):
            server_runs += 1
            name = f"replay-server-{server_runs}"
            async with run_target(
                self.store, self.directory, name, max_message_size=self.max_message_size
            ) as target:
                link = Link(target.port, Ledger(budget=0), {}, self.timeout)
                while len(verdicts) < len(entries) and not target.died.is_set():
                    index = len(verdicts)
                    verdict = await self.replay_one(target, link, entries[index], f"replay-{index}")
                    verdicts.append(verdict)
        return verdicts

    async def replay_one(self, target: Target, link: Link, entry: Sent, room: str) -> Verdict:
        target.log.poll()
        tracebacks, panics = target.log.tracebacks, target.log.panics
        answer = await self._send(link, room, entry.attack)
        joiner = await join_and_sync(link, room)
        if joiner != "synced":
            with trio.move_on_after(2.0):
                await target.died.wait()
        target.log.poll()
        server = "alive"
        if target.died.is_set():
            assert target.process.returncode is not None
            server = describe_exit(target.process.returncode)
        return Verdict(
            entry,
            answer,
            joiner,
            server,
            target.log.tracebacks - tracebacks,
            target.log.panics - panics,
        )

    async def _send(self, link: Link, room: str, attack: Attack) -> str:
        """Send ``attack`` and a ping after it; how the server answered."""
        if attack.before_handshake:
            return await send_before_handshake(link.port, attack)
        conversation = Conversation(link, room)
        if not await conversation.open():
            return conversation.outcome
        assert conversation.client is not None
        answer = "no answer"
        async with conversation.client.stream, trio.open_nursery() as nursery:
            nursery.start_soon(conversation.read)
            if not await conversation.write(attack.wire):
                answer = "write failed"
            elif attack.after == "disconnect":
                answer = "client dropped"
            else:
                await conversation.write(frame(SENTINEL, opcode=OP_PING))
                with trio.move_on_after(self.timeout):
                    while SENTINEL not in conversation.pongs and not conversation.closed.is_set():
                        await wait_any(conversation.ponged, conversation.closed)
                        conversation.ponged = trio.Event()
                if SENTINEL in conversation.pongs:
                    answer = "handled (connection kept)"
                elif conversation.closed.is_set():
                    answer = conversation.outcome
            if not conversation.closed.is_set():
                await conversation.write(close_frame(1000))
                with trio.move_on_after(1.0):
                    await conversation.closed.wait()
            nursery.cancel_scope.cancel()
        conversation.finish()
        return answer
