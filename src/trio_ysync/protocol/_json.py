"""Nesting depth of JSON text, shared by the message codec and the update validator."""

from __future__ import annotations

import re

__all__ = ["json_depth"]

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of JSON ``text`` nest (brackets inside strings aside).

    Only for text that already parsed as JSON: on text with an unterminated string the string
    pattern backtracks, and its cost grows with the square of the length.
    """
    depth = deepest = 0
    for char in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest
