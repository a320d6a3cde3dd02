"""StreamAcks (outbound/stream_acks.py) against a real nats-server: what the result path learns from
the stream for each publish (stored, refused, nobody listening)."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from agent_fabric.outbound.stream_acks import StreamAcks


async def _stream(nc: nats.aio.client.Client, **config: object) -> str:
    name = f"ACKS_{uuid.uuid4().hex[:8].upper()}"
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"], **config))  # type: ignore[arg-type]
    return name


async def test_each_publish_is_answered_by_its_own_ack_with_the_stream_sequence(nc: nats.aio.client.Client) -> None:
    name = await _stream(nc)
    acks = StreamAcks(nc)
    futures = [await acks.publish(f"{name.lower()}.x", b"%d" % i, {"Nats-Msg-Id": f"m-{i}"}) for i in range(50)]
    sequences = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert sequences == list(range(1, 51))
    # A repeated message id is acked again (the stream's duplicate window) and not stored twice.
    again = await asyncio.wait_for(await acks.publish(f"{name.lower()}.x", b"0", {"Nats-Msg-Id": "m-0"}), 5)
    assert again == 1
    info = await nc.jetstream().stream_info(name)
    assert info.state.messages == 50


async def test_a_subject_no_stream_listens_on_fails_with_no_stream_response(nc: nats.aio.client.Client) -> None:
    acks = StreamAcks(nc)
    future = await acks.publish(f"nobody.listens.{uuid.uuid4().hex}", b"x", {"Nats-Msg-Id": "m"})
    with pytest.raises(NoStreamResponseError):
        await asyncio.wait_for(future, 5)


async def test_a_message_the_stream_refuses_fails_with_the_streams_error(nc: nats.aio.client.Client) -> None:
    name = await _stream(nc, max_msgs=1, discard=DiscardPolicy.NEW)
    acks = StreamAcks(nc)
    assert await asyncio.wait_for(await acks.publish(f"{name.lower()}.x", b"1", {"Nats-Msg-Id": "a"}), 5) == 1
    refused = await acks.publish(f"{name.lower()}.x", b"2", {"Nats-Msg-Id": "b"})
    with pytest.raises(APIError) as caught:
        await asyncio.wait_for(refused, 5)
    assert caught.value.err_code == 10077  # JSStreamStoreFailedF: maximum messages exceeded
