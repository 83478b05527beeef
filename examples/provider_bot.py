"""A bot that joins a room, shows up in its presence list, appends a line and prints the text.

Run a y-websocket server, for example the reference one::

    npx @y/websocket-server            # listens on localhost:1234

or trio-ysync's own, then::

    python examples/provider_bot.py ws://localhost:1234 my-room --name bot --line "hello"

Open the same room in a y-websocket web app (a shared ``Y.Text`` named "t" by default) and the
line appears there, while the bot is listed among the connected users as long as it runs.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys

import pycrdt
import trio

from trio_ysync.provider import ConnectionStatus, open_provider


async def run_bot(args: argparse.Namespace) -> str | None:
    """Run the bot; returns why it gave up, or ``None``."""
    # A 32-bit client ID, as yjs draws them (see docs/documents.rst on y-py and large IDs).
    doc: pycrdt.Doc[pycrdt.Text] = pycrdt.Doc(client_id=secrets.randbits(32))
    text = doc.get(args.text, type=pycrdt.Text)

    async with open_provider(args.url, doc, room=args.room) as provider:
        # Presence is announced as soon as the connection opens, and renewed every 15 s.
        provider.awareness.set_local_state({"user": {"name": args.name, "bot": True}})
        # The provider retries for ever while the server is down: bound the wait here.
        with trio.move_on_after(args.timeout):
            await provider.wait_synced()  # the room's content is in `doc` now
        if not provider.synced:
            return (
                f"could not sync with {args.url} within {args.timeout:g} s: "
                f"{provider.last_error or 'no answer'}"
            )
        print(f"joined {provider.room!r} ({provider.status.value}):")
        for client_id, state in provider.awareness.remote_states.items():
            print(f"  client {client_id}: {state}")

        text += args.line + "\n"  # a local edit: sent to the room right away
        print("--- text ---")
        print(str(text), end="")

        if args.stay:
            print(f"--- staying {args.stay} s; edits from others follow ---")
            doc.observe(lambda event: print("--- text ---\n" + str(text), end=""))
            with trio.move_on_after(args.stay):
                async for status in provider.status_changes():
                    if status is not ConnectionStatus.CONNECTED:
                        print(f"[{status.value}]")
    # Leaving the block sent the awareness removal and closed the connection.
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="server URL, e.g. ws://localhost:1234")
    parser.add_argument("room", help="room (document) name")
    parser.add_argument("--name", default="trio-ysync bot", help="name shown to others")
    parser.add_argument("--line", default="Hello from a trio bot!", help="line to append")
    parser.add_argument("--text", default="t", help="name of the shared Y.Text")
    parser.add_argument("--stay", type=float, default=0, help="seconds to stay and watch")
    parser.add_argument(
        "--timeout", type=float, default=30, help="seconds to wait for the room to sync"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the provider")
    args = parser.parse_args()
    # Without -v, the provider's warnings (why a connection attempt failed) still show.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if failure := trio.run(run_bot, args):
        sys.exit(f"provider_bot: {failure}")


if __name__ == "__main__":
    main()
