"""The ``trio-ysync`` command: ``serve`` runs a room server, ``store`` manages stored rooms.

Operator mistakes end in one line on standard error and exit status 2 (the command line is
wrong) or 1 (it could not be carried out); ``--debug`` shows the traceback instead. Errors are
turned into those lines in one place, :func:`main`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, NoReturn

import trio

from . import __version__
from ._memory import release_freed_memory, tune_garbage_collector
from ._redis import DEFAULT_PREFIX, check_prefix
from .auth import create_token, read_secret_file
from .bus import BusError
from .errors import DocumentError, ProtocolError
from .hooks import ServerHooks
from .limits import Limits
from .logs import TEXT_FORMAT, WORKER_TEXT_FORMAT, JSONFormatter, WorkerTag
from .room import DEFAULT_PRESENCE_INTERVAL
from .store import Store, StoreError, admin, open_store

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["CommandError", "UsageError", "build_parser", "main"]

logger = logging.getLogger("trio_ysync.cli")

#: The store of ``serve`` and ``store`` when none is named: an SQLite file in this directory.
DEFAULT_STORE = "trio-ysync.db"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_DESCRIPTION = (
    "Serve Yjs rooms to y-websocket clients (serve), inspect or maintain the stored rooms "
    "(store) and mint access tokens (token). Run 'trio-ysync COMMAND --help' for a command's "
    "options."
)


class CommandError(Exception):
    """The command could not be carried out (exit status 1); the message says what to do."""

    exit_status = 1


class UsageError(CommandError):
    """The command line asks for something impossible (exit status 2)."""

    exit_status = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- argument types -----------------------------------------------------------------------


def _number_type(
    convert: Callable[[str], Any], check: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_port_number = _number_type(int, lambda n: 0 <= n <= 65535, "a port number from 0 to 65535")
_positive_size = _number_type(int, lambda n: n > 0, "a positive number of bytes")
_seconds = _number_type(float, lambda s: 0 <= s < float("inf"), "a number of seconds >= 0")
_count = _number_type(int, lambda n: n >= 0, "a whole number >= 0 (0 turns the limit off)")
_processes = _number_type(int, lambda n: 1 <= n <= 1024, "a number of processes from 1 to 1024")
_rate = _number_type(float, lambda r: 0 <= r < float("inf"), "a number >= 0 (0: no limit)")


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


# -- the parser ---------------------------------------------------------------------------


def _add_common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted before and after the command name (only the top level has defaults,
    so an option given after the command is not overwritten by one left out)."""
    default: Any = argparse.SUPPRESS
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default="INFO" if defaults else default,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else default,
        help="log lines as text, or as one JSON object per line (default: text)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if defaults else default,
        help="show the full traceback of an error",
    )


