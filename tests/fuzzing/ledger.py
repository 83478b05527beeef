"""The fuzzer's books: what was sent (and the recent inputs, to name suspects), what came back,
and what went wrong on the honest side."""

from __future__ import annotations

import base64
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import trio

from .inputs import Attack

#: Recent inputs kept, over all connections and per connection.
RECENT_INPUTS = 64
RECENT_PER_CONNECTION = 8
#: Bytes of messages kept as the rooms' histories (to replay a crash that needed a sequence).
HISTORY_BYTES = 64 * 1024 * 1024
#: Suspect sets and failure messages kept (later ones are only counted).
MAX_SUSPECT_SETS = 10
MAX_MESSAGES = 50


@dataclass(frozen=True)
class Sent:
    """One attack as it went out: which connection, which room, when (seconds since start)."""

    seq: int
    time: float
    connection: int
    room: str
    attack: Attack

    def to_json(self) -> dict[str, Any]:
        attack = self.attack
        message = attack.message
        return {
            "seq": self.seq,
            "time": round(self.time, 3),
            "connection": self.connection,
            "room": self.room,
            "kind": attack.kind,
            "after": attack.after,
            "before_handshake": attack.before_handshake,
            "wire_b64": base64.b64encode(attack.wire).decode(),
            "message_b64": None if message is None else base64.b64encode(message).decode(),
            # Small messages also in hex, ready to paste into a regression test.
            "message_hex": None if message is None or len(message) > 2048 else message.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sent:
        message = data.get("message_b64")
        attack = Attack(
            data["kind"],
            base64.b64decode(data["wire_b64"]),
            None if message is None else base64.b64decode(message),
            before_handshake=data["before_handshake"],
            after=data["after"],
        )
        return cls(data["seq"], data["time"], data["connection"], data["room"], attack)


@dataclass
class SuspectSet:
    """Inputs that were in flight when something went wrong."""

    reason: str
    entries: list[Sent]


@dataclass
class Problems:
    """Messages about one kind of problem: the first few kept, all of them counted."""

    count: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.first) < MAX_MESSAGES:
            self.first.append(message)


class Ledger:
    """Shared by every attacker and honest client of one run."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.start = trio.current_time()
        self.total = 0
        self.sent_by_kind: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.honest_failures = Problems()
        self.leaks = Problems()
        self.suspects: list[SuspectSet] = []
        self.exhausted = trio.Event()
        #: Set when the server process died on its own.
        self.server_died = trio.Event()
        #: Times the server took longer than a second to answer a health check, and the
        #: longest wait (seconds).
        self.stalls = 0
        self.longest_stall = 0.0
        #: The longest time this process's own event loop was late (seconds).
        self.fuzzer_lag = 0.0
        self._connections = 0
        self._recent: deque[Sent] = deque(maxlen=RECENT_INPUTS)
        self._by_connection: dict[int, deque[Sent]] = {}
        #: Every message sent to each room, in order (up to HISTORY_BYTES in all).
        self.history: dict[str, list[Sent]] = {}
        self._history_bytes = 0

    def elapsed(self) -> float:
        return trio.current_time() - self.start

    def open_connection(self) -> int:
        self._connections += 1
        self._by_connection[self._connections] = deque(maxlen=RECENT_PER_CONNECTION)
        return self._connections

    @property
    def connections(self) -> int:
        return self._connections

    def take(self, connection: int, room: str, attack: Attack) -> Sent | None:
        """Count ``attack`` against the budget; ``None`` once the budget is spent."""
        if self.total >= self.budget:
            self.exhausted.set()
            return None
        self.total += 1
        self.sent_by_kind[attack.kind] += 1
        sent = Sent(self.total, self.elapsed(), connection, room, attack)
        self._recent.append(sent)
        self._by_connection[connection].append(sent)
        if attack.message is not None and self._history_bytes < HISTORY_BYTES:
            self.history.setdefault(room, []).append(sent)
            self._history_bytes += len(attack.wire)
        return sent

    def close_connection(self, connection: int, outcome: str) -> None:
        """Record how a connection ended; a 1011 makes its last inputs suspects."""
        self.close_codes[outcome] += 1
        recent = self._by_connection.pop(connection, None)
        if outcome == "1011" and recent:
            self.suspect(f"close 1011 on connection {connection}", list(recent))

    def suspect(self, reason: str, entries: list[Sent], *, keep: bool = False) -> SuspectSet:
        """Remember ``entries`` as suspects (only the first sets, unless ``keep``)."""
        suspects = SuspectSet(reason, entries)
        if keep or len(self.suspects) < MAX_SUSPECT_SETS:
            self.suspects.append(suspects)
        return suspects

    def suspect_recent(self, reason: str, *, keep: bool = False) -> SuspectSet:
        """The last inputs of every open connection, then the last inputs overall."""
        entries = [sent for recent in self._by_connection.values() for sent in reversed(recent)]
        seen = {sent.seq for sent in entries}
        entries += [sent for sent in reversed(self._recent) if sent.seq not in seen]
        return self.suspect(reason, entries, keep=keep)

    async def honest_failure(self, message: str) -> None:
        """Record a failure of an honest client, unless it only shows that the server died
        (which is reported on its own)."""
        with trio.move_on_after(1.0):
            await self.server_died.wait()
        if not self.server_died.is_set():
            self.honest_failures.add(message)

    def leak(self, room: str, secret_room: str, where: str) -> None:
        self.leaks.add(f"{where} in room {room!r} received data of room {secret_room!r}")


def find_leak(room: str, data: bytes, secrets: dict[str, bytes]) -> str | None:
    """The room whose secret ``data`` holds, if it is not ``room``."""
    for secret_room, secret in secrets.items():
        if secret_room != room and secret in data:
            return secret_room
    return None
