"""The update validator: what yjs and pycrdt write passes; what hurts yrs (or yjs) does not.

Inputs that crash yrs never reach pycrdt in this process: mutants that pass validation are
applied by pycrdt_runner.py in a child process.
"""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nodejs import requires_node, run_update_corpus
from pycrdt_runner import apply_in_child

from trio_ysync.protocol import (
    DEFAULT_UPDATE_LIMITS,
    MAX_CLOCK,
    MAX_SAFE_INTEGER,
    Encoder,
    ProtocolError,
    UpdateInfo,
    UpdateLimits,
    validate_state_vector,
    validate_update,
)

LIMITS_FOR = {
    "default": DEFAULT_UPDATE_LIMITS,
    "json_content": UpdateLimits(allow_json_content=True),
    "xml_hooks": UpdateLimits(allow_xml_hooks=True),
}
DEPTH = DEFAULT_UPDATE_LIMITS.max_depth


# --- Building updates by hand ---------------------------------------------------------------------


def var_uint(value: int) -> bytes:
    encoder = Encoder()
    encoder.write_var_uint(value)
    return encoder.to_bytes()


def var_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return var_uint(len(raw)) + raw


def section(client: int, clock: int, *structs: bytes) -> bytes:
    return var_uint(len(structs)) + var_uint(client) + var_uint(clock) + b"".join(structs)


def update(*sections: bytes, delete_set: bytes = b"\x00") -> bytes:
    return var_uint(len(sections)) + b"".join(sections) + delete_set


def delete_set(*clients: tuple[int, list[tuple[int, int]]]) -> bytes:
    out = var_uint(len(clients))
    for client, ranges in clients:
        out += var_uint(client) + var_uint(len(ranges))
        out += b"".join(var_uint(clock) + var_uint(length) for clock, length in ranges)
    return out


def in_root(
    ref: int, content: bytes, root: str | bytes = "t", key: str | bytes | None = None
) -> bytes:
    """An item whose parent is the root type ``root`` (and map key ``key``)."""
    info = ref | (0x20 if key is not None else 0)
    out = bytes([info]) + b"\x01" + var_string(root)
    return out + (var_string(key) if key is not None else b"") + content


def after(ref: int, origin: tuple[int, int], content: bytes) -> bytes:
    """An item inserted after ``origin`` (so without parent info)."""
    return bytes([ref | 0x80]) + var_uint(origin[0]) + var_uint(origin[1]) + content


STRING, ANY, EMBED, FORMAT, TYPE, DOC, DELETED, BINARY, JSON_CONTENT = 4, 8, 5, 6, 7, 9, 1, 3, 2
NULL, ARRAY, OBJECT = b"\x7e", 0x75, 0x76


def text(value: str | bytes) -> bytes:
    return var_string(value)


def nested_arrays(depth: int) -> bytes:
    """An Any value: ``depth`` arrays, each holding the next, around a null."""
    return bytes([ARRAY, 1]) * depth + NULL


def any_item(*values: bytes, root: str = "m", key: str = "k") -> bytes:
    return in_root(ANY, var_uint(len(values)) + b"".join(values), root, key)


