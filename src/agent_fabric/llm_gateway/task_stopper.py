"""Ending a running task as failed from whichever replica refused its call.

The gateway that refuses a LIVE task's call past a hard limit may not be the replica running the
task. It stops the task here if it holds it and broadcasts {tenant_id, job_id, code, message} on
agent.control.fail; the replica that holds it ends it `failed` with that code through the
runner's usual outcome path. Best effort like the cancel broadcast: the refused call itself
already kept the spend within the budget, whether or not the broadcast arrives.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient

from agent_fabric import names
from agent_fabric.scheduling.runner import TaskRunner
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel

log = logging.getLogger(__name__)


class TaskStopper:
    def __init__(self, nc: NatsClient, runner: TaskRunner, seal: InternalSeal) -> None:
        self._channel = ReplicaChannel(nc, seal)  # a broadcast fails a running task: only a replica may send one
        self._runner = runner
        self._sub: Any = None

    async def fail(self, tenant_id: str, job_id: str, code: str, message: str) -> None:
        self._runner.fail_local(tenant_id, job_id, code, message)
        body = orjson.dumps({"tenant_id": tenant_id, "job_id": job_id, "code": code, "message": message})
        try:
            await self._channel.publish(names.TASK_FAIL_SUBJECT, body)
        except Exception as exc:
            log.warning("task fail broadcast failed", extra={"job_id": job_id, "error": str(exc)})

    async def start(self) -> None:
        self._sub = await self._channel.subscribe(names.TASK_FAIL_SUBJECT, self._on_broadcast, what="task fail")

    async def shutdown(self) -> None:
        """Stop listening (idempotent)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_broadcast(self, msg: Any) -> None:
        try:
            body = orjson.loads(msg.data)
            tenant_id, job_id, code, message = (str(body[k]) for k in ("tenant_id", "job_id", "code", "message"))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("unreadable task fail broadcast", extra={"error": str(exc)})
            return
        if self._runner.fail_local(tenant_id, job_id, code, message):
            log.info("failing a running task", extra={"job_id": job_id, "tenant_id": tenant_id, "code": code})