def _add_store_option(parser: argparse.ArgumentParser, *, defaults: bool, help: str) -> None:
    parser.add_argument(
        "--store",
        default=DEFAULT_STORE if defaults else argparse.SUPPRESS,
        help=f"{help} (default: {DEFAULT_STORE})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (also rendered as the CLI reference of the documentation)."""
    parser = _Parser(prog="trio-ysync", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"trio-ysync {__version__}")
    _add_common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run a y-websocket room server",
        description="Run a room server that y-websocket clients connect to at "
        "ws://HOST:PORT/ROOM. Ctrl+C or SIGTERM stops it gracefully.",
    )
    _add_common_options(serve, defaults=False)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=_port_number,
        default=1234,
        help="port to bind, 0 for any free port (default: 1234)",
    )
    _add_store_option(
        serve,
        defaults=True,
        help="where rooms are kept: a .db/.sqlite file (SQLite), a directory ending in '/' "
        "(one file per room), 'memory' (nothing kept), a redis:// URL, or 'redis' (the --redis "
        "server)",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="also serve a collaborative demo editor at http://HOST:PORT/demo/",
    )
    serve.add_argument(
        "--fsync",
        action="store_true",
        help="make every commit survive power loss, not only a killed process",
    )
    serve.add_argument(
        "--broadcast-before-commit",
        action="store_true",
        help="broadcast updates before they are stored (lower latency; a crash may lose "
        "updates that clients already saw)",
    )
    serve.add_argument(
        "--max-message-size",
        type=_positive_size,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest accepted message (default: 64 MiB)",
    )
    serve.add_argument(
        "--max-buffered-bytes",
        type=_positive_size,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="unread bytes after which a slow client is disconnected (default: 64 MiB)",
    )
    serve.add_argument(
        "--room-grace-period",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a room stays loaded after its last client left (default: 10)",
    )
    _add_access_options(serve)
    _add_operations_options(serve)
    _add_cluster_options(serve)

    store = commands.add_parser(
        "store",
        help="inspect and maintain a store",
        description="Inspect and maintain the rooms of a store. --store may be given before "
        "or after the store command.",
    )
    _add_common_options(store, defaults=False)
    store_help = "the store: a .db/.sqlite file or a directory ending in '/'"
    _add_store_option(store, defaults=True, help=store_help)
    store_commands = store.add_subparsers(
        dest="store_command", required=True, metavar="STORE_COMMAND"
    )

    def store_command(name: str, help: str) -> argparse.ArgumentParser:
        command = store_commands.add_parser(name, help=help, description=help[0].upper() + help[1:])
        _add_common_options(command, defaults=False)
        _add_store_option(command, defaults=False, help=store_help)
        return command

    store_command("list", "list the stored rooms")
    export = store_command("export", "write a room as one Yjs update")
    export.add_argument("room")
    export.add_argument(
        "-o", "--output", help="file to write (default: standard output, if not a terminal)"
    )
    import_ = store_command("import", "store a Yjs update in a room (the store is created)")
    import_.add_argument("room")
    import_.add_argument("file", help="a binary Yjs update ('-' for standard input)")
    import_.add_argument(
        "--replace", action="store_true", help="replace the room's content instead of merging"
    )
    store_command("compact", "merge every room's log into one update")
    import_ypy = store_command(
        "import-ypy",
        "copy the rooms of a ypy-websocket / pycrdt-websocket SQLite database "
        "(the store is created)",
    )
    import_ypy.add_argument("database")

    token = commands.add_parser(
        "token",
        help="mint access tokens for a server started with --auth-secret-file",
        description="Mint access tokens (signed JSON Web Tokens, HS256).",
    )
    _add_common_options(token, defaults=False)
    token_commands = token.add_subparsers(
        dest="token_command", required=True, metavar="TOKEN_COMMAND"
    )
    create = token_commands.add_parser(
        "create",
        help="print a token for a room (or rooms) on standard output",
        description="Print a token that opens ROOM (or, with --prefix, every room whose name "
        "starts with ROOM) on a server sharing the secret. y-websocket clients pass it as "
        "params: { token }; other clients in an 'Authorization: Bearer' header.",
    )
    _add_common_options(create, defaults=False)
    create.add_argument(
        "--secret-file", required=True, metavar="FILE", help="the shared secret (32+ bytes)"
    )
    create.add_argument("--room", required=True, help="the room name, or a prefix of names")
    create.add_argument(
        "--prefix",
        action="store_true",
        help="ROOM is a prefix ('--room \"\" --prefix' covers every room: a server-wide token)",
    )
    create.add_argument("--read-only", action="store_true", help="grant read-only access")
    create.add_argument(
        "--ttl",
        type=_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="seconds until it expires; 0 for never (default: 3600)",
    )
    create.add_argument("--subject", help="who the token is for (shown in the server's logs)")
    return parser


def _add_cluster_options(serve: argparse.ArgumentParser) -> None:
    cluster = serve.add_argument_group(
        "scaling out",
        "Servers that share rooms through Redis; every server of a cluster uses the same "
        "--store (one SQLite file on one host, or a Redis store). See the Scaling out page.",
    )
    cluster.add_argument(
        "--redis",
        metavar="URL",
        help="join the cluster of servers that share rooms through this Redis server: "
        "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]",
    )
    cluster.add_argument(
        "--redis-prefix",
        default=DEFAULT_PREFIX,
        metavar="PREFIX",
        help="the start of every Redis key name, so that several clusters can share one Redis "
        f"database (default: {DEFAULT_PREFIX})",
    )
    cluster.add_argument(
        "--workers",
        type=_processes,
        default=1,
        metavar="N",
        help="serve the port from N processes (SO_REUSEPORT) to use N cores; above 1 needs "
        "--redis (default: 1)",
    )
    # Given by the parent of --workers to each worker: which one it is.
    cluster.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)


