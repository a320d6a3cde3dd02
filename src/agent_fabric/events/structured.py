"""A structured-mode CloudEvent read with one orjson pass, for the events the SDK would take as they are.

The CloudEvents SDK decodes a structured event with the stdlib `json` (a str copy of the body, then
a pure-Python decoder around the C scanner) and builds a validated event object: most of what a
task costs at the door before it is even looked at. `read_structured` decodes the body once with
orjson and accepts it only when the SDK would accept it and read the same values from it; anything
else returns None and goes through the SDK, so every refusal (and its message) stays the SDK's.

Same values: orjson differs from the stdlib only where it refuses (NaN, Infinity, numbers out of
the float range, lone surrogates: back to the SDK) and for integers past 64 bits, which it turns
into floats where the stdlib keeps them exact: a body with a run of 19 digits goes to the SDK too.
Same verdict: the v1.0 rules the SDK checks (cloudevents/core/v1/event.py), each held to the same
or a stricter standard here; the SDK's defaults for a missing `specversion` or `id` are its own.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from dateutil.parser import isoparse  # the SDK's own `time` parser (a dependency of the SDK)

_REQUIRED = ("id", "source", "type")
_OPTIONAL_TEXT = ("subject", "datacontenttype", "dataschema")
_KNOWN = frozenset({"specversion", *_REQUIRED, *_OPTIONAL_TEXT, "time", "data"})
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
# Every digit read as "0": a run of 19 of them is a number that may not fit 64 bits (a bytes
# search at C speed; a regex for the same run costs as much as the whole decode).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_WIDE_RUN = b"0" * 19


def read_structured(body: bytes) -> dict[str, Any] | None:
    """The event's attributes and `data` as the SDK would read them, or None: ask the SDK."""
    if _WIDE_RUN in body.translate(_DIGITS_AS_ZERO):
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or doc.get("specversion") != "1.0":
        return None
    for name in _REQUIRED:
        value = doc.get(name)
        if type(value) is not str or not value:
            return None
    for name in _OPTIONAL_TEXT:
        if name in doc and (type(doc[name]) is not str or not doc[name]):
            return None
    if "time" in doc and not _aware_time(doc["time"]):
        return None
    for name in doc:
        if name not in _KNOWN and _EXTENSION_NAME.fullmatch(name) is None:
            return None  # the SDK's rule is looser by a trailing newline: it decides those
    return doc


def _aware_time(value: Any) -> bool:
    """Whether the SDK takes this `time`: what its parser reads, with a UTC offset."""
    if type(value) is not str:
        return False
    try:
        return bool(isoparse(value).tzinfo)
    except Exception:  # whatever it is, the SDK raises it and the door reports it
        return False
