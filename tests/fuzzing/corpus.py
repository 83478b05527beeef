"""Real protocol messages to mutate: made by pycrdt documents edited the way applications do.

Everything is derived from one ``random.Random``, so a seed gives the same corpus every time
(pycrdt encodes the same operations of the same client IDs to the same bytes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pycrdt

from trio_ysync.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    encode,
    encode_awareness_update,
)


@dataclass
class Corpus:
    """Valid inputs: bare v1 updates, state vectors, awareness payloads and whole messages."""

    updates: list[bytes] = field(default_factory=list)
    state_vectors: list[bytes] = field(default_factory=list)
    #: Inner awareness payloads (what follows the message type and length).
    awareness: list[bytes] = field(default_factory=list)
    #: Complete y-websocket messages, each the payload of one WebSocket message.
    messages: list[bytes] = field(default_factory=list)


def _edit(docs: list[pycrdt.Doc], rng: random.Random) -> None:
    first, second, third = docs
    text = first.get("t", type=pycrdt.Text)
    text += "hello world"
    text.insert(2, "XY", attrs={"bold": True})
    del text[0:1]
    text.format(1, 4, {"italic": True})
    values = second.get("m", type=pycrdt.Map)
    values["int"] = rng.randrange(2**31)
    values["float"] = rng.random()
    values["big"] = 2**60
    values["str"] = "é€😀"
    values["bool"] = True
    values["null"] = None
    values["bytes"] = rng.randbytes(5)
    # One key per dict: yrs encodes a dict in hash order, which would vary between runs.
    values["nested"] = {"a": [1, 2, {"b": "c"}]}
    values["deeper"] = {"d": {"e": None}}
    values["array"] = pycrdt.Array([1, "two", 3.5])
    values["map"] = pycrdt.Map({"k": "v"})
    del values["int"]
    items = third.get("a", type=pycrdt.Array)
    items.extend([1, "two", 3.0, None, [4, 5]])
    items.insert(1, pycrdt.Text("inner"))
    del items[0]
    xml = first.get("x", type=pycrdt.XmlFragment)
    xml.children.append(pycrdt.XmlElement("p", {"class": "c"}, [pycrdt.XmlText("hi")]))


def _exchange(docs: list[pycrdt.Doc]) -> None:
    for source in docs:
        for target in docs:
            if source is not target:
                target.apply_update(source.get_update(target.get_state()))


def build_corpus(rng: random.Random) -> Corpus:
    """A few dozen valid inputs of every kind, deterministic for ``rng``'s seed."""
    docs = [pycrdt.Doc(client_id=rng.randrange(1, 2**32)) for _ in range(3)]
    corpus = Corpus()
    subscriptions = [
        doc.observe(lambda event: corpus.updates.append(bytes(event.update))) for doc in docs
    ]
    _edit(docs, rng)
    _exchange(docs)
    # Concurrent edits on top of the shared state, then a second exchange.
    for index, doc in enumerate(docs):
        text = doc.get("t", type=pycrdt.Text)
        text.insert(rng.randrange(len(text) + 1), f"<{index}>")
        doc.get("m", type=pycrdt.Map)[f"k{index}"] = index
    _exchange(docs)
    for doc, subscription in zip(docs, subscriptions, strict=True):
        doc.unobserve(subscription)
    corpus.state_vectors = [bytes(doc.get_state()) for doc in docs] + [b"\x00"]
    corpus.updates += [bytes(doc.get_update()) for doc in docs]
    corpus.updates += [bytes(docs[0].get_update(sv)) for sv in corpus.state_vectors]
    corpus.updates.append(bytes(pycrdt.merge_updates(*corpus.updates[:6])))
    corpus.updates.append(b"\x00\x00")

    entries = [
        AwarenessEntry(doc.client_id, clock, state)
        for doc in docs
        for clock, state in (
            (1, {"user": {"name": "fuzz", "color": "#30bced"}}),
            (2, {"user": {"name": "fuzz"}, "cursor": {"anchor": 3, "head": 5}}),
            (3, None),
        )
    ]
    corpus.awareness = [encode_awareness_update([entry]) for entry in entries]
    corpus.awareness.append(encode_awareness_update(entries[:4]))

    messages: list[bytes] = [encode(SyncStep1(sv)) for sv in corpus.state_vectors]
    for update in corpus.updates:
        messages += [encode(SyncStep2(update)), encode(SyncUpdate(update))]
    messages += [encode(AwarenessUpdate([entry])) for entry in entries]
    messages.append(encode(QueryAwareness()))
    corpus.messages = messages
    return corpus


async def add_yjs_vectors(corpus: Corpus) -> int:
    """Add the frames, updates and state vectors that the real yjs makes (tests/js/vectors.mjs),
    when Node and the npm packages are installed; how many messages were added."""
    try:
        import nodejs
    except (ImportError, RuntimeError):  # RuntimeError: in CI without Node
        return 0
    if not nodejs.node_available():
        return 0
    data = await nodejs.run_vectors()
    messages = [bytes.fromhex(vector["hex"]) for vector in data["vectors"]]
    corpus.messages += messages
    corpus.updates += [bytes.fromhex(doc["doc_update"]) for doc in data["docs"]]
    corpus.state_vectors += [bytes.fromhex(doc["state_vector"]) for doc in data["docs"]]
    return len(messages)
