"""Attack a live ``trio-ysync serve`` with many hostile WebSocket clients while honest clients
keep editing; report crashes, tracebacks, honest failures and cross-room leaks.

    python tests/fuzz.py --seconds 30 --messages 20000 --seed 7 --store sqlite --connections 32

Exits non-zero if anything broke. The seed is printed first: the same seed sends the same
inputs (as far as concurrency allows). When something breaks, the inputs in flight are saved
to suspects.json and replayed one by one against fresh servers to name the harmful ones;
``--replay suspects.json`` replays a saved file again (after a fix, say), and ``--probe``
sends inputs of each kind one at a time to say which kinds do harm.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import trio
from fuzzing import FuzzConfig, fuzz, probe, replay_saved
from fuzzing.inputs import GENERATORS
from fuzzing.replay import Verdict
from fuzzing.target import STORES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="attack for at most this long")
    parser.add_argument("--messages", type=int, default=5000, help="send at most this many attacks")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--store", choices=STORES, default="memory", help="the server's store")
    parser.add_argument("--connections", type=int, default=16, help="concurrent attackers")
    parser.add_argument("--rooms", type=int, default=4, help="rooms the attackers visit")
    parser.add_argument(
        "--max-message-size", type=int, default=1 << 20, help="the server's --max-message-size"
    )
    parser.add_argument(
        "--kinds",
        default="",
        help="comma-separated globs of attack kinds to send; '-glob' excludes (write "
        "--kinds=-glob,... when the first one excludes; see --list-kinds)",
    )
    parser.add_argument("--list-kinds", action="store_true", help="list the attack kinds")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds an honest edit or join may take"
    )
    parser.add_argument(
        "--join-interval", type=float, default=2.0, help="seconds between fresh honest joiners"
    )
    parser.add_argument("--json", type=Path, help="write the summary as JSON to this file")
    parser.add_argument("--out", type=Path, help="directory for logs and suspects (default: temp)")
    parser.add_argument("--no-replay", action="store_true", help="do not replay suspects")
    parser.add_argument(
        "--replay-limit", type=int, default=100, help="replay at most this many suspects"
    )
    parser.add_argument(
        "--replay-seconds",
        type=float,
        default=60.0,
        help="time for replaying suspects, and again for finding a breaking sequence",
    )
    parser.add_argument("--replay", type=Path, help="replay a saved suspects.json, then exit")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="instead of fuzzing: send --messages inputs, each kind in turn, each alone on a "
        "fresh connection, and say which do harm",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_kinds:
        for kind, (weight, _) in GENERATORS.items():
            print(f"{kind} (weight {weight})")
        return 0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    config = FuzzConfig(
        seed=seed,
        seconds=args.seconds,
        messages=args.messages,
        store=args.store,
        connections=args.connections,
        rooms=args.rooms,
        max_message_size=args.max_message_size,
        kinds=[kind for kind in args.kinds.split(",") if kind],
        timeout=args.timeout,
        join_interval=args.join_interval,
        out_dir=args.out,
        replay=not args.no_replay,
        replay_limit=args.replay_limit,
        replay_seconds=args.replay_seconds,
    )
    if args.replay or args.probe:
        if args.replay:
            verdicts = trio.run(replay_saved, args.replay, config)
        else:
            print(f"trio-ysync fuzz probe: seed {seed}", flush=True)
            verdicts = trio.run(probe, config)
        for verdict in verdicts:
            if verdict.harmful or args.replay:
                print(verdict.describe())
        harmful = sum(verdict.harmful for verdict in verdicts)
        print(f"{len(verdicts)} input(s) sent, {harmful} harmful; by kind:")
        by_kind: dict[str, list[Verdict]] = {}
        for verdict in verdicts:
            by_kind.setdefault(verdict.entry.attack.kind, []).append(verdict)
        for kind, group in by_kind.items():
            slowest = max(verdict.seconds for verdict in group)
            bad = sum(verdict.harmful for verdict in group)
            print(f"  {kind}: {len(group)} sent, {bad} harmful, slowest {slowest:.2f} s")
        return 1 if harmful else 0
    print(f"trio-ysync fuzz: seed {seed}", flush=True)
    summary = trio.run(fuzz, config)
    print(summary.text())
    if args.json:
        args.json.write_text(json.dumps(summary.to_json(), indent=1))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
