"""Webhooks: a signed HTTP POST to your service when a room changes (and, if asked, when
connections open and close).

.. code-block:: python

    webhooks = Webhooks("https://example.com/hooks/ysync", "whsec_...")
    RoomServer(store, hooks=[webhooks])

Changes are debounced per room: one ``room.changed`` request tells that a room changed (how many
updates, when, by whom), not what changed; the receiver fetches the document if it needs it.
Requests are signed the `Standard Webhooks <https://www.standardwebhooks.com>`_ way, retried
with exponential back-off, sent at most ``concurrency`` at a time and in order within a room.
Nothing here ever waits on the network in an event method: a dead endpoint fills a bounded
queue, and what does not fit is dropped and counted.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import standardwebhooks
import trio

from . import __version__
from .hooks import ConnectionClosed, ConnectionOpened, DocumentChanged, ServerHooks
from .timers import Timer, Timers

__all__ = [
    "CONNECTION_CLOSED",
    "CONNECTION_OPENED",
    "EVENT_TYPES",
    "ROOM_CHANGED",
    "Webhooks",
]

logger = logging.getLogger("trio_ysync.webhooks")

#: A room's document changed (sent after the changes settled; see ``debounce``).
ROOM_CHANGED = "room.changed"
#: A connection joined a room.
CONNECTION_OPENED = "connection.opened"
#: A connection left its room.
CONNECTION_CLOSED = "connection.closed"
#: Every event type a webhook can send, in the words used in bodies and on the command line.
EVENT_TYPES = (ROOM_CHANGED, CONNECTION_OPENED, CONNECTION_CLOSED)

#: The shortest secret the Standard Webhooks specification allows (decoded ``whsec_`` form).
MIN_WHSEC_BYTES = 24
#: The shortest raw secret (its bytes are likely printable, so fewer random bits each).
MIN_RAW_SECRET_BYTES = 32
_SECRET_PREFIX = "whsec_"
_MAKE_ONE = (
    'make one with: python -c "import base64, secrets; '
    "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
)
# A room.changed body names at most this many distinct origins (identities) of its updates.
_MAX_ORIGINS = 20
# Response bodies are read (so the connection can be reused) up to this size, then dropped.
_MAX_RESPONSE_BYTES = 64 * 1024


def _iso(wall_time: float) -> str:
    moment = datetime.fromtimestamp(wall_time, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Tally:
    """Counts something that may happen too often to log each time: at most one line a minute,
    with the count so far."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.count = 0
        self._next_report = -math.inf

    def add(self, *args: object) -> None:
        self.count += 1
        now = trio.current_time()
        if now >= self._next_report:
            self._next_report = now + 60.0
            logger.warning(self.message, self.count, *args)


@dataclass(eq=False, slots=True)
class _Changes:
    """The changes of one room not sent yet."""

    room: str
    first: float  # wall-clock times of the first and last change
    last: float
    first_at: float  # trio-clock times of the same
    last_at: float
    updates: int = 0
    size: int = 0
    origins: set[str] = field(default_factory=set)
    timer: Timer | None = None

    def add(self, event: DocumentChanged) -> None:
        self.last = time.time()
        self.last_at = trio.current_time()
        self.updates += 1
        self.size += len(event.update)
        self._add_origins((event.origin,) if event.origin is not None else ())

    def merge(self, later: _Changes) -> None:
        """Take in the changes of the same room that came after these."""
        self.last, self.last_at = later.last, later.last_at
        self.updates += later.updates
        self.size += later.size
        self._add_origins(later.origins)

    def _add_origins(self, origins: Collection[str]) -> None:
        for origin in origins:
            if len(self.origins) >= _MAX_ORIGINS:
                return
            self.origins.add(origin)

    def data(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "updates": self.updates,
            "bytes": self.size,
            "first_change": _iso(self.first),
            "last_change": _iso(self.last),
            "origins": sorted(self.origins),
        }


