"""The container image recipe (Dockerfile, .dockerignore) and scripts/ci/build.sh.

There is no Docker engine on every machine, so the Dockerfile is checked as text, the build
stage's install is reproduced with `pip wheel` from exactly the files the Dockerfile copies, and
build.sh runs against a stand-in `docker` that records its arguments.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.manifests import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
BUILD_SH = REPO_ROOT / "scripts/ci/build.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    patterns = dockerignore_patterns()
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)


def test_multi_stage_python_slim() -> None:
    defaults = dict(args.split("=", 1) for name, args in instructions() if name == "ARG" and "=" in args)
    assert defaults.get("PYTHON_IMAGE") == "python:3.11-slim"
    froms = [i[1] for i in instructions() if i[0] == "FROM"]
    assert len(froms) >= 2, "multi-stage: build stage + runtime stage"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms


def test_runtime_stage_runs_the_entry_point_as_non_root() -> None:
    runtime = stages()[-1]
    user = [args for name, args in runtime if name == "USER"]
    assert user, "the runtime stage sets USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (Kubernetes runAsNonRoot checks it)"
    entrypoint = [json.loads(args) for name, args in runtime if name == "ENTRYPOINT"]
    cmd = [json.loads(args) for name, args in runtime if name == "CMD"]
    assert entrypoint[-1] == ["agent-fabric"]
    assert cmd[-1] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert ("EXPOSE", "8080") in runtime
    assert ("WORKDIR", "/app") in runtime
    assert any(name == "COPY" and args.startswith("--from=build ") for name, args in runtime)
    # The pods' securityContext (runAsUser 10001) must match the image's user.
    assert uid == "10001"


def test_healthcheck_probes_health_without_curl() -> None:
    [healthcheck] = [args for name, args in stages()[-1] if name == "HEALTHCHECK"]
    assert "http://127.0.0.1:8080/health" in healthcheck
    assert "urllib.request" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def test_copied_paths_exist_and_are_in_the_build_context() -> None:
    for name, args in instructions():
        if name != "COPY" or args.startswith("--from="):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    assert any(name == "COPY" and args.split()[0] == "scripts" for name, args in instructions()), (
        "scripts/ must be in the image (/app/scripts/ci/run-migrations.sh)"
    )


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    for path in (".git", ".venv", "tests", "deploy", ".env", "src/agent_fabric/__pycache__"):
        assert ignored(path), f"{path} should not be sent to the Docker daemon"


def test_build_stage_installs_the_package_from_what_it_copies(tmp_path: Path) -> None:
    """`pip install .` in the build stage sees pyproject.toml, README.md and src/ only; the wheel
    must carry the CLI and the Alembic migrations that `agent-fabric migrate` runs."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        assert (REPO_ROOT / name).is_file(), f"{name} is copied by the Dockerfile but does not exist"
        shutil.copy2(REPO_ROOT / name, context / name)
    shutil.copytree(REPO_ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "dist"), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "dist").glob("agent_fabric-*.whl")
    contents = zipfile.ZipFile(wheel).namelist()
    assert "agent_fabric/cli.py" in contents
    assert any(n.startswith("agent_fabric/storage/migrations/versions/") for n in contents), (
        "the wheel lacks the Alembic migrations: `agent-fabric migrate` would fail in the image"
    )
    entry_points = next(n for n in contents if n.endswith("entry_points.txt"))
    assert "agent-fabric = agent_fabric.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# --- scripts/ci/build.sh ----------------------------------------------------------------------

FAKE_DOCKER = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$DOCKER_LOG"
"""


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@pytest.fixture
def build_repo(tmp_path: Path) -> Path:
    """A scratch repository holding build.sh, with one commit (the real repo is never written)."""
    repo = tmp_path / "repo"
    (repo / "scripts/ci").mkdir(parents=True)
    shutil.copy2(BUILD_SH, repo / "scripts/ci/build.sh")
    (repo / "Dockerfile").write_text("FROM scratch\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def run_build(repo: Path, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "docker.log"
    log.write_text("")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_FABRIC_IMAGE")}
    full_env.update({"DOCKER": str(docker), "DOCKER_LOG": str(log), **env})
    result = subprocess.run(
        ["bash", str(repo / "scripts/ci/build.sh")], capture_output=True, text=True, env=full_env, timeout=60
    )
    return result, log.read_text().splitlines()


def test_build_tags_the_image_with_the_commit(build_repo: Path, tmp_path: Path) -> None:
    sha = git(build_repo, "rev-parse", "HEAD")
    short = git(build_repo, "rev-parse", "--short=12", "HEAD")
    result, calls = run_build(build_repo, tmp_path)
    assert result.returncode == 0, result.stderr
    [build] = calls
    assert build.startswith("build ")
    assert f"--tag agent-fabric:{sha}" in build and f"--tag agent-fabric:{short}" in build
    assert f"GIT_SHA={sha}" in build
    assert result.stdout.strip().splitlines()[-1] == f"agent-fabric:{sha}"
    assert "nothing pushed" in result.stderr


def test_build_pushes_only_with_a_registry(build_repo: Path, tmp_path: Path) -> None:
    sha = git(build_repo, "rev-parse", "HEAD")
    result, calls = run_build(build_repo, tmp_path, AGENT_FABRIC_IMAGE_REGISTRY="ghcr.io/bizmatters/")
    assert result.returncode == 0, result.stderr
    pushes = [c for c in calls if c.startswith("push ")]
    assert f"push ghcr.io/bizmatters/agent-fabric:{sha}" in pushes
    assert len(pushes) == 2


def test_build_adds_the_release_tag(build_repo: Path, tmp_path: Path) -> None:
    git(build_repo, "tag", "v0.1.0")
    result, calls = run_build(build_repo, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--tag agent-fabric:0.1.0" in calls[0]


def test_build_refuses_to_push_a_dirty_tree(build_repo: Path, tmp_path: Path) -> None:
    (build_repo / "Dockerfile").write_text("FROM scratch\nLABEL changed=1\n")
    result, calls = run_build(build_repo, tmp_path, AGENT_FABRIC_IMAGE_REGISTRY="ghcr.io/bizmatters")
    assert result.returncode != 0 and "dirty" in result.stderr
    assert calls == []


def test_build_needs_a_commit(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    (repo / "scripts/ci").mkdir(parents=True)
    shutil.copy2(BUILD_SH, repo / "scripts/ci/build.sh")
    git(repo, "init", "-q")
    result, calls = run_build(repo, tmp_path)
    assert result.returncode != 0 and "commit" in result.stderr
    assert calls == []


@pytest.mark.parametrize("script", ["scripts/ci/build.sh", "scripts/compose-test.sh"])
def test_shell_scripts_parse(script: str) -> None:
    path = REPO_ROOT / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
