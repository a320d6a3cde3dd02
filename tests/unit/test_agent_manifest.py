"""`.env.discovery` parsing and validation, each broken field on its own; versions; lifecycle moves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_fabric.agents.discovery import read_packages
from agent_fabric.agents.manifest import DISCOVERY_FILE, parse_env_file, read_manifest, subject_problem, validate
from agent_fabric.agents.semver import parse_version, satisfies
from agent_fabric.agents.states import AgentStatus, allowed, refusal

GOOD = {
    "AGENT_NAME": "SecurityAgent",
    "AGENT_VERSION": "1.0.0",
    "AGENT_DESCRIPTION": "Security monitoring agent",
    "AGENT_TYPE": "security",
    "AGENT_COMMAND": "./run.sh --verbose",
    "DEFAULT_SUBSCRIBED_TOPICS": "logs.security,logs.auth",
    "DEFAULT_FINDINGS_TOPIC": "findings.security",
}


def package(tmp_path: Path, values: dict[str, str], name: str = "security") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "run.sh"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    (folder / DISCOVERY_FILE).write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return folder


def problems_for(tmp_path: Path, **changes: str | None) -> list[tuple[str, str]]:
    values = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    manifest, problems = read_manifest(package(tmp_path, values), "0.1.0")
    assert (manifest is None) == bool(problems)
    return [(p.field, p.message) for p in problems]


def test_a_good_package_parses(tmp_path: Path) -> None:
    manifest, problems = read_manifest(package(tmp_path, GOOD), "0.1.0")
    assert problems == []
    assert manifest is not None
    assert (manifest.name, manifest.version, manifest.agent_type) == ("SecurityAgent", "1.0.0", "security")
    assert manifest.subscribed_topics == ("logs.security", "logs.auth")
    assert manifest.findings_topic == "findings.security"
    assert manifest.command == "./run.sh --verbose"
    assert manifest.runtime == "process"
    assert manifest.values["AGENT_TYPE"] == "security"


def test_comments_quotes_and_export_are_understood() -> None:
    values, problems = parse_env_file(
        "# a comment\n\nexport AGENT_NAME=\"Security Agent\"\nAGENT_VERSION=1.2.3 # trailing\nAGENT_TYPE='sec'\n"
    )
    assert problems == []
    assert values == {"AGENT_NAME": "Security Agent", "AGENT_VERSION": "1.2.3", "AGENT_TYPE": "sec"}


def test_malformed_lines_and_repeated_keys_are_each_reported() -> None:
    _, problems = parse_env_file("AGENT_NAME=a\nnot a pair\nlower=case\nAGENT_NAME=b\n")
    fields = [p.field for p in problems]
    assert fields == ["line 2", "line 3", "AGENT_NAME"]


@pytest.mark.parametrize("missing", list(GOOD))
def test_each_required_field_is_required(tmp_path: Path, missing: str) -> None:
    assert (missing, "is required") in problems_for(tmp_path, **{missing: None})


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems_for(
        tmp_path,
        AGENT_NAME="bad/name",
        AGENT_VERSION="1.0",
        AGENT_TYPE="Bad Type",
        DEFAULT_FINDINGS_TOPIC="findings.*",
        DEFAULT_SUBSCRIBED_TOPICS="logs..auth",
    )
    assert {f for f, _ in found} == {
        "AGENT_NAME",
        "AGENT_VERSION",
        "AGENT_TYPE",
        "DEFAULT_FINDINGS_TOPIC",
        "DEFAULT_SUBSCRIBED_TOPICS",
    }


@pytest.mark.parametrize("version", ["1", "1.0", "v1.0.0", "01.0.0", "1.0.0-", "one"])
def test_version_must_be_semantic(tmp_path: Path, version: str) -> None:
    assert [f for f, _ in problems_for(tmp_path, AGENT_VERSION=version)] == ["AGENT_VERSION"]


@pytest.mark.parametrize("version", ["0.0.1", "1.2.3-rc.1", "10.20.30+build.5"])
def test_semantic_versions_pass(tmp_path: Path, version: str) -> None:
    assert problems_for(tmp_path, AGENT_VERSION=version) == []


@pytest.mark.parametrize(
    ("topic", "wildcards", "reason"),
    [
        ("logs..auth", True, "empty token"),
        (".logs", True, "empty token"),
        ("logs auth", True, "whitespace"),
        ("logs.>.auth", True, "before the last token"),
        ("logs.a*", True, "mixes a wildcard"),
        ("findings.*", False, "publish subject"),
        ("agent.status.completed", False, "reserves"),
        ("agent.execute.*", True, "reserves"),
        ("$JS.API.STREAM.LIST", False, "reserves"),
        ("_INBOX.x", True, "reserves"),
        (">", True, "reserves"),
        ("x" * 201, False, "longer"),
    ],
)
def test_topics_must_be_valid_subjects_outside_the_fabric(topic: str, wildcards: bool, reason: str) -> None:
    why = subject_problem(topic, wildcards=wildcards)
    assert why is not None and reason in why


def test_wildcard_subscriptions_are_fine() -> None:
    assert subject_problem("logs.*.auth", wildcards=True) is None
    assert subject_problem("logs.>", wildcards=True) is None


def test_a_bad_subscribed_topic_is_named(tmp_path: Path) -> None:
    found = problems_for(tmp_path, DEFAULT_SUBSCRIBED_TOPICS="logs.ok, agent.status.>")
    assert found == [
        (
            "DEFAULT_SUBSCRIBED_TOPICS",
            "'agent.status.>' is in a namespace the fabric reserves (agent, tenant, $JS, $SYS, $KV, $O, _INBOX)",
        )
    ]


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("/bin/sh run.sh", "absolute"),
        ("../escape.sh", "outside the package"),
        ("./missing.sh", "does not exist"),
        ("no-such-program-xyz --flag", "neither a file in the package nor a program on PATH"),
        ("./run.sh 'unclosed", "cannot be split"),
    ],
)
def test_command_must_be_runnable_from_the_package(tmp_path: Path, command: str, reason: str) -> None:
    found = problems_for(tmp_path, AGENT_COMMAND=command)
    assert len(found) == 1 and found[0][0] == "AGENT_COMMAND" and reason in found[0][1]


def test_command_must_be_executable(tmp_path: Path) -> None:
    folder = package(tmp_path, {**GOOD, "AGENT_COMMAND": "./plain.txt"})
    (folder / "plain.txt").write_text("not a program")
    os.chmod(folder / "plain.txt", 0o644)
    _, problems = read_manifest(folder, "0.1.0")
    assert [(p.field, "chmod +x" in p.message) for p in problems] == [("AGENT_COMMAND", True)]


def test_an_interpreter_on_path_is_fine(tmp_path: Path) -> None:
    assert problems_for(tmp_path, AGENT_COMMAND="sh run.sh") == []


def test_unknown_runtime_is_refused(tmp_path: Path) -> None:
    assert [f for f, _ in problems_for(tmp_path, AGENT_RUNTIME="docker")] == ["AGENT_RUNTIME"]


@pytest.mark.parametrize(
    ("spec", "ok"),
    [(">=0.1.0, <2.0.0", True), ("^0.1", True), ("~0.1.0", True), (">=1.0.0", False), ("^0.2", False)],
)
def test_fabric_version_compatibility(tmp_path: Path, spec: str, ok: bool) -> None:
    found = problems_for(tmp_path, REQUIRES_FABRIC=spec)
    assert (found == []) is ok
    if not ok:
        assert found == [("REQUIRES_FABRIC", f"this fabric is 0.1.0, the package needs {spec}")]


def test_a_malformed_range_is_a_problem(tmp_path: Path) -> None:
    assert [f for f, _ in problems_for(tmp_path, REQUIRES_FABRIC=">=banana")] == ["REQUIRES_FABRIC"]


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    folder = tmp_path / "binary"
    folder.mkdir()
    (folder / DISCOVERY_FILE).write_bytes(b"\xff\xfe\x00")
    manifest, problems = read_manifest(folder, "0.1.0")
    assert manifest is None and problems[0].field == DISCOVERY_FILE


def test_validate_reports_missing_fields_without_touching_disk(tmp_path: Path) -> None:
    manifest, problems = validate({}, tmp_path, "0.1.0")
    assert manifest is None
    assert len(problems) == 7


def test_two_packages_with_one_name_and_version_are_both_broken(tmp_path: Path) -> None:
    package(tmp_path / "dir", GOOD, "a")
    package(tmp_path / "dir", GOOD, "b")
    package(tmp_path / "dir", {**GOOD, "AGENT_VERSION": "1.0.1"}, "c")
    (tmp_path / "dir" / "not-a-package").mkdir()
    valid, reports = read_packages([tmp_path / "dir", tmp_path / "missing-dir"], "0.1.0")
    assert [m.path.name for m in valid] == ["c"]
    assert sorted(r.path.name for r in reports) == ["a", "b"]
    assert all("also declared" in r.problems[0].message for r in reports)


def test_semver_order_and_ranges() -> None:
    assert parse_version("1.0.0-rc.1") < parse_version("1.0.0") < parse_version("1.0.1")
    assert satisfies(parse_version("1.4.2"), "^1.2")
    assert not satisfies(parse_version("2.0.0"), "^1.2")
    assert satisfies(parse_version("0.1.5"), "~0.1")
    assert not satisfies(parse_version("0.1.5"), "!=0.1.5")
    with pytest.raises(ValueError):
        satisfies(parse_version("1.0.0"), "")


def test_lifecycle_moves() -> None:
    s = AgentStatus
    assert allowed(s.DISCOVERED, s.REGISTERED) and allowed(s.REGISTERED, s.RUNNING)
    assert allowed(s.RUNNING, s.STOPPED) and allowed(s.RUNNING, s.FAILED)
    assert allowed(s.STOPPED, s.RUNNING) and allowed(s.FAILED, s.RUNNING)
    assert not allowed(s.DISCOVERED, s.RUNNING)
    assert not allowed(s.STOPPED, s.REGISTERED)
    assert "allowed from 'discovered': registered" in refusal(s.DISCOVERED, s.RUNNING)


A2A = {**{k: v for k, v in GOOD.items() if k != "AGENT_COMMAND"}, "AGENT_RUNTIME": "a2a"}


def a2a_problems(tmp_path: Path, **changes: str) -> list[tuple[str, str]]:
    manifest, problems = read_manifest(package(tmp_path, {**A2A, **changes}), "0.1.0")
    assert (manifest is None) == bool(problems)
    return [(p.field, p.message) for p in problems]


def test_an_a2a_package_names_its_url_and_no_command(tmp_path: Path) -> None:
    values = {**A2A, "AGENT_A2A_URL": "https://agents.example.com/a2a/", "AGENT_A2A_TOKEN_ENV": "SEC_AGENT_TOKEN"}
    manifest, problems = read_manifest(package(tmp_path, values), "0.1.0")
    assert problems == [] and manifest is not None
    assert (manifest.runtime, manifest.command) == ("a2a", "")
    assert manifest.values["AGENT_A2A_TOKEN_ENV"] == "SEC_AGENT_TOKEN"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("AGENT_A2A_URL", "ftp://agents.example.com/", "must be an http:// or https:// URL"),
        ("AGENT_A2A_URL", "agents.example.com/a2a", "must be an http:// or https:// URL"),
        ("AGENT_A2A_URL", "https:///a2a", "has no host"),
        ("AGENT_A2A_URL", "https://agents.example.com:http/", "is not a URL"),
        ("AGENT_A2A_URL", "https://me:secret@agents.example.com/", "carries credentials"),
        ("AGENT_A2A_TOKEN_ENV", "SEC-TOKEN", "is not an environment variable name"),
        ("AGENT_A2A_TOKEN_ENV", "AGENT_FABRIC_JWT_SECRET", "one of the fabric's own settings"),
        ("AGENT_COMMAND", "./run.sh", "has no command"),
    ],
)
def test_a_broken_a2a_field_is_named(tmp_path: Path, field: str, value: str, reason: str) -> None:
    changes = {"AGENT_A2A_URL": "http://127.0.0.1:9/", field: value}
    found = a2a_problems(tmp_path, **changes)
    assert len(found) == 1 and found[0][0] == field and reason in found[0][1], found


def test_an_a2a_package_needs_a_url_and_a_process_package_takes_none(tmp_path: Path) -> None:
    assert a2a_problems(tmp_path) == [("AGENT_A2A_URL", "is required for AGENT_RUNTIME=a2a (the agent's JSON-RPC URL)")]
    assert problems_for(tmp_path / "p", AGENT_A2A_URL="https://agents.example.com/") == [
        ("AGENT_A2A_URL", "is only for AGENT_RUNTIME=a2a")
    ]