def nested_json(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


# --- Inputs that crashed or misled yrs ------------------------------------------------------------

KILLERS = {
    # A string item, then a GC struct of length 0: divide by zero in yrs.
    "zero_length_gc_after_string": bytes.fromhex("01020700040101610174000000"),
    # Client 0xffffffff, an item with an invalid content ref, a clock past 32 bits.
    "invalid_content_ref_and_clock": bytes.fromhex("010207ffffffff0f006fc407020703015a00"),
    # A GC struct of length 0 alone: applies, then the next diff divides by zero.
    "zero_length_gc": bytes.fromhex("01010701000000"),
    # Arrays nested 26,000 deep (53 KB): overflows yrs's stack (SIGSEGV) where it runs on a
    # thread's stack, as in a worker thread.
    "deep_any": update(section(7, 0, any_item(nested_arrays(26_000)))),
    # An XmlHook whose name yjs reads but yrs does not: yrs reads "GC of length 0" out of it.
    "xml_hook_name_hiding_a_gc": update(
        section(7, 0, in_root(TYPE, b"\x05" + var_string(b"\x00\x00"), "x"))
    ),
    # A float at clock 2**31 (found by the fuzzer with the SQLite store): it waits as pending,
    # and once an update brings the client's earlier clocks, yrs panics integrating it
    # ("called `Option::unwrap()` on a `None` value"; from 2**32 - 1, "index out of bounds").
    "struct_at_clock_2_31": bytes.fromhex(
        "0101cbb0dd8d0980808080082801016d05666c6f6174017b3fd1532d08f17f5c00"
    ),
    # Legacy JSON content: yrs reads one string more than the count, so it reads the next
    # struct's bytes as a string and whatever follows as structs.
    "json_content_count_mismatch": update(
        section(7, 0, in_root(JSON_CONTENT, b"\x01" + var_string("1"), "a"))
    ),
}


@pytest.mark.parametrize("name", KILLERS)
def test_killers_are_rejected(name: str) -> None:
    with pytest.raises(ProtocolError):
        validate_update(KILLERS[name])


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff\xff", "truncated"),
        (b"", "truncated"),
        (b"\x01", "claims 1 clients"),
        (b"\x01\x07", "claims 1 clients"),
        (b"\x02\x07\x01\x07\x02", "repeats client 7"),
        (b"\x01\x07" + var_uint(MAX_CLOCK + 1), f"exceeds {MAX_CLOCK}"),
        (b"\x01" + b"\xff" * 8 + b"\x01", "53 bits"),
        (b"\x01\x07\x01\x00", "after the state vector"),
    ],
)
def test_malformed_state_vectors_are_rejected(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        validate_state_vector(data)


def test_state_vectors_decode() -> None:
    assert validate_state_vector(b"\x00") == {}
    data = b"\x02" + var_uint(MAX_SAFE_INTEGER) + var_uint(MAX_CLOCK) + b"\x07\x00"
    assert validate_state_vector(data) == {MAX_SAFE_INTEGER: MAX_CLOCK, 7: 0}
    assert validate_state_vector(memoryview(bytearray(b"\x01\x07\x05"))) == {7: 5}
    with pytest.raises(ProtocolError, match="more than 1"):
        validate_state_vector(data, UpdateLimits(max_clients=1))


# --- What each rule refuses -----------------------------------------------------------------------

ONE_CHAR = in_root(STRING, text("a"))

MALFORMED = {
    "trailing byte": (update(section(7, 0, ONE_CHAR)) + b"\x00", "after the end"),
    "truncated": (update(section(7, 0, ONE_CHAR))[:-1], "truncated"),
    "repeated client": (update(section(7, 0, ONE_CHAR), section(7, 1, ONE_CHAR)), "repeats"),
    "client above 53 bits": (update(section(7, 0, ONE_CHAR))[:2] + b"\xff" * 8 + b"\x01", "53"),
    "section without structs": (update(section(7, 0)), "without structs"),
    "zero-length Skip": (update(section(7, 0, ONE_CHAR, b"\x0a\x00", ONE_CHAR)), "Skip"),
    "empty string": (update(section(7, 0, in_root(STRING, text("")))), "empty content"),
    "empty Deleted": (update(section(7, 0, in_root(DELETED, b"\x00"))), "empty content"),
    "empty Any": (update(section(7, 0, any_item())), "empty content"),
    "GC with flags": (update(section(7, 0, b"\x40\x03")), "info byte"),
    "Skip with flags": (update(section(7, 0, ONE_CHAR, b"\x8a\x03")), "info byte"),
    "content ref 11": (update(section(7, 0, in_root(11, b"\x00"))), "content ref 11"),
    "content ref 17": (update(section(7, 0, in_root(17, b"\x01"))), "content ref 17"),
    "type ref 7": (update(section(7, 0, in_root(TYPE, b"\x07", "x"))), "type ref 7"),
    "type ref 15": (update(section(7, 0, in_root(TYPE, b"\x0f", "x"))), "type ref 15"),
    "parent info 2": (update(section(7, 0, b"\x04\x02\x07\x00" + text("a"))), "parent info"),
    "clock past MAX_CLOCK": (update(section(7, MAX_CLOCK, ONE_CHAR)), f"beyond {MAX_CLOCK}"),
    "origin clock past MAX_CLOCK": (
        update(section(7, 0, ONE_CHAR, after(STRING, (8, MAX_CLOCK), text("b")))),
        "origin clock",
    ),
    "origin in its own future": (
        update(section(7, 0, ONE_CHAR, after(STRING, (7, 1), text("b")))),
        "origin clock",
    ),
    "parent is itself": (
        update(section(7, 0, b"\x07\x00\x07\x00\x01")),
        "parent clock",
    ),
    "zero-length delete range": (update(delete_set=delete_set((7, [(0, 0)]))), "length 0"),
    "delete range past MAX_CLOCK": (
        update(delete_set=delete_set((7, [(MAX_CLOCK, 1)]))),
        f"beyond {MAX_CLOCK}",
    ),
    "delete set repeats a client": (
        update(delete_set=delete_set((7, [(0, 1)]), (7, [(2, 1)]))),
        "repeats client 7",
    ),
    "invalid UTF-8 in a string": (update(section(7, 0, in_root(STRING, text(b"\xc3")))), "UTF-8"),
    "encoded surrogate": (update(section(7, 0, in_root(STRING, text(b"\xed\xa0\x80")))), "UTF-8"),
    "invalid UTF-8 in a root name": (
        update(section(7, 0, in_root(STRING, text("a"), b"\xff"))),
        "UTF-8",
    ),
    "invalid UTF-8 in a key": (update(section(7, 0, any_item(NULL, key=b"\xfe"))), "UTF-8"),
    "invalid UTF-8 in an Any string": (
        update(section(7, 0, any_item(b"\x77" + text(b"\x80")))),
        "UTF-8",
    ),
    "invalid Any tag": (update(section(7, 0, any_item(b"\x73"))), "value tag"),
    "Any integer past 53 bits": (
        update(section(7, 0, any_item(b"\x7d" + b"\xff" * 7 + b"\x7f"))),
        "53",
    ),
    "Any float64 cut short": (update(section(7, 0, any_item(b"\x7b\x00\x00"))), "truncated|past"),
    "Any object claims too many entries": (update(section(7, 0, any_item(b"\x76\x7f"))), "claimed"),
    "binary past the end": (
        update(section(7, 0, in_root(BINARY, b"\x10\x00", "a"))),
        "past the end",
    ),
    "invalid JSON in an embed": (update(section(7, 0, in_root(EMBED, text("{x")))), "invalid JSON"),
    "NaN in a format": (
        update(section(7, 0, in_root(FORMAT, text("bold") + text("NaN")))),
        "invalid JSON",
    ),
    "subdocument options not an object": (
        update(section(7, 0, in_root(DOC, text("guid") + b"\x7d\x01", "m", "k"))),
        "not an object",
    ),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_each_rule_refuses_what_it_must(name: str) -> None:
    data, problem = MALFORMED[name]
    with pytest.raises(ProtocolError, match=problem):
        validate_update(data)


def test_a_small_valid_update_and_what_is_learnt() -> None:
    data = update(
        section(300, 0, in_root(STRING, text("a😀é")), after(STRING, (300, 3), text("!"))),
        section(5, 10, b"\x0a\x02", any_item(b"\x7d\x2a", key="n")),
        section(6, 0, after(STRING, (300, 1), text("x")), after(STRING, (5, 20), text("y"))),
        delete_set=delete_set((300, [(1, 2)]), (9, [(0, 4), (6, 1)])),
    )
    info = validate_update(data)
    # "a😀é" is four UTF-16 code units, so "!" follows at clock 4.
    assert info == UpdateInfo(
        size=len(data),
        structs=6,
        clocks={300: (0, 5), 5: (10, 13), 6: (0, 2)},
        delete_ranges=3,
        delete_clients=frozenset({300, 9}),
        # Client 6 names 300's clock 1 and 5's clock 20; the delete set names up to 300's
        # clock 2 and 9's clock 6.
        references={300: 3, 5: 21, 9: 7},
    )
    assert info.clients == {300, 5, 6, 9}
    assert not info.is_empty
    assert validate_update(b"\x00\x00") == UpdateInfo(2, 0, {}, 0, frozenset())
    assert validate_update(b"\x00\x00").is_empty
    assert validate_update(bytearray(data)) == info
    # A document holds all of it once it has every struct and every clock the update names.
    holder = {300: 5, 5: 21, 6: 2, 9: 7}
    assert info.held_by(holder)
    for client in holder:
        assert not info.held_by({**holder, client: holder[client] - 1})


def test_brackets_inside_json_strings_do_not_count() -> None:
    quoted = '["' + "[" * 500 + '\\"{", ' + nested_json(DEPTH - 1) + "]"
    validate_update(update(section(7, 0, in_root(EMBED, text(quoted)))))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: any_item(nested_arrays(d)), id="any"),
        pytest.param(lambda d: any_item(bytes([OBJECT, 1, 1, 0x61]) * d + NULL), id="any_objects"),
        pytest.param(
            lambda d: in_root(DOC, text("g") + bytes([OBJECT, 1, 1, 0x61]) * d + NULL, "m", "k"),
            id="doc_options",
        ),
        pytest.param(lambda d: in_root(EMBED, text(nested_json(d))), id="embed"),
        pytest.param(lambda d: in_root(FORMAT, text("k") + text(nested_json(d))), id="format"),
        pytest.param(
            lambda d: in_root(JSON_CONTENT, b"\x01" + text(nested_json(d)), "a"), id="json_content"
        ),
    ],
)
def test_nesting_up_to_the_limit_passes_and_beyond_fails(make: Any) -> None:
    limits = UpdateLimits(allow_json_content=True)
    validate_update(update(section(7, 0, make(DEPTH))), limits)
    with pytest.raises(ProtocolError, match="deeper than"):
        validate_update(update(section(7, 0, make(DEPTH + 1))), limits)