def _add_operations_options(serve: argparse.ArgumentParser) -> None:
    operations = serve.add_argument_group("operations", "See the Operations page.")
    operations.add_argument(
        "--metrics",
        action="store_true",
        help="count what the server does and serve it for Prometheus at GET /metrics",
    )
    operations.add_argument(
        "--metrics-token-file",
        metavar="FILE",
        help="answer /metrics only to requests with the bearer token in FILE",
    )
    operations.add_argument(
        "--webhook",
        metavar="URL",
        help="POST signed notices of room changes to URL (see the Integration page)",
    )
    operations.add_argument(
        "--webhook-secret-file",
        metavar="FILE",
        help="the webhook signing secret: whsec_<base64> (Standard Webhooks), or a raw key",
    )
    operations.add_argument(
        "--webhook-events",
        metavar="TYPES",
        help="what to send, separated by commas: room.changed, connection.opened, "
        "connection.closed (default: room.changed)",
    )
    operations.add_argument(
        "--presence-interval",
        type=_seconds,
        default=DEFAULT_PRESENCE_INTERVAL,
        metavar="SECONDS",
        help="after a room sends an awareness change, gather the next ones over this long "
        f"into one message per client (default: {DEFAULT_PRESENCE_INTERVAL}; 0: each change "
        "at once)",
    )
    operations.add_argument(
        "--echo-updates",
        action="store_true",
        help="send each update back to its sender too (y-websocket 4's sync-status)",
    )
    operations.add_argument(
        "--no-http-api",
        dest="http_api",
        action="store_false",
        help="do not answer the HTTP API for documents (/api/rooms)",
    )


def _add_access_options(serve: argparse.ArgumentParser) -> None:
    defaults = Limits()
    access = serve.add_argument_group(
        "access control and limits", "Numbers of 0 turn a limit off. See the Authentication page."
    )
    access.add_argument(
        "--auth-secret-file",
        metavar="FILE",
        help="require a token signed with the secret in FILE on every connection (see "
        "'trio-ysync token create')",
    )
    access.add_argument(
        "--no-read-only-awareness",
        dest="read_only_awareness",
        action="store_false",
        help="ignore the awareness (presence) of read-only clients",
    )
    for flag, field, kind, help in (
        ("--max-connections", "max_connections", _count, "open connections in all (HTTP 503)"),
        (
            "--max-connections-per-address",
            "max_connections_per_address",
            _count,
            "open connections from one address (HTTP 429)",
        ),
        ("--max-rooms", "max_rooms", _count, "rooms loaded at once (HTTP 503)"),
        (
            "--max-upgrades-per-minute",
            "upgrades_per_minute",
            _count,
            "new connections per address per minute (HTTP 429)",
        ),
        (
            "--max-messages-per-second",
            "messages_per_second",
            _rate,
            "messages per connection per second, sustained (close 1008)",
        ),
        (
            "--max-bytes-per-second",
            "bytes_per_second",
            _rate,
            "bytes per connection per second, sustained (close 1008)",
        ),
    ):
        default = getattr(defaults, field)
        access.add_argument(
            flag, dest=field, type=kind, default=default, metavar="N",
            help=f"{help} (default: {default:.0f})",
        )  # fmt: skip
    access.add_argument(
        "--allow-origin",
        dest="allowed_origins",
        action="append",
        metavar="ORIGIN",
        help="accept browsers only from this origin, e.g. https://editor.example.com "
        "(repeat for several; default: any)",
    )
    access.add_argument(
        "--trusted-proxies",
        type=_count,
        default=0,
        metavar="N",
        help="reverse proxies in front of the server whose X-Forwarded-For entries are "
        "trusted for the client address (default: 0)",
    )


# -- serve --------------------------------------------------------------------------------


