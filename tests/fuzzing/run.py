"""One fuzzing run: start the server, attack it while honest clients work, report, and replay
the suspects if anything broke."""

from __future__ import annotations

import json
import random
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .attackers import Attacker, Link
from .corpus import Corpus, add_yjs_vectors, build_corpus
from .honest import HonestRoom
from .inputs import GENERATORS, AttackSource, Limits, select_kinds
from .ledger import Ledger, Sent, SuspectSet
from .replay import Replayer, Verdict, describe_input
from .report import Summary, fill_summary, save_suspects
from .target import Target, run_target
from .watch import watch_exit, watch_log, watch_pulse, watch_self

#: The room the attackers never visit.
QUIET_ROOM = "quiet"


@dataclass
class FuzzConfig:
    """What to run (tests/fuzz.py has an option for each field)."""

    seed: int
    seconds: float = 10.0
    messages: int = 5000
    store: str = "memory"
    connections: int = 16
    rooms: int = 4
    max_message_size: int = 1 << 20
    kinds: list[str] = field(default_factory=list)
    timeout: float = 5.0
    join_interval: float = 2.0
    out_dir: Path | None = None
    replay: bool = True
    replay_limit: int = 100
    #: Time allowed for replaying suspects, and again for searching a breaking sequence.
    replay_seconds: float = 60.0

    def command(self) -> str:
        """The command line that runs this configuration again."""
        words = ["python", "tests/fuzz.py", "--seed", str(self.seed)]
        words += ["--seconds", f"{self.seconds:g}", "--messages", str(self.messages)]
        words += ["--store", self.store, "--connections", str(self.connections)]
        words += ["--rooms", str(self.rooms), "--max-message-size", str(self.max_message_size)]
        if self.kinds:
            words += ["--kinds", ",".join(self.kinds)]
        return shlex.join(words)


async def _corpus(config: FuzzConfig) -> Corpus:
    corpus = build_corpus(random.Random(f"{config.seed}:corpus"))
    await add_yjs_vectors(corpus)
    return corpus


async def _attack(
    config: FuzzConfig, target: Target, ledger: Ledger, secrets: dict[str, bytes]
) -> None:
    corpus = await _corpus(config)
    kinds = select_kinds(config.kinds)
    limits = Limits(config.max_message_size)
    rooms = [f"fuzz-{index}" for index in range(config.rooms)]
    link = Link(target.port, ledger, secrets, config.timeout)
    with trio.move_on_after(config.seconds):
        async with trio.open_nursery() as nursery:
            for index in range(config.connections):
                rng = random.Random(f"{config.seed}:attacker:{index}")
                source = AttackSource(rng, corpus, limits, kinds)
                nursery.start_soon(Attacker(source, link, rooms).run)


def _suspect_entries(ledger: Ledger, limit: int) -> list[Sent]:
    """Suspects without repeats, those of a crash first."""
    sets = sorted(ledger.suspects, key=lambda s: not s.reason.startswith("server"))
    entries: dict[tuple[str, bytes], Sent] = {}
    for suspect_set in sets:
        for sent in suspect_set.entries:
            # The same message under another mask is the same input.
            data = sent.attack.wire if sent.attack.message is None else sent.attack.message
            entries.setdefault((sent.attack.kind, data), sent)
    return list(entries.values())[:limit]


