"""What happens to an event that cannot run: a failure event if it names a job, else a dead letter.

Either way the event is recorded before its message is terminated, so bad input is answered
and kept, never silently dropped and never redelivered forever.
"""

from __future__ import annotations

import logging
from typing import Any

from agent_fabric.errors import FabricError, InvalidTask
from agent_fabric.inbound.nats_credentials import CredentialRefused, without_credentials
from agent_fabric.outbound.results import ResultPublisher
from agent_fabric.storage.dead_letters import DeadLetter, DeadLetterStore
from agent_fabric.storage.task_store import Rejection, TaskStore
from agent_fabric.telemetry.metrics import FabricMetrics

log = logging.getLogger(__name__)


class Rejector:
    def __init__(
        self, store: TaskStore, dead_letters: DeadLetterStore, results: ResultPublisher, metrics: FabricMetrics
    ) -> None:
        self._store = store
        self._dead_letters = dead_letters
        self._results = results
        self._metrics = metrics

    async def reject(
        self,
        exc: FabricError,
        *,
        raw: bytes,
        origin: str,
        subject: str | None,
        stream_seq: int | None,
        headers: dict[str, str] | None,
        event_id: str | None,
    ) -> None:
        """Record and announce a refused event. Raises if it could not be recorded (caller retries)."""
        self._metrics.events_invalid.labels(exc.code).inc()
        headers = without_credentials(headers)  # a dead letter never keeps a bearer token
        if isinstance(exc, CredentialRefused):
            # Nothing is recorded under the job id: the task never reached the fabric. The message is
            # kept as a dead letter; the job's owner hears of it when the credential vouches for both.
            if exc.job_id is not None and exc.tenant_id is not None:
                await self._results.publish_refusal(
                    exc.tenant_id, exc.job_id, exc.code, exc.message, attempt=f"{origin}-{stream_seq}"
                )
            exc = FabricError(exc.message, code=exc.code)
        elif isinstance(exc, InvalidTask) and exc.job_id is not None:
            tenant_id = exc.tenant_id or "default"
            inserted = await self._store.reject(
                Rejection(
                    spec_data=_best_effort_data(raw),
                    tenant_id=tenant_id,
                    job_id=exc.job_id,
                    error_code=exc.code,
                    error_message=exc.message,
                    event_id=event_id,
                )
            )
            if inserted:
                record = await self._store.get(tenant_id, exc.job_id)
                assert record is not None
                await self._results.publish_result(record)
                await self._store.mark_published([(tenant_id, exc.job_id)])
                log.info(
                    "task rejected",
                    extra={"job_id": exc.job_id, "tenant_id": tenant_id, "code": exc.code, "reason": exc.message},
                )
                return
            # The job_id belongs to a real task: a broken copy must not overwrite it.
            exc = InvalidTask(
                f"{exc.message} (job {exc.job_id!r} already exists; its state is unchanged)", code=exc.code
            )
        letter = DeadLetter(
            origin=origin,
            reason_code=exc.code,
            reason=exc.message,
            payload=raw,
            subject=subject,
            stream_seq=stream_seq,
            headers=headers,
        )
        await self._dead_letters.add(letter)
        await self._results.publish_deadletter(letter.summary())
        self._metrics.deadletters.labels(exc.code).inc()
        log.warning("event dead-lettered", extra={"code": exc.code, "reason": exc.message, "subject": subject})


def _best_effort_data(raw: bytes) -> dict[str, Any]:
    """Keep what was sent with the rejected task, readable, for whoever investigates."""
    return {"raw": raw[:4096].decode("utf-8", errors="replace"), "truncated": len(raw) > 4096}
