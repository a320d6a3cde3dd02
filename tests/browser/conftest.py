"""Headless Debian Chromium driven by Playwright, against a real `agent-fabric serve`.

Playwright's own browser download is never used (no `playwright install`): the browser is the
distribution's /usr/bin/chromium, which scripts/services.sh installs for `make test`; when it is
missing this setup installs it with apt-get (as root or with sudo) or fails saying why.
Screenshots of every page land in tests/browser/screenshots/ (gitignored) for review.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_zero_standin import STANDIN_KEY, running_standin
from tests.support.debian import apt_install
from tests.support.serve import JWT_SECRET, ServeProcess

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Any]:
    # Playwright's async API: the tests' event loop (pytest-asyncio's) also runs the database fixtures.
    if not CHROMIUM.exists():
        why = apt_install("chromium")
        if not CHROMIUM.exists():
            pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM} and it could not be installed: {why}")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(chromium: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    context = await chromium.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    page.set_default_timeout(30_000)
    # The page's own errors, printed with a failing test's output (with its last screen).
    logs: list[str] = []
    page.on("console", lambda m: logs.append(f"console.{m.type}: {m.text}"))
    page.on("pageerror", lambda e: logs.append(f"page error: {e}"))
    try:
        yield page
    finally:
        await shot(page, f"last-{request.node.name}")
        print("\n".join(logs))
        await context.close()


async def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot for review (not committed)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def console_fabric(tmp_path: Path, nats_url: str, postgres_url: str) -> Iterator[ServeProcess]:
    """A real serve on Postgres and NATS, an Agent Zero stand-in behind it, builtin `spend` tasks
    parked for approval (the built-in gate), sweeps fast."""
    with running_standin(STANDIN_KEY) as (standin_url, _):
        env = {
            "AGENT_FABRIC_NATS_URL": nats_url,
            "AGENT_FABRIC_DATABASE_URL": postgres_url,
            "AGENT_FABRIC_JWT_SECRET": JWT_SECRET,
            "AGENT_FABRIC_AGENT_ZERO_URL": standin_url,
            "AGENT_FABRIC_AGENT_ZERO_API_KEY": STANDIN_KEY,
            "AGENT_FABRIC_POLICY_APPROVAL_REQUIRED_ACTIONS": '["task:spend"]',
            "AGENT_FABRIC_APPROVAL_SWEEP_SECONDS": "0.5",
            "AGENT_FABRIC_NATS_ACK_WAIT_SECONDS": "3",
        }
        fabric = ServeProcess(tmp_path / "serve", env).start()
        try:
            yield fabric
        finally:
            fabric.stop()
