"""The taskiq side of the peer benchmark: a pull-based JetStream broker (taskiq-nats) with its
NATS object-store result backend, and an echo task. Imported by the worker process
(`taskiq worker scripts.bench.peers_taskiq_app:broker`) and by the load generator; it needs the
bench extra (pip install -e '.[bench]').

The broker's settings are the raw round trip's where taskiq lets them be set: a work-queue stream,
fetches of up to 256 messages with a 0.5 s wait, explicit acks (taskiq acks after the result is
saved)."""

from __future__ import annotations

import os
from typing import Any

from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig
from taskiq_nats import NATSObjectStoreResultBackend, PullBasedJetStreamBroker

SUBJECT = "taskiq.bench"
ECHO = "bench.echo"
RESULT_BUCKET = "taskiq_bench_results"
# Every result put publishes the object's meta message here (nats-py's object store layout): the
# load generator subscribes to it to see results as they are stored, instead of polling for each.
RESULT_META_SUBJECTS = f"$O.{RESULT_BUCKET}.M.>"


def make_broker(url: str) -> PullBasedJetStreamBroker:
    broker = PullBasedJetStreamBroker(
        url,
        subject=SUBJECT,
        stream_name="TASKIQ_BENCH",
        durable="taskiq_bench",
        stream_config=StreamConfig(name="TASKIQ_BENCH", subjects=[SUBJECT], retention=RetentionPolicy.WORK_QUEUE),
        consumer_config=ConsumerConfig(durable_name="taskiq_bench", max_ack_pending=20_000),
        pull_consume_batch=256,
        pull_consume_timeout=0.5,
    ).with_result_backend(NATSObjectStoreResultBackend(url, bucket_name=RESULT_BUCKET))

    @broker.task(task_name=ECHO)
    async def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    return broker


# The worker's (`taskiq worker` imports this name); the load generator makes its own.
broker = make_broker(os.environ.get("BENCH_TASKIQ_NATS_URL", "nats://127.0.0.1:4222"))
