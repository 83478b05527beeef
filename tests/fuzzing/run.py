"""One fuzzing run: start the server, attack it while honest clients work, report, and replay
the suspects if anything broke."""

from __future__ import annotations

import faulthandler
import json
import random
import shlex
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from .attackers import Attacker, Link
from .corpus import build_corpus
from .honest import HonestRoom
from .inputs import GENERATORS, AttackSource, Limits, select_kinds
from .ledger import Ledger, Sent, SuspectSet
from .replay import SLOW_SECONDS as SLOW
from .replay import Replayer, Verdict, describe_input
from .target import Target, answers_health_check, describe_exit, run_target

#: The room the attackers never visit.
QUIET_ROOM = "quiet"
#: How often the server's health page is fetched, and the wait that counts as a stall.
PULSE_INTERVAL = 0.25
STALL_SECONDS = 1.0
SELF_STALL_SECONDS = 3.0


@dataclass
class FuzzConfig:
    """What to run; every field has a command line option of the same name."""

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


@dataclass
class Summary:
    """Everything a run found; ``failures`` says why it failed (empty: it passed)."""

    seed: int
    store: str
    command: str
    duration: float = 0.0
    messages_sent: int = 0
    sent_by_kind: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    server_crash: str | None = None
    server_exit: str = ""
    tracebacks: int = 0
    first_tracebacks: list[str] = field(default_factory=list)
    panics: int = 0
    log_levels: dict[str, int] = field(default_factory=dict)
    complaints: dict[str, int] = field(default_factory=dict)
    close_codes: dict[str, int] = field(default_factory=dict)
    honest_failures: int = 0
    first_honest_failures: list[str] = field(default_factory=list)
    leaks: int = 0
    first_leaks: list[str] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    stalls: int = 0
    longest_stall: float = 0.0
    fuzzer_lag: float = 0.0
    output_dir: str = ""
    suspects_file: str | None = None
    replayed: list[str] = field(default_factory=list)
    harmful_inputs: list[str] = field(default_factory=list)
    breaking_sequence: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def text(self) -> str:
        def histogram(counts: dict[str, int]) -> str:
            ordered = sorted(counts.items(), key=lambda item: -item[1])
            return ", ".join(f"{key}: {count}" for key, count in ordered) or "none"

        lines = [
            f"seed {self.seed}, store {self.store}: {self.command}",
            f"duration {self.duration:.1f} s, {self.messages_sent} attacks on "
            f"{self.connections} connections, peak server RSS {self.peak_rss_mib:.1f} MiB",
            f"attacks by kind: {histogram(self.sent_by_kind)}",
            f"close codes seen by attackers: {histogram(self.close_codes)}",
            f"server: {self.server_crash or 'survived'}; at shutdown: {self.server_exit}; "
            f"{self.stalls} stall(s) over {STALL_SECONDS:g} s, longest {self.longest_stall:.2f} s",
            f"server log: {histogram(self.log_levels)}; {self.tracebacks} traceback(s), "
            f"{self.panics} Rust panic(s)",
        ]
        lines += [f"  {count} x {complaint}" for complaint, count in self.complaints.items()]
        for index, traceback in enumerate(self.first_tracebacks, 1):
            lines.append(f"--- traceback {index} ---")
            lines += traceback.splitlines()[-12:]
        lines.append(f"honest failures: {self.honest_failures}")
        lines += [f"  {failure}" for failure in self.first_honest_failures[:10]]
        lines.append(f"cross-room leaks: {self.leaks}")
        if self.fuzzer_lag > 1.0:
            lines.append(
                f"WARNING: the fuzzer's own event loop stalled for {self.fuzzer_lag:.1f} s: late "
                f"honest edits may be its fault (stacks in {self.output_dir}/fuzzer-stalls.txt)"
            )
        lines += [f"  {leak}" for leak in self.first_leaks[:10]]
        if self.replayed:
            lines.append(f"replayed {len(self.replayed)} suspect input(s); harmful:")
            lines += [f"  {verdict}" for verdict in self.harmful_inputs] or ["  none"]
        if self.breaking_sequence:
            lines.append(
                "no single input kills or stalls a fresh server; this sequence into one room does:"
            )
            lines += [f"  {step}" for step in self.breaking_sequence]
        if self.suspects_file:
            lines.append(f"suspects: {self.suspects_file}")
        lines.append(f"server log and files: {self.output_dir}")
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL: " + "; ".join(self.failures)))
        return "\n".join(lines)