def _listen_error(host: str, port: int, exc: OSError) -> CommandError:
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return UsageError(
            f"cannot listen on {host!r}: not an address or a host name this machine knows "
            "(use an IP address such as 127.0.0.1 or 0.0.0.0)"
        )
    if exc.errno == errno.EADDRINUSE:
        return CommandError(
            f"cannot listen on {where}: the port is in use (is another server running? "
            "choose another --port)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return UsageError(
            f"cannot listen on {where}: {host} is not an address of this machine "
            "(use 127.0.0.1, 0.0.0.0 or one of its addresses)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CommandError(
            f"cannot listen on {where}: permission denied (ports below 1024 need "
            "privileges: choose a --port above 1023)"
        )
    return CommandError(f"cannot listen on {where}: {exc.strerror or exc}")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_serve(args: argparse.Namespace) -> None:
    """The mistakes of a ``serve`` command line that need no I/O to be found."""
    if args.workers > 1 and args.redis is None:
        raise UsageError(
            "--workers above 1 needs --redis URL: the worker processes share their rooms "
            "through Redis"
        )
    if args.store == "redis" and args.redis is None:
        raise UsageError("--store redis means the --redis server: give --redis URL too")
    try:
        check_prefix(args.redis_prefix)
    except ValueError as exc:
        raise UsageError(f"--redis-prefix: {exc}") from exc


def _serve_store(args: argparse.Namespace) -> Store:
    spec = args.redis if args.store == "redis" else args.store
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return _open_store(spec, redis_prefix=args.redis_prefix)
    return _open_store(spec, fsync=args.fsync)


async def _listen(args: argparse.Namespace, *, listen: bool = True) -> list[Any]:
    """The listening sockets (bound only, without ``listen``): shared with the other workers
    (``SO_REUSEPORT``) for a worker or the parent of workers."""
    from ._workers import bind_reuseport

    try:
        if args.workers == 1:
            return list(await trio.open_tcp_listeners(args.port, host=args.host))
        sockets = await bind_reuseport(args.host, args.port, listen=listen)
    except OSError as exc:
        raise _listen_error(args.host, args.port, exc) from exc
    return [trio.SocketListener(sock) for sock in sockets] if listen else sockets


def _print_serving(args: argparse.Namespace, port: int, what: str = "") -> None:
    base = f"{_url_host(args.host)}:{port}"
    print(f"trio-ysync serving ws://{base}/<room>{what}", flush=True)
    if args.demo:
        print(f"demo editor: http://{base}/demo/", flush=True)


async def _serve(args: argparse.Namespace, started: Callable[[], None]) -> None:
    from .auth import TokenAuthorizer, allow_everyone
    from .bus import open_bus
    from .metrics import Metrics
    from .server import RoomServer, shutdown_on_signals

    authorize = (
        allow_everyone
        if args.auth_secret_file is None
        else TokenAuthorizer(_secret(args.auth_secret_file, "--auth-secret-file"))
    )
    metrics_token = (
        None
        if args.metrics_token_file is None
        else _secret(args.metrics_token_file, "--metrics-token-file", check=False).decode()
    )
    hooks = _hooks(args)
    store = _serve_store(args)
    # The port is bound before the store opens, so a server that cannot listen creates no
    # file; the bus and the store close after the server has flushed its rooms.
    async with AsyncExitStack() as stack:
        listeners = await _listen(args)
        for listener in listeners:
            stack.push_async_callback(listener.aclose)
        await stack.enter_async_context(store)
        bus = await stack.enter_async_context(open_bus(args.redis, store, prefix=args.redis_prefix))
        server = RoomServer(
            store,
            bus=bus,
            max_message_size=args.max_message_size,
            max_buffered_bytes=args.max_buffered_bytes,
            room_grace_period=args.room_grace_period,
            broadcast_before_commit=args.broadcast_before_commit,
            demo=args.demo,
            authorize=authorize,
            limits=_limits(args),
            read_only_awareness=args.read_only_awareness,
            metrics=Metrics() if args.metrics or args.metrics_token_file else None,
            metrics_token=metrics_token,
            http_api=args.http_api,
            presence_interval=args.presence_interval,
            echo_updates=args.echo_updates,
            hooks=hooks,
        )
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve_listeners, listeners)
            _print_serving(args, port)
            tune_garbage_collector()
            started()
            logger.info("store: %r", store)
            if args.redis is not None:
                logger.info("cluster: %r", bus)
            async with trio.open_nursery() as watchers:
                watchers.start_soon(release_freed_memory)
                if args.worker_index is not None:
                    from ._workers import stop_when_parent_exits

                    watchers.start_soon(stop_when_parent_exits)
                await shutdown_on_signals(server)
                watchers.cancel_scope.cancel()