def test_count_limits() -> None:
    two_clients = update(section(1, 0, ONE_CHAR), section(2, 0, ONE_CHAR))
    three_structs = update(section(1, 0, ONE_CHAR, ONE_CHAR, ONE_CHAR))
    three_ranges = update(delete_set=delete_set((1, [(0, 1), (2, 1)]), (2, [(0, 1)])))
    for data in (two_clients, three_structs, three_ranges):
        validate_update(data)
    with pytest.raises(ProtocolError, match="2 clients"):
        validate_update(two_clients, UpdateLimits(max_clients=1))
    with pytest.raises(ProtocolError, match="more than 2 structs"):
        validate_update(three_structs, UpdateLimits(max_structs=2))
    with pytest.raises(ProtocolError, match="more than 2 ranges"):
        validate_update(three_ranges, UpdateLimits(max_delete_ranges=2))
    with pytest.raises(ProtocolError, match="2 clients"):
        validate_update(three_ranges, UpdateLimits(max_clients=1))


# --- Corpora: everything yjs and pycrdt write passes ----------------------------------------------


@pytest.fixture(scope="module")
def yjs_corpus() -> dict[str, Any]:
    return trio.run(run_update_corpus)  # type: ignore[no-any-return]


def pycrdt_updates() -> list[bytes]:
    """Updates pycrdt writes: each transaction's update, then whole-document updates."""
    updates: list[bytes] = []
    doc = pycrdt.Doc()
    doc.observe(lambda event: updates.append(event.update))
    text_ = doc.get("text", type=pycrdt.Text)
    text_.insert(0, "héllo wörld 😀 日本語")
    text_.insert(3, "bold", {"bold": True})
    text_.format(0, 3, {"italic": True, "link": {"href": "x", "n": [1, 2.5]}})
    text_.insert_embed(1, {"image": "a.png"})
    del text_[5:9]
    values = doc.get("map", type=pycrdt.Map)
    values["numbers"] = [0, -1, 2**31, 2**52, 1.5, 0.1, -1e300]
    values["nested"] = {"a": {"b": [None, True, False, "", {"c": []}]}}
    values["bytes"] = b"\x00\xff"
    values["sub"] = pycrdt.Doc()
    values["map"] = pycrdt.Map({"inner": pycrdt.Array([1, "two", pycrdt.Text("three")])})
    del values["numbers"]
    array = doc.get("array", type=pycrdt.Array)
    array.extend([1, "x", None, [1, [2]], {"k": "v"}])
    array.insert(1, pycrdt.Map({"m": 1}))
    del array[0:2]
    xml = doc.get("xml", type=pycrdt.XmlFragment)
    element = xml.children.append(pycrdt.XmlElement("p", {"class": "x"}))
    xml_text = element.children.append(pycrdt.XmlText("xml text"))
    xml_text.format(0, 3, {"b": True})
    element.attributes["id"] = "p1"
    xml.children.append(pycrdt.XmlText("tail"))
    other = pycrdt.Doc()
    other.apply_update(doc.get_update())
    other.get("text", type=pycrdt.Text).insert(0, "other client ")
    return [*updates, doc.get_update(), other.get_update(), other.get_update(doc.get_state())]


