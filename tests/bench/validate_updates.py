"""How long ``validate_update`` takes beside pycrdt's own ``apply_update`` of the same bytes.

    python tests/bench/validate_updates.py [--big-mb 1.5] [--edits 2000] [--repeat 5]

Two workloads, each timed as validation alone and as pycrdt applying the same updates, in the
order a room server sees them:

- ``small``: the updates of one editing session as y-websocket sends them, one per keystroke,
  word, paste or deletion (a few bytes to ~100 bytes each), applied one after another;
- ``big``: one whole-document update (a SyncStep2 of a document grown by four clients' editing
  sessions), applied to an empty document.

Prints a table and one JSON line. The best of ``--repeat`` runs counts, so other load on the
machine only ever makes a ratio look better than it is for the validator... or worse: run it on
an idle machine.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import pycrdt

from trio_ysync.protocol import validate_update

# ASCII only: pycrdt's text positions count UTF-8 bytes, and a random position must not fall
# inside a character. (Non-ASCII text costs the validator one more pass over each string.)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again"]


class Session:
    """One client editing a document of paragraphs (root texts) around its cursor, as people do."""

    paragraphs = 200

    def __init__(self, doc: pycrdt.Doc, rng: random.Random) -> None:
        self.doc = doc
        self.rng = rng
        self.text = doc.get("p0", type=pycrdt.Text)
        self.cursor = 0

    def edit(self) -> None:
        rng = self.rng
        if rng.random() < 0.03:
            self.text = self.doc.get(f"p{rng.randrange(self.paragraphs)}", type=pycrdt.Text)
            self.cursor = rng.randint(0, len(self.text))
        at = min(self.cursor, len(self.text))
        roll = rng.random()
        if roll < 0.6 or at == 0:
            # Keystrokes, mostly; sometimes a word with formatting or a pasted sentence.
            if roll < 0.45:
                piece = rng.choice("abcdefghijklmnopqrstuvwxyz ")
            elif roll < 0.55:
                piece = rng.choice(WORDS) + " "
            else:
                piece = " ".join(rng.choice(WORDS) for _ in range(12)) + ". "
            attrs = {"bold": True} if rng.random() < 0.05 else None
            self.text.insert(at, piece, attrs)
            self.cursor = at + len(piece)
        else:
            n = min(rng.randint(1, 3), at)
            del self.text[at - n : at]
            self.cursor = at - n


def small_updates(edits: int, seed: int = 1) -> list[bytes]:
    """The updates of ``edits`` edits by one client, one update per edit."""
    doc = pycrdt.Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    session = Session(doc, random.Random(seed))
    for _ in range(edits):
        session.edit()
    return updates


def big_update(megabytes: float, seed: int = 2) -> tuple[bytes, int]:
    """A whole-document update of at least ``megabytes`` from four clients' sessions."""
    rng = random.Random(seed)
    docs = [pycrdt.Doc() for _ in range(4)]
    sessions = [Session(doc, rng) for doc in docs]
    edits = 0
    while True:
        for _ in range(10):
            for session in sessions:
                for _ in range(200):
                    session.edit()
                edits += 200
            for a in docs:
                for b in docs:
                    if a is not b:
                        b.apply_update(a.get_update(b.get_state()))
        update = docs[0].get_update()
        if len(update) >= megabytes * 1_000_000:
            return update, edits


def best_of(repeat: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=float, default=1.5)
    parser.add_argument("--edits", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    small = small_updates(args.edits)
    big, big_edits = big_update(args.big_mb)

    def validate_all(updates: list[bytes]) -> Callable[[], None]:
        return lambda: [validate_update(u) for u in updates] and None

    def apply_all(updates: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            doc = pycrdt.Doc()
            for update in updates:
                doc.apply_update(update)

        return run

    results = {}
    for name, updates in (("small", small), ("big", [big])):
        validate = best_of(args.repeat, validate_all(updates))
        apply = best_of(args.repeat, apply_all(updates))
        results[name] = {
            "updates": len(updates),
            "bytes": sum(map(len, updates)),
            "validate_us_per_update": validate / len(updates) * 1e6,
            "apply_us_per_update": apply / len(updates) * 1e6,
            "validate_mb_per_s": sum(map(len, updates)) / validate / 1e6,
            "ratio_validate_to_apply": validate / apply,
        }
    results["big"]["edits"] = big_edits
    results["big"]["structs"] = validate_update(big).structs

    print(
        f"{'workload':10} {'updates':>8} {'bytes':>10} {'validate µs':>12} {'apply µs':>10} ratio"
    )
    for name, r in results.items():
        print(
            f"{name:10} {r['updates']:>8} {r['bytes']:>10} {r['validate_us_per_update']:>12.1f}"
            f" {r['apply_us_per_update']:>10.1f} {r['ratio_validate_to_apply']:.2f}"
        )
    print(json.dumps({"benchmark": "validate_updates", "pycrdt": pycrdt.__version__, **results}))


if __name__ == "__main__":
    main()
