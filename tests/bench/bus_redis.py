"""The Redis room bus on its own: Redis commands per published update, and the latency from
publish on one server to delivery on another.

    python tests/bench/bus_redis.py [--updates 2000] [--servers 2] [--fold-after 200]

Starts its own redis-server (AOF off: this measures the bus, not the disk), opens ``--servers``
buses in this process on one SQLite store, attaches one room everywhere, and publishes from the
first bus one update at a time, each after the previous one reached every other bus. Commands
are counted with ``INFO commandstats`` (reset after setup, read after the last delivery) and
include the folds. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import coredis
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redisserver import redis_server

from trio_ysync.bus import BusTuning, open_bus
from trio_ysync.store import SQLiteStore


class Receiver:
    def __init__(self) -> None:
        self.received = 0
        self.arrived = trio.Event()

    def remote_updates(self, updates: list[bytes]) -> None:
        self.received += len(updates)
        self.arrived.set()

    def remote_awareness(self, payload: bytes) -> None:
        pass

    def awareness_query(self) -> bytes | None:
        return None

    def lost_position(self) -> None:
        raise AssertionError("a live server lost its position")


def command_calls(info: dict[str, object]) -> dict[str, int]:
    calls = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            calls[key.removeprefix("cmdstat_")] = int(value["calls"])
    return calls


async def run(updates: int, servers: int, fold_after: int) -> dict[str, object]:
    tuning = BusTuning(fold_after_entries=fold_after)
    with tempfile.TemporaryDirectory() as directory:
        async with redis_server() as redis, AsyncExitStack() as stack:
            buses = []
            for _ in range(servers):
                store = await stack.enter_async_context(SQLiteStore(Path(directory) / "r.db"))
                buses.append(
                    await stack.enter_async_context(open_bus(redis.url, store, tuning=tuning))
                )
            receivers = [Receiver() for _ in buses[1:]]
            writer = await buses[0].attach("bench", Receiver())
            await writer.load()
            for bus, receiver in zip(buses[1:], receivers, strict=True):
                await (await bus.attach("bench", receiver)).load()
            admin = await stack.enter_async_context(coredis.Redis.from_url(redis.url))
            await admin.config_resetstat()

            latencies = []
            acknowledged = []
            for i in range(updates):
                for receiver in receivers:
                    receiver.arrived = trio.Event()
                start = trio.current_time()
                await writer.publish([i.to_bytes(4, "big") * 8])
                acknowledged.append(trio.current_time() - start)
                for receiver in receivers:
                    await receiver.arrived.wait()
                latencies.append(trio.current_time() - start)
            calls = command_calls(await admin.info("commandstats"))
    calls.pop("config|resetstat", None)
    calls.pop("info", None)
    latencies.sort()
    acknowledged.sort()
    result = {
        "updates": updates,
        "servers": servers,
        "fold_after_entries": fold_after,
        "commands_per_update": round(sum(calls.values()) / updates, 3),
        "calls": dict(sorted(calls.items(), key=lambda item: -item[1])),
        "latency_ms_p50": round(1000 * statistics.median(latencies), 3),
        "latency_ms_p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 3),
        "latency_ms_max": round(1000 * latencies[-1], 3),
        "publish_ms_p50": round(1000 * statistics.median(acknowledged), 3),
        "publish_ms_p99": round(1000 * acknowledged[int(0.99 * (len(acknowledged) - 1))], 3),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--fold-after", type=int, default=200)
    args = parser.parse_args()
    result = trio.run(run, args.updates, args.servers, args.fold_after)
    print(f"{'command':<20} {'calls':>8} {'per update':>11}")
    for name, count in result["calls"].items():  # type: ignore[attr-defined]
        print(f"{name:<20} {count:>8} {count / args.updates:>11.3f}")
    print(
        f"commands per update: {result['commands_per_update']}; publish acknowledged: "
        f"p50 {result['publish_ms_p50']} ms, p99 {result['publish_ms_p99']} ms; publish -> "
        f"delivered on every other server: p50 {result['latency_ms_p50']} ms, "
        f"p99 {result['latency_ms_p99']} ms"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