@dataclass(eq=False, slots=True)
class _Delivery:
    """One webhook request, with every attempt to send it."""

    type: str
    room: str
    #: When the event happened (wall clock); for changes, the last change.
    timestamp: float
    #: The body's ``data``; changes stay mergeable until the first attempt.
    data: dict[str, Any] | _Changes
    #: The ``webhook-id``: the same for every attempt, so receivers can drop repeats.
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")

    def body(self) -> str:
        if isinstance(self.data, _Changes):
            self.timestamp = self.data.last
            self.data = self.data.data()
        payload = {"type": self.type, "timestamp": _iso(self.timestamp), "data": self.data}
        return json.dumps(payload, separators=(",", ":"))


class _Outbox:
    """Deliveries waiting to be sent: at most ``capacity``, in order within a room, and one room's
    at a time.

    A place is reserved before a delivery exists (a room's changes hold theirs while they are
    debounced); a full outbox refuses, counts and logs.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held = 0  # reserved places: deliveries waiting, and changes being debounced
        self._waiting: dict[str, deque[_Delivery]] = {}
        self._ready: deque[str] = deque()  # rooms with deliveries waiting and none in flight
        self._in_flight: set[str] = set()
        self._arrived = trio.lowlevel.ParkingLot()
        #: Set while nothing waits and nothing is in flight.
        self.idle = trio.Event()
        self.idle.set()
        self.dropped = _Tally("webhook queue full: %d events dropped so far")

    def reserve(self) -> bool:
        """Hold a place for one delivery, or count one dropped."""
        if self._held >= self.capacity:
            self.dropped.add()
            return False
        self._held += 1
        return True

    def put(self, delivery: _Delivery) -> None:
        """Queue a delivery, in the place reserved for it."""
        waiting = self._waiting.get(delivery.room)
        if waiting is None:
            waiting = self._waiting[delivery.room] = deque()
            if delivery.room not in self._in_flight:
                self._ready.append(delivery.room)
                self._arrived.unpark()
        waiting.append(delivery)
        if self.idle.is_set():
            self.idle = trio.Event()

    def put_changes(self, changes: _Changes) -> None:
        """Queue a room's changes, or add them to its changes already waiting (which frees the
        place reserved for them)."""
        waiting = self._waiting.get(changes.room)
        if waiting and isinstance(waiting[-1].data, _Changes):
            waiting[-1].data.merge(changes)
            self._held -= 1
        else:
            self.put(_Delivery(ROOM_CHANGED, changes.room, changes.last, changes))

    async def take(self) -> _Delivery:
        """The next delivery of a room with none in flight; call :meth:`done` after it."""
        while not self._ready:
            await self._arrived.park()
        room = self._ready.popleft()
        waiting = self._waiting[room]
        delivery = waiting.popleft()
        if not waiting:
            del self._waiting[room]
        self._held -= 1
        self._in_flight.add(room)
        return delivery

    def done(self, delivery: _Delivery) -> None:
        """The delivery was sent, or given up."""
        self._in_flight.discard(delivery.room)
        if delivery.room in self._waiting:
            self._ready.append(delivery.room)
            self._arrived.unpark()
        elif not self._in_flight and not self._waiting:
            self.idle.set()


class _Sender:
    """Sends one delivery: signs each attempt, retries with back-off, counts the outcome."""

    def __init__(
        self,
        url: httpx.URL,
        key: bytes,
        *,
        user_agent: str,
        timeout: float,
        max_attempts: int,
        retry_delay: float,
        max_retry_delay: float,
    ) -> None:
        self.url = url
        self._signer = standardwebhooks.Webhook(key)
        self.user_agent = user_agent
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._random = random.Random()
        self.sent = 0
        self.failed = _Tally("webhook deliveries given up so far: %d (the last: %s)")

    async def send(self, client: httpx.AsyncClient, delivery: _Delivery) -> None:
        body = delivery.body()
        content = body.encode()
        for attempt in range(1, self.max_attempts + 1):
            now = time.time()
            # The signature covers the id, this attempt's time and the body (a new time, so a
            # new signature, for each attempt).
            signature = self._signer.sign(
                delivery.id, datetime.fromtimestamp(now, timezone.utc), body
            )
            headers = {
                "webhook-id": delivery.id,
                "webhook-timestamp": str(math.floor(now)),
                "webhook-signature": signature,
                "content-type": "application/json",
                "user-agent": self.user_agent,
            }
            retry_after = None
            try:
                with trio.fail_after(self.timeout):
                    status, retry_after = await self._post(client, content, headers)
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                failure = str(exc) or type(exc).__name__
            else:
                if 200 <= status < 300:
                    self.sent += 1
                    return
                failure = f"HTTP {status}"
            logger.debug("webhook %s attempt %d failed: %s", delivery.id, attempt, failure)
            if attempt < self.max_attempts:
                await trio.sleep(self._backoff(attempt, retry_after))
        self.failed.add(f"{delivery.type} of {delivery.room!r}: {failure}")

    async def _post(
        self, client: httpx.AsyncClient, content: bytes, headers: dict[str, str]
    ) -> tuple[int, float | None]:
        """One attempt: the answer's status and ``Retry-After`` seconds (if any)."""
        async with client.stream("POST", self.url, content=content, headers=headers) as response:
            # Read a short answer so the connection can be reused; never a long one.
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > _MAX_RESPONSE_BYTES:
                    break
            retry_after = response.headers.get("retry-after", "")
            return response.status_code, float(retry_after) if retry_after.isdigit() else None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.max_retry_delay, self.retry_delay * 2.0 ** (attempt - 1))
        delay *= self._random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_delay))
        return delay


