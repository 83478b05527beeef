"""How much one server lets its clients take: connections, rooms, upgrade and message rates.

Every limit counts per server process and has a safe default; ``None`` turns one off. Refusals
before the upgrade are HTTP answers (429 for one address asking too much, 503 when the server is
full, 403 for an origin not on the allow-list); a connection that sends faster than its rates
allow is closed with 1008. An offender is logged once a minute, not once per refusal.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import trio

from .auth import Forbidden
from .connection import ConnectionRequest
from .errors import CloseCode, PolicyViolationError, YSyncError

__all__ = [
    "Admission",
    "Limits",
    "ServerFull",
    "TokenBucket",
    "TooManyRequests",
    "TrafficMeter",
]

logger = logging.getLogger("trio_ysync.limits")

#: Seconds between two log lines about the same offender.
_LOG_EVERY = 60.0


@functools.lru_cache(maxsize=1024)
def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.partition("%")[0]).is_loopback
    except ValueError:
        return False


class TooManyRequests(YSyncError):
    """One client address asks for more than its share: HTTP 429."""

    close_code = CloseCode.POLICY_VIOLATION
    http_status = 429
    peer_fault = True


class ServerFull(YSyncError):
    """The server has no room for another connection or room: HTTP 503, close code 1013."""

    close_code = CloseCode.TRY_AGAIN_LATER
    http_status = 503
    peer_fault = True


@dataclass(frozen=True)
class Limits:
    """What a server allows; ``None`` switches a limit off.

    Attributes:
        max_connections: open connections in all.
        max_connections_per_address: open connections from one client address.
        max_rooms: rooms loaded at once (a request for another room is refused with 503).
        upgrades_per_minute: new connections one address may open per minute (bursts of that
            many are allowed).
        messages_per_second: messages one connection may send per second, sustained (bursts of
            five seconds' worth are allowed).
        bytes_per_second: bytes one connection may send per second, sustained (a burst may be
            as large as the largest message allowed).
        allowed_origins: the ``Origin`` headers accepted from browsers (scheme, host and port,
            as browsers send them); requests without one (not from a browser) are not
            affected. ``None`` accepts every origin.
        trusted_proxies: how many reverse proxies in front of the server append to
            ``X-Forwarded-For``; the client address is then read from that header instead of
            the socket. Zero trusts no header (a client could forge it).

    The per-address limits do not apply to connections from a loopback address that are not
    attributed to another address by ``X-Forwarded-For``: those are local tools, tests, or a
    reverse proxy on the same host whose clients all look alike (set ``trusted_proxies`` so
    they can be told apart).
    """

    max_connections: int | None = 10_000
    max_connections_per_address: int | None = 256
    max_rooms: int | None = 10_000
    upgrades_per_minute: int | None = 600
    messages_per_second: float | None = 1000.0
    bytes_per_second: float | None = 8 * 1024 * 1024
    allowed_origins: Collection[str] | None = None
    trusted_proxies: int = 0


class TokenBucket:
    """Allows ``rate`` units per second on average and ``capacity`` at once."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` if there is that much; whether it was taken."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True

    def full(self, now: float) -> bool:
        """Whether it has refilled completely (an idle bucket can be forgotten)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


class TrafficMeter:
    """The message and byte rates of one connection."""

    __slots__ = ("_bytes", "_messages")

    def __init__(self, limits: Limits, max_message_size: int, now: float) -> None:
        self._messages = (
            None
            if limits.messages_per_second is None
            else TokenBucket(limits.messages_per_second, 5 * limits.messages_per_second, now)
        )
        self._bytes = (
            None
            if limits.bytes_per_second is None
            else TokenBucket(
                limits.bytes_per_second, max(limits.bytes_per_second, max_message_size), now
            )
        )

    def count(self, size: int, now: float) -> None:
        """Account for one message of ``size`` bytes.

        Raises:
            PolicyViolationError: the connection sends faster than its rates allow.
        """
        if self._messages is not None and not self._messages.take(1, now):
            raise PolicyViolationError("too many messages per second")
        if self._bytes is not None and not self._bytes.take(size, now):
            raise PolicyViolationError("too many bytes per second")


class _Ticket:
    """An admitted connection; :meth:`release` it when it ends."""

    __slots__ = ("_admission", "address")

    def __init__(self, admission: Admission, address: str) -> None:
        self._admission: Admission | None = admission
        self.address = address

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self.address)


class Admission:
    """Counts the connections of one server and decides whether another may come in.

    Args:
        limits: what is allowed.
        clock: the time source (seconds; trio's clock by default).
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = trio.current_time) -> None:
        self.limits = limits
        self._clock = clock
        self._open = 0
        self._per_address: dict[str, int] = {}
        self._upgrades: dict[str, TokenBucket] = {}
        self._next_sweep = -math.inf
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet released."""
        return self._open

    def client_address(self, request: ConnectionRequest) -> str:
        """The client's address: from the socket, or from ``X-Forwarded-For`` as far as
        :attr:`Limits.trusted_proxies` allows."""
        return self._address(request)[0]

    def _address(self, request: ConnectionRequest) -> tuple[str, bool]:
        # The address, and whether it is a local one that per-address limits leave alone.
        hops = self.limits.trusted_proxies
        if hops > 0:
            forwarded = [
                part.strip()
                for value in (v for k, v in request.headers if k == "x-forwarded-for")
                for part in value.split(",")
                if part.strip()
            ]
            if len(forwarded) >= hops:
                return forwarded[-hops], False
        if request.client is None:
            return "unknown", False
        address = request.client[0]
        return address, _is_loopback(address)

    def admit(self, request: ConnectionRequest) -> _Ticket:
        """Let the request in (then :meth:`_Ticket.release` the ticket when it ends).

        Raises:
            Forbidden: its ``Origin`` is not allowed.
            TooManyRequests: its address has too many connections or opened too many lately.
            ServerFull: the server has too many connections.
        """
        limits = self.limits
        address, local = self._address(request)
        now = self._clock()
        self._sweep(now)
        try:
            origin = request.origin
            if (
                limits.allowed_origins is not None
                and origin is not None
                and origin not in limits.allowed_origins
            ):
                raise Forbidden(f"origin {origin!r} is not allowed")
            if limits.max_connections is not None and self._open >= limits.max_connections:
                raise ServerFull("the server is at its connection limit")
            count = self._per_address.get(address, 0)
            if (
                limits.max_connections_per_address is not None
                and count >= limits.max_connections_per_address
                and not local
            ):
                raise TooManyRequests("too many connections from this address")
            if limits.upgrades_per_minute is not None and not local:
                bucket = self._upgrades.get(address)
                if bucket is None:
                    rate = limits.upgrades_per_minute
                    bucket = self._upgrades[address] = TokenBucket(rate / 60, rate, now)
                if not bucket.take(1, now):
                    raise TooManyRequests("too many new connections from this address")
        except YSyncError as exc:
            self.log_refusal(address, exc)
            raise
        self._open += 1
        self._per_address[address] = count + 1
        return _Ticket(self, address)

    def _release(self, address: str) -> None:
        self._open -= 1
        left = self._per_address.get(address, 1) - 1
        if left > 0:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    def _sweep(self, now: float) -> None:
        # Forget addresses whose buckets have refilled: they are as good as new.
        if now < self._next_sweep:
            return
        self._next_sweep = now + _LOG_EVERY
        self._upgrades = {
            address: bucket for address, bucket in self._upgrades.items() if not bucket.full(now)
        }
        self._logged = {
            key: value for key, value in self._logged.items() if now - value[0] < _LOG_EVERY
        }

    def log_refusal(self, address: str, exc: BaseException) -> None:
        """Log a refusal of ``address`` once a minute per reason, with how many were not."""
        now = self._clock()
        key = (address, str(exc))
        last, suppressed = self._logged.get(key, (-math.inf, 0))
        if now - last < _LOG_EVERY:
            self._logged[key] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        logger.warning("%s: refused: %s%s", address, exc, more)
        self._logged[key] = (now, 0)
