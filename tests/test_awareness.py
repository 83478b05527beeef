from __future__ import annotations

from trio_ysync.protocol import Awareness, AwarenessEntry, AwarenessUpdate


def entry(client_id: int, clock: int, state: object) -> AwarenessEntry:
    return AwarenessEntry(client_id, clock, state)


def test_new_client_is_added_then_updated() -> None:
    awareness = Awareness()
    change = awareness.apply([entry(1, 1, {"a": 1})], now=0)
    assert (change.added, change.updated, change.removed) == ([1], [], [])
    change = awareness.apply([entry(1, 2, {"a": 2})], now=1)
    assert (change.added, change.updated, change.changed) == ([], [1], [1])
    assert awareness.states == {1: {"a": 2}}


def test_unknown_client_at_clock_zero_is_ignored_like_y_protocols() -> None:
    awareness = Awareness()
    assert not awareness.apply([entry(1, 0, {"a": 1})], now=0)
    assert awareness.states == {}


def test_first_local_state_is_announced_at_clock_one() -> None:
    awareness = Awareness(client_id=7)
    awareness.set_local_state({"x": 1}, now=0)
    peer = Awareness()
    assert peer.apply(awareness.update_message().entries, now=0).added == [7]


def test_older_or_equal_clock_is_ignored() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 5, {"a": 1})], now=0)
    assert not awareness.apply([entry(1, 4, {"a": 2})], now=1)
    assert not awareness.apply([entry(1, 5, {"a": 3})], now=1)
    assert awareness.states == {1: {"a": 1}}


def test_renewal_with_same_state_is_an_update_but_not_a_change() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 1, {"a": 1})], now=0)
    change = awareness.apply([entry(1, 2, {"a": 1})], now=10)
    assert change.updated == [1]
    assert change.changed == []
    assert not change.state_changed


def test_null_at_equal_clock_removes_a_present_client() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 3, {"a": 1})], now=0)
    change = awareness.apply([entry(1, 3, None)], now=1)
    assert change.removed == [1]
    assert awareness.states == {}
    # Once gone, the same removal again is not news.
    assert not awareness.apply([entry(1, 3, None)], now=2)


def test_removal_of_own_state_is_refused_and_clock_bumped() -> None:
    awareness = Awareness(client_id=7)
    awareness.set_local_state({"me": True}, now=0)
    clock = awareness.clock(7)
    assert clock == 1
    change = awareness.apply([entry(7, clock, None)], now=1)
    assert awareness.get_local_state() == {"me": True}
    assert awareness.clock(7) == clock + 1
    # The peer must be told again: the re-announcement carries the state at the new clock.
    assert change.client_ids == [7]
    assert awareness.update_message(change.client_ids) == AwarenessUpdate(
        [entry(7, clock + 1, {"me": True})]
    )


def test_local_state_set_update_and_clear() -> None:
    awareness = Awareness(client_id=7)
    assert awareness.set_local_state({"x": 1}, now=0).added == [7]
    change = awareness.set_local_state({"x": 2}, now=1)
    assert change.updated == [7]
    assert change.changed == [7]
    change = awareness.set_local_state(None, now=2)
    assert change.removed == [7]
    assert awareness.update_message([7]) == AwarenessUpdate([entry(7, 3, None)])


def test_expiry_and_renewal_are_driven_by_the_callers_clock() -> None:
    awareness = Awareness(client_id=7)
    awareness.set_local_state({"me": 1}, now=0)
    awareness.apply([entry(1, 1, {"peer": 1})], now=0)
    renewed, expired = awareness.check(now=14.9)
    assert not renewed
    assert not expired
    renewed, expired = awareness.check(now=15)
    assert renewed.updated == [7]
    assert awareness.clock(7) == 2
    assert not expired
    renewed, expired = awareness.check(now=30)
    assert expired.removed == [1]
    assert renewed.updated == [7]  # fifteen seconds after the previous renewal
    assert awareness.states == {7: {"me": 1}}


def test_removal_reaches_peers_with_the_last_clock() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 4, {"a": 1})], now=0)
    change = awareness.remove([1], now=1)
    assert change.removed == [1]
    # The removal is sent at the same clock; receivers accept it (null at equal clock).
    message = awareness.update_message(change.client_ids)
    assert message == AwarenessUpdate([entry(1, 4, None)])
    peer = Awareness()
    peer.apply([entry(1, 4, {"a": 1})], now=0)
    assert peer.apply(message.entries, now=1).removed == [1]


def test_connections_control_the_clients_they_announced() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 1, {"a": 1}), entry(2, 1, {"b": 1})], now=0, origin="conn-a")
    awareness.apply([entry(3, 1, {"c": 1})], now=0, origin="conn-b")
    assert awareness.controlled_by("conn-a") == {1, 2}
    # A client that removes itself is no longer controlled by its connection.
    awareness.apply([entry(2, 2, None)], now=1, origin="conn-a")
    assert awareness.controlled_by("conn-a") == {1}
    change = awareness.remove_controlled_by("conn-a", now=2)
    assert change.removed == [1]
    assert awareness.states == {3: {"c": 1}}
    assert awareness.controlled_by("conn-a") == frozenset()


def test_forget_bounds_memory_of_departed_clients() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 9, {"a": 1}), entry(2, 1, {"b": 1})], now=0)
    awareness.remove([1], now=1)
    awareness.forget([1, 2])
    assert awareness.clock(1) is None
    assert awareness.clock(2) == 1
    # A forgotten client is welcome back as a new one.
    assert awareness.apply([entry(1, 1, {"a": 2})], now=2).added == [1]


def test_update_message_defaults_to_every_present_client() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 1, {"a": 1}), entry(2, 3, {"b": 1})], now=0)
    awareness.remove([1], now=0)
    assert awareness.update_message() == AwarenessUpdate([entry(2, 3, {"b": 1})])


def test_falsy_states_are_sent_as_null_like_y_protocols() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 1, 0), entry(2, 1, ""), entry(3, 1, False), entry(4, 1, {})], now=0)
    assert [e.state for e in awareness.update_message().entries] == [None, None, None, {}]


def test_check_forgets_clients_that_left_a_timeout_ago() -> None:
    awareness = Awareness()
    awareness.apply([entry(1, 3, {"a": 1}), entry(2, 1, {"b": 1})], now=0)
    awareness.remove([1], now=10)
    awareness.check(now=39)
    assert awareness.clock(1) == 3  # left only 29 s ago: a late duplicate is still refused
    awareness.apply([entry(2, 2, {"b": 2})], now=39)
    awareness.check(now=40)
    assert awareness.clock(1) is None
    assert awareness.clock(2) == 2