async def _serve_workers(
    args: argparse.Namespace, argv: Sequence[str], started: Callable[[], None]
) -> None:
    """The parent of ``--workers``: bind the port, check the store and Redis once (so that a
    mistake is one line, not one per worker), then start and supervise the workers."""
    from ._workers import WorkerFailedError, supervise
    from .bus import open_bus

    reserved = await _listen(args, listen=False)
    try:
        port = reserved[0].getsockname()[1]
        store = _serve_store(args)
        async with store, open_bus(args.redis, store, prefix=args.redis_prefix):
            pass
        command = [sys.executable, "-m", "trio_ysync", *argv, "--port", str(port)]

        def listening(pids: list[int]) -> None:
            for sock in reserved:
                sock.close()
            _print_serving(args, port, f" ({args.workers} workers)")
            started()
            for index, pid in enumerate(pids, start=1):
                logger.info("worker %d: process %d", index, pid)

        try:
            await supervise(
                [[*command, "--worker-index", str(i)] for i in range(1, args.workers + 1)],
                listening,
            )
        except WorkerFailedError as exc:
            raise CommandError(str(exc)) from exc
    finally:
        for sock in reserved:
            sock.close()


def _hooks(args: argparse.Namespace) -> list[ServerHooks]:
    from .webhooks import Webhooks

    if args.webhook is None:
        if args.webhook_secret_file is not None or args.webhook_events is not None:
            raise UsageError("--webhook-secret-file and --webhook-events need --webhook URL")
        return []
    try:
        return [Webhooks.from_options(args.webhook, args.webhook_secret_file, args.webhook_events)]
    except ValueError as exc:
        raise UsageError(f"--webhook: {exc}") from exc


def _limits(args: argparse.Namespace) -> Limits:
    # On the command line 0 turns a limit off; Limits says that with None.
    return Limits(
        max_connections=args.max_connections or None,
        max_connections_per_address=args.max_connections_per_address or None,
        max_rooms=args.max_rooms or None,
        upgrades_per_minute=args.upgrades_per_minute or None,
        messages_per_second=args.messages_per_second or None,
        bytes_per_second=args.bytes_per_second or None,
        allowed_origins=frozenset(args.allowed_origins) if args.allowed_origins else None,
        trusted_proxies=args.trusted_proxies,
    )


