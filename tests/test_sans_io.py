"""The codec must be usable where trio cannot be imported."""

from __future__ import annotations

import subprocess
import sys


def test_protocol_imports_without_trio() -> None:
    code = (
        "import sys; sys.modules['trio'] = None; sys.modules['wsproto'] = None;"
        "import trio_ysync, trio_ysync.protocol, trio_ysync.doc;"
        "assert trio_ysync.protocol.decode(bytes.fromhex('03'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
