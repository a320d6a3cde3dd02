"""Semantic versions (semver.org 2.0.0) and the version ranges a package may require of the fabric.

A range is comma- or space-separated comparators, all of which must hold: `>=0.1.0, <2.0.0`,
`^0.1` (same major, or same minor below 1.0), `~1.2` (same minor), `==1.2.3`, `!=1.3.0`.
Pure, so it is tested directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
# In a range, minor and patch may be left out (`>=1`, `^0.3`).
_PARTIAL = re.compile(r"^(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?$")
_COMPARATOR = re.compile(r"^(>=|<=|==|!=|>|<|\^|~|=)?\s*(\S+)$")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int
    # A pre-release sorts before its release: (0, tag) < (1,) for the same numbers.
    pre: tuple[int, tuple[str, ...]] = (1, ())

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.pre[1])}" if self.pre[0] == 0 else core


def parse_version(text: str) -> Version:
    """A full semantic version; ValueError says what is wrong."""
    match = _SEMVER.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.0)")
    major, minor, patch, pre, _build = match.groups()
    pre_key: tuple[int, tuple[str, ...]] = (0, tuple(pre.split("."))) if pre else (1, ())
    return Version(int(major), int(minor), int(patch), pre_key)


def _partial(text: str) -> tuple[Version, int]:
    """A version in a range and how many of its parts were given (1-3)."""
    if _SEMVER.match(text):
        return parse_version(text), 3
    match = _PARTIAL.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a version")
    parts = [int(p) for p in match.groups() if p is not None]
    given = len(parts)
    parts += [0] * (3 - given)
    return Version(parts[0], parts[1], parts[2]), given


def _upper(base: Version, op: str, given: int) -> Version:
    if op == "^" and base.major > 0:
        return Version(base.major + 1, 0, 0)
    if op == "^" and (base.minor > 0 or given < 3):
        return Version(0, base.minor + 1, 0) if given >= 2 else Version(1, 0, 0)
    if op == "^":
        return Version(0, 0, base.patch + 1)
    # ~: the same minor, or the same major when only the major was given.
    return Version(base.major, base.minor + 1, 0) if given >= 2 else Version(base.major + 1, 0, 0)


def satisfies(version: Version, spec: str) -> bool:
    """Whether `version` meets every comparator of `spec`. ValueError for a malformed spec."""
    comparators = [c for c in re.split(r"[,\s]+(?=[<>=!^~\d])", spec.strip()) if c.strip()]
    if not comparators:
        raise ValueError("an empty version range")
    for raw in comparators:
        match = _COMPARATOR.match(raw.strip())
        if match is None:
            raise ValueError(f"{raw!r} is not a version comparator")
        op, bound_text = match.group(1) or "==", match.group(2)
        bound, given = _partial(bound_text)
        if op in ("^", "~"):
            ok = bound <= version < _upper(bound, op, given)
        else:
            ok = {
                ">=": version >= bound,
                "<=": version <= bound,
                ">": version > bound,
                "<": version < bound,
                "==": version == bound,
                "=": version == bound,
                "!=": version != bound,
            }[op]
        if not ok:
            return False
    return True
