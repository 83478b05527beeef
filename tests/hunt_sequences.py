"""Hunt for update *sequences* that pass the validator and still break yrs, without a server.

    python tests/hunt_sequences.py --seconds 120 --seed 4 --out hunt/

The socket fuzzer (tests/fuzz.py) sends one input at a time through a live server; this applies
mutated updates (the fuzzer's own ``mutate``) that pass :func:`validate_update` in order to one
pycrdt document, as a room would, about a hundred times faster. Like a room, it skips updates that
need clocks the document lacks (``UpdateInfo.needs_more_than``); ``--no-room-rule`` applies them
too, which is how the heap corruption of tests/test_yrs_known_crash.py was found. Every 400
inputs it starts a fresh document. The sequence of the current document is written line by line
(hex) to ``OUT/seq-N.txt`` before each update is applied, so when yrs corrupts memory and the
process aborts, the last two files hold the culprit; a Rust panic (which the server contains) is
saved as ``OUT/panic-N.txt``. Minimise a file by removing lines while it still breaks, then add
it to tests/fuzzing/found/ with a test.

Bounded by ``--seconds`` and ``--updates``. Exit status 0 when nothing broke, 1 after panics
(an abort ends the process with SIGABRT).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import pycrdt
from fuzzing.corpus import build_corpus
from fuzzing.honest import is_panic
from fuzzing.inputs import mutate

from trio_ysync.errors import ProtocolError
from trio_ysync.protocol import validate_state_vector, validate_update

UPDATES_PER_DOCUMENT = 400


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="hunt for at most this long")
    parser.add_argument("--updates", type=int, default=10**7, help="apply at most this many")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("hunt"), help="where sequences go")
    parser.add_argument(
        "--no-room-rule",
        dest="room_rule",
        action="store_false",
        help="apply updates that a room would not (they need clocks the document lacks)",
    )
    args = parser.parse_args()
    room_rule = args.room_rule
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    corpus = build_corpus(rng)
    deadline = time.monotonic() + args.seconds
    applied = panics = documents = 0
    while time.monotonic() < deadline and applied < args.updates:
        documents += 1
        # Keep the previous document's sequence: memory corruption is often found when a
        # document is freed, that is while the next one starts.
        (args.out / f"seq-{documents - 2}.txt").unlink(missing_ok=True)
        doc = pycrdt.Doc()
        sequence: list[bytes] = []
        with (args.out / f"seq-{documents}.txt").open("w", buffering=1) as log:
            for _ in range(UPDATES_PER_DOCUMENT):
                if applied == args.updates:
                    break
                update = mutate(rng.choice(corpus.updates), rng, corpus)
                try:
                    info = validate_update(update)
                except ProtocolError:
                    continue
                if room_rule and info.needs_more_than(
                    validate_state_vector(bytes(doc.get_state()))
                ):
                    continue  # a room answers it with a SyncStep1 instead
                sequence.append(update)
                log.write(update.hex() + "\n")
                applied += 1
                try:
                    doc.apply_update(update)
                    doc.get_update()
                except Exception:
                    continue  # refused by yrs: the server answers 1007
                except BaseException as exc:
                    if not is_panic(exc):
                        raise
                    panics += 1
                    saved = args.out / f"panic-{panics}.txt"
                    saved.write_text("".join(u.hex() + "\n" for u in sequence))
                    print(f"panic after {len(sequence)} updates: {exc} -> {saved}", flush=True)
                    break
        del doc
    for leftover in (documents - 1, documents):  # nothing broke them
        (args.out / f"seq-{leftover}.txt").unlink(missing_ok=True)
    print(f"seed {args.seed}: {applied} validated updates, {documents} documents, {panics} panics")
    return 1 if panics else 0


if __name__ == "__main__":
    sys.exit(main())
