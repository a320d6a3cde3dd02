"""Is this result already in AGENT_STATUS? Asked before a result is published a second time.

A second publish is dropped by the stream (same Nats-Msg-Id), but core subscribers of
`agent.status.completed` receive every publish, so each avoidable repeat is one they see twice.
The stream has no index by message id, so the question is answered by reading the headers only
(never the bodies) of that result subject from shortly before the task finished: a short,
rare scan instead of a repeat.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agent_fabric import names

CLOCK_SKEW = timedelta(seconds=30)  # replicas' and NATS servers' clocks disagree a little
BATCH = 512


async def result_stored(js: JetStreamContext, subject: str, event_id: str, finished_at: datetime | None) -> bool:
    """Whether AGENT_STATUS holds a message on `subject` with Nats-Msg-Id `event_id`."""
    config = ConsumerConfig(
        name=f"result-lookup-{uuid.uuid4().hex[:12]}",
        filter_subject=subject,
        ack_policy=AckPolicy.NONE,
        headers_only=True,
        inactive_threshold=30.0,  # removed by the server even if this process dies mid-scan
        mem_storage=True,
        num_replicas=1,
    )
    if finished_at is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = finished_at - CLOCK_SKEW
    info = await js.add_consumer(names.STATUS_STREAM, config)
    try:
        if info.num_pending == 0:
            return False
        sub = await js.pull_subscribe_bind(info.name, names.STATUS_STREAM)
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=BATCH, timeout=2)
                except (TimeoutError, NatsTimeoutError):
                    return False
                for msg in msgs:
                    if (msg.headers or {}).get(names.MSG_ID_HEADER) == event_id:
                        return True
                if msgs and msgs[-1].metadata.num_pending == 0:
                    return False
        finally:
            await sub.unsubscribe()
    finally:
        await js.delete_consumer(names.STATUS_STREAM, info.name)
