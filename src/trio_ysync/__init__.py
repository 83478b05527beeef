"""trio-ysync: real-time collaboration on Yjs documents for Trio applications.

The sans-IO codec lives in :mod:`trio_ysync.protocol` and imports no I/O library. The trio parts
(:class:`RoomServer`, :func:`open_provider`, ...) are imported lazily from here, so importing the
package does not import trio.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import YSyncError

__version__ = "0.1.0.dev0"

# Public names of the trio layers, resolved on first access.
_LAZY = {
    "RoomServer": "trio_ysync.server",
    "Room": "trio_ysync.server",
    "Provider": "trio_ysync.provider",
    "open_provider": "trio_ysync.provider",
}

__all__ = ["YSyncError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trio_ysync' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
