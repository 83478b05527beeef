"""The memory the documents themselves take, measured in a fresh process.

    python tests/soak/doc_memory.py STATES.json
    python tests/soak/doc_memory.py --per-update 5000

STATES.json maps room names to base64 Yjs updates (what ``tests/js/soak.mjs`` writes). Each
update is loaded into its own pycrdt document, the way a server holds a loaded room, and the
growth of this process's RSS is printed as one JSON object::

    {"rooms": 40, "update_bytes": 812345, "rss_kib": 13012}

The soak compares a server's RSS growth with the growth of this figure between two snapshots of
the same rooms: that much memory is the documents' own, whatever server holds them.

``--per-update N`` answers what one stored update costs: 8 writers make N edits shaped like the
soak's typing (1-4 characters at a random place), a server-side document applies them one by
one, and the C heap it holds is divided by N (glibc only); then again with a quarter of the
edits deleting 1-3 characters, as typing with corrections does.
"""

from __future__ import annotations

import base64
import gc
import json
import random
import re
import sys
from pathlib import Path

import pycrdt
from traced_serve import heap_in_use


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux)."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)\s+kB", status)
    assert match is not None, "no VmRSS in /proc/self/status"
    return int(match.group(1))


def measure(states: dict[str, str]) -> dict[str, int]:
    """Load every room into a pycrdt document and return what that cost."""
    updates = [base64.b64decode(state) for state in states.values()]
    # Warm up the library (its first document allocates tables of its own) and the allocator.
    pycrdt.Doc().apply_update(pycrdt.Doc().get_update())
    gc.collect()
    before = rss_kib()
    docs = []
    for update in updates:
        doc = pycrdt.Doc()
        doc.apply_update(update)
        docs.append(doc)
    gc.collect()
    after = rss_kib()
    return {
        "rooms": len(docs),
        "update_bytes": sum(map(len, updates)),
        "rss_kib": after - before,
    }


def typing(count: int, delete_share: float, writers: int = 8) -> list[bytes]:
    """The updates of ``count`` edits by ``writers`` clients who see each other's edits."""
    rng = random.Random(1)
    docs = [pycrdt.Doc(client_id=1000 + i) for i in range(writers)]
    texts = [doc.get("t", type=pycrdt.Text) for doc in docs]
    updates: list[bytes] = []
    for _ in range(count):
        i = rng.randrange(writers)
        text, before = texts[i], docs[i].get_state()
        if rng.random() < delete_share and len(text) > 4:
            at = rng.randrange(len(text) - 3)
            del text[at : at + rng.randint(1, 3)]
        else:
            text.insert(rng.randint(0, len(text)), "abcd"[: rng.randint(1, 4)])
        update = docs[i].get_update(before)
        updates.append(update)
        for j, doc in enumerate(docs):
            if j != i:
                doc.apply_update(update)
    return updates


def per_update(count: int) -> dict[str, object]:
    """Heap bytes a server-side document holds per applied edit."""
    result: dict[str, object] = {"updates": count}
    for name, delete_share in (("typing", 0.0), ("typing_with_deletes", 0.25)):
        updates = typing(count, delete_share)
        before = heap_in_use()
        doc = pycrdt.Doc()
        doc.observe(lambda event: event.update)  # as a server does: each update is read
        for update in updates:
            doc.apply_update(update)
        held = heap_in_use() - before
        result[name] = {
            "heap_bytes_per_update": round(held / count),
            "encoded_bytes_per_update": round(len(doc.get_update()) / count),
            "text_chars": len(doc.get("t", type=pycrdt.Text)),
        }
    return result


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--per-update":
        print(json.dumps(per_update(int(argv[1]))))
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    states = json.loads(Path(argv[0]).read_text())
    print(json.dumps(measure(states)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
