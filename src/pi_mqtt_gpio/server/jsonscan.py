"""Reading the top level of a JSON object whose values may be nested too deeply for
``json.loads`` (Python's recursion limit): enough to find a 3.1.1 request's ``reply_to`` and
``correlation_id`` so that even such a request is answered ``BAD_REQUEST``. Iterative, linear
in the input, never raises."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["top_level_scalars"]

_WS = " \t\n\r"
_decoder = json.JSONDecoder()


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _skip_container(text: str, i: int) -> int:
    """Index after the array/object starting at ``i`` (strings and escapes respected)."""
    depth = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unterminated")


def top_level_scalars(text: str, wanted: frozenset[str]) -> dict[str, Any]:
    """The ``wanted`` members of the top-level object whose values are scalars."""
    out: dict[str, Any] = {}
    try:
        i = _skip_ws(text, 0)
        if text[i] != "{":
            return out
        i = _skip_ws(text, i + 1)
        while text[i] != "}":
            key, i = _decoder.raw_decode(text, i)
            i = _skip_ws(text, i)
            if text[i] != ":":
                return out
            i = _skip_ws(text, i + 1)
            if text[i] in "[{":
                i = _skip_container(text, i)
            else:
                value, i = _decoder.raw_decode(text, i)
                if key in wanted:
                    out[key] = value
            i = _skip_ws(text, i)
            if text[i] == ",":
                i = _skip_ws(text, i + 1)
    except (ValueError, IndexError, RecursionError):
        pass
    return out
