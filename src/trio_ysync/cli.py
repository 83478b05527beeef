"""The ``trio-ysync`` command: ``serve`` runs a room server, ``store`` manages stored rooms."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from . import __version__

__all__ = ["main"]

logger = logging.getLogger("trio_ysync.cli")

#: The store of ``serve`` when none is named: an SQLite file in the current directory.
DEFAULT_STORE = "trio-ysync.db"


def build_parser() -> argparse.ArgumentParser:
    """The command line parser."""
    parser = argparse.ArgumentParser(prog="trio-ysync", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trio-ysync {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a y-websocket room server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=1234, help="port to bind (default: 1234)")
    serve.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"where rooms are kept: a .db/.sqlite file (SQLite), a directory (one file per "
        f"room) or 'memory' (nothing kept) (default: {DEFAULT_STORE})",
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
        type=int,
        default=64 * 1024 * 1024,
        help="largest accepted message in bytes (default: 64 MiB)",
    )
    serve.add_argument(
        "--max-buffered-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="unread bytes after which a slow client is disconnected (default: 64 MiB)",
    )
    serve.add_argument(
        "--room-grace-period",
        type=float,
        default=10.0,
        help="seconds a room stays loaded after its last client left (default: 10)",
    )
    store = commands.add_parser("store", help="inspect and maintain a store")
    store.add_argument(
        "--store", default=DEFAULT_STORE, help=f"the store (default: {DEFAULT_STORE})"
    )
    store_commands = store.add_subparsers(dest="store_command", required=True)
    store_commands.add_parser("list", help="list the stored rooms")
    export = store_commands.add_parser("export", help="write a room as one Yjs update")
    export.add_argument("room")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    import_ = store_commands.add_parser("import", help="store a Yjs update in a room")
    import_.add_argument("room")
    import_.add_argument("file", help="a binary Yjs update ('-' for standard input)")
    import_.add_argument(
        "--replace", action="store_true", help="replace the room's content instead of merging"
    )
    store_commands.add_parser("compact", help="merge every room's log into one update")
    import_ypy = store_commands.add_parser(
        "import-ypy", help="copy the rooms of a ypy-websocket / pycrdt-websocket SQLite database"
    )
    import_ypy.add_argument("database")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    from .server import RoomServer, shutdown_on_signals
    from .store import open_store

    store = open_store(args.store, fsync=args.fsync)
    server = RoomServer(
        store,
        max_message_size=args.max_message_size,
        max_buffered_bytes=args.max_buffered_bytes,
        room_grace_period=args.room_grace_period,
        broadcast_before_commit=args.broadcast_before_commit,
    )
    async with store, trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, args.host, args.port)
        logger.info("store: %r", store)
        print(f"trio-ysync serving ws://{args.host}:{port}/<room>", flush=True)
        await shutdown_on_signals(server)


async def _store_command(args: argparse.Namespace) -> int:
    from .store import admin, open_store

    async with open_store(args.store) as store:
        command = args.store_command
        if command == "list":
            for room in sorted(await store.list_rooms()):
                print(room)
        elif command == "export":
            update = await admin.export_room(store, args.room)
            if args.output:
                await trio.Path(args.output).write_bytes(update)
            else:
                sys.stdout.buffer.write(update)
                sys.stdout.flush()
        elif command == "import":
            if args.file == "-":
                update = sys.stdin.buffer.read()
            else:
                update = await trio.Path(args.file).read_bytes()
            await admin.import_room(store, args.room, update, replace=args.replace)
            print(f"imported {len(update)} bytes into {args.room!r}")
        elif command == "compact":
            for result in await admin.compact_all(store):
                print(
                    f"{result.room}: {result.entries_before} entries, "
                    f"{result.size_before} -> {result.size_after} bytes"
                )
        elif command == "import-ypy":
            for room in await admin.import_ypy_websocket(store, args.database):
                print(f"imported {room}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            trio.run(_serve, args)
            return 0
        return trio.run(_store_command, args)
    except LookupError as exc:
        print(f"trio-ysync: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"trio-ysync: {exc}", file=sys.stderr)
        return 1
