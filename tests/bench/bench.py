"""trio-ysync benchmarks, side by side with its peers.

    python tests/bench/bench.py all [--quick]            every workload at its default size
    python tests/bench/bench.py fanout --rooms 4 --clients 25 --writers 2
    python tests/bench/bench.py fanout --servers trio-sqlite,trio-cluster
    python tests/bench/bench.py storm --clients 1000 --servers trio-memory,ref
    python tests/bench/bench.py bigdoc --sizes-mb 1,10
    python tests/bench/bench.py rooms --rooms 500
    python tests/bench/bench.py presence --clients 50 --duration 10

Each server is started fresh for each workload (pinned to one CPU, the load generator to the
other), driven by the Node load generator in ``js/loadgen.mjs``, and stopped. ``trio-cluster``
is two ``trio-ysync serve --redis`` processes and their redis-server, all on the server's CPU,
with each room's clients spread over both (fan-out only). Every run prints
one JSON line; every workload prints a table. ``all`` also writes ``bench-results.json``,
``bench-results.md`` and the plot. A peer that is not installed, fails to start or crashes is
reported as such and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report
from servers import (
    BASELINE,
    DEFAULT_SERVERS,
    JS_DIR,
    ROOT,
    SERVERS,
    SUBJECT,
    RunningServer,
    ServerFailed,
    ServerUnavailable,
    pin_to,
    register_baseline,
)

LOADGEN = JS_DIR / "loadgen.mjs"
SERVER_CPU = 0
GENERATOR_CPU = 1


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    quick: Any
    help: str


@dataclass(frozen=True)
class Workload:
    name: str
    help: str
    params: list[Param]
    #: Table columns printed after the workload: (header, metric label in report.METRICS).
    columns: list[str]
    #: The load generator's workload (default: the same name) and settings of its own.
    loadgen: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)

    def time_limit(self, params: dict[str, Any]) -> float:
        if self.name == "fanout":
            phase = params["warmup"] + params["drain"]
            return 90 + 2 * phase + params["rate_duration"] + params["window_duration"]
        if self.name == "presence":
            return 90 + params["duration"]
        if self.name == "restart":
            return 180 + params["resync_timeout_s"]
        if self.name == "bigdoc":
            return 120 + 30 * sum(params["sizes_mb"])
        return 180


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "fanout",
            "R rooms x C clients, S writers per room sending Yjs text inserts: delivered updates "
            "per second, sender-to-receiver latency, convergence",
            [
                Param("rooms", 4, 2, "rooms"),
                Param("clients", 25, 10, "clients per room (writers included)"),
                Param("writers", 2, 2, "writers per room"),
                Param("rate", 10, 10, "inserts per second per writer in the latency phase"),
                Param("rate_duration", 6, 3, "seconds measured in the latency phase"),
                Param("window", 32, 32, "inserts in flight per writer in the throughput phase"),
                Param("window_duration", 6, 3, "seconds measured in the throughput phase"),
                Param("warmup", 1, 1, "seconds of load before each measured phase"),
                Param("drain", 10, 5, "seconds at most to wait for undelivered updates"),
            ],
            [
                "throughput",
                "latency p50 at fixed rate",
                "latency p99 at fixed rate",
                "latency p99 at saturation",
                "cross-server latency p50 at fixed rate",
                "cross-server latency p99 at fixed rate",
                "Redis commands per update at fixed rate",
                "Redis commands per update at saturation",
            ],
        ),
        Workload(
            "storm",
            "N clients, each in a room of its own, connecting and completing sync at once (a "
            "reconnect storm): time until all synced, server RSS per client",
            [
                Param("clients", 5000, 500, "clients"),
                Param("concurrency", 50, 50, "connections opened at once"),
            ],
            ["storm: time until all synced", "storm: RSS per client"],
            loadgen="connect",
            fixed={"rooms": 0, "warm_rooms": False},
        ),
        Workload(
            "crowd",
            "N clients connecting into R rooms that exist: time until all synced, server RSS "
            "per idle connection",
            [
                Param("clients", 2000, 400, "clients"),
                Param("rooms", 20, 4, "rooms the clients are spread over"),
                Param("concurrency", 50, 50, "connections opened at once"),
            ],
            ["crowd: time until all synced", "RSS per idle connection"],
            loadgen="connect",
        ),
        Workload(
            "restart",
            "N clients, each editing a room of its own, stay connected while the server is "
            "stopped (SIGTERM) and started again on its port; they reconnect with y-websocket's "
            "back-off: time until all are synced again",
            [
                Param("clients", 2000, 300, "clients"),
                Param("concurrency", 50, 50, "connections opened at once before the restart"),
                Param("resync_timeout_s", 60, 30, "seconds at most for every client to resync"),
            ],
            [
                "restart: first to last client synced again",
                "restart: outage (stop to last client synced)",
                "restart: rooms restored",
            ],
        ),
        Workload(
            "bigdoc",
            "a fresh client syncing a big document: time and server RSS",
            [Param("sizes_mb", [1, 10], [1], "document sizes in MB (comma separated)")],
            ["upload 1 MB", "sync 1 MB", "upload 10 MB", "sync 10 MB"],
        ),
        Workload(
            "rooms",
            "M rooms with one small document each: server RSS per room",
            [
                Param("rooms", 500, 100, "rooms"),
                Param("edits", 10, 10, "small inserts per room"),
                Param("concurrency", 50, 50, "rooms populated at once"),
            ],
            ["RSS per room"],
        ),
        Workload(
            "presence",
            "C clients in one room, each sending its awareness (a moving cursor) H times a "
            "second: server CPU and delivery latency",
            [
                Param("clients", 50, 20, "clients"),
                Param("duration", 10, 4, "seconds measured"),
                Param("hz", 5, 2, "awareness updates per second per client"),
            ],
            ["presence: server CPU", "presence: latency p50", "presence: latency p99"],
        ),
    )
}


# -- running ---------------------------------------------------------------------------------


def run_loadgen(
    config: dict[str, Any],
    timeout: float,
    log_path: Path,
    pin: bool,
    checkpoint: Callable[[str], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Run the load generator; with ``checkpoint``, it is called at each checkpoint the load
    generator reaches (which waits meanwhile), and what it returns is sent on as news."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed")
    config = {**config, "checkpoints": checkpoint is not None}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [node, str(LOADGEN), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=JS_DIR,
            preexec_fn=pin_to(GENERATOR_CPU) if pin else None,
        )
        assert proc.stdin is not None and proc.stdout is not None
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        lines = []
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                reached = (
                    json.loads(line).get("checkpoint") if line.startswith('{"checkpoint"') else None
                )
                if reached is None:
                    lines.append(line)
                    continue
                news = checkpoint(reached) if checkpoint is not None else None
                try:
                    proc.stdin.write(json.dumps(news).encode() + b"\n" if news else b"go\n")
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # it ended meanwhile (time limit)
            code = proc.wait()
        finally:
            killer.cancel()
            proc.stdin.close()
            proc.stdout.close()
    if code == -signal.SIGKILL:
        return {"error": f"load generator killed after {timeout:.0f}s"}
    lines = [line for line in lines if line]
    if not lines:
        return {"error": f"load generator printed nothing (exit code {code})"}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"load generator printed no JSON: {lines[-1][:200]}"}
    return result


class Profiler:
    """py-spy recording a Python server while a workload runs (``--profile DIR``)."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            self.error: str | None = "py-spy is not installed"
            return
        self.error = None
        self.proc = subprocess.Popen(
            [
                *(pyspy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"),
                *("--output", str(output), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> str | None:
        if self.proc is None:
            return self.error
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.output.exists():
            return f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"
        return None


def run_one(
    workload: Workload,
    server: str,
    params: dict[str, Any],
    workdir: Path,
    *,
    pin: bool,
    profile_dir: Path | None,
) -> dict[str, Any]:
    spec = SERVERS[server]
    record: dict[str, Any] = {
        "workload": workload.name,
        "server": server,
        "label": spec.label,
        "params": params,
        "status": "ok",
        "error": "",
        "result": {},
    }
    try:
        running = RunningServer(spec, workdir, SERVER_CPU if pin else None)
    except ServerUnavailable as exc:
        record.update(status="unavailable", error=str(exc))
        return record
    except (ServerFailed, OSError) as exc:
        record.update(status="failed", error=f"server failed to start: {exc}")
        if server.startswith("trio-sqlite"):
            record.update(status="unavailable", error=f"--store x.db does not work here: {exc}")
        return record
    profiler = None
    if profile_dir is not None and server.startswith(("trio", "pycrdt")):
        profile_dir.mkdir(parents=True, exist_ok=True)
        profiler = Profiler(running.pid, profile_dir / f"{server}-{workload.name}.txt")
    try:
        redis_calls: dict[str, dict[str, int]] = {}
        checkpoint: Callable[[str], dict[str, Any] | None] | None = None
        if running.redis is not None:
            redis = running.redis

            def checkpoint(name: str) -> dict[str, Any] | None:
                # The commands of each phase: from the previous checkpoint to this one.
                redis_calls[name] = redis.command_calls(reset=True)
                return None

        elif workload.name == "restart":

            def checkpoint(name: str) -> dict[str, Any] | None:
                try:
                    running.restart()
                except (ServerFailed, OSError) as exc:
                    record.update(status="failed", error=f"did not restart: {exc}")
                    return None  # the clients wait out their time limit
                return {"pids": running.pids}

        config = {
            **workload.fixed,
            "workload": workload.loadgen or workload.name,
            "url": running.urls[0],
            "urls": running.urls,
            "dialect": spec.dialect,
            "pid": running.pid,
            "pids": running.pids,
            "clk_tck": os.sysconf("SC_CLK_TCK"),
            "time_limit": workload.time_limit(params),
            "cache_dir": str(workdir / "cache"),
            **params,
        }
        result = run_loadgen(
            config,
            workload.time_limit(params) + 30,
            workdir / f"loadgen-{workload.name}-{server}.log",
            pin,
            checkpoint,
        )
        if profiler is not None:
            record["profile_error"] = profiler.stop()
            record["profile"] = str(profiler.output)
        record["server_peak_rss_kib"] = running.peak_rss_kib()
        if redis_calls and "error" not in result:
            add_redis_commands(result, redis_calls)
        if not running.alive:
            record.update(
                status="failed",
                error=f"server crashed (exit code {running.returncode}): {running.log_tail()}",
            )
        elif "error" in result:
            record.update(status="failed", error=f"{result['error']}; server log: "
                          f"{running.log_tail(3)}")  # fmt: skip
        record["result"] = result
    finally:
        running.stop()
    return record


def add_redis_commands(result: dict[str, Any], calls: dict[str, dict[str, int]]) -> None:
    """Redis commands per acknowledged update in each fan-out phase: every command the cluster
    sent during the phase (reads, folds and the phase's warm-up included) over the updates
    its writers sent in it."""
    for checkpoint, phase in (("rate", "latency"), ("window", "throughput")):
        counted = {
            name: count
            for name, count in calls.get(checkpoint, {}).items()
            if name not in ("info", "config|resetstat")
        }
        part = result.get(phase)
        if not counted or not isinstance(part, dict) or not part.get("updates_sent"):
            continue
        part["redis_calls"] = dict(sorted(counted.items(), key=lambda item: -item[1]))
        part["redis_commands_per_update"] = round(sum(counted.values()) / part["updates_sent"], 3)


def print_table(workload: Workload, records: list[dict[str, Any]]) -> None:
    metrics = {m.label: m for m in report.METRICS}
    columns = [metrics[c] for c in workload.columns]
    headers = ["server", "round", *(f"{m.label} ({m.unit})" for m in columns), "generator CPU"]
    rows = []
    for record in records:
        row = [record["label"], str(record.get("round", 1))]
        row += [report.cell([record], m, record["server"]) for m in columns]
        usage = report.generator_cpu(record["result"]) if record["status"] == "ok" else None
        row.append("-" if usage is None else f"{usage:.2f}")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print()
    print(f"{workload.name}:")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(flush=True)


def run_workload(
    workload: Workload,
    servers: list[str],
    params: dict[str, Any],
    workdir: Path,
    *,
    pin: bool,
    profile_dir: Path | None,
    repeat: int = 1,
) -> list[dict[str, Any]]:
    records = []
    skip: set[str] = set()
    # Rounds go over every server in turn, so a noisy spell on a shared machine spreads out.
    for round_ in range(1, repeat + 1):
        for server in servers:
            if server in skip or not SERVERS[server].runs(workload.name):
                continue
            started = time.monotonic()
            print(
                f"# {workload.name} on {SERVERS[server].label} (round {round_}/{repeat}) ...",
                file=sys.stderr,
                flush=True,
            )
            record = run_one(workload, server, params, workdir, pin=pin, profile_dir=profile_dir)
            record["round"] = round_
            record["wall_s"] = round(time.monotonic() - started, 1)
            print(json.dumps(record), flush=True)
            records.append(record)
            if record["status"] == "unavailable":
                skip.add(server)
    print_table(workload, records)
    return records


def extract_revision(revision: str, into: Path) -> Path:
    """Write the ``src`` tree of git ``revision`` into ``into``; the ``src`` path."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


# -- metadata --------------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} x {model}{memory}, Linux {platform.release()}"


def versions() -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    node = shutil.which("node")
    if node:
        found["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    for dist in ("trio-ysync", "trio", "pycrdt", "pycrdt-websocket", "hypercorn"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    for package in ("yjs", "ws", "@y/websocket-server", "@hocuspocus/server"):
        manifest = JS_DIR / "node_modules" / package / "package.json"
        if manifest.exists():
            found[package] = json.loads(manifest.read_text())["version"]
    return found


# -- command line ----------------------------------------------------------------------------


def parse_value(text: str, like: Any) -> Any:
    if isinstance(like, list):
        return [int(part) for part in text.split(",") if part]
    if isinstance(like, float):
        return float(text)
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma separated, from: {', '.join(SERVERS)} (default: {', '.join(DEFAULT_SERVERS)})",
    )
    common.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    common.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    common.add_argument(
        "--repeat",
        type=int,
        help="rounds over the servers; tables show the best run "
        "(default: 1, and 2 for fanout under `all`)",
    )
    common.add_argument(
        "--profile", type=Path, metavar="DIR", help="record Python servers with py-spy into DIR"
    )
    common.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    common.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure trio-ysync at git revision REV (memory store) in the same run, "
        "for before/after figures of a change",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    again = commands.add_parser("report", help="print the report of an earlier `all` run")
    again.add_argument("--json", type=Path, default=ROOT / "bench-results.json")
    again.add_argument("--format", choices=["markdown", "rst"], default="markdown")
    again.add_argument("--plot", type=Path, help="also draw the plot into this PNG")
    everything = commands.add_parser("all", parents=[common], help="every workload")
    everything.add_argument("--json", type=Path, default=ROOT / "bench-results.json")
    everything.add_argument("--markdown", type=Path, default=ROOT / "bench-results.md")
    everything.add_argument("--plot", type=Path, default=ROOT / "docs" / "_static" / "bench.png")
    everything.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma separated subset"
    )
    for workload in WORKLOADS.values():
        sub = commands.add_parser(workload.name, parents=[common], help=workload.help)
        for param in workload.params:
            shown = ",".join(map(str, param.default)) if isinstance(param.default, list) else None
            sub.add_argument(
                "--" + param.name.replace("_", "-"),
                dest=param.name,
                type=lambda text, like=param.default: parse_value(text, like),
                default=None,
                help=f"{param.help} (default: {shown or param.default})",
            )
    return parser


def sizes_for(workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    params = {}
    for param in workload.params:
        given = getattr(args, param.name, None)
        params[param.name] = (
            given if given is not None else (param.quick if args.quick else param.default)
        )
    return params


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        saved = json.loads(args.json.read_text())
        if saved["meta"].get("baseline"):
            register_baseline(saved["meta"]["baseline"], Path())
        render = report.rst if args.format == "rst" else report.markdown
        print(render(saved["runs"], saved["meta"]), end="")
        if args.plot:
            print(f"plot: {report.plot(saved['runs'], saved['meta'], args.plot) or args.plot}")
        return 0
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = [name for name in servers if name not in SERVERS]
    if unknown:
        print(f"unknown servers: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if SUBJECT not in servers:
        servers.insert(0, SUBJECT)
    if shutil.which("node") is None or not (JS_DIR / "node_modules" / "yjs").exists():
        print(f"the load generator needs node and `npm ci` in {JS_DIR}", file=sys.stderr)
        return 2
    names = args.workloads.split(",") if args.command == "all" else [args.command]
    pin = not args.no_pin
    with tempfile.TemporaryDirectory(prefix="trio-ysync-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.baseline:
            register_baseline(args.baseline, extract_revision(args.baseline, workdir / "baseline"))
            servers.insert(1, BASELINE)
        started = time.monotonic()
        records: list[dict[str, Any]] = []
        sizes: dict[str, dict[str, Any]] = {}
        for name in names:
            workload = WORKLOADS[name]
            sizes[name] = sizes_for(workload, args)
            repeat = args.repeat or (2 if args.command == "all" and name == "fanout" else 1)
            records += run_workload(
                workload,
                servers,
                sizes[name],
                workdir,
                pin=pin,
                profile_dir=args.profile,
                repeat=repeat,
            )
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "pinned": pin,
            "versions": versions(),
            "sizes": sizes,
            "wall_s": round(time.monotonic() - started, 1),
            "baseline": args.baseline,
        }
        if args.command != "all":
            return 0
        args.json.write_text(json.dumps({"meta": meta, "runs": records}, indent=2) + "\n")
        text = report.markdown(records, meta)
        args.markdown.write_text(text)
        print(text)
        problem = report.plot(records, meta, args.plot)
        print(f"plot: {problem or args.plot}", file=sys.stderr)
        print(f"wrote {args.json} and {args.markdown} in {meta['wall_s']}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
