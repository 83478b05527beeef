"""Honest clients: two providers per room keep editing while the attack runs; each edit must
reach the other within a bounded time, fresh joiners must get everything, and nothing of
another room may ever show up."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pycrdt
import trio

from trio_ysync.protocol import Decoder
from trio_ysync.provider import ConnectionStatus, Provider, open_provider

from .ledger import Ledger, find_leak

TEXT = "honest"


def clocks(doc: pycrdt.Doc) -> dict[int, int]:
    """The document's state vector: the next clock of every client it has seen."""
    decoder = Decoder(bytes(doc.get_state()))
    count = decoder.read_var_uint()
    return {decoder.read_var_uint(): decoder.read_var_uint() for _ in range(count)}


def covers(doc: pycrdt.Doc, wanted: dict[int, int]) -> bool:
    have = clocks(doc)
    return all(have.get(client, 0) >= clock for client, clock in wanted.items())


def text_of(doc: pycrdt.Doc) -> str:
    return str(doc.get(TEXT, type=pycrdt.Text))


async def wait_until(providers: list[Provider], condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, re-checking after each change of the providers'
    documents or awareness."""
    changed = trio.Event()

    def wake(*args: object) -> None:
        changed.set()

    stops = [provider.document.observe(wake) for provider in providers]
    stops += [provider.awareness.observe(wake) for provider in providers]
    try:
        while not condition():
            await changed.wait()
            changed = trio.Event()
    finally:
        for stop in stops:
            stop()


def is_panic(exc: BaseException) -> bool:
    """pyo3's PanicException (a Rust panic in pycrdt) derives from BaseException."""
    return type(exc).__name__ == "PanicException"


class HonestRoom:
    """Two honest providers editing one room, checked against each other and fresh joiners."""

    def __init__(
        self,
        room: str,
        rng: random.Random,
        ledger: Ledger,
        port: int,
        secrets: dict[str, bytes],
        *,
        timeout: float,
        join_interval: float,
    ) -> None:
        self.room = room
        self.rng = rng
        self.ledger = ledger
        self.url = f"ws://127.0.0.1:{port}"
        self.secrets = secrets
        self.secret = secrets[room].decode()
        self.timeout = timeout
        self.join_interval = join_interval
        self.edits = 0
        self.joins = 0

    async def fail(self, message: str) -> None:
        await self.ledger.honest_failure(f"room {self.room!r}: {message}")

    async def within_timeout(
        self, providers: list[Provider], condition: Callable[[], bool]
    ) -> bool:
        """Whether ``condition()`` comes to hold within the timeout."""
        with trio.move_on_after(self.timeout):
            await wait_until(providers, condition)
            return True
        return False

    def new_doc(self) -> pycrdt.Doc:
        return pycrdt.Doc(client_id=self.rng.randrange(1, 2**32))

    @asynccontextmanager
    async def provider(self, doc: pycrdt.Doc, name: str) -> AsyncIterator[Provider]:
        async with open_provider(self.url, doc, room=self.room) as provider:
            provider.awareness.set_local_state({"user": name, "secret": self.secret})
            yield provider

    async def run(
        self,
        attack_over: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Edit until ``attack_over``, then check that everyone converged."""
        started = False

        def ready() -> None:
            nonlocal started
            started = True
            task_status.started()

        try:
            await self._run(attack_over, ready)
        except Exception as exc:
            await self.fail(f"an honest client failed: {exc!r}")
        except BaseException as exc:
            if not is_panic(exc):
                raise
            await self.fail(f"an honest client panicked: {exc!r}")
        finally:
            if not started:
                task_status.started()

    async def _run(self, attack_over: trio.Event, ready: Callable[[], None]) -> None:
        docs = [self.new_doc(), self.new_doc()]
        async with (
            self.provider(docs[0], "honest-a") as first,
            self.provider(docs[1], "honest-b") as second,
            trio.open_nursery() as nursery,
        ):
            providers = [first, second]
            for provider in providers:
                with trio.move_on_after(self.timeout) as scope:
                    await provider.wait_synced()
                if scope.cancelled_caught:
                    await self.fail(f"an honest client did not sync within {self.timeout} s")
            for provider in providers:
                nursery.start_soon(self._watch_connection, provider)
            ready()
            next_join = trio.current_time() + self.join_interval
            while not attack_over.is_set():
                await self._edit(docs, providers)
                if trio.current_time() >= next_join:
                    await self._check_joiner(docs)
                    next_join = trio.current_time() + self.join_interval
                await trio.sleep(self.rng.uniform(0.01, 0.1))
            # The attack is over: one more edit each way, then everyone must agree.
            await self._edit(docs, providers)
            await self._edit(docs, providers)
            await self._check_converged(docs, providers)
            nursery.cancel_scope.cancel()

    async def _watch_connection(self, provider: Provider) -> None:
        async for status in provider.status_changes():
            if status is ConnectionStatus.DISCONNECTED:
                await self.fail(f"an honest client was disconnected (close: {provider.last_close})")

    async def _edit(self, docs: list[pycrdt.Doc], providers: list[Provider]) -> None:
        """One provider inserts a token; the other must receive it in time."""
        writer = self.edits % 2
        doc, other = docs[writer], docs[1 - writer]
        text = doc.get(TEXT, type=pycrdt.Text)
        text.insert(self.rng.randrange(len(text) + 1), f"[{self.secret}:{self.edits}]")
        self.edits += 1
        wanted = {doc.client_id: clocks(doc)[doc.client_id]}
        if not await self.within_timeout(providers, lambda: covers(other, wanted)):
            await self.fail(
                f"edit {self.edits - 1} did not reach the other client in {self.timeout} s"
            )
        for index, checked in enumerate(providers):
            self._check_leaks(docs[index], checked, f"honest client {index}")

    def _check_leaks(self, doc: pycrdt.Doc, provider: Provider, who: str) -> None:
        data = bytes(doc.get_update()) + json.dumps(provider.awareness.states).encode()
        leaked = find_leak(self.room, data, self.secrets)
        if leaked is not None:
            self.ledger.leak(self.room, leaked, who)

    async def _check_joiner(self, docs: list[pycrdt.Doc]) -> pycrdt.Doc | None:
        """A fresh client joins: it must get every edit the honest clients already share."""
        wanted: dict[int, int] = {}
        for doc in docs:
            wanted[doc.client_id] = min(clocks(other).get(doc.client_id, 0) for other in docs)
        joiner = self.new_doc()
        self.joins += 1
        async with self.provider(joiner, f"joiner-{self.joins}") as provider:
            with trio.move_on_after(self.timeout) as scope:
                await provider.wait_synced()
            if scope.cancelled_caught:
                await self.fail(f"fresh joiner {self.joins} did not sync within {self.timeout} s")
                return None
            if not covers(joiner, wanted):
                await self.fail(
                    f"fresh joiner {self.joins} lacks honest edits: has {clocks(joiner)}, "
                    f"wanted {wanted}"
                )
            honest_ids = {doc.client_id for doc in docs}
            if not await self.within_timeout(
                [provider], lambda: honest_ids <= provider.awareness.states.keys()
            ):
                await self.fail(
                    f"fresh joiner {self.joins} did not see the honest clients' presence"
                )
            self._check_leaks(joiner, provider, f"fresh joiner {self.joins}")
        return joiner

    async def _check_converged(self, docs: list[pycrdt.Doc], providers: list[Provider]) -> None:
        def agree() -> bool:
            return text_of(docs[0]) == text_of(docs[1]) and all(
                covers(doc, {d.client_id: clocks(d)[d.client_id] for d in docs}) for doc in docs
            )

        if not await self.within_timeout(providers, agree):
            await self.fail("the honest clients did not converge after the attack")
            return
        joiner = await self._check_joiner(docs)
        if joiner is not None and text_of(joiner) != text_of(docs[0]):
            await self.fail(
                "a fresh joiner's text differs from the honest clients' after the attack"
            )
