"""What a run found: the summary (as text and JSON) and the saved suspects."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .ledger import Ledger, Sent
from .replay import Verdict
from .target import Target, describe_exit
from .watch import STALL_SECONDS


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
        lines += [f"  {leak}" for leak in self.first_leaks[:10]]
        if self.fuzzer_lag > 1.0:
            lines.append(
                f"WARNING: the fuzzer's own event loop stalled for {self.fuzzer_lag:.1f} s: late "
                f"honest edits may be its fault (stacks in {self.output_dir}/fuzzer-stalls.txt)"
            )
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


def fill_summary(summary: Summary, target: Target, ledger: Ledger, timeout: float) -> None:
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


def save_suspects(
    path: Path,
    seed: int,
    command: str,
    ledger: Ledger,
    entries: list[Sent],
    verdicts: list[Verdict],
    sequence: list[Sent],
) -> None:
    """Write the suspects, with what replaying each did, as JSON (see ``--replay``)."""
    by_seq = {verdict.entry.seq: verdict for verdict in verdicts}
    data = {
        "seed": seed,
        "command": command,
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
