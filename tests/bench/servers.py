"""The servers under test: how to start each one fresh, find its port, and stop it."""

from __future__ import annotations

import importlib.util
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
JS_DIR = HERE / "js"

_PORT_PATTERNS = (
    re.compile(r'"port"\s*:\s*(\d+)'),
    re.compile(r"serving ws://[^\s]+?:(\d+)/"),
)


class ServerUnavailable(Exception):
    """The server is not installed or not supported here (reported, not an error)."""


class ServerFailed(Exception):
    """The server did not start, or crashed."""


@dataclass(frozen=True)
class ServerSpec:
    """A server under test."""

    #: Short name used on the command line and in the results.
    name: str
    #: What the tables call it.
    label: str
    #: Wire dialect the load generator speaks to it: ``y-websocket`` or ``hocuspocus``.
    dialect: str
    #: The command line, given a scratch directory; raises :class:`ServerUnavailable`.
    command: Callable[[Path], list[str]]


def _trio_ysync(store: str, *options: str, src: Path | None = None) -> Callable[[Path], list[str]]:
    """``trio-ysync serve`` with ``store``; from the source tree ``src`` instead of the installed
    package when given (the ``--baseline`` server)."""

    def command(workdir: Path) -> list[str]:
        if src is None and importlib.util.find_spec("trio_ysync") is None:
            raise ServerUnavailable("trio_ysync is not installed")
        spec = store
        if store == "sqlite":
            db = workdir / "trio-ysync.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            spec = str(db)
        if src is None:
            program = ["-m", "trio_ysync"]
        else:
            program = [
                "-c",
                f"import sys; sys.path.insert(0, {str(src)!r}); "
                "from trio_ysync.cli import main; sys.exit(main())",
            ]
        return [
            sys.executable,
            *program,
            "--log-level",
            "WARNING",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--store",
            spec,
            *options,
        ]

    return command


def _pycrdt(worker: str) -> Callable[[Path], list[str]]:
    def command(workdir: Path) -> list[str]:
        for module in ("pycrdt.websocket", "hypercorn"):
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                raise ServerUnavailable(f"{module} is not installed")
        return [sys.executable, str(HERE / "pycrdt_server.py"), "--worker", worker]

    return command


def _node(script: str, package: str) -> Callable[[Path], list[str]]:
    def command(workdir: Path) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise ServerUnavailable("node is not installed")
        if not (JS_DIR / "node_modules" / package / "package.json").exists():
            raise ServerUnavailable(f"npm package {package} is not installed")
        return [node, str(JS_DIR / script)]

    return command


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("trio-memory", "trio-ysync (memory)", "y-websocket", _trio_ysync("memory")),
        ServerSpec("trio-sqlite", "trio-ysync (SQLite)", "y-websocket", _trio_ysync("sqlite")),
        ServerSpec(
            "trio-metrics",
            "trio-ysync (memory, --metrics)",
            "y-websocket",
            _trio_ysync("memory", "--metrics"),
        ),
        ServerSpec(
            "trio-sqlite-early",
            "trio-ysync (SQLite, --broadcast-before-commit)",
            "y-websocket",
            _trio_ysync("sqlite", "--broadcast-before-commit"),
        ),
        ServerSpec("pycrdt-trio", "pycrdt-websocket (trio)", "y-websocket", _pycrdt("trio")),
        ServerSpec(
            "pycrdt-asyncio", "pycrdt-websocket (asyncio)", "y-websocket", _pycrdt("asyncio")
        ),
        ServerSpec(
            "ref",
            "@y/websocket-server",
            "y-websocket",
            _node("ref_server.mjs", "@y/websocket-server"),
        ),
        ServerSpec(
            "hocuspocus",
            "Hocuspocus",
            "hocuspocus",
            _node("hocuspocus_server.mjs", "@hocuspocus/server"),
        ),
    )
}

#: What ``--servers`` defaults to (the others are there for experiments).
DEFAULT_SERVERS = [
    "trio-memory",
    "trio-sqlite",
    "pycrdt-trio",
    "pycrdt-asyncio",
    "ref",
    "hocuspocus",
]

#: The server the ratios are about.
SUBJECT = "trio-memory"
#: The name of the ``--baseline`` server (an earlier revision of trio-ysync, memory store).
BASELINE = "baseline"


def register_baseline(revision: str, src: Path) -> None:
    """Add the server ``baseline``: trio-ysync at ``revision`` (its ``src`` directory), memory
    store, measured beside the current code in the same run."""
    SERVERS[BASELINE] = ServerSpec(
        BASELINE, f"trio-ysync {revision} (memory)", "y-websocket", _trio_ysync("memory", src=src)
    )


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins a child (and every thread it starts) to one CPU."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    chosen = available[cpu % len(available)]

    def pin() -> None:
        os.sched_setaffinity(0, {chosen})

    return pin


class RunningServer:
    """A started server process: its port and PID, and how to stop it."""

    def __init__(self, spec: ServerSpec, workdir: Path, cpu: int | None) -> None:
        self.spec = spec
        self.log_path = workdir / f"{spec.name}.log"
        command = spec.command(workdir)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            preexec_fn=pin_to(cpu),
        )
        self.pid = self.proc.pid
        self.port = self._wait_for_port(timeout=30.0)

    def _wait_for_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                seen += chunk
                for pattern in _PORT_PATTERNS:
                    match = pattern.search(seen.decode(errors="replace"))
                    if match:
                        return int(match.group(1))
            elif self.proc.poll() is not None:
                break
        self.stop()
        raise ServerFailed(
            f"did not start (exit code {self.proc.returncode}): {self.log_tail()}"
            if self.proc.returncode is not None
            else f"printed no port within {timeout:.0f}s: {self.log_tail()}"
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the most memory the process has held."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", status)
        return int(match.group(1)) if match else None

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])[-600:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()
