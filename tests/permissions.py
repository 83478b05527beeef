"""Skip marks for tests of file permissions, which root and Windows do not enforce."""

from __future__ import annotations

import os
import sys

import pytest

__all__ = ["IS_ROOT", "requires_enforced_permissions"]

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

requires_enforced_permissions = pytest.mark.skipif(
    sys.platform == "win32" or IS_ROOT,
    reason="file permissions are not enforced for root or on Windows "
    "(tests/test_cli.py checks permission errors without root's override)",
)
