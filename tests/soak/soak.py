"""Soak: a live ``trio-ysync serve`` under steady y-websocket traffic, its memory sampled.

    python tests/soak/soak.py --minutes 3                   (what ``nox -s soak`` runs)
    python tests/soak/soak.py --minutes 60 --peer reference (the acceptance run)
    python tests/soak/soak.py --minutes 5 --trace 60        (server memory dumps)

Real ``yjs`` + ``y-websocket`` clients (``tests/js/soak.mjs``, one Node process per server)
join R rooms x C clients, type a few characters about every 3 s and move their cursor every
2 s; every 30 s one client per room leaves and a new one joins; every 2 s a short-lived client
opens a new room, writes, and leaves after a second client has read its text back.
``--peer reference`` runs ``@y/websocket-server`` beside it under the same traffic.

Every few seconds the servers' RSS (VmRSS) and open file descriptors are sampled. Halfway and at
the end the documents are snapshotted; their own memory (``doc_memory.py``: the same rooms held
as pycrdt documents in a fresh process) is what the server's second-half growth is judged
against: at most the documents' growth plus 10 %, and at most the reference server's growth.
At the end traffic stops and convergence is checked (all clients of a room hold the same text,
and a fresh client joining gets it); then, once the rooms had time to unload, the servers'
descriptors must be back where they started.

Prints a table per server and writes every sample to ``--json``. The exit status is non-zero
when a correctness check fails (divergence, a failed short-lived room or join, a crash,
descriptors that do not come back), and with ``--check-growth`` also when a growth rule fails.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
JS_DIR = ROOT / "tests" / "js"
_PORT = re.compile(r'"port"\s*:\s*(\d+)|serving ws://[^\s]+?:(\d+)/')

#: Allowed excess of a server's second-half RSS growth over the documents' own growth.
GROWTH_TOLERANCE = 0.10
#: How long a room of trio-ysync stays loaded after its last client left (serve's default).
ROOM_GRACE_PERIOD = 10.0


class SoakError(Exception):
    """A process of the soak did not start, crashed or did not answer in time."""


@dataclass
class Sample:
    """One reading of a server process."""

    t: float
    rss_kib: int
    fds: int
    #: CPU time the process has used (user + system), seconds.
    cpu_s: float


@dataclass
class Server:
    """A server under soak and what was measured about it."""

    name: str
    label: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    samples: list[Sample] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    docs: dict[str, Any] = field(default_factory=dict)
    idle: Sample | None = None
    before: Sample | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def sample(self, t: float) -> Sample:
        if self.process.poll() is not None:
            raise SoakError(f"{self.label} exited with {self.process.returncode}: {self.tail()}")
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+)\s+kB", status)
        assert match is not None
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        utime, stime = stat[stat.rindex(")") + 2 :].split()[11:13]
        cpu = (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        return Sample(round(t, 1), int(match.group(1)), fds, cpu)

    def tail(self, lines: int = 8) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        _stop(self.process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


def _start(
    name: str, label: str, command: list[str], workdir: Path, env: dict[str, str] | None = None
) -> Server:
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=workdir, env=env
        )
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        match = _PORT.search(line.decode(errors="replace"))
        if match:
            port = int(match.group(1) or match.group(2))
            return Server(name, label, process, port, log_path)
    _stop(process)
    raise SoakError(f"{label} did not start: {seen!r} {log_path.read_text(errors='replace')}")


def start_trio_ysync(args: argparse.Namespace, workdir: Path) -> Server:
    """``trio-ysync serve`` on a free port (with memory dumps with ``--trace``)."""
    store = "memory"
    if args.store == "sqlite":
        database = workdir / "soak.db"
        for suffix in ("", "-wal", "-shm"):  # a kept --workdir: start from an empty store
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        store = str(database)
    cli = ["serve", "--host", "127.0.0.1", "--port", "0", "--store", store]
    if args.trace:
        trace_dir = workdir / "trace"
        command = [
            sys.executable,
            str(HERE / "traced_serve.py"),
            str(trace_dir),
            str(args.trace),
            str(args.trace_frames),
        ]
        print(f"memory dumps every {args.trace:g} s go to {trace_dir}", flush=True)
    else:
        command = [sys.executable, "-m", "trio_ysync"]
    label = f"trio-ysync ({'memory' if args.store == 'memory' else 'SQLite'})"
    return _start("trio-ysync", label, [*command, *cli], workdir)


def start_reference(workdir: Path) -> Server:
    """``@y/websocket-server`` (in memory) on a free port."""
    node = _node()
    return _start(
        "reference", "@y/websocket-server", [node, str(JS_DIR / "ref_server.mjs"), "0"], workdir
    )


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise SoakError("node is not on PATH")
    if not (JS_DIR / "node_modules" / "y-websocket" / "package.json").is_file():
        raise SoakError(f"the npm packages are missing: run `npm ci` in {JS_DIR}")
    return node


class Driver:
    """``tests/js/soak.mjs``: the clients of one server, talked to over JSON lines."""

    def __init__(self, server: Server, args: argparse.Namespace, workdir: Path) -> None:
        self.server = server
        rooms = [f"soak-{i}" for i in range(args.rooms)]
        config = {
            "url": f"ws://127.0.0.1:{server.port}",
            "rooms": rooms,
            "clients": args.clients,
            "type_every": args.type_every,
            "cursor_every": args.cursor_every,
            "churn_every": args.churn_every,
            "ephemeral_every": args.ephemeral_every,
            "ephemeral_prefix": "short",
            "seed": args.seed,
            # Joining, the traffic, convergence: the hard deadline never ends a healthy run.
            "time_limit": args.minutes * 60 + 600,
        }
        self._log = (workdir / f"clients-{server.name}.log").open("ab")
        self.process = subprocess.Popen(
            [_node(), str(JS_DIR / "soak.mjs"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=JS_DIR,
        )
        self.stats: dict[str, Any] = {}
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self._events.put(json.loads(line))
        self._events.put(None)

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()

    def poll_stats(self) -> None:
        """Take the latest periodic stats without waiting."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event is None:
                self._events.put(None)
                return
            if event.get("event") == "stats":
                self.stats = event

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next event of ``kind`` (stats seen meanwhile are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SoakError(f"the clients of {self.server.label} sent no {kind!r}") from None
            if event is None:
                self._events.put(None)
                raise SoakError(
                    f"the clients of {self.server.label} exited ({self.process.poll()}) "
                    f"before {kind!r}"
                )
            if event.get("event") == "stats":
                self.stats = event
            if event.get("event") == kind:
                return event

    def close(self) -> None:
        _stop(self.process)
        self._log.close()


def measure_documents(states: Path) -> dict[str, Any]:
    """The memory of the rooms in ``states`` held as pycrdt documents in a fresh process."""
    out = subprocess.run(
        [sys.executable, str(HERE / "doc_memory.py"), str(states)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


# -- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> list[Server]:
    """Start the servers and their clients, sample until the end, check, measure."""
    servers: list[Server] = []
    drivers: list[Driver] = []
    try:
        servers.append(start_trio_ysync(args, workdir))
        if args.peer == "reference":
            servers.append(start_reference(workdir))
        for server in servers:
            server.before = server.sample(0)
        drivers = [Driver(server, args, workdir) for server in servers]
        for driver in drivers:
            driver.wait_for("ready", timeout=180)
        print(f"{args.rooms} rooms x {args.clients} clients joined; traffic started", flush=True)
        duration = args.minutes * 60
        half = duration / 2
        start = time.monotonic()
        snapshotted = False
        next_print = 0.0
        while True:
            t = time.monotonic() - start
            for server in servers:
                server.samples.append(server.sample(t))
            for driver in drivers:
                driver.poll_stats()
            if not snapshotted and t >= half:
                for driver in drivers:
                    driver.send(
                        cmd="snapshot", path=str(workdir / f"half-{driver.server.name}.json")
                    )
                for driver in drivers:
                    driver.wait_for("snapshot", timeout=60)
                snapshotted = True
            if t >= next_print:
                print(_progress(t, servers, drivers), flush=True)
                next_print += 60
            if t >= duration:
                break
            time.sleep(min(args.sample_every, max(0.0, duration - t)))
        print("stopping the traffic; checking convergence", flush=True)
        for driver in drivers:
            driver.send(cmd="stop", path=str(workdir / f"end-{driver.server.name}.json"))
        for driver in drivers:
            driver.server.result = driver.wait_for("result", timeout=300)
            driver.process.wait(timeout=60)
        # Every client has left: once the rooms have unloaded, what a server still holds per
        # connection or per room shows in its descriptors.
        for server in servers:
            server.idle = _when_idle(server, start)
        for server in servers:
            server.docs = {
                phase: measure_documents(workdir / f"{phase}-{server.name}.json")
                for phase in ("half", "end")
            }
    finally:
        for driver in drivers:
            driver.close()
        for server in servers:
            server.stop()
    return servers


def _when_idle(server: Server, start: float) -> Sample:
    """The first sample with no more descriptors than before the soak, or the last one taken
    within a minute after the rooms' grace period."""
    assert server.before is not None
    deadline = time.monotonic() + ROOM_GRACE_PERIOD + 60
    while True:
        sample = server.sample(time.monotonic() - start)
        if sample.fds <= server.before.fds or time.monotonic() > deadline:
            return sample
        time.sleep(1)


def _progress(t: float, servers: list[Server], drivers: list[Driver]) -> str:
    parts = [f"t={t / 60:4.1f} min"]
    for server in servers:
        last = server.samples[-1]
        parts.append(f"{server.name}: {last.rss_kib / 1024:.1f} MB, {last.fds} fds")
    stats = drivers[0].stats
    if stats:
        parts.append(
            f"inserts {stats['inserts']}, short-lived ok {stats['ephemeral_ok']} "
            f"failed {stats['ephemeral_failed']}"
        )
    return " | ".join(parts)


# -- the verdict --------------------------------------------------------------------------------


def at(samples: list[Sample], t: float) -> Sample:
    """The last sample taken at or before ``t`` (the first one if none)."""
    before = [s for s in samples if s.t <= t + 0.5]
    return before[-1] if before else samples[0]


def summarize(server: Server, minutes: float) -> dict[str, Any]:
    """Phase figures of one server (KiB)."""
    duration = minutes * 60
    one = at(server.samples, min(60.0, duration))
    half = at(server.samples, duration / 2)
    end = at(server.samples, duration)
    first = server.samples[0]
    docs = server.docs
    doc_growth = docs["end"]["rss_kib"] - docs["half"]["rss_kib"]
    return {
        "rss_after_1_min_kib": one.rss_kib,
        "rss_half_kib": half.rss_kib,
        "rss_end_kib": end.rss_kib,
        "second_half_growth_kib": end.rss_kib - half.rss_kib,
        "fds_before": server.before.fds if server.before else None,
        "fds_start": server.samples[0].fds,
        "fds_end": end.fds,
        "fds_idle": server.idle.fds if server.idle else None,
        "rss_idle_kib": server.idle.rss_kib if server.idle else None,
        "documents_half_kib": docs["half"]["rss_kib"],
        "documents_end_kib": docs["end"]["rss_kib"],
        "documents_growth_kib": doc_growth,
        "documents_end_update_bytes": docs["end"]["update_bytes"],
        "cpu_share": round((end.cpu_s - first.cpu_s) / max(end.t - first.t, 1.0), 3),
    }


def verdict(servers: list[Server], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(correctness failures, growth failures)."""
    failures: list[str] = []
    growth: list[str] = []
    summaries = {server.name: summarize(server, args.minutes) for server in servers}
    for server in servers:
        result = server.result
        stats = result["stats"]
        if result["diverged"]:
            failures.append(f"{server.label}: rooms diverged: {result['diverged']}")
        if stats["ephemeral_failed"] or stats["join_failures"]:
            failures.append(
                f"{server.label}: {stats['ephemeral_failed']} short-lived rooms and "
                f"{stats['join_failures']} joins failed: {stats['errors'][:3]}"
            )
        figures = summaries[server.name]
        # A few descriptors come and go with the short-lived rooms in flight.
        if figures["fds_end"] > figures["fds_start"] + 16:
            failures.append(
                f"{server.label}: open descriptors grew from {figures['fds_start']} to "
                f"{figures['fds_end']} under steady traffic"
            )
        if figures["fds_idle"] is not None and figures["fds_idle"] > figures["fds_before"]:
            failures.append(
                f"{server.label}: {figures['fds_idle']} descriptors open once every client "
                f"left and the rooms unloaded, {figures['fds_before']} before the soak"
            )
    subject = summaries["trio-ysync"]
    allowed = subject["documents_growth_kib"] * (1 + GROWTH_TOLERANCE)
    if subject["second_half_growth_kib"] > max(allowed, 0):
        growth.append(
            f"trio-ysync grew {subject['second_half_growth_kib']} KiB in the second half, more "
            f"than the documents' own growth + {GROWTH_TOLERANCE:.0%} ({allowed:.0f} KiB)"
        )
    if "reference" in summaries:
        peer = summaries["reference"]["second_half_growth_kib"]
        if subject["second_half_growth_kib"] > peer:
            growth.append(
                f"trio-ysync grew {subject['second_half_growth_kib']} KiB in the second half, "
                f"more than @y/websocket-server ({peer} KiB)"
            )
    return failures, growth


def print_report(servers: list[Server], args: argparse.Namespace) -> None:
    mb = lambda kib: f"{kib / 1024:.1f} MB"  # noqa: E731
    print()
    print(
        f"soak: {args.minutes:g} min, {args.rooms} rooms x {args.clients} clients, typing every "
        f"{args.type_every:g} s, cursor every {args.cursor_every:g} s, churn every "
        f"{args.churn_every:g} s, a short-lived room every {args.ephemeral_every:g} s"
    )
    header = (
        "| server | after 1 min | halfway | end | second-half growth | documents' growth "
        "| fds (start / end / idle) | CPU |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for server in servers:
        s = summarize(server, args.minutes)
        print(
            f"| {server.label} | {mb(s['rss_after_1_min_kib'])} | {mb(s['rss_half_kib'])} "
            f"| {mb(s['rss_end_kib'])} | {s['second_half_growth_kib'] / 1024:+.1f} MB "
            f"| {s['documents_growth_kib'] / 1024:+.1f} MB "
            f"| {s['fds_start']} / {s['fds_end']} / {s['fds_idle']} | {s['cpu_share']:.0%} |"
        )
    for server in servers:
        stats = server.result["stats"]
        rooms = server.result["rooms"]
        print(
            f"{server.label}: {stats['inserts']} inserts, {stats['cursor_moves']} cursor moves, "
            f"{stats['joins']} joins, {stats['leaves']} leaves, {stats['ephemeral_ok']} "
            f"short-lived rooms ok, {stats['ephemeral_failed']} failed, "
            f"{stats['unexpected_disconnects']} unexpected disconnects; "
            f"{sum(r['converged'] and r['fresh_ok'] for r in rooms.values())}/{len(rooms)} rooms "
            f"converged; documents {server.docs['end']['update_bytes']} bytes encoded, "
            f"{mb(server.docs['end']['rss_kib'])} held as pycrdt documents"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="traffic time (default: 3)")
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument(
        "--peer", choices=["none", "reference"], default="none", help="a server to run beside"
    )
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8, help="clients per room")
    parser.add_argument("--type-every", type=float, default=3.0, help="seconds between inserts")
    parser.add_argument("--cursor-every", type=float, default=2.0, help="seconds between moves")
    parser.add_argument(
        "--churn-every", type=float, default=30.0, help="seconds between leave+join per room"
    )
    parser.add_argument(
        "--ephemeral-every", type=float, default=2.0, help="seconds between short-lived rooms"
    )
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--trace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="dump trio-ysync's memory accounting every SECONDS (see traced_serve.py)",
    )
    parser.add_argument(
        "--trace-frames",
        type=int,
        default=0,
        metavar="N",
        help="with --trace: also run tracemalloc, keeping N frames per allocation (slow)",
    )
    parser.add_argument("--json", type=Path, default=Path("soak-results.json"))
    parser.add_argument("--workdir", type=Path, help="keep the logs, store and states here")
    parser.add_argument(
        "--check-growth", action="store_true", help="fail (exit 1) when a growth rule fails too"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir
    else:
        workdir = Path(tempfile.mkdtemp(prefix="trio-ysync-soak-"))
    servers = run(args, workdir)
    print_report(servers, args)
    failures, growth = verdict(servers, args)
    args.json.write_text(
        json.dumps(
            {
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "servers": {
                    server.name: {
                        "label": server.label,
                        "summary": summarize(server, args.minutes),
                        "samples": [asdict(s) for s in server.samples],
                        "documents": server.docs,
                        "clients": server.result,
                    }
                    for server in servers
                },
                "failures": failures,
                "growth_failures": growth,
            },
            indent=1,
        )
    )
    print(f"samples written to {args.json}; logs in {workdir}")
    for line in growth:
        print(f"GROWTH: {line}")
    for line in failures:
        print(f"FAILED: {line}")
    if not failures and not growth:
        print("every check passed")
    return 1 if failures or (growth and args.check_growth) else 0


if __name__ == "__main__":
    sys.exit(main())
