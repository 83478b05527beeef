"""Helpers for interop tests against real Node.js Yjs code (the scripts in tests/js).

Everything waits on events, never on sleeps: wrap calls in ``trio.fail_after`` in the test.

- ``run_vectors()``: wire test vectors made by yjs / y-protocols / lib0 (tests/js/vectors.mjs).
- ``run_update_corpus()``: yjs updates and state vectors of every kind (tests/js/update_corpus.mjs).
- ``decode_with_js(frames)``: frames made here, decoded by the JS readers (tests/js/decode.mjs).
- ``js_client(url, room)``: a real y-websocket ``WebsocketProvider`` driven over pipes.
- ``reference_server()``: the reference ``@y/websocket-server`` on an ephemeral port.
- ``webhook_receiver(secret)``: an HTTP endpoint verifying webhooks with the npm
  ``standardwebhooks`` package (tests/js/webhook_receiver.mjs).

When node or tests/js/node_modules is missing, ``requires_node`` skips locally but raises at
import under CI (``CI`` set), so CI never silently skips the interop tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio
from ci import requires

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "NODE_DIR",
    "JsClient",
    "JsClientError",
    "JsDecodeError",
    "NodeScriptError",
    "NodeUnavailableError",
    "NodeWebhookReceiver",
    "decode_with_js",
    "decode_with_js_results",
    "js_client",
    "node_available",
    "reference_server",
    "requires_node",
    "run_update_corpus",
    "run_vectors",
    "webhook_receiver",
    "ws_url",
]

NODE_DIR = Path(__file__).parent / "js"

JsonObject = dict[str, Any]

# How long a closing node process gets before it is killed.
_EXIT_GRACE_SECONDS = 5.0


class NodeUnavailableError(RuntimeError):
    """node or the npm packages are missing where the interop tests must run (CI)."""


class NodeScriptError(RuntimeError):
    """A Node.js helper script failed."""


class JsDecodeError(ValueError):
    """decode.mjs could not decode a frame."""


class JsClientError(RuntimeError):
    """A command of the JS client failed, or the client process exited."""


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise NodeUnavailableError("node is not on PATH")
    return node


def _missing_packages() -> list[str]:
    manifest = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))
    return [
        name
        for name in manifest.get("dependencies", {})
        if not (NODE_DIR / "node_modules" / name / "package.json").is_file()
    ]


def node_available() -> bool:
    """True when node is on PATH and tests/js/node_modules holds every dependency."""
    return shutil.which("node") is not None and not _missing_packages()


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH (install Node.js 18 or later)"
    if missing := _missing_packages():
        return f"npm packages missing in {NODE_DIR} ({', '.join(missing)}): run `npm ci` there"
    return None


requires_node = requires(_missing(), "Node.js interop tests")


def ws_url(port: int) -> str:
    """The base URL a JS client needs for a server on 127.0.0.1:port."""
    return f"ws://127.0.0.1:{port}"


async def _run_script(script: str, *args: str, stdin: bytes = b"") -> bytes:
    result = await trio.run_process(
        [_node(), script, *args],
        cwd=NODE_DIR,
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace")
        raise NodeScriptError(f"node {script} exited with {result.returncode}:\n{stderr}")
    return result.stdout


async def run_vectors() -> JsonObject:
    """Run vectors.mjs: {"generator": {...}, "vectors": [...], "docs": [...]}."""
    out: JsonObject = json.loads(await _run_script("vectors.mjs"))
    return out


async def run_update_corpus() -> JsonObject:
    """Run update_corpus.mjs: {"generator": {...}, "updates": [...], "state_vectors": [...]}."""
    out: JsonObject = json.loads(await _run_script("update_corpus.mjs"))
    return out


async def decode_with_js_results(frames: list[bytes]) -> list[JsonObject]:
    """Decode each frame with decode.mjs: {"messages": [...]} plus "error" if it failed."""
    request = "".join(json.dumps({"hex": frame.hex()}) + "\n" for frame in frames)
    out = await _run_script("decode.mjs", stdin=request.encode())
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(results) != len(frames):
        raise NodeScriptError(f"decode.mjs answered {len(results)} lines for {len(frames)} frames")
    return results


async def decode_with_js(frames: list[bytes]) -> list[list[JsonObject]]:
    """Decode each frame with the JS readers; raise JsDecodeError if any frame is malformed."""
    decoded = []
    for frame, result in zip(frames, await decode_with_js_results(frames), strict=True):
        if "error" in result:
            raise JsDecodeError(f"JS could not decode {frame.hex()}: {result['error']}")
        decoded.append(result["messages"])
    return decoded


class _Pending:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: JsonObject | None = None
        self.error: str | None = None


class JsClient:
    """A running client.mjs process. Use ``js_client()`` to make one.

    State mirrored from its events: ``text``, ``awareness`` (client ID -> state, own included),
    ``client_id`` (the Y.Doc client ID), ``status``, ``synced``; every event
    is recorded in ``events`` in arrival order.
    """

    def __init__(self, process: trio.Process, name: str) -> None:
        self.name = name
        self.events: list[JsonObject] = []
        self.text = ""
        self.awareness: dict[int, Any] = {}
        self.client_id: int | None = None
        self.status: str | None = None
        self.synced = False
        self.exited = False
        self._process = process
        self._send_lock = trio.Lock()
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._changed = trio.Event()  # replaced after every event: a broadcast "something happened"

    # -- commands (each waits for the JS side to acknowledge) ------------------------------
    async def insert(self, index: int, text: str) -> str:
        """Insert into the text "t"; returns the text afterwards."""
        return str((await self._request("insert", index=index, text=text))["text"])

    async def insert_big(self, nbytes: int) -> None:
        """Append one insert of ``nbytes`` ASCII characters."""
        await self._request("insert_big", bytes=nbytes)

    async def get_text(self) -> str:
        return str((await self._request("get_text"))["text"])

    async def set_awareness(self, state: JsonObject) -> None:
        await self._request("set_awareness", state=state)

    async def clear_awareness(self) -> None:
        await self._request("clear_awareness")

    async def wait_text(self, text: str) -> None:
        """Return once the JS document's text equals ``text``."""
        await self._request("wait_text", text=text)

    async def wait_awareness_count(self, count: int) -> dict[int, Any]:
        """Return the awareness states once there are exactly ``count`` (own included)."""
        reply = await self._request("wait_awareness_count", count=count)
        return {int(k): v for k, v in reply["states"].items()}

    async def disconnect(self) -> None:
        await self._request("disconnect")

    async def connect(self) -> None:
        await self._request("connect")

    # -- waiting on events -----------------------------------------------------------------
    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, re-checked after every event."""
        while not condition():
            if self.exited:
                raise JsClientError(
                    f"JS client {self.name} exited; last events: {self.events[-5:]}"
                )
            await self._changed.wait()

    async def wait_synced(self) -> None:
        """Wait until the provider is synced (its 'sync' event since the last disconnect)."""
        await self.wait_until(lambda: self.synced)

    async def wait_event(
        self, predicate: Callable[[JsonObject], bool], *, since: int | None = None
    ) -> JsonObject:
        """Return the first event matching ``predicate`` from index ``since`` of ``events`` on
        (default: only events arriving after this call). To not miss an event that a command
        triggers, take ``mark = len(client.events)`` before the command and pass ``since=mark``.
        """
        seen = len(self.events) if since is None else since
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            await self._wait_for_more(seen)

    async def _wait_for_more(self, seen: int) -> None:
        await self.wait_until(lambda: len(self.events) > seen)

    # -- plumbing --------------------------------------------------------------------------
    async def _send(self, message: JsonObject) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        async with self._send_lock:
            await stdin.send_all((json.dumps(message) + "\n").encode())

    async def _request(self, cmd: str, **fields: Any) -> JsonObject:
        self._next_id += 1
        request_id = self._next_id
        pending = self._pending[request_id] = _Pending()
        try:
            if self.exited:
                raise JsClientError(f"JS client {self.name} has exited")
            await self._send({"cmd": cmd, "id": request_id, **fields})
            await pending.done.wait()
        finally:
            del self._pending[request_id]
        if pending.reply is None:
            raise JsClientError(f"{cmd} failed in JS client {self.name}: {pending.error}")
        return pending.reply

    def _dispatch(self, event: JsonObject) -> None:
        self.events.append(event)
        kind = event.get("event")
        if kind == "hello":
            self.client_id = event["client_id"]
        elif kind == "status":
            self.status = event["status"]
            if self.status == "disconnected":
                self.synced = False
        elif kind == "synced":
            self.synced = True
        elif kind == "text":
            self.text = event["text"]
        elif kind == "awareness":
            self.client_id = event["self"]
            self.awareness = {int(k): v for k, v in event["states"].items()}
        elif kind in ("result", "error") and event.get("id") in self._pending:
            pending = self._pending[event["id"]]
            if kind == "result":
                pending.reply = event
            else:
                pending.error = event.get("message")
            pending.done.set()
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def _read_events(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        buffer = bytearray()
        try:
            async for chunk in stdout:
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if line.strip():
                        try:
                            self._dispatch(json.loads(line))
                        except json.JSONDecodeError:
                            self._dispatch({"event": "error", "message": f"not JSON: {line!r}"})
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            # Wake every waiter: nothing more will arrive.
            self.exited = True
            for pending in self._pending.values():
                pending.error = pending.error or "the JS client process exited"
                pending.done.set()
            self._notify()

    async def _close(self) -> None:
        """Ask the client to close (it destroys the provider and exits); kill it if it hangs."""
        if not self.exited:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._send({"cmd": "close"})
        await _stop_process(self._process)


async def _stop_process(process: trio.Process) -> None:
    """Close stdin (our scripts exit on EOF), wait a little, then kill."""
    if process.stdin is not None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await process.stdin.aclose()
    with trio.move_on_after(_EXIT_GRACE_SECONDS):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


async def _close_streams(process: trio.Process) -> None:
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            await stream.aclose()


def _raise_single(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the only exception of a group from a hidden nursery, so callers can
    ``pytest.raises`` or catch it as if there were no nursery."""
    if len(group.exceptions) == 1:
        exc = group.exceptions[0]
        context = exc.__context__
        try:
            raise exc
        finally:
            exc.__context__ = context