@requires_node
def test_every_yjs_update_passes_and_applies(yjs_corpus: dict[str, Any]) -> None:
    assert len(yjs_corpus["updates"]) > 500
    seen = set()
    for entry in yjs_corpus["updates"]:
        data = bytes.fromhex(entry["hex"])
        info = validate_update(data, LIMITS_FOR[entry["accept"]])
        seen.add(entry["accept"])
        if entry["accept"] != "default":
            # Encodings yrs misreads: refused unless asked for, and never applied here.
            with pytest.raises(ProtocolError, match="not accepted"):
                validate_update(data)
            continue
        doc = pycrdt.Doc()
        doc.apply_update(data)
        if entry["complete"]:
            expected = validate_state_vector(bytes.fromhex(entry["state_vector"]))
            # Lengths counted as yjs counts them, so the clocks agree with yjs and with yrs.
            assert {client: end for client, (_, end) in info.clocks.items()} == expected
            assert validate_state_vector(doc.get_state()) == expected, entry["name"]
    assert seen == set(LIMITS_FOR)


@requires_node
def test_every_yjs_state_vector_passes(yjs_corpus: dict[str, Any]) -> None:
    for entry in yjs_corpus["state_vectors"]:
        validate_state_vector(bytes.fromhex(entry["hex"]))


