"""The fabric's NATS connection with an NKey seed file and with a decentralised-auth `.creds` file.

Each test starts its own nats-server from a config written here: one that knows a user only by
its NKey public key, one in operator mode (operator, account and user JWTs made in the test with
the nkeys package, accounts preloaded into a memory resolver). The fabric connects with the seed
or creds file from its settings and uses JetStream; another key is refused by the server.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from agent_fabric.nats_options import connect_options
from agent_fabric.settings import NatsSettings
from tests.conftest import make_settings, running_app
from tests.support.flows import task, task_status
from tests.support.nats_jwt import (
    account_jwt,
    creds_file_text,
    new_account_key,
    new_operator_key,
    new_user_key,
    operator_jwt,
    user_jwt,
)
from tests.support.nats_server import free_port, nats_server_binary, wait_for_port

q = json.dumps


def started_server(tmp_path: Path, auth_config: str) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "server.conf"
    config.write_text(
        f"listen: {q(f'127.0.0.1:{port}')}\njetstream {{ store_dir: {q(str(tmp_path / 'js'))} }}\n{auth_config}"
    )
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, timeout=30)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def refused(url: str, **options: object) -> str | None:
    """The server's refusal as text, or None when the connection was accepted."""
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, **options)
    except Exception as exc:
        return str(exc).lower()
    await nc.close()
    return None


async def uses_jetstream(url: str, settings: NatsSettings, stream: str) -> None:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=10, **connect_options(settings, None))
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        ack = await js.publish(f"{stream}.one", b"hello")
        assert ack.stream == stream and ack.seq == 1
        assert (await js.get_msg(stream, 1)).data == b"hello"
    finally:
        await nc.close()


async def fabric_runs_a_task(tmp_path: Path, url: str, nats_settings: dict[str, object], tenant: str) -> None:
    settings = make_settings(tmp_path / "state", url, nats=nats_settings)
    async with running_app(settings) as app:
        response = await app.client.post(
            "/api/v1/tasks", headers=app.auth("pod_admin", tenant), json=task(f"{tenant}-1", inp={"x": 1})
        )
        assert response.status_code == 202, response.text
        done = await task_status(app, f"{tenant}-1", {"completed"}, tenant=tenant, timeout=30)
        assert done["result"] == {"x": 1}


def write_seed(path: Path, seed: str) -> Path:
    path.write_text(seed + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def nkey_nats(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, seed) of a server whose only user is known by an NKey public key."""
    user = new_user_key()
    yield from (
        (url, user.seed)
        for url in started_server(tmp_path, f"authorization {{ users = [ {{ nkey: {q(user.public)} }} ] }}\n")
    )


async def test_nkey_seed_file_connects_and_a_wrong_seed_is_refused(nkey_nats: tuple[str, str], tmp_path: Path) -> None:
    url, seed = nkey_nats
    good = NatsSettings(url=url, nkey_seed_file=write_seed(tmp_path / "fabric.nk", seed))
    await uses_jetstream(url, good, "NKEYS")

    wrong = NatsSettings(url=url, nkey_seed_file=write_seed(tmp_path / "other.nk", new_user_key().seed))
    refusal = await refused(url, **connect_options(wrong, None))
    assert refusal is not None and "authorization violation" in refusal
    assert await refused(url) is not None  # and no key at all

    await fabric_runs_a_task(tmp_path, url, {"nkey_seed_file": good.nkey_seed_file}, "pod-nkey")


@pytest.fixture
def operator_nats(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(url, user JWT, user seed) of an operator-mode server: one account with JetStream, one user in it."""
    operator, account, system, user = new_operator_key(), new_account_key(), new_account_key(), new_user_key()
    accounts = {
        account.public: account_jwt(operator, account, "FABRIC"),
        system.public: account_jwt(operator, system, "SYS", jetstream=False),
    }
    preload = ", ".join(f"{q(key)}: {q(jwt)}" for key, jwt in accounts.items())
    auth = (
        f"operator: {q(operator_jwt(operator))}\n"
        f"system_account: {q(system.public)}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{ {preload} }}\n"
    )
    yield from ((url, user_jwt(account, user, "fabric"), user.seed) for url in started_server(tmp_path, auth))


async def test_creds_file_connects_in_operator_mode_and_a_wrong_key_is_refused(
    operator_nats: tuple[str, str, str], tmp_path: Path
) -> None:
    url, jwt, seed = operator_nats
    creds_file = tmp_path / "fabric.creds"
    creds_file.write_text(creds_file_text(jwt, seed))
    good = NatsSettings(url=url, creds_file=creds_file)
    await uses_jetstream(url, good, "CREDS")

    # A user signed by an account the operator never issued.
    stranger, stranger_user = new_account_key(), new_user_key()
    foreign = tmp_path / "foreign.creds"
    foreign.write_text(creds_file_text(user_jwt(stranger, stranger_user, "stranger"), stranger_user.seed))
    refusal = await refused(url, **connect_options(NatsSettings(url=url, creds_file=foreign), None))
    assert refusal is not None and "authorization violation" in refusal
    # The right JWT with another user's seed: the nonce signature does not match the JWT's key.
    stolen = tmp_path / "stolen.creds"
    stolen.write_text(creds_file_text(jwt, new_user_key().seed))
    refusal = await refused(url, **connect_options(NatsSettings(url=url, creds_file=stolen), None))
    assert refusal is not None and "authorization violation" in refusal

    await fabric_runs_a_task(tmp_path, url, {"creds_file": creds_file}, "pod-creds")
