"""Webhooks sent to a real HTTP endpoint (hypercorn on 127.0.0.1), verified the way a receiver
verifies them (the standardwebhooks library), with the server's events fed through a HookRunner.

Timing runs on trio's MockClock: the autojump threshold is a little above zero so the clock never
jumps while a request is still crossing the loopback socket.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from nodejs import js_client, requires_node, webhook_receiver, ws_url
from standardwebhooks import Webhook, WebhookVerificationError
from test_adapters import start_hypercorn
from wsclient import http_get

from trio_ysync.hooks import ConnectionClosed, ConnectionOpened, DocumentChanged, HookRunner
from trio_ysync.server import RoomServer
from trio_ysync.webhooks import (
    CONNECTION_CLOSED,
    CONNECTION_OPENED,
    EVENT_TYPES,
    ROOM_CHANGED,
    Webhooks,
)

KEY = secrets.token_bytes(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@dataclass
class Received:
    """One request the endpoint received, verified."""

    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]
    #: The trio clock when it arrived.
    at: float

    @property
    def data(self) -> dict[str, Any]:
        return self.payload["data"]  # type: ignore[no-any-return]


class Receiver:
    """A webhook endpoint: an ASGI app that verifies every request with the standardwebhooks
    library (like a receiver), records it and answers with the statuses queued in ``answers``
    (then 200), or as ``respond`` says. While ``hold`` is set, requests wait before they are
    answered."""

    def __init__(self, verifier: Webhook) -> None:
        self.verifier = verifier
        self.url = ""
        self.answers: deque[tuple[int, dict[str, str]]] = deque()
        self.respond: Callable[[Received], tuple[int, dict[str, str]]] = self._next_answer
        self.hold: trio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.requests: list[Received] = []
        self.refused: list[str] = []
        self._send, self._receive = trio.open_memory_channel[Received](1000)

    async def next(self) -> Received:
        """The next request (wrap the wait in a timeout)."""
        received = await self._receive.receive()
        assert not self.refused, self.refused
        return received

    def _next_answer(self, received: Received) -> tuple[int, dict[str, str]]:
        return self.answers.popleft() if self.answers else (200, {})

    async def assert_silent(self, seconds: float) -> None:
        """Nothing else arrives for ``seconds``."""
        with trio.move_on_after(seconds):
            extra = await self._receive.receive()
            pytest.fail(f"an unexpected request: {extra.payload}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await self.hold.wait()
        finally:
            self.in_flight -= 1
        try:
            payload = self.verifier.verify(body, headers)
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            status, extra_headers = 400, {}
        else:
            received = Received(headers, body, payload, trio.current_time())
            self.requests.append(received)
            self._send.send_nowait(received)
            status, extra_headers = self.respond(received)
        response_headers = [(b"content-type", b"text/plain")]
        response_headers += [(k.encode(), v.encode()) for k, v in extra_headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


async def serve_receiver(nursery: trio.Nursery, verifier: Webhook) -> Receiver:
    receiver = Receiver(verifier)
    # Keep-alive is long so that the server's idle timer never races a request in jumped time.
    port = await start_hypercorn(nursery, receiver, trio.Event(), keep_alive_timeout=3600)
    receiver.url = f"http://127.0.0.1:{port}/hooks"
    return receiver


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> Receiver:
    return await serve_receiver(nursery, Webhook(SECRET))


@asynccontextmanager
async def running(webhooks: Webhooks) -> AsyncIterator[HookRunner]:
    """The hook, run by a HookRunner (as a server runs its hooks); closed at the end."""
    runner = HookRunner([webhooks])
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        yield runner
        await runner.aclose()
        nursery.cancel_scope.cancel()


def changed(room: str, origin: str | None = "ada", size: int = 3) -> DocumentChanged:
    return DocumentChanged(room, b"\x00" * size, origin)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_changes_to_a_room_are_debounced_into_one_signed_request(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    webhooks = Webhooks(receiver.url, SECRET)
    before = datetime.now(timezone.utc).timestamp()
    with trio.fail_after(120):
        async with running(webhooks) as runner:
            start = trio.current_time()
            for i in range(5):
                runner.emit(changed("notes", origin=f"user{i % 2}", size=10))
                await trio.sleep(1)
            runner.emit(changed("other", origin=None))
            notes = await receiver.next()
            other = await receiver.next()
            await receiver.assert_silent(60)
    # Each room once, debounce (2 s) after its last change: notes changed at 0..4 s, other at 5.
    assert notes.at - start == pytest.approx(6, abs=0.1)
    assert other.at - start == pytest.approx(7, abs=0.1)
    assert notes.payload["type"] == ROOM_CHANGED
    assert notes.data["room"] == "notes"
    assert notes.data["updates"] == 5
    assert notes.data["bytes"] == 50
    assert notes.data["origins"] == ["user0", "user1"]
    assert other.data == {
        "room": "other",
        "updates": 1,
        "bytes": 3,
        "first_change": other.data["first_change"],
        "last_change": other.data["last_change"],
        "origins": [],
    }
    now = datetime.now(timezone.utc).timestamp()
    first, last = parse_time(notes.data["first_change"]), parse_time(notes.data["last_change"])
    assert before - 0.001 <= first <= last <= now
    assert parse_time(notes.payload["timestamp"]) == last
    assert notes.headers["content-type"] == "application/json"
    assert notes.headers["user-agent"].startswith("trio-ysync/")
    assert notes.headers["webhook-id"].startswith("msg_")
    assert notes.headers["webhook-id"] != other.headers["webhook-id"]
    assert json.loads(notes.body) == notes.payload
    # The verification the receiver did is not a formality: another key fails it.
    with pytest.raises(WebhookVerificationError):
        Webhook(secrets.token_bytes(32)).verify(notes.body, notes.headers)
    assert (webhooks.sent, webhooks.failed, webhooks.dropped) == (2, 0, 0)


async def test_a_room_edited_without_pause_is_reported_every_max_delay(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    webhooks = Webhooks(receiver.url, SECRET)
    with trio.fail_after(120):
        async with running(webhooks) as runner:
            start = trio.current_time()
            for _ in range(40):  # a change every 0.75 s, from 0 to 29.25 s
                runner.emit(changed("busy"))
                await trio.sleep(0.75)
            requests = [await receiver.next() for _ in range(3)]
            await receiver.assert_silent(60)
    # 10 s after each batch's first change (0, 10.5, 21); the last batch 2 s after its last
    # change would be 31.25 s, but its first was at 21.
    assert [r.at - start for r in requests] == pytest.approx([10, 20.5, 31], abs=0.1)
    assert [r.data["updates"] for r in requests] == [14, 14, 12]


async def test_a_failed_delivery_is_retried_with_the_same_id(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    receiver.answers.append((500, {}))
    webhooks = Webhooks(receiver.url, SECRET, retry_delay=1.0)
    with trio.fail_after(120):
        async with running(webhooks) as runner:
            runner.emit(changed("notes"))
            runner.emit(changed("notes"))
            failed = await receiver.next()
            retried = await receiver.next()
            await receiver.assert_silent(60)
    assert retried.headers["webhook-id"] == failed.headers["webhook-id"]
    assert retried.body == failed.body
    assert retried.data["updates"] == 2
    # The first retry waits retry_delay, shortened at random by up to half.
    assert 0.5 <= retried.at - failed.at <= 1.0 + 0.1
    assert (webhooks.sent, webhooks.failed) == (1, 0)


async def test_retry_after_is_honoured_and_back_off_doubles(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    receiver.answers.extend([(503, {"retry-after": "30"}), (500, {}), (500, {})])
    webhooks = Webhooks(receiver.url, SECRET, retry_delay=1.0)
    with trio.fail_after(120):
        async with running(webhooks) as runner:
            runner.emit(changed("notes"))
            attempts = [await receiver.next() for _ in range(4)]
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert 30 <= gaps[0] <= 30.1  # Retry-After, longer than the back-off
    assert 1 <= gaps[1] <= 2.1  # the second retry: 2 s, shortened by up to half
    assert 2 <= gaps[2] <= 4.1
    assert len({a.headers["webhook-id"] for a in attempts}) == 1


async def test_a_delivery_is_given_up_after_its_last_attempt_and_the_next_goes_out(
    clock: trio.testing.MockClock, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers.extend([(500, {})] * 3)
    webhooks = Webhooks(receiver.url, SECRET, max_attempts=3)
    with trio.fail_after(120):
        async with running(webhooks) as runner:
            runner.emit(changed("doomed"))
            attempts = [await receiver.next() for _ in range(3)]
            await receiver.assert_silent(60)
            runner.emit(changed("next"))
            after = await receiver.next()
    assert {a.data["room"] for a in attempts} == {"doomed"}
    assert after.data["room"] == "next"
    assert (webhooks.sent, webhooks.failed) == (1, 1)
    given_up = [r for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 1
    assert given_up[0].levelno == logging.WARNING
    assert "'doomed'" in given_up[0].getMessage()
    assert "HTTP 500" in given_up[0].getMessage()


OPENED = ConnectionOpened("notes", "127.0.0.9", "ada", read_only=True, connection_id=7)
CLOSED = ConnectionClosed("notes", "127.0.0.9", "ada", 7, code=1000, reason="bye", duration=61.25)


async def test_connection_events_are_sent_only_when_asked(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    with trio.fail_after(120):
        async with running(Webhooks(receiver.url, SECRET)) as runner:
            runner.emit(OPENED)
            runner.emit(changed("notes"))
            runner.emit(CLOSED)
            only = await receiver.next()
            await receiver.assert_silent(60)
        assert only.payload["type"] == ROOM_CHANGED

        async with running(Webhooks(receiver.url, SECRET, events=EVENT_TYPES)) as runner:
            start = trio.current_time()
            runner.emit(OPENED)
            await trio.sleep(1)
            runner.emit(changed("notes"))
            await trio.sleep(0.5)
            runner.emit(CLOSED)
            opened, change, closed = [await receiver.next() for _ in range(3)]
    assert opened.payload["type"] == CONNECTION_OPENED
    assert opened.at - start == pytest.approx(0, abs=0.1)  # not debounced
    assert opened.data == {
        "room": "notes",
        "connection_id": 7,
        "client": "127.0.0.9",
        "identity": "ada",
        "read_only": True,
    }
    assert closed.payload["type"] == CONNECTION_CLOSED
    assert closed.data == {
        "room": "notes",
        "connection_id": 7,
        "client": "127.0.0.9",
        "identity": "ada",
        "code": 1000,
        "reason": "bye",
        "duration": 61.25,
    }
    # The change goes before the closing, without waiting for the debounce.
    assert change.payload["type"] == ROOM_CHANGED
    assert change.at - start == pytest.approx(1.5, abs=0.1)
    assert closed.at - start == pytest.approx(1.5, abs=0.1)


async def test_a_room_is_sent_in_order_and_rooms_at_most_concurrency_at_a_time(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    receiver.hold = trio.Event()
    notes_requests = 0

    def fail_notes_first(received: Received) -> tuple[int, dict[str, str]]:
        nonlocal notes_requests
        if received.data["room"] != "notes":
            return 200, {}
        notes_requests += 1
        return (500, {}) if notes_requests == 1 else (200, {})

    receiver.respond = fail_notes_first
    webhooks = Webhooks(receiver.url, SECRET, events=EVENT_TYPES, concurrency=2)
    with trio.fail_after(120):
        async with running(webhooks) as runner:
            runner.emit(OPENED)
            for room in "abcde":
                runner.emit(ConnectionOpened(room, "127.0.0.1", None, False, ord(room)))
            runner.emit(CLOSED)  # must follow the opening of notes, retried or not
            await trio.sleep(5)
            assert receiver.in_flight == 2
            receiver.hold.set()
            requests = [await receiver.next() for _ in range(8)]
            await receiver.assert_silent(60)
    assert receiver.most_in_flight == 2
    notes = [
        (r.payload["type"], r.headers["webhook-id"]) for r in requests if r.data["room"] == "notes"
    ]
    assert [kind for kind, _ in notes] == [CONNECTION_OPENED, CONNECTION_OPENED, CONNECTION_CLOSED]
    assert notes[0][1] == notes[1][1]
    assert sorted(r.data["room"] for r in requests if r.data["room"] != "notes") == list("abcde")


async def test_changes_waiting_behind_a_slow_request_coalesce_into_one(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    receiver.hold = trio.Event()
    webhooks = Webhooks(receiver.url, SECRET, concurrency=1, queue_size=2)
    with trio.fail_after(120):
        async with running(webhooks) as runner:
            runner.emit(changed("notes"))  # sent at 2 s; its answer is held
            for _ in range(3):  # three batches, the last two join the first waiting one
                await trio.sleep(3)
                runner.emit(changed("notes"))
            await trio.sleep(3)
            runner.emit(changed("other"))  # fits: coalescing gave the places back
            await trio.sleep(3)
            receiver.hold.set()
            requests = [await receiver.next() for _ in range(3)]
            await receiver.assert_silent(60)
    # Rooms take turns: other was waiting before notes' first request ended.
    assert [(r.data["room"], r.data["updates"]) for r in requests] == [
        ("notes", 1),
        ("other", 1),
        ("notes", 3),
    ]
    assert webhooks.dropped == 0


async def test_a_dead_endpoint_never_blocks_an_event_and_the_queue_stays_bounded(
    clock: trio.testing.MockClock, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.hold = trio.Event()  # never set: every request hangs until it times out
    webhooks = Webhooks(receiver.url, SECRET, queue_size=10, concurrency=2, timeout=5)
    with trio.fail_after(300):
        async with running(webhooks):
            # Inside an already cancelled scope: one checkpoint would raise Cancelled.
            with trio.CancelScope() as scope:
                scope.cancel()
                for i in range(100):
                    await webhooks.document_changed(changed(f"room{i}"))
                    await webhooks.document_changed(changed(f"room{i}"))  # joins the first
            assert not scope.cancelled_caught
            assert webhooks.dropped == 180  # ten rooms fit: both changes of 90 rooms are dropped
            await trio.sleep(3)  # debounced: two in flight, eight waiting
            assert receiver.in_flight == 2
            for i in range(100, 110):
                await webhooks.document_changed(changed(f"room{i}"))
            assert webhooks.dropped == 188  # two places were free
            await trio.sleep(60)
            await webhooks.document_changed(changed("late"))  # a minute on: logged again
            assert webhooks.dropped == 189
            receiver.hold.set()
    full = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert full == [
        "webhook queue full: 1 events dropped so far",
        "webhook queue full: 189 events dropped so far",
    ]


async def test_closing_sends_the_changes_still_being_debounced(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    webhooks = Webhooks(receiver.url, SECRET)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            runner = HookRunner([webhooks])
            await nursery.start(runner.run)
            start = trio.current_time()
            for room in ("a", "b", "c"):
                runner.emit(changed(room))
            await runner.aclose()
            assert trio.current_time() - start < 1  # not 2 s of debounce
            assert sorted(r.data["room"] for r in receiver.requests) == ["a", "b", "c"]
            nursery.cancel_scope.cancel()


async def test_closing_sends_what_is_left_even_when_the_hook_never_ran(
    clock: trio.testing.MockClock, receiver: Receiver
) -> None:
    webhooks = Webhooks(receiver.url, SECRET, events=EVENT_TYPES)
    await webhooks.connection_opened(OPENED)
    await webhooks.document_changed(changed("notes"))
    with trio.fail_after(60):
        await webhooks.aclose()
    assert [r.payload["type"] for r in receiver.requests] == [CONNECTION_OPENED, ROOM_CHANGED]


async def test_a_raw_secret_from_a_file_signs_for_a_receiver_given_the_same_bytes(
    clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    raw = secrets.token_urlsafe(48)
    path = tmp_path / "webhook-secret"
    path.write_text(raw + "\n")
    receiver = await serve_receiver(nursery, Webhook(raw.encode()))
    webhooks = Webhooks.from_options(receiver.url, path, "room.changed, connection.closed")
    assert webhooks.events == {ROOM_CHANGED, CONNECTION_CLOSED}
    with trio.fail_after(60):
        async with running(webhooks) as runner:
            runner.emit(CLOSED)
            assert (await receiver.next()).payload["type"] == CONNECTION_CLOSED


def test_from_options_reads_a_whsec_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"  {SECRET}\n")
    webhooks = Webhooks.from_options("https://hooks.example/ysync", path)
    assert webhooks.events == {ROOM_CHANGED}
    assert str(webhooks.url) == "https://hooks.example/ysync"


@pytest.mark.parametrize(
    ("url", "secret", "events", "message"),
    [
        ("https://h.example/", None, None, "needs a secret"),
        ("https://h.example/", "missing", None, "cannot read the webhook secret file"),
        ("https://h.example/", "whsec_not*base64", None, "not valid base64"),
        ("https://h.example/", "whsec_" + base64.b64encode(b"k" * 16).decode(), None, "16 bytes"),
        ("https://h.example/", "too short", None, "9 bytes"),
        ("ftp://h.example/", SECRET, None, "http://HOST"),
        ("https:///path", SECRET, None, "http://HOST"),
        ("https://h.example/", SECRET, "room.changed,room.deleted", "room.deleted"),
    ],
)
def test_from_options_explains_mistakes_in_one_line(
    tmp_path: Path, url: str, secret: str | None, events: str | None, message: str
) -> None:
    path = None
    if secret is not None:
        path = tmp_path / "secret"
        if secret != "missing":
            path.write_text(secret)
    with pytest.raises(ValueError, match="webhook") as error:
        Webhooks.from_options(url, path, events)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@requires_node
@pytest.mark.parametrize("raw", [False, True], ids=["whsec", "raw"])
async def test_a_node_receiver_verifies_them_with_the_standardwebhooks_package(raw: bool) -> None:
    secret = secrets.token_urlsafe(48) if raw else SECRET
    with trio.fail_after(30):
        async with webhook_receiver(secret, raw=raw) as receiver:
            webhooks = Webhooks(
                receiver.url,
                secret.encode() if raw else secret,
                events=EVENT_TYPES,
                debounce=0.05,
                max_delay=0.2,
            )
            async with running(webhooks) as runner:
                runner.emit(OPENED)
                runner.emit(changed("notes"))
                runner.emit(CLOSED)
                lines = [await receiver.next() for _ in range(3)]
    assert all(line["verified"] for line in lines), lines
    assert [line["event"]["type"] for line in lines] == [
        CONNECTION_OPENED,
        ROOM_CHANGED,
        CONNECTION_CLOSED,
    ]
    assert lines[1]["event"]["data"]["room"] == "notes"
    assert len({line["id"] for line in lines}) == 3


@requires_node
async def test_a_server_with_real_clients_editing_tells_a_real_endpoint(
    nursery: trio.Nursery,
) -> None:
    """End to end, in real time: y-websocket clients edit a room of a RoomServer; the endpoint
    fails the first change once, receives it again, and reads the document from the HTTP API."""
    receiver = await serve_receiver(nursery, Webhook(SECRET))
    failed_once = False

    def fail_the_first_change(received: Received) -> tuple[int, dict[str, str]]:
        nonlocal failed_once
        if received.payload["type"] == ROOM_CHANGED and not failed_once:
            failed_once = True
            return 500, {}
        return 200, {}

    receiver.respond = fail_the_first_change
    webhooks = Webhooks(
        receiver.url, SECRET, events=EVENT_TYPES, debounce=0.2, max_delay=1.0, retry_delay=0.1
    )
    server = RoomServer(hooks=[webhooks], room_grace_period=0)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(30):
        async with (
            js_client(ws_url(port), "shared", name="a") as a,
            js_client(ws_url(port), "shared", name="b") as b,
        ):
            await a.wait_synced()
            await b.wait_synced()
            await a.insert(0, "hello")
            await b.wait_text("hello")
            await b.insert(5, " world")
            await a.wait_text("hello world")
        requests = [await receiver.next()]
        while sum(r.payload["type"] == CONNECTION_CLOSED for r in requests) < 2:
            requests.append(await receiver.next())
        status, document = await http_get(port, "/api/rooms/shared/json")
    server.shutdown()
    kinds = [r.payload["type"] for r in requests]
    assert kinds[:2] == [CONNECTION_OPENED, CONNECTION_OPENED]
    assert kinds[-2:] == [CONNECTION_CLOSED, CONNECTION_CLOSED]
    changes = requests[2:-2]
    assert {r.payload["type"] for r in changes} == {ROOM_CHANGED}
    # The failed one came again: same id, same body.
    assert changes[0].headers["webhook-id"] == changes[1].headers["webhook-id"]
    assert changes[0].body == changes[1].body
    assert len({r.headers["webhook-id"] for r in changes}) == len(changes) - 1
    assert sum(r.data["updates"] for r in changes[1:]) >= 2  # both edits, perhaps in one
    assert all(r.data["room"] == "shared" for r in requests)
    assert status == 200
    assert json.loads(document) == {"t": "hello world"}
