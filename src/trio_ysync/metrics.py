"""Prometheus metrics of a room server, served at ``GET /metrics``.

.. code-block:: python

    server = RoomServer(store, metrics=Metrics())

or ``trio-ysync serve --metrics``. Every metric is named ``trio_ysync_...``:

=================================================  ===============================================
``connections``                                    open connections (gauge)
``connections_closed_total{code}``                 ended connections by close code
``connections_refused_total{status}``              upgrades refused, by HTTP status
``slow_consumers_total``                           connections dropped for not reading (1013)
``rooms``                                          loaded rooms (gauge)
``room_load_seconds``                              how long loading a room took (histogram)
``messages_received_total{kind}``                  messages from clients, by kind
``received_bytes_total{kind}``                     their bytes
``messages_sent_total{kind}``                      messages to clients (a broadcast counts once
                                                   per receiver), by kind
``sent_bytes_total{kind}``                         their bytes
``committed_updates_total``                        updates committed to the store
``commit_seconds``                                 how long a commit took (histogram)
=================================================  ===============================================

Kinds are ``sync_step1``, ``sync_step2``, ``sync_update``, ``awareness``, ``query_awareness``,
``auth`` and ``unknown``. Each server has a registry of its own (so tests and embedded servers
do not mix), unless one is given.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .errors import CloseCode
from .hooks import Instruments

__all__ = ["Metrics"]

_SLOW_CONSUMER = "slow consumer"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics(Instruments):
    """Counts what the server does, for Prometheus.

    Args:
        registry: where the metrics are registered (default: a registry of their own).
        namespace: the prefix of every metric name.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, namespace: str = "trio_ysync"
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        ns, reg = namespace, self.registry
        self._open = Gauge("connections", "Open connections.", namespace=ns, registry=reg)
        self._closed = Counter(
            "connections_closed", "Ended connections.", ["code"], namespace=ns, registry=reg
        )
        self._refused = Counter(
            "connections_refused", "Refused upgrades.", ["status"], namespace=ns, registry=reg
        )
        self._slow = Counter(
            "slow_consumers", "Connections dropped for not reading.", namespace=ns, registry=reg
        )
        self._rooms = Gauge("rooms", "Loaded rooms.", namespace=ns, registry=reg)
        self._load = Histogram(
            "room_load_seconds", "Room load time.", namespace=ns, registry=reg,
            buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        # Counted on every message: plain tallies, read when Prometheus scrapes (a
        # prometheus_client Counter takes a lock on every increment).
        self._messages = _MessageTallies(ns)
        self.registry.register(self._messages)
        self._committed = Counter(
            "committed_updates", "Updates committed to the store.", namespace=ns, registry=reg
        )
        self._commit = Histogram(
            "commit_seconds", "Store commit time.", namespace=ns, registry=reg,
            buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        # Labelled children are looked up once per label value, not once per message.
        self._children: dict[tuple[int, str], Counter] = {}

    def _child(self, counter: Counter, label: str) -> Counter:
        key = (id(counter), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(label)
        return child

    # -- Instruments ---------------------------------------------------------------------

    def message_received(self, kind: str, size: int) -> None:
        """Count a client's message."""
        messages = self._messages
        messages.received[kind] += 1
        messages.received_bytes[kind] += size

    def messages_sent(self, kind: str, receivers: int, size: int) -> None:
        """Count a message sent to ``receivers`` connections."""
        if receivers:
            messages = self._messages
            messages.sent[kind] += receivers
            messages.sent_bytes[kind] += receivers * size

    def connection_opened(self) -> None:
        """Count an open connection."""
        self._open.inc()

    def connection_closed(self, code: int, reason: str) -> None:
        """Count an ended connection."""
        self._open.dec()
        self._child(self._closed, str(code)).inc()
        if code == CloseCode.TRY_AGAIN_LATER and reason == _SLOW_CONSUMER:
            self._slow.inc()

    def connection_refused(self, status: int) -> None:
        """Count a refused upgrade."""
        self._child(self._refused, str(status)).inc()

    def room_loaded(self, duration: float) -> None:
        """Count a loaded room."""
        self._rooms.inc()
        self._load.observe(duration)

    def room_unloaded(self) -> None:
        """Count an unloaded room."""
        self._rooms.dec()

    def committed(self, updates: int, size: int, duration: float) -> None:
        """Count a commit."""
        self._committed.inc(updates)
        self._commit.observe(duration)

    # -- exposition ----------------------------------------------------------------------

    #: The content type of :meth:`exposition`.
    content_type = CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)


class _MessageTallies(Collector):
    """Messages and bytes per kind, received and sent, as Prometheus counters."""

    def __init__(self, namespace: str) -> None:
        self._prefix = f"{namespace}_" if namespace else ""
        self.received: Tally[str] = Tally()
        self.received_bytes: Tally[str] = Tally()
        self.sent: Tally[str] = Tally()
        self.sent_bytes: Tally[str] = Tally()

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, help_text, tally in (
            ("messages_received", "Messages from clients.", self.received),
            ("received_bytes", "Bytes of messages from clients.", self.received_bytes),
            ("messages_sent", "Messages to clients, per receiver.", self.sent),
            ("sent_bytes", "Bytes of messages to clients.", self.sent_bytes),
        ):
            family = CounterMetricFamily(self._prefix + name, help_text, labels=["kind"])
            for kind, value in sorted(tally.items()):
                family.add_metric([kind], value)
            yield family