@asynccontextmanager
async def js_client(
    url: str, room: str, *, name: str | None = None, params: dict[str, str] | None = None
) -> AsyncIterator[JsClient]:
    """Run a y-websocket client connected to ``url``/``room``; closed on exit.

    ``params`` are sent as URL parameters on every connection (y-websocket's ``params``
    option, for example ``{"token": ...}``). stderr of the node process is inherited, so pytest
    captures and shows it on failure.
    """
    args = [_node(), "client.mjs", url, room]
    if name is not None:
        args += ["--name", name]
    if params is not None:
        args += ["--params", json.dumps(params)]
    process = await trio.lowlevel.open_process(
        args, cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    client = JsClient(process, name or "client")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read_events)
            try:
                await client.wait_until(lambda: client.client_id is not None)  # "hello"
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _raise_single(group)
        raise
    finally:
        with trio.CancelScope(shield=True):
            await _stop_process(process)  # a no-op unless something above failed half-way
            await _close_streams(process)


@asynccontextmanager
async def reference_server(port: int = 0) -> AsyncIterator[int]:
    """Run the reference y-websocket server (in memory) on 127.0.0.1:``port`` (0: any free
    port); yields the port."""
    process = await trio.lowlevel.open_process(
        [_node(), "ref_server.mjs", str(port)],
        cwd=NODE_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        stdout = process.stdout
        assert stdout is not None
        line = bytearray()
        while not line.endswith(b"\n"):
            chunk = await stdout.receive_some()
            if not chunk:
                code = await process.wait()
                raise NodeScriptError(f"ref_server.mjs exited with {code} before listening")
            line += chunk
        yield int(json.loads(line)["port"])
    finally:
        with trio.CancelScope(shield=True):
            await _stop_process(process)
            await _close_streams(process)


class NodeWebhookReceiver:
    """A running webhook_receiver.mjs: ``url`` to post to, :meth:`next` for what it received."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self._stdout = process.stdout
        self._buffer = bytearray()
        self.url = ""

    async def next(self) -> JsonObject:
        """The next line it printed: ``{"verified": true, "id": ..., "event": ...}`` or
        ``{"verified": false, "error": ...}``."""
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = await self._stdout.receive_some()
            if not chunk:
                raise NodeScriptError("webhook_receiver.mjs exited")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        result: JsonObject = json.loads(line)
        return result


@asynccontextmanager
async def webhook_receiver(secret: str, *, raw: bool = False) -> AsyncIterator[NodeWebhookReceiver]:
    """Run a Node webhook endpoint on 127.0.0.1 that verifies with ``secret`` (``whsec_...``, or
    with ``raw`` the key's characters as they are)."""
    process = await trio.lowlevel.open_process(
        [_node(), "webhook_receiver.mjs", *(["raw"] if raw else [])],
        cwd=NODE_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "WEBHOOK_SECRET": secret},
    )
    try:
        receiver = NodeWebhookReceiver(process)
        receiver.url = f"http://127.0.0.1:{(await receiver.next())['port']}/hooks"
        yield receiver
    finally:
        with trio.CancelScope(shield=True):
            await _stop_process(process)
            await _close_streams(process)
