"""The servers under test: how to start each one fresh, find its port, and stop it."""

from __future__ import annotations

import importlib.util
import os
import re
import select
import shutil
import signal
import socket
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
    #: The command line, given a scratch directory, with ``{port}`` where the port goes (0 at
    #: first, the same port again on a restart); raises :class:`ServerUnavailable`.
    command: Callable[[Path], list[str]]
    #: Above 0: a cluster of this many processes of ``command`` (with ``{redis}`` replaced by
    #: the URL of a redis-server started with them); clients are spread over them.
    cluster: int = 0
    #: The workloads it takes part in (``None``: all).
    workloads: frozenset[str] | None = None

    def runs(self, workload: str) -> bool:
        return self.workloads is None or workload in self.workloads


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
            "{port}",
            "--store",
            spec,
            # The load generator's writers are machines: at saturation each sends a few
            # thousand updates a second, past the default limit meant for people typing. The
            # limiter still runs (and costs what it costs); it just does not cut them off.
            "--max-messages-per-second",
            "100000",
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
        script = str(HERE / "pycrdt_server.py")
        return [sys.executable, script, "--worker", worker, "--port", "{port}"]

    return command


def _node(script: str, package: str) -> Callable[[Path], list[str]]:
    def command(workdir: Path) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise ServerUnavailable("node is not installed")
        if not (JS_DIR / "node_modules" / package / "package.json").exists():
            raise ServerUnavailable(f"npm package {package} is not installed")
        return [node, str(JS_DIR / script), "{port}"]

    return command


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("trio-memory", "trio-ysync (memory)", "y-websocket", _trio_ysync("memory")),
        ServerSpec("trio-sqlite", "trio-ysync (SQLite)", "y-websocket", _trio_ysync("sqlite")),
        ServerSpec(
            "trio-cluster",
            "trio-ysync (2 servers + Redis, SQLite)",
            "y-websocket",
            _trio_ysync("sqlite", "--redis", "{redis}"),
            cluster=2,
            workloads=frozenset({"fanout"}),
        ),
        ServerSpec(
            "trio-metrics",
            "trio-ysync (memory, --metrics)",
            "y-websocket",
            _trio_ysync("memory", "--metrics"),
        ),
        ServerSpec(
            "trio-presence-off",
            "trio-ysync (memory, --presence-interval 0)",
            "y-websocket",
            _trio_ysync("memory", "--presence-interval", "0"),
            workloads=frozenset({"presence"}),
        ),
        ServerSpec(
            "trio-echo",
            "trio-ysync (memory, --echo-updates)",
            "y-websocket",
            _trio_ysync("memory", "--echo-updates"),
            workloads=frozenset({"fanout"}),
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
    "trio-presence-off",
    "trio-echo",
    "trio-cluster",
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
    """A started server (one process, or a cluster of processes and their redis-server): its
    ports and PIDs, and how to stop it."""

    def __init__(self, spec: ServerSpec, workdir: Path, cpu: int | None) -> None:
        self.spec = spec
        self.log_path = workdir / f"{spec.name}.log"
        self._log = self.log_path.open("ab")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cpu = cpu
        self.redis: RedisProcess | None = None
        self.ports: list[int] = []
        try:
            self.command = spec.command(workdir)
            if spec.cluster:
                self.redis = RedisProcess(workdir / "redis", cpu)
                self.command = [part.replace("{redis}", self.redis.url) for part in self.command]
            for _ in range(max(1, spec.cluster)):
                self._start(0)
        except BaseException:
            self.stop()
            raise

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.procs[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return self.ports[0]

    def _start(self, port: int) -> None:
        proc = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in self.command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            preexec_fn=pin_to(self.cpu),
        )
        self.procs.append(proc)
        self.ports.append(self._wait_for_port(proc, timeout=30.0))

    def restart(self) -> None:
        """Stop the server as an operator would (SIGTERM) and start it again on the same port,
        with what it stored (a single process only)."""
        if len(self.procs) != 1:
            raise ServerFailed("a cluster is not restarted")
        port = self.port
        self._stop_processes()
        self.procs.clear()
        self.ports.clear()
        self._start(port)

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}" for port in self.ports]

    @property
    def pids(self) -> list[int]:
        """Every process of the server (its redis-server too): their CPU time is its cost."""
        redis = [self.redis.proc.pid] if self.redis is not None else []
        return [proc.pid for proc in self.procs] + redis

    def _wait_for_port(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        fd = proc.stdout.fileno()
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
            elif proc.poll() is not None:
                break
        raise ServerFailed(
            f"did not start (exit code {proc.returncode}): {self.log_tail()}"
            if proc.poll() is not None
            else f"printed no port within {timeout:.0f}s: {self.log_tail()}"
        )

    @property
    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs) and (
            self.redis is None or self.redis.proc.poll() is None
        )

    @property
    def returncode(self) -> int | None:
        codes = [proc.poll() for proc in self.procs]
        return next((code for code in codes if code is not None), None)

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the most memory the processes have held (summed)."""
        total = 0
        for pid in self.pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return None
            match = re.search(r"VmHWM:\s+(\d+)\s+kB", status)
            if match is None:
                return None
            total += int(match.group(1))
        return total

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])[-600:]

    def stop(self) -> None:
        self._stop_processes()
        if self.redis is not None:
            self.redis.stop()
        self._log.close()

    def _stop_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


class RedisProcess:
    """A redis-server for a cluster under test: AOF on, fsync once a second (Redis's default
    with AOF, and the setting that matches SQLite without --fsync)."""

    def __init__(self, directory: Path, cpu: int | None) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(binary, os.X_OK):
            raise ServerUnavailable("redis-server is not installed (apt-get install redis-server)")
        try:
            import coredis  # noqa: F401  (INFO commandstats is read with it)
        except ImportError as exc:
            raise ServerUnavailable("coredis is not installed") from exc
        shutil.rmtree(directory, ignore_errors=True)  # no stream of an earlier run
        directory.mkdir(parents=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        log = directory / "redis.log"
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(directory),
            "logfile": str(log),
            "save": "",
            "appendonly": "yes",
            "appendfsync": "everysec",
            "daemonize": "no",
        }
        self.proc = subprocess.Popen(
            [binary, *(part for name, value in options.items() for part in (f"--{name}", value))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=pin_to(cpu),
        )
        deadline = time.monotonic() + 15
        while b"Ready to accept connections" not in (log.read_bytes() if log.exists() else b""):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"redis-server did not start: {log.read_text()[-400:]}")
            time.sleep(0.05)

    def command_calls(self, *, reset: bool = False) -> dict[str, int]:
        """Calls per command since the last reset (``INFO commandstats``); then reset."""
        import coredis
        import trio

        async def ask() -> dict[str, int]:
            async with coredis.Redis.from_url(self.url) as client:
                info = await client.info("commandstats")
                if reset:
                    await client.config_resetstat()
            calls = {}
            for key, value in info.items():
                if key.startswith("cmdstat_") and isinstance(value, dict):
                    calls[key.removeprefix("cmdstat_")] = int(value["calls"])
            return calls

        return trio.run(ask)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