class Webhooks(ServerHooks):
    """Tells an HTTP endpoint about room changes (and connections), the Standard Webhooks way.

    Every request is a ``POST`` of a JSON body ``{"type": ..., "timestamp": ..., "data": {...}}``
    with the headers ``webhook-id`` (the same for every attempt of one delivery),
    ``webhook-timestamp`` (of the attempt) and ``webhook-signature`` (HMAC-SHA256 over the id,
    the timestamp and the body). See the Integration page for the bodies and how to verify them.

    Add it to a server's hooks; the server runs it (:meth:`run`) and closes it (:meth:`aclose`).
    Its event methods only record and never wait; the requests are sent by tasks of its own.
    A room's requests go in the order of its events: a connection event sends the room's
    changes gathered so far first, without waiting for the debounce.

    Args:
        url: the endpoint (``http://`` or ``https://``).
        secret: the signing secret. A ``str`` is the Standard Webhooks form, ``whsec_`` and
            base64 (at least 24 bytes once decoded); ``bytes`` are used as the key as they are
            (at least 32), which receivers must then be told (``Webhook(key)`` in Python,
            ``new Webhook(key, {format: "raw"})`` in Node).
        events: which event types to send (:data:`EVENT_TYPES`); changes only by default.
        debounce: seconds without a change after which a room's changes are sent ...
        max_delay: ... or seconds after its first unsent change, whichever comes first, so a
            room edited without pause is still reported this often.
        max_attempts: attempts per delivery; after the last failure it is dropped (and logged).
        retry_delay: seconds before the first retry; each further one waits twice as long (up
            to ``max_retry_delay``), shortened at random by up to half so that deliveries that
            failed together do not retry together. A ``Retry-After`` answer is honoured, up to
            ``max_retry_delay``.
        max_retry_delay: the longest wait between two attempts.
        timeout: seconds one attempt may take (connecting, sending, waiting for the answer).
        concurrency: requests in flight at most; the requests of one room are sent in order,
            one at a time.
        queue_size: deliveries held at most, counting rooms whose changes are being debounced
            (changes to a room coalesce: while a room's changes wait to be sent, newer ones join
            them). When it is full, new ones are dropped, counted and logged once a minute.
        user_agent: the ``User-Agent`` header.
        client: an :class:`httpx.AsyncClient` to send with (for proxies or TLS settings); by
            default the hook opens its own. A given client is not closed by the hook.

    Raises:
        ValueError: a bad URL, secret, event type or setting.
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        events: Collection[str] = (ROOM_CHANGED,),
        debounce: float = 2.0,
        max_delay: float = 10.0,
        max_attempts: int = 8,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        timeout: float = 15.0,
        concurrency: int = 4,
        queue_size: int = 10_000,
        user_agent: str = f"trio-ysync/{__version__}",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        unknown = set(events) - set(EVENT_TYPES)
        if unknown or not events:
            raise ValueError(
                f"webhook events must be some of {', '.join(EVENT_TYPES)}; "
                f"got {', '.join(sorted(unknown)) or 'none'}"
            )
        if not 0 <= debounce <= max_delay:
            raise ValueError("webhook debounce must be between 0 and max_delay")
        if max_attempts < 1 or concurrency < 1 or queue_size < 1:
            raise ValueError("webhook max_attempts, concurrency and queue_size must be 1 or more")
        if not 0 <= retry_delay <= max_retry_delay:
            raise ValueError("webhook retry_delay must be between 0 and max_retry_delay")
        self._sender = _Sender(
            _check_url(url),
            _signing_key(secret),
            user_agent=user_agent,
            timeout=timeout,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
        )
        self.events = frozenset(events)
        self.debounce = debounce
        self.max_delay = max_delay
        self.concurrency = concurrency
        self._client = client
        self._timers = Timers()
        self._pending: dict[str, _Changes] = {}  # rooms whose changes are being debounced
        self._outbox = _Outbox(queue_size)
        self._running = False

    @classmethod
    def from_options(
        cls, url: str, secret_file: str | os.PathLike[str] | None, events: str | None = None
    ) -> Webhooks:
        """A hook made from command-line options, or a :class:`ValueError` whose message tells
        the operator what to fix, in one line.

        Args:
            url: the endpoint.
            secret_file: a file holding the secret: ``whsec_`` and base64 (as Standard Webhooks
                libraries expect it), or else the raw key of 32 bytes or more; surrounding
                whitespace is ignored.
            events: event types separated by commas (default: ``room.changed``).
        """
        if secret_file is None:
            raise ValueError("a webhook needs a secret: give --webhook-secret-file")
        try:
            with open(secret_file, "rb") as file:
                content = file.read().strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read the webhook secret file {os.fspath(secret_file)}: "
                f"{exc.strerror or exc}"
            ) from None
        secret: str | bytes = content
        if content.startswith(_SECRET_PREFIX.encode()):
            secret = content.decode("ascii", errors="replace")
        chosen = (ROOM_CHANGED,) if events is None else [e.strip() for e in events.split(",")]
        return cls(url, secret, events=chosen)

    @property
    def url(self) -> httpx.URL:
        """The endpoint."""
        return self._sender.url

    @property
    def sent(self) -> int:
        """Deliveries the endpoint accepted (a 2xx answer)."""
        return self._sender.sent

    @property
    def failed(self) -> int:
        """Deliveries dropped after their last attempt failed."""
        return self._sender.failed.count

    @property
    def dropped(self) -> int:
        """Events (changes, connection events) dropped because the queue was full."""
        return self._outbox.dropped.count

    # -- events: record, never wait ------------------------------------------------------------

    async def document_changed(self, event: DocumentChanged) -> None:
        """Counts the change in with the room's unsent ones."""
        if ROOM_CHANGED not in self.events:
            return
        changes = self._pending.get(event.room)
        if changes is None:
            if not self._outbox.reserve():
                return
            now, now_at = time.time(), trio.current_time()
            changes = self._pending[event.room] = _Changes(event.room, now, now, now_at, now_at)
            changes.timer = self._timers.call_at(now_at + self.debounce, self._due(changes))
        changes.add(event)

    async def connection_opened(self, event: ConnectionOpened) -> None:
        """Queues a ``connection.opened`` delivery, if asked for."""
        self._connection_event(CONNECTION_OPENED, event, read_only=event.read_only)

    async def connection_closed(self, event: ConnectionClosed) -> None:
        """Queues a ``connection.closed`` delivery, if asked for."""
        self._connection_event(
            CONNECTION_CLOSED,
            event,
            code=event.code,
            reason=event.reason,
            duration=round(event.duration, 3),
        )

    def _connection_event(
        self, kind: str, event: ConnectionOpened | ConnectionClosed, **details: object
    ) -> None:
        if kind not in self.events:
            return
        # The room's changes so far go first, undebounced, so a room's deliveries keep the
        # order of its events (the last edit of a connection is told before its closing).
        changes = self._pending.get(event.room)
        if changes is not None:
            self._flush(changes)
        if self._outbox.reserve():
            data = {
                "room": event.room,
                "connection_id": event.connection_id,
                "client": event.client,
                "identity": event.identity,
                **details,
            }
            self._outbox.put(_Delivery(kind, event.room, time.time(), data))

    def _due(self, changes: _Changes) -> Callable[[], None]:
        def due() -> None:
            deadline = min(changes.last_at + self.debounce, changes.first_at + self.max_delay)
            if deadline > trio.current_time():
                changes.timer = self._timers.call_at(deadline, due)
            else:
                self._flush(changes)

        return due

    def _flush(self, changes: _Changes) -> None:
        del self._pending[changes.room]
        if changes.timer is not None:
            changes.timer.cancel()
        self._outbox.put_changes(changes)

    # -- running and closing -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Debounce changes and send deliveries until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._timers.run)
            await nursery.start(self._send_all)
            task_status.started()

    async def aclose(self) -> None:
        """Send every room's unsent changes now, then wait until nothing is left to send (bound
        the wait with a cancel scope; :class:`~trio_ysync.hooks.HookRunner` does)."""
        for changes in list(self._pending.values()):
            self._flush(changes)
        if self._running:
            await self._outbox.idle.wait()
        elif not self._outbox.idle.is_set():  # the run already stopped (or never started)
            async with trio.open_nursery() as nursery:
                await nursery.start(self._send_all)
                await self._outbox.idle.wait()
                nursery.cancel_scope.cancel()

    async def _send_all(self, *, task_status: trio.TaskStatus[None]) -> None:
        client = self._open_client() if self._client is None else self._client
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.concurrency):
                    nursery.start_soon(self._send_next, client)
                self._running = True
                task_status.started()
        finally:
            self._running = False
            if client is not self._client:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await client.aclose()

    def _open_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self._sender.timeout,
            limits=httpx.Limits(max_connections=self.concurrency),
            follow_redirects=False,  # Standard Webhooks: a redirect is a failure
        )

    async def _send_next(self, client: httpx.AsyncClient) -> None:
        while True:
            delivery = await self._outbox.take()
            try:
                await self._sender.send(client, delivery)
            except Exception:  # a bug here must not stop the deliveries
                logger.exception("webhook delivery %s failed", delivery.id)
            finally:
                self._outbox.done(delivery)


def _check_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"bad webhook URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"the webhook URL must be http://HOST/... or https://HOST/...: {url!r}")
    return parsed


def _signing_key(secret: str | bytes) -> bytes:
    """The HMAC key for ``secret``: a ``whsec_`` string decoded, or raw bytes as they are."""
    if isinstance(secret, bytes):
        if len(secret) < MIN_RAW_SECRET_BYTES:
            raise ValueError(
                f"the webhook secret has {len(secret)} bytes; use a Standard Webhooks secret "
                f"(whsec_ and base64) or at least {MIN_RAW_SECRET_BYTES} raw bytes; {_MAKE_ONE}"
            )
        return secret
    encoded = secret.strip().removeprefix(_SECRET_PREFIX)
    try:
        # Strict, unlike the standardwebhooks library, so a mangled secret is an error here
        # rather than a key that no receiver shares.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(
            f"the webhook secret is not valid base64 after 'whsec_'; {_MAKE_ONE}"
        ) from None
    if len(key) < MIN_WHSEC_BYTES:
        raise ValueError(
            f"the webhook secret has {len(key)} bytes once decoded; Standard Webhooks needs at "
            f"least {MIN_WHSEC_BYTES}; {_MAKE_ONE}"
        )
    return key
