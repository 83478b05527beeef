"""Peer under test: pycrdt-websocket's ASGI server, served by Hypercorn in this process.

    python tests/bench/pycrdt_server.py --worker trio|asyncio

Binds an ephemeral port on 127.0.0.1 itself (Hypercorn is handed the listening socket as
``fd://N``, so both workers report the port the same way), prints ``{"port": N}`` once the
socket listens, and serves until SIGTERM / SIGINT. Rooms are in memory (no YStore).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys

from hypercorn.config import Config
from pycrdt.websocket import ASGIServer, WebsocketServer

#: Same order of magnitude as the other servers' defaults (Hypercorn's own is 100), so a
#: burst of connections is not refused by the kernel's accept queue.
BACKLOG = 1024


def listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def hypercorn_config(sock: socket.socket) -> Config:
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.backlog = BACKLOG
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "WARNING"
    # Large enough for the 10 MB document of the bigdoc workload.
    config.websocket_max_message_size = 64 * 1024 * 1024
    return config


def announce(sock: socket.socket) -> None:
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)


def run_trio(sock: socket.socket) -> None:
    import trio
    from hypercorn.trio import serve

    async def main() -> None:
        websocket_server = WebsocketServer()
        app = ASGIServer(websocket_server)
        async with websocket_server, trio.open_nursery() as nursery:
            await nursery.start(serve, app, hypercorn_config(sock))
            announce(sock)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


def run_asyncio(sock: socket.socket) -> None:
    import asyncio

    from hypercorn.asyncio import serve

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        websocket_server = WebsocketServer()
        app = ASGIServer(websocket_server)
        async with websocket_server:
            serving = asyncio.create_task(
                serve(app, hypercorn_config(sock), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            )
            announce(sock)
            await serving

    asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["trio", "asyncio"], default="trio")
    parser.add_argument("--port", type=int, default=0, help="0: an ephemeral port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sock = listening_socket(args.port)
    if args.worker == "trio":
        run_trio(sock)
    else:
        run_asyncio(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
