"""An echo-like process agent: the smallest useful example of agent_fabric.agent_sdk.

Task types:
- `echo`: returns its input;
- `sleep`: waits `input.seconds`, reporting progress each tenth of a second; a cancellation (or
  the task's timeout) stops it at the next report;
- `fail`: fails with `input.code` / `input.message`;
- `check`: asks the fabric's policy engine about `input.action` (say `url:https://example.com`)
  and returns the decision, without taking the action.
"""

from __future__ import annotations

import time
from typing import Any

from agent_fabric.agent_sdk import Failure, Task, run


def handle(task: Task) -> Any:
    if task.type == "echo":
        return task.input
    if task.type == "sleep":
        seconds = float(task.input.get("seconds", 1))
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            task.progress({"slept": round(elapsed, 2), "of": seconds})  # raises Cancelled once cancelled
            time.sleep(min(0.1, seconds - elapsed))
        task.report_usage(compute_seconds=seconds)
        return {"slept": seconds}
    if task.type == "fail":
        raise Failure(str(task.input.get("code", "echo_failure")), str(task.input.get("message", "failed as asked")))
    if task.type == "check":
        return task.check(str(task.input["action"]))
    raise Failure("unknown_task_type", f"the echo agent has no task type {task.type!r}")


if __name__ == "__main__":
    run(handle)
