"""What the NATS door's credential check costs per task message (issue 15).

    python scripts/bench/nats_door.py [--messages 20000]

Three numbers, in microseconds per message, on this machine's CPU (no services needed):
1. a JWT seen for the first time: signature, claims, revocation (TokenService.verify);
2. the door screening a stream of messages from one publisher (NatsCredentials.screen): the
   signature was checked once, so per message: expiry at publish time, revocation, role, rate limit;
3. a task the fabric sealed itself (HTTP submissions, approved or released tasks): the HMAC check.
The stand-in message carries what the door reads from a nats-py Msg (headers, data, metadata).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from agent_fabric import names  # noqa: E402
from agent_fabric.inbound.nats_credentials import NatsCredentials  # noqa: E402
from agent_fabric.security.internal_seal import TASK_PURPOSE, InternalSeal  # noqa: E402
from agent_fabric.security.roles import BUILTIN_ROLES  # noqa: E402
from agent_fabric.security.tokens import TokenService  # noqa: E402
from agent_fabric.settings import NatsDoorSettings, SecuritySettings, Settings  # noqa: E402

BODY = b'{"specversion":"1.0","id":"e","source":"bench","type":"agent.execute","data":{}}' * 6


@dataclass
class Stored:
    timestamp: datetime


@dataclass
class Message:
    headers: dict[str, str]
    data: bytes
    metadata: Any


async def run(n: int) -> None:
    settings = Settings(state_dir=Path(tempfile.mkdtemp()), jwt=SecuritySettings(secret="b" * 40))
    tokens = TokenService(settings)
    seal = InternalSeal("m" * 40)
    door = NatsCredentials(
        NatsDoorSettings(rate_limit_per_second=1e9, rate_limit_burst=10**9),
        tokens,
        None,  # type: ignore[arg-type]  # API keys are not part of this run
        lambda kind, value: False,
        BUILTIN_ROLES.get,
        seal,
        lambda tenant: "SANDBOX",
    )
    issued = [tokens.issue(role="agent", subject=f"bot-{i}", tenant_id="pod-1") for i in range(n)]
    start = time.perf_counter()
    for token in issued:
        await tokens.verify(token, at=time.time())
    first_sight = (time.perf_counter() - start) / n * 1e6

    now = Stored(datetime.now(UTC))
    one = issued[0]
    stream = [Message({"Authorization": f"Bearer {one}"}, BODY, now) for _ in range(n)]
    refused: list[Any] = []
    start = time.perf_counter()
    for i in range(0, n, 128):
        await door.screen(stream[i : i + 128], lambda msg, exc: refused.append(exc))
    screened = (time.perf_counter() - start) / n * 1e6
    assert not refused

    sealed = [
        Message(
            {names.MSG_ID_HEADER: f"id-{i}", names.SEAL_HEADER: seal.sign(TASK_PURPOSE, f"id-{i}", BODY)}, BODY, now
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    for i in range(0, n, 128):
        await door.screen(sealed[i : i + 128], lambda msg, exc: refused.append(exc))
    sealed_cost = (time.perf_counter() - start) / n * 1e6
    assert not refused

    print(f"| JWT, first sight (HS256 verify) | {first_sight:.1f} us |")
    print(f"| one publisher's stream (signature checked once) | {screened:.1f} us/message |")
    print(f"| fabric-sealed task (HMAC-SHA256) | {sealed_cost:.1f} us/message |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    asyncio.run(run(parser.parse_args().messages))


if __name__ == "__main__":
    main()
