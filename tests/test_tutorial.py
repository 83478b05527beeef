"""Every code block of docs/tutorial.rst runs, as written, against a live server.

The blocks are read from the page: files (blocks with a ``:caption:``) are written to a fresh
directory, and the shell commands are run there in order. Only the server's port differs (the
page uses 1234; the test takes a free one), and the ``npm install`` step is checked against the
packages tests/js already installs instead of being run.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio
from cliserver import cli_server
from nodejs import NODE_DIR, requires_node

TUTORIAL = Path(__file__).parent.parent / "docs" / "tutorial.rst"

_BLOCK = re.compile(
    r"^\.\. code-block:: (?P<language>\w+)\n(?P<options>(?:    :\w+: .*\n)*)\n"
    r"(?P<body>(?:(?:    .*)?\n)+)",
    re.MULTILINE,
)


def code_blocks(text: str) -> list[tuple[str, str | None, str]]:
    """The ``(language, caption, code)`` of each code block, in page order."""
    blocks = []
    for match in _BLOCK.finditer(text):
        caption = re.search(r":caption: (.+)", match["options"])
        lines = match["body"].rstrip("\n").split("\n")
        code = "\n".join(line[4:] for line in lines) + "\n"
        blocks.append((match["language"], caption[1] if caption else None, code))
    return blocks


def test_the_page_has_the_blocks_this_test_runs() -> None:
    blocks = code_blocks(TUTORIAL.read_text(encoding="utf-8"))
    assert [caption for _, caption, _ in blocks if caption] == ["bot.py", "writer.mjs", "read.py"]
    assert [code for language, _, code in blocks if language == "sh"] == [
        "trio-ysync serve --demo --store notes.db\n",
        "python bot.py\n",
        "npm install yjs y-websocket ws\n",
        "node writer.mjs\n",
        "python read.py\n",
    ]


async def _output(process: trio.Process, until: bytes) -> bytes:
    assert process.stdout is not None
    output = b""
    while until not in output:
        chunk = await process.stdout.receive_some()
        assert chunk, output
        output += chunk
    return output


@requires_node
async def test_every_block_of_the_tutorial_runs(tmp_path: Path) -> None:
    blocks = code_blocks(TUTORIAL.read_text(encoding="utf-8"))
    files = {caption: code for _, caption, code in blocks if caption}
    # Step 3 installs these packages; the interop tests' directory already has them.
    installed = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))
    assert {"yjs", "y-websocket", "ws"} <= set(installed["dependencies"])
    (tmp_path / "node_modules").symlink_to(NODE_DIR / "node_modules", target_is_directory=True)

    with trio.fail_after(90):
        # Step 1: trio-ysync serve --demo --store notes.db
        async with cli_server("--demo", "--store", "notes.db", cwd=str(tmp_path)) as server:
            for name, code in files.items():
                (tmp_path / name).write_text(code.replace("1234", str(server.port)))
            # Step 2: python bot.py (runs until Ctrl+C)
            bot = await trio.lowlevel.open_process(
                [sys.executable, "bot.py"],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                assert b"bot: counting in room 'notes'" in await _output(bot, b"\n")
                # Step 3: node writer.mjs
                writer = await trio.run_process(
                    ["node", "writer.mjs"], cwd=tmp_path, capture_stdout=True
                )
                assert writer.stdout == b"words: 8, lines: 1\n"
                # Step 4: python read.py
                reader = await trio.run_process(
                    [sys.executable, "read.py"], cwd=tmp_path, capture_stdout=True
                )
                assert (
                    reader.stdout == b"Written from Node.js, counted by a Python bot\n(8 words)\n"
                )
                # Ctrl+C stops the bot quietly.
                bot.send_signal(signal.SIGINT)
                assert await bot.wait() == 0
                assert bot.stderr is not None
                assert await bot.stderr.receive_some() == b""
            finally:
                if bot.returncode is None:
                    bot.kill()
                    await bot.wait()
    # The room was kept in notes.db, as the page says.
    listed = await trio.run_process(
        [sys.executable, "-m", "trio_ysync", "store", "list", "--store", "notes.db"],
        cwd=tmp_path,
        capture_stdout=True,
    )
    assert listed.stdout == b"notes\n"
