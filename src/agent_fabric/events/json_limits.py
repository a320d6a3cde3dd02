"""How deep incoming JSON may nest, checked on the raw bytes before any parser sees them.

Python's `json` (used by the CloudEvents SDK and by request parsing) recurses once per level
and raises RecursionError near a thousand levels; orjson stops at 1,024. A few kilobytes of
`[[[[...` are enough for either, so every door measures the nesting first and refuses anything
deeper than the limit as bad input. The scan never builds the document: strings are cut out
(a bracket inside a string is not nesting), then only the brackets are counted.
"""

from __future__ import annotations

import re
from itertools import accumulate

from agent_fabric.errors import InvalidEvent

DEFAULT_MAX_JSON_DEPTH = 64
"""Task events and API bodies nest a handful of levels; 64 leaves room for rich task input."""

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(raw: bytes | str, *, stop_after: int | None = None) -> int:
    """The deepest nesting of brackets in `raw`, outside strings; valid JSON or not.

    With `stop_after`, the answer only says on which side of it the depth lies: up to
    `stop_after`, a bound the depth does not exceed; past it, counting may stop early."""
    data = raw.encode() if isinstance(raw, str) else raw
    if stop_after is not None:
        # Every opener, in strings or not, counted at C speed: no deeper than that. Almost every
        # message has fewer than the limit, and cutting the strings out costs ten times more.
        upper_bound = data.count(b"[") + data.count(b"{")
        if upper_bound <= stop_after:
            return upper_bound
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    openers = brackets.count(b"[") + brackets.count(b"{")
    if stop_after is not None and openers <= stop_after:
        return openers  # cannot be deeper than the number of openers: skip the walk
    deepest = 0
    for depth in accumulate(_DEPTH_STEP[b] for b in brackets):
        if depth > deepest:
            deepest = depth
            if stop_after is not None and deepest > stop_after:
                break
    return deepest


def check_json_depth(raw: bytes | str, limit: int) -> None:
    """Raise InvalidEvent if `raw` nests deeper than `limit` levels."""
    depth = json_depth(raw, stop_after=limit)
    if depth > limit:
        raise InvalidEvent(f"JSON nests more than {limit} levels deep", code="json_too_deep")