def test_every_pycrdt_update_passes() -> None:
    updates = pycrdt_updates()
    assert len(updates) > 20
    for data in updates:
        validate_update(data)
    doc = pycrdt.Doc()
    doc.apply_update(updates[-3])
    assert validate_state_vector(doc.get_state()) == {
        client: end for client, (_, end) in validate_update(updates[-3]).clocks.items()
    }


def truncations(data: bytes) -> range:
    """Every strict prefix length of a short update; a spread of them for a long one."""
    if len(data) <= 300:
        return range(len(data))
    return range(0, len(data), len(data) // 50 + 1)


@requires_node
def test_truncated_updates_fail(yjs_corpus: dict[str, Any]) -> None:
    corpus = [bytes.fromhex(e["hex"]) for e in yjs_corpus["updates"]] + pycrdt_updates()
    limits = UpdateLimits(allow_json_content=True, allow_xml_hooks=True)
    for data in corpus:
        for length in [*truncations(data), len(data) - 1]:
            with pytest.raises(ProtocolError):
                validate_update(data[:length], limits)


# --- Mutants of real updates ----------------------------------------------------------------------

INTERESTING_BYTES = [0x00, 0x01, 0x07, 0x0A, 0x20, 0x40, 0x74, 0x75, 0x76, 0x77, 0x7F, 0x80, 0xFF]


@st.composite
def mutants(draw: st.DrawFn, corpus: list[bytes]) -> tuple[bytes, bytes]:
    """A real update and a copy of it with a few bytes flipped, cut, inserted or spliced."""
    base = draw(st.sampled_from(corpus))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "splice", "nudge"]))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "splice":
            donor = draw(st.sampled_from(corpus))
            start = draw(st.integers(0, len(donor) - 1))
            data[at : at + draw(st.integers(0, 8))] = donor[
                start : start + draw(st.integers(1, 16))
            ]
        elif data:
            data[at] = (data[at] + draw(st.sampled_from([-2, -1, 1, 2]))) % 256
    return base, bytes(data)


@pytest.fixture(scope="module")
def mutation_corpus(yjs_corpus: dict[str, Any]) -> list[bytes]:
    """The valid updates of both corpora under 2 KB."""
    small = [bytes.fromhex(e["hex"]) for e in yjs_corpus["updates"] if len(e["hex"]) < 4000]
    return [u for u in small + pycrdt_updates() if validate_update_or_none(u)]


def validate_update_or_none(data: bytes) -> UpdateInfo | None:
    try:
        return validate_update(data)
    except ProtocolError:
        return None


@requires_node
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutants_raise_only_protocol_error(
    mutation_corpus: list[bytes], data: st.DataObject
) -> None:
    _, mutant = data.draw(mutants(mutation_corpus))
    validate_update_or_none(mutant)  # anything but ProtocolError escapes and fails


@requires_node
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validated_mutants_do_not_crash_pycrdt(
    mutation_corpus: list[bytes], data: st.DataObject
) -> None:
    batch = data.draw(st.lists(mutants(mutation_corpus), min_size=400, max_size=400))
    valid = [(base, mutant) for base, mutant in batch if validate_update_or_none(mutant)]
    outcomes = apply_in_child(valid)
    crashes = [o for o in outcomes if o.result in ("panic", "died")]
    assert not crashes, "\n".join(f"{o.result} {o.detail}: {o.mutant.hex()}" for o in crashes)
    assert len(outcomes) == len(valid)


def test_the_child_runner_reports_panics_and_deaths() -> None:
    """The harness of the test above sees what it is there to see."""
    empty = update()
    outcomes = apply_in_child(
        [
            (empty, KILLERS["zero_length_gc_after_string"]),
            (empty, update(section(7, 0, any_item(nested_arrays(200_000))))),
            (empty, update(section(7, 0, ONE_CHAR))),
            (empty, b"\x05"),
        ]
    )
    assert [o.result for o in outcomes] == ["panic", "died", "ok", "error"]
