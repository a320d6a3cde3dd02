"""Agent packages on disk for the agents tests: a folder with a .env.discovery and a runnable script."""

from __future__ import annotations

from pathlib import Path


def write_package(root: Path, folder: str, **values: str) -> Path:
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    script = path / "run.sh"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    (path / ".env.discovery").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def good_values(name: str, version: str = "1.0.0", agent_type: str = "security") -> dict[str, str]:
    return {
        "AGENT_NAME": name,
        "AGENT_VERSION": version,
        "AGENT_DESCRIPTION": "watches logs",
        "AGENT_TYPE": agent_type,
        "AGENT_COMMAND": "./run.sh --once",
        "DEFAULT_SUBSCRIBED_TOPICS": "logs.security,logs.auth",
        "DEFAULT_FINDINGS_TOPIC": "findings.security",
    }
