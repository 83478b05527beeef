"""Replay suspects one by one against fresh servers, to find the inputs that do the harm.

Each suspect goes to a room of its own on a new connection, followed by a WebSocket ping: its
pong proves that the server handled everything before it. Then a well-behaved client joins
the room and syncs, which catches inputs that only hurt later joiners. A server that dies is
started again for the next suspect.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from .attackers import Conversation, Link, join_and_sync, send_before_handshake, wait_any
from .frames import OP_PING, close_frame, frame
from .inputs import Attack
from .ledger import Ledger, Sent
from .target import Target, answers_health_check, describe_exit, run_target

SENTINEL = b"fuzz-replay-sentinel"
#: An input whose handling (with the next client's sync) takes longer than this stalls every
#: room of the server for that long: a denial of service.
SLOW_SECONDS = 2.0
#: The answer of a server that handled an input and kept the connection open.
KEPT = "handled (connection kept)"
#: The verdict on a server that stopped answering (it is killed and started afresh).
HUNG = "hung: no answer to a health check"


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
    #: Seconds from sending it until the next client of the room was synced.
    seconds: float

    @property
    def harmful(self) -> bool:
        return (
            self.server != "alive"
            or self.tracebacks > 0
            or self.panics > 0
            or self.joiner != "synced"
            or self.answer == "no answer"
            or self.seconds > SLOW_SECONDS
        )

    @property
    def breaks_server(self) -> bool:
        """Whether it killed, blocked or stalled the server (not merely logged a traceback)."""
        return self.server != "alive" or self.answer == "no answer" or self.seconds > SLOW_SECONDS

    def describe(self) -> str:
        if self.server == HUNG:
            effect = f"BLOCKS THE SERVER (no answer in {self.seconds:.1f} s; killed)"
        elif self.server != "alive":
            effect = f"KILLS THE SERVER ({self.server})"
        elif self.tracebacks or self.panics:
            effect = f"{self.tracebacks} traceback(s), {self.panics} panic(s) in the server log"
        elif self.joiner != "synced":
            effect = f"the next client of the room is not served ({self.joiner})"
        elif self.answer == "no answer" or self.seconds > SLOW_SECONDS:
            effect = f"stalls the server ({self.seconds:.1f} s)"
        else:
            effect = "harmless"
        return f"{describe_input(self.entry.attack)}: {effect}; server answered {self.answer}"


def describe_input(attack: Attack) -> str:
    """The kind and (the start of) the bytes of an input, in hex."""
    data = attack.message if attack.message is not None else attack.wire
    shown = data[:48].hex() + (f"... ({len(data)} bytes)" if len(data) > 48 else "")
    what = "message" if attack.message is not None else "wire bytes"
    return f"{attack.kind} [{what} {shown}]"


class Replayer:
    """Replays entries against servers it starts (and starts again after a crash)."""

    def __init__(self, store: str, directory: Path, max_message_size: int, timeout: float) -> None:
        self.store = store
        self.directory = directory
        self.max_message_size = max_message_size
        self.timeout = timeout
        self.verdicts: list[Verdict] = []
        self._servers = 0
        self._pings = 0
        #: The shortest breaking sequence :meth:`reduce` has found so far.
        self.best: list[Sent] = []

    def _server(self) -> AbstractAsyncContextManager[Target]:
        """A fresh server (with a fresh store) of its own name, for its own log file."""
        self._servers += 1
        name = f"replay-server-{self._servers}"
        return run_target(self.store, self.directory, name, max_message_size=self.max_message_size)

    async def replay(self, entries: list[Sent]) -> list[Verdict]:
        """Replay every entry in order, each in a room of its own; one verdict per entry.

        The verdicts are also in :attr:`verdicts` as they come, for a caller that gives up
        early.
        """
        self.verdicts = []
        while len(self.verdicts) < len(entries):
            async with self._server() as target:
                link = Link(target.port, Ledger(budget=0), {}, self.timeout)
                while len(self.verdicts) < len(entries) and not target.died.is_set():
                    index = len(self.verdicts)
                    verdict = await self.replay_one(target, link, entries[index], f"replay-{index}")
                    if verdict.harmful and verdict.server == "alive":
                        verdict = replace(verdict, server=await self._health(target))
                    self.verdicts.append(verdict)
        return self.verdicts

    async def replay_one(self, target: Target, link: Link, entry: Sent, room: str) -> Verdict:
        target.log.poll()
        tracebacks, panics = target.log.tracebacks, target.log.panics
        started = trio.current_time()
        answer = await self._send(link, room, entry.attack)
        joiner = await join_and_sync(link, room)
        seconds = trio.current_time() - started
        if joiner != "synced":
            with trio.move_on_after(2.0):
                await target.died.wait()
        await self._settle(target, room)
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
            seconds,
        )

    async def _send(self, link: Link, room: str, attack: Attack) -> str:
        """Send ``attack`` alone on a fresh connection; how the server answered."""
        if attack.before_handshake:
            return await send_before_handshake(link.port, attack)
        conversation = Conversation(link, room)
        if not await conversation.open():
            return conversation.outcome
        assert conversation.client is not None
        async with conversation.client.stream, trio.open_nursery() as nursery:
            nursery.start_soon(conversation.read)
            answer = await self._deliver(conversation, attack)
            if not conversation.closed.is_set():
                await conversation.write(close_frame(1000))
                with trio.move_on_after(1.0):
                    await conversation.closed.wait()
            nursery.cancel_scope.cancel()
        conversation.finish()
        return answer

    async def _deliver(self, conversation: Conversation, attack: Attack) -> str:
        """Write ``attack``, then a ping: its pong proves that the server handled the attack
        (it handles a connection's frames in order)."""
        if not await conversation.write(attack.wire):
            return "write failed"
        if attack.after == "disconnect":
            return "client dropped"
        self._pings += 1
        sentinel = SENTINEL + str(self._pings).encode()
        await conversation.write(frame(sentinel, opcode=OP_PING))
        with trio.move_on_after(self.timeout):
            while sentinel not in conversation.pongs and not conversation.closed.is_set():
                await wait_any(conversation.ponged, conversation.closed)
                conversation.ponged = trio.Event()
        if sentinel in conversation.pongs:
            return KEPT
        if conversation.closed.is_set():
            return conversation.outcome
        return "no answer"

    async def _settle(self, target: Target, room: str) -> None:
        """Wait (briefly) until the server has seen every connection of ``room`` leave, so
        what it logs on the way out is counted against this input, not the next."""
        with trio.move_on_after(2.0):
            while target.log.poll() >= 0 and target.log.peers[room] > 0:
                if target.died.is_set():
                    break
                await trio.sleep(0.02)

    async def _health(self, target: Target) -> str:
        """ "alive" if the server answers a health check in time, else how it died; one that
        does not answer is killed (the next input gets a fresh server) and HUNG."""
        if not target.died.is_set():
            with trio.move_on_after(self.timeout):
                if await answers_health_check(target.port):
                    return "alive"
        if target.died.is_set():
            assert target.process.returncode is not None
            return describe_exit(target.process.returncode)
        target.process.kill()
        await target.died.wait()
        return HUNG

    async def run_sequence(self, entries: list[Sent]) -> tuple[int | None, list[bool]]:
        """Send ``entries`` in order into one room of a fresh server, each on the connection
        it was sent on (connections stay open as they did), then let a client join and sync.

        Returns the index of the entry that killed, hung or stalled the server
        (``len(entries)``: the joiner's sync did), or ``None``; and for each entry sent
        whether the server kept its connection open (it accepted the input).
        """
        kept: list[bool] = []
        room = "sequence"
        async with self._server() as target, trio.open_nursery() as nursery:
            link = Link(target.port, Ledger(budget=0), {}, self.timeout)
            conversations: dict[int, Conversation] = {}
            try:
                for index, entry in enumerate(entries):
                    started = trio.current_time()
                    answer = await self._deliver_in_place(link, room, entry, conversations, nursery)
                    kept.append(answer == KEPT)
                    if await self._broken(target, answer, trio.current_time() - started):
                        return index, kept
                joined = trio.current_time()
                answer = await join_and_sync(link, room)
                if await self._broken(target, answer, trio.current_time() - joined):
                    return len(entries), kept
                return None, kept
            finally:
                for conversation in conversations.values():
                    assert conversation.client is not None
                    await trio.aclose_forcefully(conversation.client.stream)
                nursery.cancel_scope.cancel()

    async def _deliver_in_place(
        self,
        link: Link,
        room: str,
        entry: Sent,
        conversations: dict[int, Conversation],
        nursery: trio.Nursery,
    ) -> str:
        attack = entry.attack
        if attack.before_handshake:
            return await send_before_handshake(link.port, attack)
        conversation = conversations.get(entry.connection)
        if conversation is None or conversation.closed.is_set():
            conversation = Conversation(link, room)
            if not await conversation.open():
                return conversation.outcome
            conversations[entry.connection] = conversation
            nursery.start_soon(conversation.read)
        return await self._deliver(conversation, attack)

    async def _broken(self, target: Target, answer: str, seconds: float) -> bool:
        """Whether the server died, hangs or took too long over the last input."""
        if answer not in (KEPT, "synced") and not answer.isdigit():
            # Dropped without a close frame: see whether the server died of it.
            with trio.move_on_after(0.5):
                await target.died.wait()
        if target.died.is_set() or seconds > SLOW_SECONDS:
            return True
        return answer == "no answer" and await self._health(target) != "alive"

    async def reduce(self, history: list[Sent]) -> list[Sent] | None:
        """Replay a room's history; if it breaks a fresh server (kills, hangs or stalls it),
        shrink it to a sequence that still does and return that, else ``None``.

        The shortest sequence found so far is kept in :attr:`best`, for a caller that runs out
        of time.
        """
        broke_at, kept = await self.run_sequence(history)
        if broke_at is None:
            return None
        sequence = history[: broke_at + 1]
        self.best = sequence
        # Most inputs were refused: try the ones the server accepted, and the one it broke on.
        accepted = [entry for entry, ok in zip(history[:broke_at], kept, strict=False) if ok]
        accepted += history[broke_at : broke_at + 1]
        if await self._still_breaks(accepted):
            sequence = accepted
        # Then drop chunks, halving their size whenever no chunk can go (delta debugging).
        chunk = max(1, len(sequence) // 2)
        while True:
            start = 0
            while start < len(sequence):
                shorter = sequence[:start] + sequence[start + chunk :]
                if shorter and await self._still_breaks(shorter):
                    sequence = shorter
                else:
                    start += chunk
            if chunk == 1:
                return sequence
            chunk = max(1, chunk // 2)

    async def _still_breaks(self, sequence: list[Sent]) -> bool:
        if (await self.run_sequence(sequence))[0] is None:
            return False
        if len(sequence) < len(self.best):
            self.best = sequence
        return True
