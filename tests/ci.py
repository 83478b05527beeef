"""Skip marks for tests that need a tool outside Python (Node, Chromium): a clear skip on a
developer's machine, a failure at collection under CI (``CI`` set), so CI never passes without
running them."""

from __future__ import annotations

import os

import pytest

__all__ = ["MissingInCIError", "in_ci", "requires"]


class MissingInCIError(RuntimeError):
    """A tool the tests need is missing where every test must run (CI)."""


def in_ci() -> bool:
    """Whether the tests run under CI (the ``CI`` environment variable is set and not false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def requires(missing: str | None, what: str) -> pytest.MarkDecorator:
    """A skip mark for ``missing`` (the reason a requirement is not met, or ``None`` if it is).

    Raises:
        MissingInCIError: under CI, when something is missing.
    """
    if missing is not None and in_ci():
        raise MissingInCIError(f"{missing}; CI must run the {what}")
    return pytest.mark.skipif(missing is not None, reason=missing or "")
