"""A process agent that survives its own death: each step is checkpointed before the next begins.

Task type `steps`, input {"steps": N, "step_seconds": s}. Kill the process (kill -9) in the middle
and the fabric hands the task to a fresh process with the last checkpoint: the run goes on from
the step after the last one saved, and the result says where it resumed and which processes did
the work.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agent_fabric.agent_sdk import Failure, Task, run


def handle(task: Task) -> Any:
    if task.type != "steps":
        raise Failure("unknown_task_type", f"the steps agent has no task type {task.type!r}")
    total = int(task.input.get("steps", 5))
    pause = float(task.input.get("step_seconds", 0.2))
    saved = task.checkpoint or {}
    done, pids = int(saved.get("done", 0)), list(saved.get("pids", []))
    resumed_from = done
    if os.getpid() not in pids:
        pids.append(os.getpid())
    while done < total:
        time.sleep(pause)  # the step's work
        done += 1
        task.save_checkpoint({"done": done, "pids": pids})  # durable before the next step starts
        task.progress({"step": done, "of": total, "pid": os.getpid()})
    return {"steps": total, "resumed_from": resumed_from, "pids": pids}


if __name__ == "__main__":
    run(handle)
