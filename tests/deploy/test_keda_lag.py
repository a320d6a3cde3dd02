"""The KEDA ScaledObject scales on what the service really leaves in JetStream.

Against a real nats-server with the fabric's own topology (agent_fabric.jetstream), this computes
the metric exactly as KEDA's nats-jetstream scaler does (kedacore/keda pkg/scalers/
nats_jetstream_scaler.go): GET http://<monitoring>/jsz?acc=<account>&consumers=true&config=true,
find account_details[name == account] -> stream_detail[name == stream] ->
consumer_detail[name == consumer], lag = num_pending + num_ack_pending; the trigger is active when
lag > activationLagThreshold. The HPA then wants ceil(lag / lagThreshold) replicas per trigger
(metric type AverageValue), the largest over the triggers, within min/max replicas.

Thresholds, consumers, stream and account are read from the ScaledObject the Composition renders
for the claim, so the test follows deploy/ rather than repeating it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from agent_fabric import names
from agent_fabric.jetstream import ensure_topology
from agent_fabric.settings import NatsSettings
from tests.support.nats_server import running_nats_server

BACKLOG = 12


class ScalerError(Exception):
    """What KEDA reports instead of a metric (missing stream or, since v2.20, missing consumer)."""


@dataclass(frozen=True)
class Trigger:
    account: str
    stream: str
    consumer: str
    lag_threshold: int
    activation_lag_threshold: int


def triggers_of(scaled_object: dict[str, Any]) -> list[Trigger]:
    found = []
    for trigger in scaled_object["spec"]["triggers"]:
        meta = trigger["metadata"]
        found.append(
            Trigger(
                account=meta["account"],
                stream=meta["stream"],
                consumer=meta["consumer"],
                lag_threshold=int(meta.get("lagThreshold", "10")),  # KEDA's defaults
                activation_lag_threshold=int(meta.get("activationLagThreshold", "0")),
            )
        )
    return found


async def keda_lag(client: httpx.AsyncClient, monitoring_port: int, trigger: Trigger) -> int:
    # KEDA formats the URL itself, account unescaped.
    url = f"http://127.0.0.1:{monitoring_port}/jsz?acc={trigger.account}&consumers=true&config=true"
    response = await client.get(url)
    response.raise_for_status()
    for account in response.json().get("account_details") or []:
        if account["name"] != trigger.account:
            continue
        for stream in account.get("stream_detail") or []:
            if stream["name"] != trigger.stream:
                continue
            for consumer in stream.get("consumer_detail") or []:
                if consumer["name"] == trigger.consumer:
                    return int(consumer["num_pending"]) + int(consumer["num_ack_pending"])
            raise ScalerError(f"consumer {trigger.consumer} not found in stream {trigger.stream}")
    raise ScalerError(f"stream {trigger.stream} not found in account {trigger.account}")


def desired_replicas(lags: dict[Trigger, int], spec: dict[str, Any]) -> int:
    wanted = max(math.ceil(lag / t.lag_threshold) for t, lag in lags.items())
    return max(spec["minReplicaCount"], min(spec["maxReplicaCount"], wanted))


@pytest.fixture
def scaled_object(composed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return composed["ScaledObject"]


async def test_backlog_crosses_the_lag_threshold(tmp_path: Path, scaled_object: dict[str, Any]) -> None:
    triggers = {t.consumer: t for t in triggers_of(scaled_object)}
    normal = triggers[names.consumer_name("normal")]
    spec = scaled_object["spec"]

    with running_nats_server(tmp_path) as (nats_url, monitoring_port):
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            async with httpx.AsyncClient(timeout=5) as client:

                async def lags() -> dict[Trigger, int]:
                    return {t: await keda_lag(client, monitoring_port, t) for t in triggers.values()}

                # Before the topology exists KEDA has nothing to read (why the stream Job runs first).
                with pytest.raises(ScalerError):
                    await keda_lag(client, monitoring_port, normal)

                await ensure_topology(js, NatsSettings(url=nats_url), max_event_bytes=1_048_576)

                # Empty consumers: lag 0, below the activation threshold; the minimum stays.
                empty = await lags()
                assert set(empty.values()) == {0}
                assert not any(lag > t.activation_lag_threshold for t, lag in empty.items())
                assert desired_replicas(empty, spec) == spec["minReplicaCount"] == 1

                for i in range(BACKLOG):
                    await js.publish(
                        names.task_subject("normal"), b"{}", headers={names.MSG_ID_HEADER: f"keda-lag-{i}"}
                    )

                backlog = await lags()
                assert backlog[normal] == BACKLOG
                assert backlog[normal] > normal.lag_threshold == 5  # crosses 5: scale out
                assert backlog[normal] > normal.activation_lag_threshold
                assert all(lag == 0 for t, lag in backlog.items() if t is not normal)
                assert desired_replicas(backlog, spec) == math.ceil(BACKLOG / 5) == 3

                # Delivered but not yet acked still counts (num_ack_pending): a replica busy with
                # tasks is not a reason to scale in.
                sub = await js.pull_subscribe_bind(durable=normal.consumer, stream=normal.stream)
                taken = await sub.fetch(4, timeout=5)
                assert len(taken) == 4
                assert (await lags())[normal] == BACKLOG

                # Acked tasks leave the work queue and the lag.
                for msg in taken:
                    await msg.ack_sync()
                after_ack = await lags()
                assert after_ack[normal] == BACKLOG - 4
                assert desired_replicas(after_ack, spec) == 2

                # Down to one message: not above the activation threshold of 1.
                rest = await sub.fetch(BACKLOG - 5, timeout=5)
                for msg in rest:
                    await msg.ack_sync()
                last = await lags()
                assert last[normal] == 1
                assert not last[normal] > normal.activation_lag_threshold
                assert desired_replicas(last, spec) == 1
        finally:
            await nc.close()


async def test_jsz_shape_matches_what_keda_decodes(tmp_path: Path) -> None:
    """The fields KEDA's scaler decodes are present in this server's /jsz answer."""
    with running_nats_server(tmp_path) as (nats_url, monitoring_port):
        nc = await nats.connect(nats_url)
        try:
            await ensure_topology(nc.jetstream(), NatsSettings(url=nats_url), max_event_bytes=1_048_576)
            async with httpx.AsyncClient(timeout=5) as client:
                url = f"http://127.0.0.1:{monitoring_port}/jsz?acc=$G&consumers=true&config=true"
                body = (await client.get(url)).json()
        finally:
            await nc.close()
    [account] = body["account_details"]
    assert account["name"] == "$G"
    streams = {s["name"]: s for s in account["stream_detail"]}
    assert set(streams) == {
        names.TASK_STREAM,
        names.STATUS_STREAM,
        names.DEADLETTER_STREAM,
        names.GOVERNANCE_STREAM,
        names.AGENT_CONTROL_STREAM,
    }
    task_stream = streams[names.TASK_STREAM]
    assert task_stream["config"]["subjects"] == [names.TASK_SUBJECTS]
    assert task_stream["config"]["retention"] == "workqueue"
    assert {"messages", "last_seq"} <= set(task_stream["state"])
    consumers = {c["name"]: c for c in task_stream["consumer_detail"]}
    assert set(consumers) == {names.consumer_name(p) for p in names.PRIORITIES}
    for consumer in consumers.values():
        assert {"stream_name", "num_pending", "num_ack_pending", "num_waiting", "num_redelivered"} <= set(consumer)
        assert consumer["config"]["durable_name"] == consumer["name"]