def _secret(path: str, option: str, *, check: bool = True) -> bytes:
    try:
        if not check:
            with open(path, "rb") as file:
                return file.read().strip()
        return read_secret_file(path)
    except OSError as exc:
        raise CommandError(f"{option}: cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"{option}: {path}: {exc}") from exc


def _token(args: argparse.Namespace) -> None:
    secret = _secret(args.secret_file, "--secret-file")
    print(
        create_token(
            secret,
            args.room,
            prefix=args.prefix,
            read_only=args.read_only,
            ttl=args.ttl or None,
            subject=args.subject,
        )
    )


# -- store commands -----------------------------------------------------------------------


def _open_store(spec: str, **options: Any) -> Store:
    try:
        return open_store(spec, **options)
    except ValueError as exc:
        raise UsageError(f"--store: {exc}") from exc


async def _list(store: Store, args: argparse.Namespace) -> None:
    rooms = await store.list_rooms()
    for room in rooms:
        print(room)
    if not rooms:
        print(f"no rooms in {args.store}", file=sys.stderr)


async def _export(store: Store, args: argparse.Namespace) -> None:
    if not args.output and sys.stdout.isatty():
        raise UsageError(
            "not writing a binary update to a terminal: give -o FILE or redirect the output "
            "(trio-ysync store export ROOM > ROOM.bin)"
        )
    update = await admin.export_room(store, args.room)
    if args.output:
        await trio.Path(args.output).write_bytes(update)
    else:
        sys.stdout.buffer.write(update)
        sys.stdout.flush()


async def _import(store: Store, args: argparse.Namespace) -> None:
    if args.file == "-":
        update = sys.stdin.buffer.read()
    else:
        update = await trio.Path(args.file).read_bytes()
    await admin.import_room(store, args.room, update, replace=args.replace)
    print(f"imported {len(update)} bytes into {args.room!r}")


async def _compact(store: Store, args: argparse.Namespace) -> None:
    results = await admin.compact_all(store)
    for result in results:
        print(
            f"{result.room}: {result.entries_before} entries, "
            f"{result.size_before} -> {result.size_after} bytes"
        )
    if not results:
        print("nothing to compact: every room's log is one entry already")


async def _import_ypy(store: Store, args: argparse.Namespace) -> None:
    rooms = await admin.import_ypy_websocket(store, args.database)
    for room in rooms:
        print(f"imported {room}")
    if not rooms:
        print(f"{args.database} holds no documents: nothing imported")


_STORE_COMMANDS: dict[str, Callable[[Store, argparse.Namespace], Awaitable[None]]] = {
    "list": _list,
    "export": _export,
    "import": _import,
    "compact": _compact,
    "import-ypy": _import_ypy,
}
#: The store commands that may create the store; the others fail on a missing one.
_CREATING_COMMANDS = ("import", "import-ypy")


async def _store_command(args: argparse.Namespace) -> None:
    # The store opens at its first operation, after the command checked its input, so a
    # failed import creates no file; and reading a mistyped path creates no empty store.
    store = _open_store(args.store, create=args.store_command in _CREATING_COMMANDS)
    try:
        await _STORE_COMMANDS[args.store_command](store, args)
    finally:
        await store.aclose()


# -- the error boundary -------------------------------------------------------------------


def _single_error(exc: BaseException) -> BaseException:
    """The one real error inside (nested) exception groups, or ``exc`` itself.

    Trio wraps errors of nursery tasks in groups; an operator needs the error, not the tree.
    Cancellations caused by the error are left out.
    """
    while isinstance(exc, BaseExceptionGroup):
        inner: list[BaseException] = [
            e for e in exc.exceptions if not isinstance(e, trio.Cancelled)
        ]
        if len(inner) != 1:
            break
        exc = inner[0]
    error: BaseException = exc
    return error


def _describe(exc: BaseException) -> tuple[str, int]:
    """The message and the exit status for an error that ended the command."""
    if isinstance(exc, CommandError):
        return str(exc), exc.exit_status
    if isinstance(exc, (StoreError, BusError, ImportError)):
        return str(exc), 1
    if isinstance(exc, LookupError):  # an unknown room
        return str(exc.args[0] if exc.args else exc), 1
    if isinstance(exc, (DocumentError, ProtocolError)):
        return f"not a valid Yjs update: {exc}", 1
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}", 1
    if isinstance(exc, ValueError):
        return str(exc), 1
    return f"unexpected error: {type(exc).__name__}: {exc} (--debug shows the traceback)", 1


def _configure_logging(level: str, format: str, worker: int | None = None) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if worker is not None:
        handler.addFilter(WorkerTag(worker))
    text = TEXT_FORMAT if worker is None else WORKER_TEXT_FORMAT
    handler.setFormatter(JSONFormatter() if format == "json" else logging.Formatter(text))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    if level != "DEBUG":
        # The Redis client logs its own script retries (EVALSHA, then the script) at INFO.
        logging.getLogger("coredis").setLevel(logging.WARNING)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args: argparse.Namespace | None = None
    handler: logging.Handler | None = None
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        handler = _configure_logging(
            args.log_level, args.log_format, getattr(args, "worker_index", None)
        )
        if args.command == "token":
            _token(args)
        elif args.command == "serve":
            _check_serve(args)
            # Startup is quiet unless it fails: the log starts once the server is up.
            if not args.debug:
                handler.setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
            started = partial(handler.setLevel, args.log_level)
            if args.workers > 1 and args.worker_index is None:
                trio.run(_serve_workers, args, argv, started)
            else:
                trio.run(_serve, args, started)
        else:
            trio.run(_store_command, args)
        return 0
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if args is not None and args.debug:
            raise
        error = _single_error(exc)
        if isinstance(error, KeyboardInterrupt):
            return 130
        message, status = _describe(error)
        one_line = " ".join(message.split())
        worker = getattr(args, "worker_index", None)
        who = "" if worker is None else f"worker {worker}: "
        print(f"trio-ysync: error: {who}{one_line}", file=sys.stderr)
        return status
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