async def fuzz(config: FuzzConfig) -> Summary:
    """Run the fuzzer as configured and return what it found."""
    out = _out_dir(config, "fuzz")
    summary = Summary(config.seed, config.store, config.command(), output_dir=str(out))
    secret_rng = random.Random(f"{config.seed}:secrets")
    honest_rooms = ["fuzz-0", QUIET_ROOM]
    secrets = {
        room: f"leak-check-{secret_rng.randbytes(8).hex()}".encode() for room in honest_rooms
    }
    ledger = Ledger(config.messages)
    async with (
        run_target(config.store, out, "server", max_message_size=config.max_message_size) as target,
        trio.open_nursery() as watchers,
    ):
        watchers.start_soon(watch_exit, target, ledger, watchers.cancel_scope)
        watchers.start_soon(watch_log, target, ledger)
        watchers.start_soon(watch_pulse, target, ledger)
        watchers.start_soon(watch_self, out, ledger)
        attack_over = trio.Event()
        async with trio.open_nursery() as work:
            for room in honest_rooms:
                honest = HonestRoom(
                    room,
                    random.Random(f"{config.seed}:honest:{room}"),
                    ledger,
                    target.port,
                    secrets,
                    timeout=config.timeout,
                    join_interval=config.join_interval,
                )
                await work.start(honest.run, attack_over)
            await _attack(config, target, ledger, secrets)
            attack_over.set()
        watchers.cancel_scope.cancel()
    summary.duration = ledger.elapsed()
    fill_summary(summary, target, ledger, config.timeout)

    entries = _suspect_entries(ledger, config.replay_limit)
    verdicts: list[Verdict] = []
    if entries and config.replay:
        replayer = _replayer(config, out)
        with trio.move_on_after(config.replay_seconds):
            await replayer.replay(entries)
        verdicts = replayer.verdicts
        summary.replayed = [verdict.describe() for verdict in verdicts]
        summary.harmful_inputs = [verdict.describe() for verdict in verdicts if verdict.harmful]
    sequence: list[Sent] = []
    breaking = {verdict.entry.seq for verdict in verdicts if verdict.breaks_server}
    broken = [
        suspects
        for suspects in ledger.suspects
        if suspects.reason.startswith("server")
        and not any(sent.seq in breaking for sent in suspects.entries)
    ]
    if broken and config.replay:
        # No input in flight alone kills or stalls a fresh server: find a room history that does.
        replayer = _replayer(config, out)
        with trio.move_on_after(config.replay_seconds):
            await _breaking_sequence(replayer, ledger, broken)
        sequence = replayer.best
        summary.breaking_sequence = [describe_input(sent.attack) for sent in sequence] or [
            "not reproduced (it needs more than one room's history, or timing)"
        ]
    if entries:
        summary.suspects_file = str(out / "suspects.json")
        save_suspects(
            out / "suspects.json",
            config.seed,
            config.command(),
            ledger,
            entries,
            verdicts,
            sequence,
        )
    return summary


async def _breaking_sequence(replayer: Replayer, ledger: Ledger, broken: list[SuspectSet]) -> None:
    """Find the shortest history of one room (of those the suspects of a crash or stall
    visited, most recent first) that kills, hangs or stalls a fresh server: ``replayer.best``."""
    rooms = list(dict.fromkeys(sent.room for s in broken for sent in s.entries))
    for room in rooms:
        if await replayer.reduce(ledger.history.get(room, [])):
            return


async def replay_saved(path: Path, config: FuzzConfig) -> list[Verdict]:
    """Replay the entries of a suspects file saved by an earlier run."""
    entries = [Sent.from_json(entry) for entry in json.loads(path.read_text())["entries"]]
    out = _out_dir(config, "replay")
    replayer = _replayer(config, out)
    with trio.move_on_after(config.replay_seconds):
        await replayer.replay(entries[: config.replay_limit])
    return replayer.verdicts


async def probe(config: FuzzConfig) -> list[Verdict]:
    """Send inputs of each selected kind in turn, each alone on a fresh connection to a
    server that is started again whenever one dies, and judge each: which kinds do harm."""
    rng = random.Random(f"{config.seed}:probe")
    corpus = await _corpus(config)
    limits = Limits(config.max_message_size)
    kinds = select_kinds(config.kinds)
    entries = []
    for seq in range(max(config.messages, len(kinds))):
        attack = GENERATORS[kinds[seq % len(kinds)]][1](rng, corpus, limits)
        entries.append(Sent(seq, 0.0, seq, "probe", attack))
    out = _out_dir(config, "probe")
    replayer = _replayer(config, out)
    with trio.move_on_after(config.seconds):
        await replayer.replay(entries)
    return replayer.verdicts


def _replayer(config: FuzzConfig, out: Path) -> Replayer:
    return Replayer(config.store, out, config.max_message_size, config.timeout)


def _out_dir(config: FuzzConfig, what: str) -> Path:
    """Where the logs and suspects go: ``--out``, else a new temporary directory."""
    if config.out_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"trio-ysync-{what}-{config.seed}-"))
    config.out_dir.mkdir(parents=True, exist_ok=True)
    return config.out_dir
