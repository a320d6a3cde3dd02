"""Pure pieces of the agents' NATS side: the bundled server's configuration, an agent's
permissions, and the connect options the fabric derives from its settings."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent_fabric.agents.nats_users import agent_permissions
from agent_fabric.agents.records import AgentRecord
from agent_fabric.agents.states import AgentStatus
from agent_fabric.embedded_nats import NatsUser, render_config
from agent_fabric.errors import ConfigurationError
from agent_fabric.nats_options import connect_options
from agent_fabric.settings import NatsSettings
from tests.support.nats_jwt import creds_file_text, new_user_key
from tests.support.tls_certs import make_tls_files


def record(tenant: str = "pod.1") -> AgentRecord:
    now = datetime.now(UTC)
    return AgentRecord(
        "security-1", tenant, "Sec", "1.0.0", "security", "", "process", Path("/p"), "./run.sh", ("logs.auth",),
        "findings.security", {}, {}, AgentStatus.REGISTERED, None, now, 1, now, "t", now, now,
    )  # fmt: skip


def test_an_agent_may_use_its_own_subjects_and_its_tenants_topics() -> None:
    perms = agent_permissions(record(), {"subscribed_topics": ["logs.>"], "findings_topic": "findings.x"})
    assert perms["publish"] == [
        "agent.security-1.>",
        "$JS.API.DIRECT.GET.AGENT_CONTROL.agent.control.agents.security-1",
        "tenant.pod%2E1.findings.x",
    ]
    assert perms["subscribe"] == [
        "agent.security-1.>",
        "agent.control.agents.security-1",
        "_INBOX.security-1.>",
        "tenant.pod%2E1.logs.>",
    ]


def test_rendered_configuration_has_users_and_limits_quoted() -> None:
    text = render_config(
        4222,
        8222,
        Path("/data/nats"),
        [NatsUser("agent-fabric", "s3cret"), NatsUser("a-1", 'p"w', ("agent.a-1.>",), ("agent.a-1.>", "x.y"))],
    )
    assert 'listen: "127.0.0.1:4222"' in text and 'http: "127.0.0.1:8222"' in text
    assert '{ user: "agent-fabric", password: "s3cret" }' in text
    assert 'password: "p\\"w"' in text
    assert 'publish: { allow: ["agent.a-1.>"] }, subscribe: { allow: ["agent.a-1.>", "x.y"] }' in text
    assert "no_auth_user" not in text


def test_connect_options_follow_the_settings(tmp_path: Path) -> None:
    assert connect_options(NatsSettings(url="nats://n:4222"), None) == {}
    options = connect_options(NatsSettings(url="nats://n:4222", user="fabric", password="pw", token="tk"), None)
    assert (options["user"], options["password"], options["token"]) == ("fabric", "pw", "tk")
    files = make_tls_files(tmp_path)
    tls = connect_options(
        NatsSettings(
            url="tls://n:4222",
            tls_ca_file=files.ca,
            tls_cert_file=files.client_cert,
            tls_key_file=files.client_key,
            tls_hostname="n",
        ),
        None,
    )
    assert isinstance(tls["tls"], ssl.SSLContext) and tls["tls_hostname"] == "n"
    with pytest.raises(ValueError, match="go together"):
        NatsSettings(url="nats://n:4222", user="only-user")


def test_nkey_and_creds_files_are_checked_before_connecting(tmp_path: Path) -> None:
    user = new_user_key()
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(user.seed + "\n")
    assert connect_options(NatsSettings(url="nats://n:4222", nkey_seed_file=seed_file), None) == {
        "nkeys_seed": str(seed_file)
    }
    with pytest.raises(ConfigurationError, match="cannot read"):
        connect_options(NatsSettings(url="nats://n:4222", nkey_seed_file=tmp_path / "absent.nk"), None)
    bad_seed = tmp_path / "bad.nk"
    bad_seed.write_text("SUNOTASEED\n")
    with pytest.raises(ConfigurationError, match="no valid NKey seed") as caught:
        connect_options(NatsSettings(url="nats://n:4222", nkey_seed_file=bad_seed), None)
    assert "SUNOTASEED" not in str(caught.value)  # a seed is a private key: never in a message
    creds = tmp_path / "user.creds"
    creds.write_text(creds_file_text("header.payload.sig", user.seed))
    assert connect_options(NatsSettings(url="nats://n:4222", creds_file=creds), None) == {
        "user_credentials": str(creds)
    }
    creds.write_text(user.seed + "\n")  # a bare seed: nats-py would read forever looking for the JWT
    with pytest.raises(ConfigurationError, match="not a NATS credentials file"):
        connect_options(NatsSettings(url="nats://n:4222", creds_file=creds), None)
