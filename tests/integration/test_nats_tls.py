"""The fabric's NATS connection over TLS: a nats-server started with certificates made in the test,
requiring client certificates (mutual TLS). The fabric connects with its CA bundle and client
certificate; without them the connection is refused."""

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
from tests.support.nats_server import free_port, nats_server_binary, wait_for_port
from tests.support.tls_certs import TlsFiles, make_tls_files


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[str, TlsFiles]]:
    files = make_tls_files(tmp_path / "certs")
    port = free_port()
    q = json.dumps
    config = tmp_path / "tls.conf"
    config.write_text(
        f"listen: {q(f'127.0.0.1:{port}')}\n"
        f"jetstream {{ store_dir: {q(str(tmp_path / 'js'))} }}\n"
        f"tls {{ cert_file: {q(str(files.server_cert))}, key_file: {q(str(files.server_key))}, "
        f"ca_file: {q(str(files.ca))}, verify: true, timeout: 5 }}\n"
    )
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield f"tls://127.0.0.1:{port}", files
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def tls_settings(url: str, files: TlsFiles, *, client_cert: bool = True) -> NatsSettings:
    return NatsSettings(
        url=url,
        tls_ca_file=files.ca,
        tls_cert_file=files.client_cert if client_cert else None,
        tls_key_file=files.client_key if client_cert else None,
    )


async def refused(url: str, **options: object) -> bool:
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3, **options)
    except Exception:
        return True
    await nc.close()
    return False


async def test_mutual_tls_to_nats(tls_nats: tuple[str, TlsFiles], tmp_path: Path) -> None:
    url, files = tls_nats
    good = tls_settings(url, files)
    nc = await nats.connect(url, **connect_options(good, None))
    assert nc.connected_url is not None and nc.connected_url.scheme == "tls"
    await nc.close()
    assert await refused(url)  # no CA: the server's certificate is not trusted
    assert await refused(url, **connect_options(tls_settings(url, files, client_cert=False), None))

    # The whole fabric on that server: tasks flow over the TLS connection.
    settings = make_settings(tmp_path / "state", url, nats=good.model_dump(exclude={"url"}))
    async with running_app(settings) as app:
        response = await app.client.post(
            "/api/v1/tasks", headers=app.auth("pod_admin", "pod-tls"), json=task("tls-1", inp={"x": 1})
        )
        assert response.status_code == 202, response.text
        done = await task_status(app, "tls-1", {"completed"}, tenant="pod-tls")
        assert done["result"] == {"x": 1}
