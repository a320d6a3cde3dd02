"""The `agent-fabric` command: serve, token, migrate, setup-streams, and thin API clients."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from agent_fabric.cli_agents import agents_cli
from agent_fabric.settings import Settings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help="agent-fabric: run AI-agent work safely at scale.")
cli.add_typer(agents_cli, name="agents")

UrlOption = Annotated[str, typer.Option(envvar="AGENT_FABRIC_URL", help="The fabric's HTTP address.")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="AGENT_FABRIC_TOKEN", help="Bearer token (default: mint an admin token from this instance's key)."
    ),
]


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        typer.echo(f"configuration refused: {exc}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default AGENT_FABRIC_HTTP_HOST or 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default AGENT_FABRIC_HTTP_PORT or 8080).")] = None,
) -> None:
    """Run the HTTP API and the JetStream consumer in one process."""
    import uvicorn

    from agent_fabric import heap
    from agent_fabric.app import create_app
    from agent_fabric.errors import ConfigurationError
    from agent_fabric.security.https import uvicorn_tls
    from agent_fabric.telemetry.logging import configure_logging

    settings = _settings()
    try:
        tls = uvicorn_tls(settings.tls)  # HTTPS when AGENT_FABRIC_TLS_CERT_FILE/KEY_FILE are set
    except ConfigurationError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, json=settings.log_json)
    heap.tune_collector()
    app = create_app(settings, started=heap.freeze_startup_objects)
    loop = "uvloop" if sys.platform != "win32" else "asyncio"
    uvicorn.run(
        app,
        host=host or settings.http_host,
        port=port or settings.http_port,
        loop=loop,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 2,
        **tls,
    )


@cli.command()
def token(
    role: Annotated[str, typer.Option(help="admin, pod_admin, agent or viewer.")],
    tenant: Annotated[str | None, typer.Option(help="Tenant (POD) the token is bound to; not for admin.")] = None,
    subject: Annotated[str, typer.Option(help="Who the token names (sub).")] = "cli",
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds.")] = None,
    mfa: Annotated[bool, typer.Option(help="Mark the token as multi-factor (amr: mfa), for LIVE tenants.")] = False,
) -> None:
    """Print a signed JWT for this instance."""
    from agent_fabric.security.roles import BUILTIN_ROLES
    from agent_fabric.security.tokens import TokenService

    if role not in BUILTIN_ROLES:
        typer.echo(
            f"unknown role {role!r}; the CLI mints {', '.join(BUILTIN_ROLES)} (custom roles: use API keys)", err=True
        )
        raise typer.Exit(2)
    try:
        typer.echo(
            TokenService(_settings()).issue(
                role=role, subject=subject, tenant_id=tenant, ttl_seconds=ttl, amr=["mfa"] if mfa else None
            )
        )
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision (Alembic)."""
    from agent_fabric.storage.engine import migrate_async

    settings = _settings()
    try:
        asyncio.run(migrate_async(settings))
    except Exception as exc:
        typer.echo(f"migration failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("database schema is at head")


@cli.command("setup-streams")
def setup_streams() -> None:
    """Create the JetStream streams and durable consumers if missing (needs AGENT_FABRIC_NATS_URL)."""
    settings = _settings()
    nats_url = settings.nats.url
    if not nats_url:
        typer.echo("set AGENT_FABRIC_NATS_URL: setup-streams configures an external NATS", err=True)
        raise typer.Exit(2)

    async def run() -> list[str]:
        import nats

        from agent_fabric.jetstream import ensure_topology
        from agent_fabric.nats_options import connect_options

        nc = await nats.connect(settings.nats.servers, connect_timeout=10, **connect_options(settings.nats, None))
        try:
            topology = await ensure_topology(nc.jetstream(), settings.nats, settings.max_event_bytes)
        finally:
            await nc.close()
        return [str(s.name) for s in topology.streams] + [str(c.durable_name) for c in topology.consumers]

    try:
        created = asyncio.run(run())
    except Exception as exc:
        typer.echo(f"setup-streams failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("ready: " + ", ".join(created))


def _client_token(token_value: str | None) -> str:
    if token_value:
        return token_value
    from agent_fabric.security.tokens import TokenService

    return TokenService(_settings()).issue(role="admin", subject="cli", tenant_id=None, ttl_seconds=300)


def _call(method: str, url: str, token_value: str | None, **kwargs: Any) -> None:
    response = httpx.request(
        method,
        url,
        headers={"Authorization": f"Bearer {_client_token(token_value)}"},
        timeout=kwargs.pop("timeout", 30),
        **kwargs,
    )
    typer.echo(json.dumps(response.json(), indent=2, default=str))
    if response.status_code >= 400:
        raise typer.Exit(1)


@cli.command()
def submit(
    task_file: Annotated[
        Path, typer.Argument(help="JSON file with the task (the CloudEvent's data); - for stdin.", allow_dash=True)
    ],
    url: UrlOption = "http://127.0.0.1:8080",
    token_value: TokenOption = None,
) -> None:
    """Submit a task through the API."""
    text = sys.stdin.read() if str(task_file) == "-" else task_file.read_text()
    _call("POST", f"{url}/api/v1/tasks", token_value, content=text.encode())


@cli.command()
def status(
    job_id: str,
    tenant: Annotated[str | None, typer.Option(help="Tenant of the job (admins).")] = None,
    url: UrlOption = "http://127.0.0.1:8080",
    token_value: TokenOption = None,
) -> None:
    """Show a task's status and result."""
    params = {"tenant_id": tenant} if tenant else {}
    _call("GET", f"{url}/api/v1/tasks/{job_id}", token_value, params=params)


@cli.command()
def cancel(
    job_id: str,
    reason: Annotated[str | None, typer.Option(help="Why; part of the task's final message.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant of the job (admins).")] = None,
    url: UrlOption = "http://127.0.0.1:8080",
    token_value: TokenOption = None,
) -> None:
    """Cancel a task: a waiting one at once, a running one's driver."""
    params = {"tenant_id": tenant} if tenant else {}
    body = {"reason": reason} if reason else None
    _call("POST", f"{url}/api/v1/tasks/{job_id}/cancel", token_value, params=params, json=body)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
