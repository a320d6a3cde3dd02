"""Property-based run of the whole OpenAPI schema against a real process with a valid admin
token: whatever schemathesis generates, the fabric never answers 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_no_generated_request_gets_a_server_error(tmp_path: Path, nats_url: str) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is a test dependency (pip install -e '.[test]')"
    server = ServeProcess(
        tmp_path / "s",
        {
            "AGENT_FABRIC_NATS_URL": nats_url,
            # The run sends hundreds of requests with one token; rate limits are tested elsewhere.
            "AGENT_FABRIC_HTTP_RATE_LIMIT_PER_SECOND": "100000",
            "AGENT_FABRIC_HTTP_RATE_LIMIT_BURST": "100000",
        },
    ).start()
    try:
        token = subprocess.run(
            [sys.executable, "-m", "agent_fabric", "token", "--role", "admin"],
            env=server.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"{server.url}/openapi.json",
                "-H",
                f"Authorization: Bearer {token}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "30",
                "--generation-deterministic",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        server.stop()
    # The failures section names the operation and the reproducing request; the summary follows it.
    failures = result.stdout.find("FAILURES")
    assert result.returncode == 0, result.stdout[max(failures, 0) : max(failures, 0) + 6000]
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert tested and int(tested.group(1)) >= 30, result.stdout[-2000:]  # every operation was exercised
    assert "Traceback" not in server.log()