async def _watch_exit(target: Target, ledger: Ledger, scope: trio.CancelScope) -> None:
    await target.died.wait()
    if not target.stopping:
        assert target.process.returncode is not None
        reason = describe_exit(target.process.returncode)
        ledger.server_died.set()
        ledger.suspect_recent(f"server {reason} at {ledger.elapsed():.1f} s", keep=True)
        scope.cancel()


async def _watch_log(target: Target, ledger: Ledger) -> None:
    while True:
        await trio.sleep(0.2)
        new = target.log.poll()
        if new:
            ledger.suspect_recent(
                f"{new} traceback(s) in the server log at {ledger.elapsed():.1f} s"
            )


async def _watch_pulse(target: Target, ledger: Ledger) -> None:
    """Ask the server for its health page over and over: an attack that blocks its event loop
    stalls every room. The inputs in flight when a stall starts become suspects."""
    while True:
        started = trio.current_time()
        answered = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stall_alarm, answered, ledger)
            # A server that died or refuses is reported on its own: this only times answers.
            await answers_health_check(target.port)
            answered.set()
        ledger.longest_stall = max(ledger.longest_stall, trio.current_time() - started)
        await trio.sleep(PULSE_INTERVAL)


async def _stall_alarm(answered: trio.Event, ledger: Ledger) -> None:
    with trio.move_on_after(STALL_SECONDS):
        await answered.wait()
        return
    ledger.stalls += 1
    reason = f"server unresponsive for {STALL_SECONDS} s at {ledger.elapsed():.1f} s"
    ledger.suspect_recent(reason, keep=ledger.stalls == 1)


async def _watch_self(out: Path, ledger: Ledger) -> None:
    """Measure how late this process's own event loop runs: a fuzzer that blocks makes honest
    edits look late. If it blocks for SELF_STALL_SECONDS, its threads' stacks are dumped."""
    with (out / "fuzzer-stalls.txt").open("w") as file:
        try:
            while True:
                faulthandler.dump_traceback_later(SELF_STALL_SECONDS, file=file)
                before = trio.current_time()
                await trio.sleep(0.1)
                ledger.fuzzer_lag = max(ledger.fuzzer_lag, trio.current_time() - before - 0.1)
        finally:
            faulthandler.cancel_dump_traceback_later()


async def _attack(
    config: FuzzConfig, target: Target, ledger: Ledger, secrets: dict[str, bytes]
) -> None:
    corpus = build_corpus(random.Random(f"{config.seed}:corpus"))
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


def save_suspects(
    path: Path,
    config: FuzzConfig,
    ledger: Ledger,
    entries: list[Sent],
    verdicts: list[Verdict],
    sequence: list[Sent],
) -> None:
    by_seq = {verdict.entry.seq: verdict for verdict in verdicts}
    data = {
        "seed": config.seed,
        "command": config.command(),
        "sets": [{"reason": s.reason, "seqs": [e.seq for e in s.entries]} for s in ledger.suspects],
        "entries": [
            {
                **sent.to_json(),
                "verdict": by_seq[sent.seq].describe() if sent.seq in by_seq else None,
                "harmful": by_seq[sent.seq].harmful if sent.seq in by_seq else None,
            }
            for sent in entries
        ],
        # Inputs that kill or stall a fresh server when sent in this order into one room.
        "breaking_sequence": [sent.to_json() for sent in sequence],
    }
    path.write_text(json.dumps(data, indent=1))


async def fuzz(config: FuzzConfig) -> Summary:
    """Run the fuzzer as configured and return what it found."""
    out = config.out_dir or Path(tempfile.mkdtemp(prefix=f"trio-ysync-fuzz-{config.seed}-"))
    out.mkdir(parents=True, exist_ok=True)
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
        watchers.start_soon(_watch_exit, target, ledger, watchers.cancel_scope)
        watchers.start_soon(_watch_log, target, ledger)
        watchers.start_soon(_watch_pulse, target, ledger)
        watchers.start_soon(_watch_self, out, ledger)
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
    _fill(summary, target, ledger, config.timeout)

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
    broken = [s for s in ledger.suspects if s.reason.startswith("server")]
    if broken and config.replay and not any(_breaks(verdict) for verdict in verdicts):
        # No input alone kills, hangs or stalls a fresh server: find a room history that does.
        with trio.move_on_after(config.replay_seconds):
            sequence = await _breaking_sequence(_replayer(config, out), ledger, broken)
        summary.breaking_sequence = [describe_input(sent.attack) for sent in sequence] or [
            "not reproduced (it needs more than one room's history, or timing)"
        ]
    if entries:
        summary.suspects_file = str(out / "suspects.json")
        save_suspects(out / "suspects.json", config, ledger, entries, verdicts, sequence)
    return summary


