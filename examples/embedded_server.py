"""Run a room server inside your own trio program, next to your other tasks.

    python examples/embedded_server.py --port 1234 --store rooms.db

The server shares the nursery with an application task that watches the rooms; Ctrl+C closes
every client with 1001 and flushes the store before the program exits.
"""

from __future__ import annotations

import argparse
import logging

import trio

from trio_ysync.server import RoomServer, shutdown_on_signals
from trio_ysync.store import open_store


async def report_rooms(server: RoomServer, interval: float) -> None:
    """An application task: log which rooms are loaded and how many clients each has."""
    while True:
        await trio.sleep(interval)
        summary = {name: len(room.peers) for name, room in server.rooms.items()}
        logging.info("rooms: %s", summary or "none")


async def main(port: int, store_spec: str) -> None:
    async with (
        open_store(store_spec) as store,
        RoomServer(store) as server,
        trio.open_nursery() as application,
    ):
        application.start_soon(report_rooms, server, 10.0)
        async with trio.open_nursery() as serving:
            bound = await serving.start(server.serve, "127.0.0.1", port)
            logging.info("serving ws://127.0.0.1:%d/<room>", bound)
            # Ctrl+C: close clients with 1001 and flush rooms; serve() returns when done.
            serving.start_soon(shutdown_on_signals, server)
        application.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="an embedded trio-ysync room server")
    parser.add_argument("--port", type=int, default=1234)
    parser.add_argument("--store", default="rooms.db", help="memory, FILE.db or DIRECTORY/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trio.run(main, args.port, args.store)
