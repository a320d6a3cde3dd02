"""A process agent that misbehaves on request, for the isolation and lifecycle tests.

- `hog`: allocates memory in 16 MiB chunks until input.mb (or until the kernel stops it);
- `spin`: burns CPU for input.seconds of wall time; returns the CPU seconds it got;
- `environ`: returns its environment's variable names and its working directory, after writing
  a file there;
- `fork`: forks children that each fork, for input.seconds; returns how many forks failed;
- `ignore_cancel`: sleeps input.seconds without ever calling the SDK (a cancel cannot reach it);
- `orphan`: leaves a child holding its pipes (sleeping a minute) and exits with code 7 mid-task;
- `say`: prints input.line to stderr (the agent's log) and returns;
- `fetch`: GETs input.url through the proxy the environment names (input.direct: around it);
- `nats`: connects with its own NATS credentials (AGENT_NATS_*), publishes input.text on
  agent.<its id>.hello, and tries to read every task result (agent.status.>), which it may not.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agent_fabric.agent_sdk import Failure, Task, run


def handle(task: Task) -> Any:
    if task.type == "hog":
        chunks = []
        for _ in range(int(task.input.get("mb", 4096)) // 16):
            chunks.append(bytearray(16 * 1024 * 1024))  # touched: bytearray zero-fills its pages
        return {"allocated_mb": 16 * len(chunks)}
    if task.type == "spin":
        started, cpu0 = time.monotonic(), time.process_time()
        while time.monotonic() - started < float(task.input.get("seconds", 2)):
            pass
        return {"wall": time.monotonic() - started, "cpu": time.process_time() - cpu0}
    if task.type == "environ":
        Path("written.txt").write_text("hello")
        return {"names": sorted(os.environ), "cwd": os.getcwd(), "home": os.environ.get("HOME")}
    if task.type == "fork":
        return _fork_bomb(float(task.input.get("seconds", 2)))
    if task.type == "ignore_cancel":
        time.sleep(float(task.input.get("seconds", 60)))
        return {"ignored": True}
    if task.type == "fetch":
        return _fetch(str(task.input["url"]), bool(task.input.get("direct")))
    if task.type == "nats":
        return asyncio.run(_nats(str(task.input.get("text", "hello"))))
    if task.type == "orphan":
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        os._exit(7)
    if task.type == "say":
        print(task.input["line"], file=sys.stderr, flush=True)
        return {"said": True}
    raise Failure("unknown_task_type", task.type)


def _fetch(url: str, direct: bool) -> dict[str, Any]:
    handlers = [urllib.request.ProxyHandler({})] if direct else []  # {}: no proxy at all
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=5) as response:
            return {"status": response.status, "body": response.read().decode()}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def _nats(text: str) -> dict[str, Any]:
    import nats  # the fabric's own client library, present where the fabric runs

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    client = await nats.connect(
        os.environ["AGENT_NATS_URL"],
        user=os.environ["AGENT_NATS_USER"],
        password=os.environ["AGENT_NATS_PASSWORD"],
        inbox_prefix=os.environ["AGENT_NATS_INBOX_PREFIX"],
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=5,
    )
    await client.publish(f"agent.{os.environ['AGENT_FABRIC_AGENT_ID']}.hello", text.encode())
    await client.subscribe("agent.status.>")
    await client.flush()
    await asyncio.sleep(0.5)  # the server's permissions violation arrives asynchronously
    await client.close()
    return {"url": os.environ["AGENT_NATS_URL"], "errors": errors}


def _fork_bomb(seconds: float) -> dict[str, Any]:
    deadline, refused, children = time.monotonic() + seconds, 0, 0
    while time.monotonic() < deadline:
        try:
            pid = os.fork()
        except OSError:
            refused += 1
            time.sleep(0.01)
            continue
        if pid == 0:  # a child: sleep and die, holding its slot meanwhile
            time.sleep(seconds)
            os._exit(0)
        children += 1
    return {"forked": children, "refused": refused}


if __name__ == "__main__":
    run(handle)
