"""The ``trio-ysync`` command: ``serve`` runs a room server, ``store`` manages stored rooms."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from . import __version__

__all__ = ["main"]

logger = logging.getLogger("trio_ysync.cli")


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
        default="memory",
        help="'memory' (keeps nothing after exit)",
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
    return parser


async def _serve(args: argparse.Namespace) -> None:
    from .server import RoomServer
    from .store import open_store

    store = open_store(args.store)
    server = RoomServer(
        store,
        max_message_size=args.max_message_size,
        max_buffered_bytes=args.max_buffered_bytes,
        room_grace_period=args.room_grace_period,
    )
    async with store, trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            port = await nursery.start(server.serve, args.host, args.port)
            print(f"trio-ysync serving ws://{args.host}:{port}/<room>", flush=True)
            async for signum in signals:
                logger.info("received %s", signal.Signals(signum).name)
                server.shutdown()
                break


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        trio.run(_serve, args)
    return 0
