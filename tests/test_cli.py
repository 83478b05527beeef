"""The ``trio-ysync`` command: serve with graceful shutdown, the store commands, and one line
with a clear exit status for every operator mistake.

Mistakes of ``serve`` run the real command in a subprocess; the others call :func:`main` in this
process (the same code, without the second or two a Python start costs on a loaded machine).
"""

from __future__ import annotations

import os
import pty
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cliserver import cli_server
from permissions import IS_ROOT
from wsclient import connect
from ydocs import insert_text

from trio_ysync import __version__
from trio_ysync.auth import TokenAuthorizer
from trio_ysync.cli import main
from trio_ysync.doc import new_document
from trio_ysync.protocol import SyncStep1, SyncStep2, SyncUpdate
from trio_ysync.transport import CloseCode

# Root may write anywhere: as root, run the permission test without the capabilities that
# let root ignore file modes (setpriv comes with util-linux).
_SETPRIV = shutil.which("setpriv")
_UNPRIVILEGED = (
    [_SETPRIV, "--bounding-set=-dac_override,-dac_read_search", "--"]
    if IS_ROOT and _SETPRIV
    else []
)


def run_cli(*args: str, stdin: bytes = b"") -> bytes:
    result = subprocess.run(
        [sys.executable, "-m", "trio_ysync", *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def check_one_line(stderr: str, status: int, expected_status: int, says: str) -> None:
    """One line on stderr naming ``says``, no traceback, and the expected exit status."""
    assert status == expected_status, stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("trio-ysync: error: "), stderr
    assert says in stderr, stderr


def fail_cli(*args: str, status: int, says: str, cwd: Path | None = None, prefix=()) -> None:
    """Run the command in a subprocess; it must fail with one line."""
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "trio_ysync", *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        cwd=cwd,
    )
    check_one_line(result.stderr.decode(), result.returncode, status, says)


@pytest.fixture
def fail_main(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``fail_main(*args, status=, says=)`` runs main() in ``tmp_path``; it must fail with one
    line."""
    monkeypatch.chdir(tmp_path)

    def fail(*args: str, status: int, says: str) -> None:
        exit_status = main(list(args))
        check_one_line(capfd.readouterr().err, exit_status, status, says)

    return fail


async def test_sigterm_closes_clients_with_going_away_and_keeps_the_data(tmp_path: Path) -> None:
    store = str(tmp_path / "rooms.db")
    doc = new_document(client_id=7)
    insert_text(doc, 0, "persisted")
    with trio.fail_after(30):
        async with cli_server("--store", store) as server, connect(server.port, "notes") as client:
            await client.join()
            await client.send(SyncUpdate(doc.diff()), SyncStep1(b"\x00"))
            await client.receive_until(SyncStep2)  # answered after the commit
            server.terminate()
            assert await client.close_code() == CloseCode.GOING_AWAY
            assert await server.process.wait() == 0

    assert run_cli("store", "--store", store, "list") == b"notes\n"
    exported = tmp_path / "notes.bin"
    run_cli("store", "--store", store, "export", "notes", "-o", str(exported))
    copy = new_document()
    copy.apply_update(exported.read_bytes())
    assert copy.get_text("t") == "persisted"

    run_cli("store", "--store", store, "import", "copy", "-", stdin=exported.read_bytes())
    assert run_cli("store", "--store", store, "list").split() == [b"copy", b"notes"]
    run_cli("store", "--store", store, "compact")
    assert run_cli("store", "--store", store, "export", "copy") == exported.read_bytes()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--port", "-1"], "--port: expected a port number from 0 to 65535, got '-1'"),
        (["serve", "--port", "99999"], "expected a port number from 0 to 65535, got '99999'"),
        (["serve", "--port", "http"], "--port: expected a port number"),
        (["serve", "--max-message-size", "-5"], "--max-message-size: expected a positive"),
        (["serve", "--max-buffered-bytes", "0"], "--max-buffered-bytes: expected a positive"),
        (["serve", "--room-grace-period", "-1"], "--room-grace-period: expected a number"),
        (["serve", "--room-grace-period", "nan"], "--room-grace-period: expected a number"),
        (["--log-level", "LOUD", "serve"], "--log-level: expected one of DEBUG, INFO"),
        (["serve", "--log-level", "LOUD"], "--log-level: expected one of DEBUG, INFO"),
        (["serve", "--store", "rooms.txt"], "--store: cannot tell which store 'rooms.txt'"),
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["serve", "--workers", "2"], "--workers above 1 needs --redis URL"),
        (["serve", "--workers", "0"], "--workers: expected a number of processes from 1"),
        (["serve", "--store", "redis"], "--store redis means the --redis server"),
        (["serve", "--redis", "redis://x", "--redis-prefix", "a{b}"], "must not contain braces"),
        (["store"], "the following arguments are required: STORE_COMMAND"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_mistakes_are_one_line_and_status_2(
    fail_main, tmp_path: Path, args: list[str], says: str
) -> None:
    fail_main(*args, status=2, says=says)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_a_port_in_use_is_one_line_and_creates_no_store(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        store = str(tmp_path / "rooms.db")
        fail_cli("serve", "--port", port, "--store", store, status=1, says="port is in use")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_host_is_one_line() -> None:
    fail_cli("serve", "--host", "no-such-host.invalid", status=2, says="cannot listen on")
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine. Nothing is sent.
    fail_cli("serve", "--host", "192.0.2.1", "--port", "0", status=2, says="not an address of")


@pytest.mark.parametrize(
    ("store", "serve_says", "list_says"),
    [
        ("missing/rooms.db", "the directory", "no store at"),
        ("missing/rooms/", "the directory", "no store at"),
        ("corrupt.db", "not an SQLite database", "not an SQLite database"),
        ("ypy.db", "trio-ysync store import-ypy ypy.db", "trio-ysync store import-ypy ypy.db"),
        ("a-file/", "not a directory", "no store at"),
    ],
)
def test_stores_that_cannot_be_opened_are_one_line(
    fail_main, tmp_path: Path, store: str, serve_says: str, list_says: str
) -> None:
    (tmp_path / "corrupt.db").write_bytes(b"not a database at all " * 50)
    (tmp_path / "a-file").write_bytes(b"")
    db = sqlite3.connect(tmp_path / "ypy.db")  # the layout of ypy-websocket's store
    db.execute("CREATE TABLE yupdates (path TEXT, yupdate BLOB, metadata BLOB, timestamp REAL)")
    db.close()
    before = sorted(tmp_path.iterdir())
    fail_cli("serve", "--port", "0", "--store", store, status=1, says=serve_says, cwd=tmp_path)
    fail_main("store", "list", "--store", store, status=1, says=list_says)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.skipif(
    sys.platform == "win32" or (IS_ROOT and not _SETPRIV),
    reason="needs POSIX permissions, and setpriv (util-linux) to drop root's override",
)
def test_a_store_without_permission_is_one_line(tmp_path: Path) -> None:
    """As a normal user, the documentation's ``--store /var/lib/rooms/`` failed like this."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for store in (f"{locked}/rooms/", f"{locked}/rooms.db"):
        fail_cli(
            "serve", "--store", store, status=1, says="permission denied", prefix=_UNPRIVILEGED
        )
    assert list(locked.iterdir()) == []


def test_store_commands_on_a_mistyped_path_create_nothing(fail_main, tmp_path: Path) -> None:
    for command in (["list"], ["export", "room", "-o", "out.bin"], ["compact"]):
        fail_main("store", *command, "--store", "typo.db", status=1, says="no store at typo.db")
        fail_main("store", "--store", "typo/", *command, status=1, says="no store at typo/")
    (tmp_path / "junk.bin").write_bytes(b"\xff" * 10)
    says = "not a valid Yjs update"
    fail_main("store", "import", "room", "junk.bin", "--store", "new.db", status=1, says=says)
    says = "missing.bin: No such file"
    fail_main("store", "import", "room", "missing.bin", "--store", "new.db", status=1, says=says)
    assert [path.name for path in tmp_path.iterdir()] == ["junk.bin"]


def test_empty_results_say_so(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["store", "--store", f"{tmp_path}/empty/", "list"]) == 0
    listed = capfd.readouterr()
    assert listed.out == ""  # stdout stays a list of rooms, for scripts
    assert listed.err == f"no rooms in {tmp_path}/empty/\n"
    (tmp_path / "update.bin").write_bytes(new_document().diff())
    store = str(tmp_path / "rooms.db")
    assert main(["store", "import", "room", str(tmp_path / "update.bin"), "--store", store]) == 0
    assert main(["store", "compact", "--store", store]) == 0
    assert "nothing to compact" in capfd.readouterr().out


def test_export_refuses_to_write_binary_to_a_terminal(tmp_path: Path) -> None:
    store = str(tmp_path / "rooms.db")
    run_cli("store", "import", "room", "-", "--store", store, stdin=new_document().diff())
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "trio_ysync", "store", "export", "room", "--store", store],
            stdout=terminal,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    check_one_line(result.stderr.decode(), result.returncode, 2, "binary update to a terminal")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from trio_ysync.store import StoreError

    with pytest.raises(StoreError, match="no store at"):
        main(["store", "list", "--debug", "--store", str(tmp_path / "typo.db")])


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"trio-ysync {__version__}\n"
    for command in ([], ["serve"], ["store"], ["store", "export"]):
        assert main([*command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "usage: trio-ysync" in text
        assert "``" not in text  # no reStructuredText markup


def test_export_of_an_unknown_room_fails_clearly(fail_main, tmp_path: Path) -> None:
    (tmp_path / "update.bin").write_bytes(new_document().diff())
    assert main(["store", "import", "room", "update.bin", "--store", "rooms.db"]) == 0
    fail_main("store", "export", "nope", "--store", "rooms.db", status=1, says="no room 'nope'")


# -- tokens and access control -----------------------------------------------------------


def test_token_create_prints_a_token_the_server_accepts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 40 + "\n")
    args = ["token", "create", "--secret-file", str(secret), "--room", "team/", "--prefix"]
    assert main([*args, "--read-only", "--subject", "ada", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    authorizer = TokenAuthorizer(b"s" * 40)
    grant = authorizer.grant(authorizer.claims(token), "team/plan")
    assert grant.read_only
    assert grant.identity == "ada"


@pytest.mark.parametrize(
    ("secret", "args", "status", "says"),
    [
        (b"short\n", ["token", "create", "--room", "r"], 2, "at least 32 random bytes"),
        (None, ["token", "create", "--room", "r"], 1, "--secret-file: cannot read"),
        (b"s" * 40, ["token", "create"], 2, "the following arguments are required: --room"),
        (b"s" * 40, ["token", "create", "--room", "r", "--ttl", "-1"], 2, "--ttl: expected"),
        (b"short", ["serve", "--auth-secret-file"], 2, "--auth-secret-file"),
        (b"s" * 40, ["serve", "--max-connections", "-3"], 2, "--max-connections: expected"),
        (b"s" * 40, ["serve", "--max-messages-per-second", "x"], 2, "expected a number"),
    ],
)
def test_access_mistakes_are_one_line(
    fail_main, tmp_path: Path, secret: bytes | None, args: list[str], status: int, says: str
) -> None:
    path = tmp_path / "secret"
    if secret is not None:
        path.write_bytes(secret)
    if args[0] == "token":
        args = [*args, "--secret-file", str(path)]
    elif args[-1] == "--auth-secret-file":
        args = [*args, str(path), "--port", "0", "--store", "memory"]
    fail_main(*args, status=status, says=says)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--webhook", "http://127.0.0.1:9/hook"], "a webhook needs a secret"),
        (["--webhook-events", "room.changed"], "need --webhook URL"),
        (
            ["--webhook", "ftp://x/", "--webhook-secret-file", "SECRET"],
            "--webhook:",
        ),
        (
            ["--webhook", "http://x/", "--webhook-secret-file", "SECRET", "--webhook-events", "x"],
            "--webhook:",
        ),
    ],
)
def test_webhook_mistakes_are_one_line(
    fail_main, tmp_path: Path, args: list[str], says: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"w" * 40)
    args = [str(secret) if arg == "SECRET" else arg for arg in args]
    fail_main("serve", "--port", "0", "--store", "memory", *args, status=2, says=says)
