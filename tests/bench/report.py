"""Tables, ratios, target checks and the plot of a benchmark run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import SERVERS, SUBJECT

Record = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    workload: str
    label: str
    unit: str
    #: True when a larger figure is better.
    higher_is_better: bool
    extract: Callable[[dict[str, Any]], float | None]
    digits: int = 1


def _bigdoc(size_mb: int, key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    def extract(result: dict[str, Any]) -> float | None:
        for doc in result.get("docs", []):
            if doc.get("size_mb") == size_mb and doc.get(key) is not None:
                if key.endswith("_s") and not doc.get("complete", False):
                    return None
                return float(doc[key]) * scale
        return None

    return extract


def _get(*path: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    def extract(result: dict[str, Any]) -> float | None:
        value: Any = result
        for key in path:
            if not isinstance(value, dict) or value.get(key) is None:
                return None
            value = value[key]
        return float(value) * scale

    return extract


METRICS: list[Metric] = [
    Metric("fanout", "throughput", "deliveries/s", True, _get("throughput", "deliveries_per_s"), 0),
    Metric("fanout", "latency p50 at fixed rate", "ms", False, _get("latency", "p50_ms"), 2),
    Metric("fanout", "latency p99 at fixed rate", "ms", False, _get("latency", "p99_ms"), 2),
    Metric("fanout", "latency p99 at saturation", "ms", False, _get("throughput", "p99_ms"), 1),
    Metric("fanout", "cross-server latency p50 at fixed rate", "ms", False,
           _get("latency", "cross_server_p50_ms"), 2),
    Metric("fanout", "cross-server latency p99 at fixed rate", "ms", False,
           _get("latency", "cross_server_p99_ms"), 2),
    Metric("fanout", "Redis commands per update at fixed rate", "commands", False,
           _get("latency", "redis_commands_per_update"), 2),
    Metric("fanout", "Redis commands per update at saturation", "commands", False,
           _get("throughput", "redis_commands_per_update"), 2),
    Metric("fanout", "server CPU at fixed rate", "% of a core", False,
           _get("latency", "server_cpu", scale=100), 0),
    Metric("fanout", "server CPU per delivery at saturation", "µs", False,
           _get("throughput", "server_cpu_us_per_delivery"), 1),
    Metric("storm", "storm: time until all synced", "s", False, _get("connect_s"), 2),
    Metric("storm", "storm: RSS per client", "KiB", False, _get("rss_per_connection_kib"), 1),
    Metric("crowd", "crowd: time until all synced", "s", False, _get("connect_s"), 2),
    Metric("crowd", "RSS per idle connection", "KiB", False, _get("rss_per_connection_kib"), 1),
    Metric("restart", "restart: first to last client synced again", "s", False,
           _get("resync_s"), 2),
    Metric("restart", "restart: outage (stop to last client synced)", "s", False,
           _get("outage_s"), 2),
    Metric("restart", "restart: rooms restored", "rooms", True, _get("restored"), 0),
    Metric("bigdoc", "upload 1 MB", "s", False, _bigdoc(1, "upload_s"), 3),
    Metric("bigdoc", "sync 1 MB", "s", False, _bigdoc(1, "sync_s"), 3),
    Metric("bigdoc", "upload 10 MB", "s", False, _bigdoc(10, "upload_s"), 2),
    Metric("bigdoc", "sync 10 MB", "s", False, _bigdoc(10, "sync_s"), 2),
    Metric("bigdoc", "RSS holding both documents", "MiB", False,
           _bigdoc(10, "rss_kib", scale=1 / 1024), 0),
    Metric("rooms", "RSS per room", "KiB", False, _get("rss_per_room_kib"), 1),
    Metric("presence", "presence: server CPU", "% of a core", False,
           _get("server_cpu", scale=100), 1),
    Metric("presence", "presence: latency p50", "ms", False, _get("latency_p50_ms"), 2),
    Metric("presence", "presence: latency p99", "ms", False, _get("latency_p99_ms"), 2),
]  # fmt: skip


@dataclass(frozen=True)
class Target:
    description: str
    #: The metric's label in METRICS.
    label: str
    peer: str
    #: Whether the ratio subject / peer meets the target.
    check: Callable[[float], bool]
    subject: str = SUBJECT


TARGETS: list[Target] = [
    Target("fan-out throughput >= 2x pycrdt-websocket (trio)", "throughput", "pycrdt-trio",
           lambda r: r >= 2),
    Target("fan-out throughput >= 2x pycrdt-websocket (asyncio)", "throughput", "pycrdt-asyncio",
           lambda r: r >= 2),
    Target("fan-out throughput >= 1.2x @y/websocket-server", "throughput", "ref",
           lambda r: r >= 1.2),
    Target("p99 latency <= @y/websocket-server", "latency p99 at fixed rate", "ref",
           lambda r: r <= 1),
    Target("storm (own rooms) <= 1.5x @y/websocket-server", "storm: time until all synced",
           "ref", lambda r: r <= 1.5),
    Target("storm with SQLite <= 1.3x the memory store", "storm: time until all synced",
           "trio-memory", lambda r: r <= 1.3, subject="trio-sqlite"),
    Target("crowd (clients into existing rooms) <= 1.2x @y/websocket-server",
           "crowd: time until all synced", "ref", lambda r: r <= 1.2),
    Target("RSS per client in the storm <= 1.2x @y/websocket-server", "storm: RSS per client",
           "ref", lambda r: r <= 1.2),
    Target("RSS per idle connection < pycrdt-websocket (trio)", "RSS per idle connection",
           "pycrdt-trio", lambda r: r < 1),
    Target("RSS per idle connection < pycrdt-websocket (asyncio)", "RSS per idle connection",
           "pycrdt-asyncio", lambda r: r < 1),
    Target("presence: server CPU < @y/websocket-server", "presence: server CPU", "ref",
           lambda r: r < 1),
    Target("RSS per room < pycrdt-websocket (trio)", "RSS per room", "pycrdt-trio",
           lambda r: r < 1),
    Target("RSS per room < pycrdt-websocket (asyncio)", "RSS per room", "pycrdt-asyncio",
           lambda r: r < 1),
]  # fmt: skip


def target_rows(records: list[Record]) -> list[list[str]]:
    """[description, ratio, met] for each target whose servers took part."""
    by_label = {metric.label: metric for metric in METRICS}
    present = set(servers_in(records))
    rows = []
    for target in TARGETS:
        if not {target.peer, target.subject} <= present:
            continue
        value = ratio(records, by_label[target.label], target.peer, target.subject)
        shown = "-" if value is None else f"{value:.2f}"
        verdict = "-" if value is None else ("yes" if target.check(value) else "**no**")
        rows.append([target.description, shown, verdict])
    return rows


def runs_of(records: list[Record], workload: str, server: str) -> list[Record]:
    return [r for r in records if r["workload"] == workload and r["server"] == server]


def find(records: list[Record], workload: str, server: str) -> Record | None:
    """The first successful run (else the first run) of ``workload`` on ``server``."""
    runs = runs_of(records, workload, server)
    ok = [r for r in runs if r["status"] == "ok"]
    return (ok or runs or [None])[0]


def figure(records: list[Record], metric: Metric, server: str) -> float | None:
    """The best figure over the successful runs (noise on a shared machine only slows down)."""
    values = [
        value
        for record in runs_of(records, metric.workload, server)
        if record["status"] == "ok" and (value := metric.extract(record["result"])) is not None
    ]
    if not values:
        return None
    return max(values) if metric.higher_is_better else min(values)


def cell(records: list[Record], metric: Metric, server: str) -> str:
    record = find(records, metric.workload, server)
    if record is None:
        return "-"
    if record["status"] == "unavailable":
        return "not installed" if "not installed" in record.get("error", "") else "skipped"
    if record["status"] != "ok":
        return "crashed" if "crash" in record.get("error", "") else "failed"
    value = figure(records, metric, server)
    if value is None:
        return "n/a"
    text = f"{value:,.{metric.digits}f}"
    runs = [r for r in runs_of(records, metric.workload, server) if r["status"] == "ok"]
    if metric.workload == "fanout" and not all(r["result"].get("converged") for r in runs):
        text += " (diverged)"
    return text


def ratio(records: list[Record], metric: Metric, peer: str, subject: str = SUBJECT) -> float | None:
    mine = figure(records, metric, subject)
    theirs = figure(records, metric, peer)
    if mine is None or theirs is None or theirs == 0:
        return None
    return mine / theirs


def servers_in(records: list[Record]) -> list[str]:
    present = {record["server"] for record in records}
    return [name for name in SERVERS if name in present]


def markdown(records: list[Record], meta: dict[str, Any]) -> str:
    """The whole report: figures, ratios, targets, notes."""
    servers = servers_in(records)
    peers = [name for name in servers if not name.startswith("trio")]
    rounds = max((r.get("round", 1) for r in records), default=1)
    lines = [
        "# trio-ysync benchmarks",
        "",
        f"{meta.get('date', '')} — {meta.get('machine', '')}",
        "",
        "Figures per server"
        + (
            f" (best of {rounds} interleaved runs where a workload was repeated)"
            if rounds > 1
            else ""
        )
        + ". Ratios are trio-ysync (memory store) ÷ peer: above 1 is better for ↑ metrics, "
        "below 1 is better for ↓ metrics.",
        "",
    ]
    header = ["workload", "metric", *(SERVERS[s].label for s in servers)]
    header += [f"÷ {SERVERS[p].label}" for p in peers]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for metric in METRICS:
        arrow = "↑" if metric.higher_is_better else "↓"
        row = [metric.workload, f"{metric.label} ({metric.unit}) {arrow}"]
        row += [cell(records, metric, s) for s in servers]
        for peer in peers:
            value = ratio(records, metric, peer)
            row.append("-" if value is None else f"{value:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Targets", "", "| target | ratio | met |", "|---|---|---|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in target_rows(records)]
    lines += [
        "",
        "## Load generator CPU (fraction of one core, highest phase)",
        "",
        "The load generator is one Node process on its own CPU; near 1.0 it may have limited "
        "that run.",
        "",
    ]
    lines.append("| workload | " + " | ".join(SERVERS[s].label for s in servers) + " |")
    lines.append("|---|" + "---|" * len(servers))
    for workload in dict.fromkeys(record["workload"] for record in records):
        row = [workload]
        for server in servers:
            record = find(records, workload, server)
            usage = generator_cpu(record["result"]) if record and record["status"] == "ok" else None
            row.append("-" if usage is None else f"{usage:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    problems = [r for r in records if r["status"] != "ok"]
    if problems:
        lines += ["", "## Not measured", ""]
        for record in problems:
            if record.get("round", 1) > 1 and record["status"] == "unavailable":
                continue
            label = SERVERS[record["server"]].label
            lines.append(f"- {record['workload']} / {label}: {record['status']}: {record['error']}")
    diverged = [
        r
        for r in records
        if r["workload"] == "fanout" and r["status"] == "ok" and not r["result"].get("converged")
    ]
    if diverged:
        lines += ["", "## Convergence failures", ""]
    for record in diverged:
        result = record["result"]
        lines.append(
            f"- fanout / {SERVERS[record['server']].label}: did not converge "
            f"(missing {result.get('missing')}, duplicates {result.get('duplicates')}, "
            f"rooms {result.get('mismatched_rooms')})"
        )
    if meta.get("sizes"):
        lines += ["", "## Sizes", ""]
        for workload, params in meta["sizes"].items():
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            lines.append(f"- {workload}: {shown}")
    if meta.get("versions"):
        lines += ["", "## Versions", ""]
        lines.append(", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    return "\n".join(lines) + "\n"


def generator_cpu(result: dict[str, Any]) -> float | None:
    """The highest CPU use the load generator reported in any phase of a run."""
    parts = [result, result.get("latency"), result.get("throughput"), *result.get("docs", [])]
    values = [part.get("generator_cpu") for part in parts if isinstance(part, dict)]
    numbers = [float(v) for v in values if v is not None]
    return max(numbers) if numbers else None


def plot(records: list[Record], meta: dict[str, Any], path: Path) -> str | None:
    """Fan-out throughput and latency per server as a PNG; returns why not, if it could not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    by_label = {metric.label: metric for metric in METRICS}
    servers = [
        s for s in servers_in(records) if figure(records, by_label["throughput"], s) is not None
    ]
    if not servers:
        return "no fan-out figures to plot"
    short = {
        "pycrdt-trio": "pycrdt-\nwebsocket (trio)",
        "pycrdt-asyncio": "pycrdt-\nwebsocket (asyncio)",
        "ref": "@y/websocket-\nserver",
    }
    labels = [short.get(s, SERVERS[s].label.replace(" (", "\n(")) for s in servers]
    colours = ["#2a7ab0" if s.startswith("trio") else "#9a9a9a" for s in servers]
    throughput = [figure(records, by_label["throughput"], s) or 0.0 for s in servers]
    p50 = [figure(records, by_label["latency p50 at fixed rate"], s) or 0.0 for s in servers]
    p99 = [figure(records, by_label["latency p99 at fixed rate"], s) or 0.0 for s in servers]

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    positions = list(range(len(servers)))
    bars = left.bar(positions, throughput, color=colours)
    left.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    left.set_xticks(positions, labels, fontsize=7.5)
    left.set_ylabel("delivered updates per second")
    left.set_title("Fan-out throughput (higher is better)")
    width = 0.38
    right.bar([p - width / 2 for p in positions], p50, width, label="p50", color="#7fb3d5")
    right.bar([p + width / 2 for p in positions], p99, width, label="p99", color="#1f4e79")
    right.set_xticks(positions, labels, fontsize=7.5)
    right.set_ylabel("sender-to-receiver latency (ms)")
    right.set_title("Latency at a fixed update rate (lower is better)")
    right.legend()
    sizes = meta.get("sizes", {}).get("fanout", {})
    fig.suptitle(
        f"{sizes.get('rooms', '?')} rooms x {sizes.get('clients', '?')} clients, "
        f"{sizes.get('writers', '?')} writers per room — {meta.get('date', '')}, "
        f"{meta.get('machine', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def rst(records: list[Record], meta: dict[str, Any]) -> str:
    """The figures and ratios as reStructuredText list-tables (for docs/benchmarks.rst)."""
    servers = servers_in(records)
    peers = [name for name in servers if not name.startswith("trio")]

    def row(cells: list[str]) -> list[str]:
        first, *rest = cells
        return [f"   * - {first}", *(f"     - {c}" for c in rest)]

    lines = [
        ".. list-table:: Figures per server",
        "   :header-rows: 1",
        "",
        *row(["metric", *(SERVERS[s].label for s in servers)]),
    ]
    for metric in METRICS:
        arrow = "↑" if metric.higher_is_better else "↓"
        label = f"{metric.workload}: {metric.label} ({metric.unit}) {arrow}"
        lines += row([label, *(cell(records, metric, s) for s in servers)])
    lines += [
        "",
        ".. list-table:: trio-ysync (memory) ÷ peer",
        "   :header-rows: 1",
        "",
        *row(["metric", *(SERVERS[p].label for p in peers)]),
    ]
    for metric in METRICS:
        arrow = "↑" if metric.higher_is_better else "↓"
        values = [ratio(records, metric, p) for p in peers]
        label = f"{metric.workload}: {metric.label} {arrow}"
        lines += row([label, *("-" if v is None else f"{v:.2f}" for v in values)])
    lines += ["", ".. list-table:: Targets", "   :header-rows: 1", ""]
    lines += row(["target", "ratio", "met"])
    for cells in target_rows(records):
        lines += row(cells)
    return "\n".join(lines) + "\n"
