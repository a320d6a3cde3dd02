"""The fabric's JetStream topology: streams and durable consumers, created when missing.

Called at start-up by `serve` and by `agent-fabric setup-streams` (the Kubernetes sync-hook Job).
Existing streams and consumers are left alone when their configuration is compatible; a
stream whose subjects conflict is reported, never silently rewritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from agent_fabric import names
from agent_fabric.errors import ConfigurationError
from agent_fabric.settings import NatsSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topology:
    streams: tuple[StreamConfig, ...]
    consumers: tuple[ConsumerConfig, ...]


def build_topology(cfg: NatsSettings, max_event_bytes: int) -> Topology:
    task_stream = StreamConfig(
        name=names.TASK_STREAM,
        subjects=[names.TASK_SUBJECTS],
        # Work-queue retention: an acked task leaves the stream, so the consumers' pending count
        # is exactly the backlog KEDA scales on.
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=cfg.stream_replicas,
        duplicate_window=cfg.duplicate_window_seconds,
        max_msg_size=max_event_bytes,
        discard=DiscardPolicy.NEW,
    )
    status_stream = StreamConfig(
        name=names.STATUS_STREAM,
        subjects=[names.STATUS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=cfg.stream_replicas,
        duplicate_window=cfg.duplicate_window_seconds,
        max_age=cfg.status_max_age_seconds,
    )
    deadletter_stream = StreamConfig(
        name=names.DEADLETTER_STREAM,
        subjects=[names.DEADLETTER_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=cfg.stream_replicas,
        max_age=cfg.status_max_age_seconds,
    )
    governance_stream = StreamConfig(
        name=names.GOVERNANCE_STREAM,
        subjects=list(names.GOVERNANCE_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=cfg.stream_replicas,
        duplicate_window=cfg.duplicate_window_seconds,
        max_age=cfg.status_max_age_seconds,
    )
    # Control messages to managed agents (configuration changes): a few kept per agent, so an agent
    # that starts or reconnects reads its latest configuration from the stream.
    agent_control_stream = StreamConfig(
        name=names.AGENT_CONTROL_STREAM,
        subjects=[names.AGENT_CONTROL_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=cfg.stream_replicas,
        duplicate_window=cfg.duplicate_window_seconds,
        max_msgs_per_subject=10,
        max_age=cfg.status_max_age_seconds,
        # An agent reads its latest configuration with a direct get, its NATS user allowed just that.
        allow_direct=True,
    )
    consumers = tuple(
        ConsumerConfig(
            durable_name=names.consumer_name(priority),
            filter_subject=names.task_subject(priority),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait_seconds,
            # Unlimited deliveries at the server: the fabric counts attempts itself and fails the
            # task with a reason, instead of JetStream silently parking it after max_deliver.
            max_deliver=-1,
            max_ack_pending=cfg.max_ack_pending,
            max_waiting=512,
        )
        for priority in names.PRIORITIES
    )
    return Topology(
        streams=(task_stream, status_stream, deadletter_stream, governance_stream, agent_control_stream),
        consumers=consumers,
    )


async def ensure_topology(js: JetStreamContext, cfg: NatsSettings, max_event_bytes: int) -> Topology:
    """Create the fabric's streams and consumers if missing; return what is expected."""
    topology = build_topology(cfg, max_event_bytes)
    for stream in topology.streams:
        await _ensure_stream(js, stream)
    for consumer in topology.consumers:
        await _ensure_consumer(js, names.TASK_STREAM, consumer)
    return topology


async def _ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> None:
    assert wanted.name is not None
    try:
        info = await js.stream_info(wanted.name)
    except NotFoundError:
        await js.add_stream(wanted)
        log.info("created stream", extra={"stream": wanted.name})
        return
    have = set(info.config.subjects or [])
    if not set(wanted.subjects or []) <= have:
        raise ConfigurationError(
            f"stream {wanted.name} exists with subjects {sorted(have)}; "
            f"the fabric needs {wanted.subjects}. Fix or delete the stream."
        )
    if info.config.retention != wanted.retention:
        raise ConfigurationError(
            f"stream {wanted.name} has retention {info.config.retention}, the fabric needs {wanted.retention}"
        )


async def _ensure_consumer(js: JetStreamContext, stream: str, wanted: ConsumerConfig) -> None:
    assert wanted.durable_name is not None
    try:
        info = await js.consumer_info(stream, wanted.durable_name)
    except NotFoundError:
        await js.add_consumer(stream, wanted)
        log.info("created consumer", extra={"consumer": wanted.durable_name})
        return
    if info.config.filter_subject != wanted.filter_subject:
        raise ConfigurationError(
            f"consumer {wanted.durable_name} filters {info.config.filter_subject!r}, "
            f"the fabric needs {wanted.filter_subject!r}. Delete it to let the fabric recreate it."
        )
    if info.config.ack_policy != AckPolicy.EXPLICIT:
        raise ConfigurationError(f"consumer {wanted.durable_name} must use explicit acks")