def _breaks(verdict: Verdict) -> bool:
    return verdict.server != "alive" or verdict.answer == "no answer" or verdict.seconds > SLOW


async def _breaking_sequence(
    replayer: Replayer, ledger: Ledger, broken: list[SuspectSet]
) -> list[Sent]:
    """The shortest history of one room (of those the suspects of a crash or stall visited,
    most recent first) found to kill, hang or stall a fresh server, or ``[]``."""
    rooms = list(dict.fromkeys(sent.room for s in broken for sent in s.entries))
    for room in rooms:
        sequence = await replayer.reduce(ledger.history.get(room, []))
        if sequence:
            return sequence
    return []


def _fill(summary: Summary, target: Target, ledger: Ledger, timeout: float) -> None:
    log = target.log
    returncode = target.process.returncode
    assert returncode is not None
    if target.crashed:
        summary.server_crash = f"CRASHED ({describe_exit(returncode)})"
        summary.server_exit = "(crashed)"
        summary.failures.append(f"server crashed ({describe_exit(returncode)})")
    else:
        summary.server_exit = "clean" if returncode == 0 else describe_exit(returncode)
        if returncode != 0:
            summary.failures.append(f"server did not shut down cleanly ({summary.server_exit})")
    summary.messages_sent = ledger.total
    summary.sent_by_kind = dict(sorted(ledger.sent_by_kind.items()))
    summary.connections = ledger.connections
    summary.tracebacks = log.tracebacks
    summary.first_tracebacks = log.first_tracebacks
    summary.panics = log.panics
    summary.log_levels = dict(log.levels)
    summary.complaints = dict(log.complaints.most_common(15))
    summary.close_codes = dict(ledger.close_codes)
    summary.honest_failures = ledger.honest_failures.count
    summary.first_honest_failures = ledger.honest_failures.first
    summary.leaks = ledger.leaks.count
    summary.first_leaks = ledger.leaks.first
    summary.peak_rss_mib = target.peak_rss_kib / 1024
    summary.stalls = ledger.stalls
    summary.longest_stall = ledger.longest_stall
    summary.fuzzer_lag = ledger.fuzzer_lag
    if log.tracebacks or log.panics:
        summary.failures.append(f"{log.tracebacks} traceback(s), {log.panics} panic(s) in the log")
    if ledger.honest_failures.count:
        summary.failures.append(f"{ledger.honest_failures.count} honest failure(s)")
    if ledger.longest_stall > timeout:
        summary.failures.append(f"the server stalled for {ledger.longest_stall:.1f} s")
    if ledger.leaks.count:
        summary.failures.append(f"{ledger.leaks.count} cross-room leak(s)")


async def replay_saved(path: Path, config: FuzzConfig) -> list[Verdict]:
    """Replay the entries of a suspects file saved by an earlier run."""
    entries = [Sent.from_json(entry) for entry in json.loads(path.read_text())["entries"]]
    out = config.out_dir or Path(tempfile.mkdtemp(prefix="trio-ysync-fuzz-replay-"))
    out.mkdir(parents=True, exist_ok=True)
    replayer = _replayer(config, out)
    with trio.move_on_after(config.replay_seconds):
        await replayer.replay(entries[: config.replay_limit])
    return replayer.verdicts


async def probe(config: FuzzConfig) -> list[Verdict]:
    """Send inputs of each selected kind in turn, each alone on a fresh connection to a
    server that is started again whenever one dies, and judge each: which kinds do harm."""
    rng = random.Random(f"{config.seed}:probe")
    corpus = build_corpus(random.Random(f"{config.seed}:corpus"))
    limits = Limits(config.max_message_size)
    kinds = select_kinds(config.kinds)
    entries = []
    for seq in range(max(config.messages, len(kinds))):
        attack = GENERATORS[kinds[seq % len(kinds)]][1](rng, corpus, limits)
        entries.append(Sent(seq, 0.0, seq, "probe", attack))
    out = config.out_dir or Path(tempfile.mkdtemp(prefix=f"trio-ysync-fuzz-probe-{config.seed}-"))
    out.mkdir(parents=True, exist_ok=True)
    replayer = _replayer(config, out)
    with trio.move_on_after(config.seconds):
        await replayer.replay(entries)
    return replayer.verdicts


def _replayer(config: FuzzConfig, out: Path) -> Replayer:
    return Replayer(config.store, out, config.max_message_size, config.timeout)
