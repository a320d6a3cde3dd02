"""An agent package's `.env.discovery` file: parsed, then validated field by field.

Every problem is collected (never just the first), so an operator fixes a broken package in one
go. Pure apart from reading the file and checking the command's executable in the package.

    AGENT_NAME=SecurityAgent
    AGENT_VERSION=1.0.0
    AGENT_DESCRIPTION=Security monitoring agent
    AGENT_TYPE=security
    AGENT_COMMAND=./run.sh --verbose          # relative to the package folder
    DEFAULT_SUBSCRIBED_TOPICS=logs.security,logs.auth
    DEFAULT_FINDINGS_TOPIC=findings.security
    AGENT_RUNTIME=process                     # optional: how the fabric starts it
    REQUIRES_FABRIC=>=0.1.0, <2.0.0           # optional: fabric versions it works with

An agent that runs elsewhere and speaks A2A declares `AGENT_RUNTIME=a2a`, its JSON-RPC endpoint
`AGENT_A2A_URL=https://...` and, when it wants a bearer token, `AGENT_A2A_TOKEN_ENV=<NAME>`: the
name of one of the fabric's environment variables holding it (the secret itself is never in the
package or the registry). It has no AGENT_COMMAND.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent_fabric.agents.semver import parse_version, satisfies

DISCOVERY_FILE: Final = ".env.discovery"
REQUIRED: Final = (
    "AGENT_NAME",
    "AGENT_VERSION",
    "AGENT_DESCRIPTION",
    "AGENT_TYPE",
    "AGENT_COMMAND",
    "DEFAULT_SUBSCRIBED_TOPICS",
    "DEFAULT_FINDINGS_TOPIC",
)
PACKAGE_RUNTIMES: Final = ("process", "a2a")
A2A_KEYS: Final = ("AGENT_A2A_URL", "AGENT_A2A_TOKEN_ENV")
ENV_NAME_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# The fabric's own settings (JWT secret, database password, ...) must not be sent to an agent.
FABRIC_ENV_PREFIX: Final = "AGENT_FABRIC_"
MAX_FILE_BYTES: Final = 64 * 1024

NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
TYPE_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_-]{0,46}$")
_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# The fabric's own subjects, JetStream's API and reply inboxes: a package topic there would give
# the agent's NATS user rights over other tenants' tasks and results.
RESERVED_TOPIC_ROOTS: Final = ("agent", "tenant", "$JS", "$SYS", "$KV", "$O", "_INBOX")
MAX_SUBJECT_LENGTH: Final = 200


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def view(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True)
class Manifest:
    """A valid package: what the registry records and the process (or a2a) runtime runs."""

    path: Path
    name: str
    version: str
    description: str
    agent_type: str
    command: str  # empty for an a2a agent
    runtime: str
    subscribed_topics: tuple[str, ...]
    findings_topic: str
    requires_fabric: str | None
    values: dict[str, str] = field(default_factory=dict)  # every key of the file, as read


def parse_env_file(text: str) -> tuple[dict[str, str], list[Problem]]:
    """KEY=VALUE lines; `#` comments, blank lines, an `export ` prefix and quotes are allowed."""
    values: dict[str, str] = {}
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            problems.append(
                Problem(f"line {number}", f"expected KEY=VALUE with an upper-case KEY, got {raw.strip()!r}")
            )
            continue
        if key in values:
            problems.append(Problem(key, f"set twice (line {number} repeats it)"))
        values[key] = _unquote(value.strip())
    return values, problems


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    # An unquoted value may carry a trailing comment.
    return value.split(" #", 1)[0].strip()


def subject_problem(subject: str, *, wildcards: bool) -> str | None:
    """Why `subject` is not a usable NATS subject for a package topic, or None."""
    if not subject:
        return "is empty"
    if len(subject) > MAX_SUBJECT_LENGTH:
        return f"is longer than {MAX_SUBJECT_LENGTH} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in subject):
        return "contains whitespace or control characters"
    tokens = subject.split(".")
    if any(t == "" for t in tokens):
        return "has an empty token (leading, trailing or doubled '.')"
    for i, token in enumerate(tokens):
        if ("*" in token or ">" in token) and not wildcards:
            return "uses a wildcard, but a publish subject cannot"
        if token not in ("*", ">") and ("*" in token or ">" in token):
            return f"token {token!r} mixes a wildcard with other characters"
        if token == ">" and i != len(tokens) - 1:
            return "uses '>' before the last token"
    if tokens[0] in RESERVED_TOPIC_ROOTS or tokens[0] in ("*", ">"):
        return f"is in a namespace the fabric reserves ({', '.join(RESERVED_TOPIC_ROOTS)})"
    return None


def validate(values: dict[str, str], package: Path, fabric_version: str) -> tuple[Manifest | None, list[Problem]]:
    """The manifest when every field is valid; else every problem found."""
    get = values.get
    runtime = get("AGENT_RUNTIME", "process").strip() or "process"
    required = [key for key in REQUIRED if key != "AGENT_COMMAND" or runtime != "a2a"]
    problems = [Problem(key, "is required") for key in required if not values.get(key, "").strip()]
    name, version, agent_type = get("AGENT_NAME", ""), get("AGENT_VERSION", ""), get("AGENT_TYPE", "")
    if name and not NAME_PATTERN.match(name):
        problems.append(Problem("AGENT_NAME", "must be 1-128 of letters, digits, space, '.', '_', '-'"))
    if version:
        try:
            parse_version(version)
        except ValueError as exc:
            problems.append(Problem("AGENT_VERSION", str(exc)))
    if agent_type and not TYPE_PATTERN.match(agent_type):
        problems.append(
            Problem("AGENT_TYPE", "must be 1-47 of lower-case letters, digits, '_', '-', starting with a letter")
        )
    topics = [t.strip() for t in get("DEFAULT_SUBSCRIBED_TOPICS", "").split(",") if t.strip()]
    for topic in topics:
        why = subject_problem(topic, wildcards=True)
        if why:
            problems.append(Problem("DEFAULT_SUBSCRIBED_TOPICS", f"{topic!r} {why}"))
    findings = get("DEFAULT_FINDINGS_TOPIC", "").strip()
    if findings:
        why = subject_problem(findings, wildcards=False)
        if why:
            problems.append(Problem("DEFAULT_FINDINGS_TOPIC", f"{findings!r} {why}"))
    if runtime not in PACKAGE_RUNTIMES:
        problems.append(Problem("AGENT_RUNTIME", f"{runtime!r} is not one of {', '.join(PACKAGE_RUNTIMES)}"))
    command = get("AGENT_COMMAND", "").strip()
    if runtime == "a2a":
        problems += _a2a_problems(values)
    elif command:
        problems += _command_problems(command, package)
    if runtime != "a2a":
        problems += [Problem(key, "is only for AGENT_RUNTIME=a2a") for key in A2A_KEYS if get(key, "").strip()]
    requires = get("REQUIRES_FABRIC", "").strip() or None
    if requires:
        problems += _compat_problems(requires, fabric_version)
    if problems:
        return None, problems
    return (
        Manifest(
            path=package,
            name=name,
            version=version,
            description=get("AGENT_DESCRIPTION", "").strip(),
            agent_type=agent_type,
            command=command,
            runtime=runtime,
            subscribed_topics=tuple(topics),
            findings_topic=findings,
            requires_fabric=requires,
            values=dict(values),
        ),
        [],
    )


def _command_problems(command: str, package: Path) -> list[Problem]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return [Problem("AGENT_COMMAND", f"cannot be split into arguments: {exc}")]
    if not argv:
        return [Problem("AGENT_COMMAND", "is empty")]
    program = argv[0]
    if os.path.isabs(program):
        return [Problem("AGENT_COMMAND", f"{program!r} is absolute; name it relative to the package folder")]
    if "/" not in program:
        # A bare name is an interpreter on PATH (`python3 agent.py`) or a file in the package.
        if (package / program).is_file() or shutil.which(program):
            return []
        return [Problem("AGENT_COMMAND", f"{program!r} is neither a file in the package nor a program on PATH")]
    target = (package / program).resolve()
    if not target.is_relative_to(package.resolve()):
        return [Problem("AGENT_COMMAND", f"{program!r} points outside the package folder")]
    if not target.is_file():
        return [Problem("AGENT_COMMAND", f"{program!r} does not exist in the package")]
    if not os.access(target, os.X_OK):
        return [Problem("AGENT_COMMAND", f"{program!r} is not executable (chmod +x)")]
    return []


def _a2a_problems(values: dict[str, str]) -> list[Problem]:
    problems: list[Problem] = []
    if values.get("AGENT_COMMAND", "").strip():
        problems.append(Problem("AGENT_COMMAND", "an a2a agent runs elsewhere: it has no command (remove it)"))
    url = values.get("AGENT_A2A_URL", "").strip()
    if not url:
        problems.append(Problem("AGENT_A2A_URL", "is required for AGENT_RUNTIME=a2a (the agent's JSON-RPC URL)"))
    else:
        why = a2a_url_problem(url)
        if why:
            problems.append(Problem("AGENT_A2A_URL", f"{url!r} {why}"))
    token_env = values.get("AGENT_A2A_TOKEN_ENV", "").strip()
    if token_env and not ENV_NAME_PATTERN.match(token_env):
        problems.append(Problem("AGENT_A2A_TOKEN_ENV", f"{token_env!r} is not an environment variable name"))
    elif token_env.upper().startswith(FABRIC_ENV_PREFIX):
        problems.append(
            Problem("AGENT_A2A_TOKEN_ENV", f"{token_env!r} is one of the fabric's own settings, never sent to an agent")
        )
    return problems


def a2a_url_problem(url: str) -> str | None:
    """Why `url` cannot be an A2A agent's endpoint, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.username or parts.password:
        return "carries credentials; name a token variable in AGENT_A2A_TOKEN_ENV instead"
    if any(ch.isspace() for ch in url):
        return "contains whitespace"
    return None


def _compat_problems(spec: str, fabric_version: str) -> list[Problem]:
    try:
        ok = satisfies(parse_version(fabric_version), spec)
    except ValueError as exc:
        return [Problem("REQUIRES_FABRIC", str(exc))]
    if not ok:
        return [Problem("REQUIRES_FABRIC", f"this fabric is {fabric_version}, the package needs {spec}")]
    return []


def read_manifest(package: Path, fabric_version: str) -> tuple[Manifest | None, list[Problem]]:
    """Read and validate `<package>/.env.discovery`."""
    path = package / DISCOVERY_FILE
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, [Problem(DISCOVERY_FILE, f"is larger than {MAX_FILE_BYTES} bytes")]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(DISCOVERY_FILE, f"cannot be read: {exc}")]
    values, problems = parse_env_file(text)
    manifest, more = validate(values, package, fabric_version)
    problems += more
    return (manifest if not problems else None), problems
