"""The provider's view of awareness (presence): the local state and everyone else's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import trio

from ..protocol import Awareness as _AwarenessStates
from ..protocol import AwarenessChange, AwarenessEntry, JSONValue, encode_json
from ._feed import Feed, Subscription

__all__ = ["AwarenessCallback", "AwarenessOrigin", "ProviderAwareness"]

#: Why awareness states changed: the application set its own state (``"local"``), a peer's
#: message arrived (``"remote"``), states expired (``"timeout"``), or the connection was lost
#: and every remote state dropped (``"disconnect"``).
AwarenessOrigin = Literal["local", "remote", "timeout", "disconnect"]

#: Called with each change and its origin; must not block.
AwarenessCallback = Callable[[AwarenessChange, AwarenessOrigin], None]


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio.run: the state is stamped again when it is announced
        return 0.0


def _union(first: list[int], second: list[int]) -> list[int]:
    return first + [client_id for client_id in second if client_id not in first]


def _merge(first: AwarenessChange, second: AwarenessChange) -> AwarenessChange:
    return AwarenessChange(
        added=_union(first.added, second.added),
        updated=_union(first.updated, second.updated),
        removed=_union(first.removed, second.removed),
        changed=_union(first.changed, second.changed),
    )


class ProviderAwareness:
    """Awareness states as one provider sees them.

    The local state is what this client announces to the room (a JSON-serializable value, usually
    a dict such as ``{"user": {"name": "bot"}}``); :attr:`states` also holds every remote client's
    state received from the room. Changes are reported to :meth:`observe` callbacks and through
    :meth:`changes` iterators, but only when a state appeared, changed or disappeared: the renewals
    every client sends every 15 seconds are not reported.

    Use the instance on :attr:`Provider.awareness`; it works before the provider connects (the
    state is announced on connect) and while it is offline.
    """

    def __init__(self, client_id: int, on_local_update: Callable[[], None]) -> None:
        self._states = _AwarenessStates(client_id)
        self._on_local_update = on_local_update
        self._callbacks: list[AwarenessCallback] = []
        self._feed: Feed[AwarenessChange] = Feed(coalesce=_merge)

    # -- reading ---------------------------------------------------------------------------

    @property
    def client_id(self) -> int:
        """This client's ID (the document's client ID)."""
        client_id = self._states.client_id
        assert client_id is not None
        return client_id

    @property
    def local_state(self) -> JSONValue:
        """This client's own state, or ``None`` when it has none."""
        return self._states.get_local_state()

    @property
    def states(self) -> dict[int, JSONValue]:
        """Every known client's state by client ID, this client's own included (a copy)."""
        return self._states.states

    @property
    def remote_states(self) -> dict[int, JSONValue]:
        """The states of the other clients in the room (a copy)."""
        states = self._states.states
        states.pop(self.client_id, None)
        return states

    # -- the local state -------------------------------------------------------------------

    def set_local_state(self, state: JSONValue) -> None:
        """Replace this client's state and announce it (``None`` clears it).

        Args:
            state: any JSON-serializable value, or ``None`` to leave the room's presence list.

        Raises:
            TypeError: ``state`` cannot be serialized to JSON.
            ValueError: ``state`` contains a circular reference.
        """
        encode_json(state)  # fail here, not later in the provider's writer
        change = self._states.set_local_state(state, _now())
        self._emit(change, "local")
        self._on_local_update()

    def set_local_state_field(self, field: str, value: JSONValue) -> None:
        """Set one field of this client's (dict) state, as y-protocols' ``setLocalStateField``.

        Args:
            field: the key to set.
            value: its JSON-serializable value.
        """
        current = self.local_state
        state = dict(current) if isinstance(current, Mapping) else {}
        state[field] = value
        self.set_local_state(state)

    def clear_local_state(self) -> None:
        """Remove this client's state: peers see it leave."""
        self.set_local_state(None)

    # -- observing -------------------------------------------------------------------------

    def observe(self, callback: AwarenessCallback) -> Callable[[], None]:
        """Call ``callback(change, origin)`` after each change of the states.

        The callback runs synchronously inside the provider and must not block.

        Args:
            callback: receives the :class:`~trio_ysync.protocol.AwarenessChange` (client IDs
                ``added``, ``updated`` and ``removed``) and its :data:`AwarenessOrigin`.

        Returns:
            A function that stops the observation.
        """
        self._callbacks.append(callback)

        def unobserve() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unobserve

    def changes(self) -> Subscription[AwarenessChange]:
        """An async iterator over the changes that happen from now on.

        Changes the consumer has not taken yet are merged into one (so memory stays bounded);
        read :attr:`states` for the current states. The iterator ends when the provider stops.

        Example::

            async for change in provider.awareness.changes():
                print("joined", change.added, "left", change.removed)
        """
        return self._feed.subscribe()

    # -- used by the provider --------------------------------------------------------------

    def _emit(self, change: AwarenessChange, origin: AwarenessOrigin) -> None:
        if not change.state_changed:
            return
        for callback in list(self._callbacks):
            callback(change, origin)
        self._feed.publish(change)

    def _apply_remote(self, entries: Iterable[AwarenessEntry]) -> bool:
        """Apply a peer's entries; True if the local state must be announced again (a peer
        removed it)."""
        change = self._states.apply(entries, _now())
        reannounce = False
        if self.client_id in change.removed and self.local_state is not None:
            # The Awareness kept our state and bumped its clock: tell the room we are here.
            change.removed.remove(self.client_id)
            reannounce = True
        self._emit(change, "remote")
        return reannounce

    def _check(self, now: float) -> bool:
        """Periodic duties: expire silent peers; True if the local state was renewed."""
        renewed, expired = self._states.check(now)
        self._emit(expired, "timeout")
        return bool(renewed)

    def _drop_remote(self) -> None:
        """Forget every remote state (the connection is gone), as y-websocket does."""
        remote = [client_id for client_id in self._states.states if client_id != self.client_id]
        if not remote:
            return
        change = self._states.remove(remote, _now())
        # Forget their clocks too, so the states the server sends on reconnect (at the clocks we
        # already saw) are accepted at once instead of after the next renewal.
        self._states.forget(remote)
        self._emit(change, "disconnect")

    def _stamp_for_announce(self) -> None:
        """Advance the local clock so a fresh connection's peers accept the announcement."""
        state = self.local_state
        if state is not None:
            self._states.set_local_state(state, _now())

    def _local_entries(self) -> list[AwarenessEntry]:
        return self._states.entries([self.client_id])

    def _removal_entries(self) -> list[AwarenessEntry]:
        clock = self._states.clock(self.client_id) or 0
        return [AwarenessEntry(self.client_id, clock, None)]

    def _all_entries(self) -> list[AwarenessEntry]:
        return self._states.update_message().entries

    def _close(self) -> None:
        self._feed.close()
