"""The awareness (presence) state machine, following the rules of y-protocols.

Time is never read here: every method that needs it takes ``now`` (seconds, any monotonic
origin), so the same code runs under trio's clock, a test clock or a plain loop.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from .messages import AwarenessEntry, AwarenessUpdate, JSONValue

__all__ = ["OUTDATED_TIMEOUT", "RENEW_INTERVAL", "Awareness", "AwarenessChange"]

#: Seconds after which a remote state that was not renewed is dropped.
OUTDATED_TIMEOUT = 30.0
#: Seconds after which a live client announces its unchanged state again.
RENEW_INTERVAL = OUTDATED_TIMEOUT / 2


@dataclass(slots=True)
class AwarenessChange:
    """What one operation did to the awareness states.

    ``added``, ``updated`` and ``removed`` are what peers must be told (y-protocols' "update"
    event): ``updated`` includes renewals whose state did not change. ``changed`` is the subset of
    ``updated`` whose state really differs (y-protocols' "change" event).
    """

    added: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)

    @property
    def client_ids(self) -> list[int]:
        """Every client ID peers must hear about."""
        return self.added + self.updated + self.removed

    @property
    def state_changed(self) -> bool:
        """Whether any state appeared, changed or disappeared (not just renewed)."""
        return bool(self.added or self.changed or self.removed)

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


@dataclass(slots=True)
class _Meta:
    clock: int
    last_updated: float


def _null_if_falsy(state: JSONValue) -> JSONValue:
    # y-protocols writes `state || null`: JavaScript's falsy states (0, false, "") go out as null.
    if state is False or state == "" or (type(state) in (int, float) and state == 0):
        return None
    return state


class Awareness:
    """Awareness states of one document's clients.

    Args:
        client_id: this peer's own client ID, or ``None`` for a server that has no state of its
            own.
        outdated_timeout: seconds after which remote states that were not renewed expire.
    """

    def __init__(
        self, client_id: int | None = None, *, outdated_timeout: float = OUTDATED_TIMEOUT
    ) -> None:
        self.client_id = client_id
        self.outdated_timeout = outdated_timeout
        self._states: dict[int, JSONValue] = {}
        self._meta: dict[int, _Meta] = {}
        self._controlled: dict[Hashable, set[int]] = {}
        if client_id is not None:
            # Peers ignore a new client's clock 0 (y-protocols' rule), so the first announced
            # state must carry clock 1: start as if an empty state had been cleared.
            self._meta[client_id] = _Meta(0, 0.0)

    # -- reading -------------------------------------------------------------------------

    @property
    def states(self) -> dict[int, JSONValue]:
        """The present clients and their states (a copy)."""
        return dict(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def clock(self, client_id: int) -> int | None:
        """The last clock seen for ``client_id``, or ``None`` if it was never seen."""
        meta = self._meta.get(client_id)
        return None if meta is None else meta.clock

    def get_local_state(self) -> JSONValue:
        """This peer's own state, or ``None``."""
        if self.client_id is None:
            return None
        return self._states.get(self.client_id)

    def controlled_by(self, origin: Hashable) -> frozenset[int]:
        """The client IDs whose states arrived through ``origin`` (a connection)."""
        return frozenset(self._controlled.get(origin, ()))

    # -- local state ---------------------------------------------------------------------

    def set_local_state(self, state: JSONValue, now: float) -> AwarenessChange:
        """Set (or with ``None`` clear) this peer's own state, advancing its clock."""
        client_id = self._require_client_id()
        previous_meta = self._meta.get(client_id)
        previous = self._states.get(client_id)
        clock = 0 if previous_meta is None else previous_meta.clock + 1
        if state is None:
            self._states.pop(client_id, None)
        else:
            self._states[client_id] = state
        self._meta[client_id] = _Meta(clock, now)
        change = AwarenessChange()
        if state is None:
            if previous is not None:
                change.removed.append(client_id)
        elif previous is None:
            change.added.append(client_id)
        else:
            change.updated.append(client_id)
            if state != previous:
                change.changed.append(client_id)
        return change

    def _require_client_id(self) -> int:
        if self.client_id is None:
            raise RuntimeError("this Awareness has no local client ID")
        return self.client_id

    # -- remote updates ------------------------------------------------------------------

    def apply(
        self, entries: Iterable[AwarenessEntry], now: float, origin: Hashable | None = None
    ) -> AwarenessChange:
        """Apply entries received from a peer.

        An entry wins when its clock is newer, or equal with a ``null`` state for a present
        client (a removal). Like y-protocols, an unknown client counts as being at clock 0, so
        its clock-0 entry is ignored. A removal of this peer's own state is refused: the clock is
        bumped so the next announcement supersedes it. With an ``origin``, the clients added or
        updated are remembered as controlled by it (see :meth:`remove_controlled_by`).
        """
        change = AwarenessChange()
        states = self._states
        for entry in entries:
            client_id = entry.client_id
            state = entry.state
            meta = self._meta.get(client_id)
            current_clock = 0 if meta is None else meta.clock
            present = client_id in states
            if not (
                current_clock < entry.clock
                or (current_clock == entry.clock and state is None and present)
            ):
                continue
            clock = entry.clock
            previous = states.get(client_id)
            if state is None:
                if client_id == self.client_id and previous is not None:
                    clock += 1
                else:
                    states.pop(client_id, None)
            else:
                states[client_id] = state
            self._meta[client_id] = _Meta(clock, now)
            if meta is None and state is not None:
                change.added.append(client_id)
            elif meta is not None and state is None:
                change.removed.append(client_id)
            elif state is not None:
                change.updated.append(client_id)
                if state != previous:
                    change.changed.append(client_id)
        if origin is not None:
            self._track(origin, change)
        return change

    def _track(self, origin: Hashable, change: AwarenessChange) -> None:
        controlled = self._controlled.setdefault(origin, set())
        controlled.update(change.added)
        controlled.update(change.updated)
        controlled.difference_update(change.removed)
        if not controlled:
            del self._controlled[origin]

    def remove(self, client_ids: Iterable[int], now: float) -> AwarenessChange:
        """Drop the states of ``client_ids`` (as y-protocols' ``removeAwarenessStates``)."""
        change = AwarenessChange()
        for client_id in client_ids:
            if client_id not in self._states:
                continue
            del self._states[client_id]
            meta = self._meta[client_id]
            meta.last_updated = now  # for an absent client: when it left
            if client_id == self.client_id:
                meta.clock += 1
            change.removed.append(client_id)
        for controlled in self._controlled.values():
            controlled.difference_update(change.removed)
        return change

    def remove_controlled_by(self, origin: Hashable, now: float) -> AwarenessChange:
        """Forget ``origin`` (a closed connection) and drop the states it controlled."""
        controlled = self._controlled.pop(origin, set())
        return self.remove(sorted(controlled), now)

    def forget(self, client_ids: Iterable[int]) -> None:
        """Drop the clocks of clients that are gone, so a long-lived room stays bounded.

        Only absent clients are forgotten. A forgotten client that reappears is accepted at any
        clock, exactly like a new one.
        """
        for client_id in client_ids:
            if client_id not in self._states and client_id != self.client_id:
                self._meta.pop(client_id, None)

    # -- time ----------------------------------------------------------------------------

    def check(self, now: float) -> tuple[AwarenessChange, AwarenessChange]:
        """Run the periodic duties; call every few seconds (y-protocols uses a tenth of the
        timeout).

        Returns ``(renewed, expired)``: the local state renewed because half the timeout passed
        since it was last sent, and remote states dropped because they were not renewed within
        the timeout. Both must be announced to peers. The clocks of clients that left a whole
        timeout ago are forgotten.
        """
        renewed = AwarenessChange()
        local = self.get_local_state()
        if local is not None:
            assert self.client_id is not None
            meta = self._meta[self.client_id]
            if now - meta.last_updated >= self.outdated_timeout / 2:
                renewed = self.set_local_state(local, now)
        outdated = [
            client_id
            for client_id in self._states
            if client_id != self.client_id
            and now - self._meta[client_id].last_updated >= self.outdated_timeout
        ]
        expired = self.remove(outdated, now) if outdated else AwarenessChange()
        # Clocks of clients gone for a whole timeout are dropped, so a long-lived room with
        # many comings and goings stays bounded (y-protocols keeps them forever).
        self.forget(
            [
                client_id
                for client_id, meta in self._meta.items()
                if client_id not in self._states
                and now - meta.last_updated >= self.outdated_timeout
            ]
        )
        return renewed, expired

    def next_check(self) -> float | None:
        """When :meth:`check` next has something to do (the time, in the clock of ``now``),
        or ``None`` if it never will until something changes.

        A server calls :meth:`check` then instead of every few seconds, so a room whose clients
        renew their states costs one check per renewal period, and a room with none costs
        nothing.
        """
        due = math.inf
        local = self.client_id
        for client_id, meta in self._meta.items():
            if client_id == local:
                if client_id in self._states:
                    due = min(due, meta.last_updated + self.outdated_timeout / 2)
            else:
                # A present state expires, an absent client's clock is forgotten, both then.
                due = min(due, meta.last_updated + self.outdated_timeout)
        return None if due == math.inf else due

    # -- encoding ------------------------------------------------------------------------

    def entries(self, client_ids: Iterable[int]) -> list[AwarenessEntry]:
        """Entries describing ``client_ids``: their clock and current state (``None`` if gone)."""
        result = []
        for client_id in client_ids:
            meta = self._meta.get(client_id)
            if meta is not None:
                state = self._states.get(client_id)
                result.append(AwarenessEntry(client_id, meta.clock, _null_if_falsy(state)))
        return result

    def update_message(self, client_ids: Iterable[int] | None = None) -> AwarenessUpdate:
        """An awareness message for ``client_ids``, or for every present client."""
        ids = list(self._states) if client_ids is None else client_ids
        return AwarenessUpdate(self.entries(ids))
