"""The examples run as documented."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from trio_ysync.server import RoomServer

EXAMPLES = Path(__file__).parent.parent / "examples"


async def test_asyncio_codec_example_edits_and_reads_a_room(nursery: trio.Nursery) -> None:
    server = RoomServer()
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    script = str(EXAMPLES / "asyncio_codec.py")
    url = f"ws://127.0.0.1:{port}/asyncio-room"
    with trio.fail_after(30):
        first = await trio.run_process(
            [sys.executable, script, url, "--insert", "from asyncio"], capture_stdout=True
        )
        assert first.stdout.decode().strip() == "from asyncio"
        second = await trio.run_process([sys.executable, script, url], capture_stdout=True)
        assert second.stdout.decode().strip() == "from asyncio"
    server.shutdown()


async def test_embedded_server_example_serves_and_stops_on_ctrl_c() -> None:
    import re
    import signal
    import subprocess

    from wsclient import connect

    from trio_ysync.protocol import SyncStep1

    script = str(EXAMPLES / "embedded_server.py")
    process = await trio.lowlevel.open_process(
        [sys.executable, script, "--port", "0", "--store", "memory"], stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    with trio.fail_after(30):
        output = b""
        while (match := re.search(rb"serving ws://127.0.0.1:(\d+)/", output)) is None:
            chunk = await process.stderr.receive_some()
            assert chunk, output
            output += chunk
        async with connect(int(match.group(1)), "embedded") as client:
            assert isinstance(await client.receive(), SyncStep1)
            process.send_signal(signal.SIGINT)
            assert await client.close_code() == 1001
        assert await process.wait() == 0
    await process.stderr.aclose()


async def test_provider_bot_on_an_unreachable_server_says_why_in_two_lines() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    script = str(EXAMPLES / "provider_bot.py")
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, script, f"ws://127.0.0.1:{port}", "room", "--timeout", "1"],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert "Traceback" not in result.stderr.decode()
    # The provider's warning for the first failed attempt, then the bot's own conclusion.
    assert lines == [
        f"WARNING:trio_ysync.provider:provider ws://127.0.0.1:{port}/room: cannot connect "
        "(attempt 1, retrying): connection refused",
        f"provider_bot: could not sync with ws://127.0.0.1:{port} within 1 s: connection refused",
    ]
