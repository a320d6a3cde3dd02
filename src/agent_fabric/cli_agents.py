"""`agent-fabric agents ...`: thin HTTP clients of /api/v1/agents.

Answers are printed as JSON on stdout. Any failure is one line on stderr and exit code 1 (2 for
bad usage): an unreachable fabric, a refused token, a problem the API reported. Never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

agents_cli = typer.Typer(no_args_is_help=True, help="Agents the fabric manages: list, show, register, config, ...")
tokens_cli = typer.Typer(no_args_is_help=True, help="One-time discovery tokens agents register with.")
agents_cli.add_typer(tokens_cli, name="tokens")

UrlOption = Annotated[str, typer.Option(envvar="AGENT_FABRIC_URL", help="The fabric's HTTP address.")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="AGENT_FABRIC_TOKEN", help="Bearer token (default: an admin token from this instance's key)."
    ),
]
DEFAULT_URL = "http://127.0.0.1:8080"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _bearer(token: str | None) -> str:
    if token:
        return token
    from agent_fabric.security.tokens import TokenService
    from agent_fabric.settings import Settings

    try:
        return TokenService(Settings()).issue(role="admin", subject="cli", tenant_id=None, ttl_seconds=300)
    except (ValueError, OSError) as exc:
        _fail(f"no token: pass --token or AGENT_FABRIC_TOKEN ({str(exc).splitlines()[0]})", 2)


def _request(method: str, url: str, token: str | None, *, anonymous: bool = False, **kwargs: Any) -> Any:
    headers = dict(kwargs.pop("headers", {}))
    if not anonymous:
        headers["Authorization"] = f"Bearer {_bearer(token)}"
    base = url.split("/api/", 1)[0]
    try:
        response = httpx.request(method, url, headers=headers, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the fabric at {base}: {exc or type(exc).__name__}")
    if response.status_code >= 400:
        _fail(_problem_line(response))
    return response.json() if response.content else None


def _problem_line(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text[:200].strip() or response.reason_phrase}"
    if not isinstance(body, dict):
        return f"{response.status_code}: {str(body)[:200]}"
    detail = body.get("detail") or body.get("title") or response.reason_phrase
    if response.status_code == 401:
        return f"the fabric refused the credentials: {detail}"
    return f"{response.status_code} {body.get('code', '')}: {detail}".replace("  ", " ")


def _show(body: Any) -> None:
    typer.echo(json.dumps(body, indent=2, default=str))


@agents_cli.command("list")
def list_agents(
    status: Annotated[str | None, typer.Option(help="discovered, registered, running, stopped, failed.")] = None,
    agent_type: Annotated[str | None, typer.Option("--type", help="Agent type.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant (admins).")] = None,
    limit: int = 100,
    offset: int = 0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List agents, newest first."""
    params = {"status": status, "type": agent_type, "tenant_id": tenant, "limit": limit, "offset": offset}
    _show(_request("GET", f"{url}/api/v1/agents", token, params={k: v for k, v in params.items() if v is not None}))


@agents_cli.command()
def show(agent_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """An agent, with its lifecycle history."""
    _show(_request("GET", f"{url}/api/v1/agents/{agent_id}", token))


@agents_cli.command()
def register(
    name: Annotated[str, typer.Option(help="AGENT_NAME.")],
    version: Annotated[str, typer.Option(help="AGENT_VERSION (semantic).")],
    agent_type: Annotated[str, typer.Option("--type", help="AGENT_TYPE.")],
    discovery_token: Annotated[str | None, typer.Option(help="One-time token (an agent registering itself).")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant, when an operator registers directly.")] = None,
    description: str | None = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Register an agent; prints its credentials (shown this once)."""
    body = {
        "agent_name": name,
        "agent_version": version,
        "agent_type": agent_type,
        "discovery_token": discovery_token,
        "tenant_id": tenant,
        "description": description,
    }
    body = {k: v for k, v in body.items() if v is not None}
    _show(_request("POST", f"{url}/api/v1/agents", token, anonymous=discovery_token is not None, json=body))


@agents_cli.command()
def config(
    agent_id: str,
    set_values: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE (VALUE as JSON, else text); repeatable.")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="JSON file replacing the agent's own layer.")] = None,
    history: Annotated[bool, typer.Option(help="Show every stored version instead.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Show the effective configuration (value and source per key); change it with --set or --file."""
    base = f"{url}/api/v1/agents/{agent_id}/config"
    if history:
        _show(_request("GET", f"{base}/history", token))
        return
    if not set_values and file is None:
        _show(_request("GET", base, token))
        return
    current = _request("GET", base, token)
    layer: dict[str, Any] = dict(current.get("layers", {}).get("agent", {}))
    if file is not None:
        try:
            layer = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {file}: {exc}", 2)
    for item in set_values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            _fail(f"--set takes KEY=VALUE, got {item!r}", 2)
        try:
            layer[key] = json.loads(raw)
        except ValueError:
            layer[key] = raw
    headers = {"If-Match": str(current.get("version", 0))}
    _show(_request("PUT", base, token, json=layer, headers=headers))


@agents_cli.command()
def discover(
    last: Annotated[bool, typer.Option(help="Show the last scan instead of scanning now.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Scan the agents directories now (admins); every package with its problems."""
    _show(_request("GET" if last else "POST", f"{url}/api/v1/agents/discover", token))


@agents_cli.command()
def delete(agent_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Delete an agent that is not running; its API key and NATS user end."""
    _request("DELETE", f"{url}/api/v1/agents/{agent_id}", token)
    typer.echo(json.dumps({"deleted": agent_id}))


@tokens_cli.command("create")
def create_token(
    tenant: Annotated[str | None, typer.Option(help="Tenant the token registers agents in (admins).")] = None,
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds (30-86400).")] = None,
    note: str | None = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Mint a one-time discovery token (shown this once)."""
    body = {k: v for k, v in {"tenant_id": tenant, "ttl_seconds": ttl, "note": note}.items() if v is not None}
    _show(_request("POST", f"{url}/api/v1/agents/discovery-tokens", token, json=body))


@tokens_cli.command("list")
def list_tokens(
    tenant: Annotated[str | None, typer.Option(help="Tenant (admins).")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Discovery tokens: who minted them, when they expire, which agent used them (never the secret)."""
    params = {"tenant_id": tenant} if tenant else {}
    _show(_request("GET", f"{url}/api/v1/agents/discovery-tokens", token, params=params))
