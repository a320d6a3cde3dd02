"""Who published a NATS task: the HTTP door's credentials and rules, at the JetStream door.

A publisher puts its credential in the `Authorization` message header, as over HTTP:
`Bearer <JWT>` (agent-fabric token, an API key's exchanged token, an identity provider's token)
or `Bearer af_...` (an API key itself). The tenant, subject and role come from the credential,
never from the payload:

- no header, a malformed one, a forged / expired / revoked token, an unknown / revoked / expired
  key -> `unauthenticated`: nothing about the message can be trusted, so it is dead-lettered only;
- a role without `tasks:submit`, or a payload `tenant_id` outside the credential's tenant ->
  `forbidden`: dead-lettered, and a failure event goes out in the credential's tenant for the
  job id (the credential vouches for both); nothing is recorded under that job id;
- past the credential's rate limit the message waits in JetStream (nak with the bucket's delay).

A token's expiry is judged at the moment JetStream stored the message, so a task published with a
valid token and consumed from a backlog later still runs; a revocation applies to everything not
yet consumed. Messages the fabric publishes itself carry its seal instead (security/internal_seal.py).
`AGENT_FABRIC_NATS_DOOR_ALLOW_ANONYMOUS` lets tasks without a header through, as their payload
says, for a trusted network only (never for a LIVE tenant; MODE=LIVE refuses the setting).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from agent_fabric import names
from agent_fabric.admission.checks import Actor
from agent_fabric.errors import FabricError, InvalidTask, Unauthenticated
from agent_fabric.events.envelope import TaskEvent
from agent_fabric.security.credentials import KEY_PREFIX, CredentialService, KeyHolder
from agent_fabric.security.internal_seal import TASK_PURPOSE, InternalSeal
from agent_fabric.security.rate_limit import RateLimiter
from agent_fabric.security.roles import TASKS_SUBMIT
from agent_fabric.security.tokens import Principal, TokenService
from agent_fabric.settings import Mode, NatsDoorSettings
from agent_fabric.tasks import TaskSpec

log = logging.getLogger(__name__)

MAX_CACHED_KEYS = 10_000
MAX_CACHED_TOKENS = 10_000
_HIDDEN_HEADERS = frozenset({names.AUTHORIZATION_HEADER.lower(), names.SEAL_HEADER.lower()})


class CredentialRefused(FabricError):
    """A NATS task refused for its credential. `job_id`/`tenant_id` only when the credential vouches
    for them (then a failure event goes out too); the message is always dead-lettered."""

    def __init__(self, message: str, *, code: str, job_id: str | None = None, tenant_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.job_id = job_id
        self.tenant_id = tenant_id


def payload_actor(event: TaskEvent) -> Actor:
    """A task the fabric sealed (its door already checked the caller) or an anonymous one: the task's
    metadata.user if it names one, else its source."""
    return Actor(event.spec.metadata.get("user") or f"nats:{event.source}"[:128])


@dataclass(frozen=True, slots=True)
class NatsCaller:
    """Who published one task message, once its header was checked."""

    kind: Literal["credential", "fabric", "anonymous"]
    mode_for: Callable[[str], Mode]
    principal: Principal | None = None

    @property
    def tenant_id(self) -> str | None:
        """The tenant a payload without `tenant_id` belongs to (as over HTTP)."""
        return self.principal.tenant_id if self.principal is not None else None

    @property
    def user(self) -> str | None:
        """The user a credential's task carries when its payload names none, as at the HTTP door
        (user budgets, user policy conditions): the credential's subject. The consumer hands it to
        the parser (default_user), which sets it before validation; check() checks the rest."""
        return self.principal.subject if self.kind == "credential" and self.principal is not None else None

    def actor(self, event: TaskEvent) -> Actor:
        if self.principal is not None:
            return Actor(self.principal.subject, self.principal.role)
        return payload_actor(event)

    def check(self, spec: TaskSpec) -> None:
        """Whether this caller may submit `spec`: CredentialRefused if not."""
        if self.kind == "fabric":
            return
        if self.kind == "anonymous" or self.principal is None:
            if self.mode_for(spec.tenant_id) == "LIVE":
                raise CredentialRefused(
                    f"tenant {spec.tenant_id!r} is LIVE: its NATS tasks must carry a credential", code="unauthenticated"
                )
            return
        principal = self.principal
        if TASKS_SUBMIT not in principal.permissions:
            raise CredentialRefused(
                f"role {principal.role!r} lacks permission {TASKS_SUBMIT!r}",
                code="forbidden",
                job_id=spec.job_id,
                tenant_id=principal.tenant_id or spec.tenant_id,
            )
        if principal.tenant_id is not None and spec.tenant_id != principal.tenant_id:
            raise CredentialRefused(
                f"a {principal.role} of tenant {principal.tenant_id!r} cannot submit in tenant {spec.tenant_id!r}",
                code="forbidden",
                job_id=spec.job_id,
                tenant_id=principal.tenant_id,
            )

    def confine(self, exc: FabricError) -> FabricError:
        """A refusal as this caller may be answered: an invalid task naming another tenant than the
        credential's is refused as `forbidden` in the credential's tenant, never recorded in the other."""
        tenant = self.tenant_id
        if tenant is None or not isinstance(exc, InvalidTask) or exc.tenant_id in (None, tenant):
            return exc
        return CredentialRefused(
            f"a {self.principal.role if self.principal else 'caller'} of tenant {tenant!r} cannot submit in "
            f"tenant {exc.tenant_id!r}",
            code="forbidden",
            job_id=exc.job_id,
            tenant_id=tenant,
        )


@dataclass(frozen=True, slots=True)
class Vetted:
    msg: Any
    caller: NatsCaller


class NatsCredentials:
    def __init__(
        self,
        cfg: NatsDoorSettings,
        tokens: TokenService,
        credentials: CredentialService,
        is_revoked: Callable[[str, str | None], bool],
        permissions_for: Callable[[str], frozenset[str] | None],
        seal: InternalSeal,
        mode_for: Callable[[str], Mode],
    ) -> None:
        self._cfg = cfg
        self._tokens = tokens
        self._credentials = credentials
        self._is_revoked = is_revoked
        self._permissions_for = permissions_for
        self._seal = seal
        self._mode_for = mode_for
        self._limiter = RateLimiter(cfg.rate_limit_per_second, cfg.rate_limit_burst)
        self._keys: OrderedDict[str, tuple[KeyHolder, float]] = OrderedDict()
        self._tokens_seen: OrderedDict[str, tuple[Principal, NatsCaller]] = OrderedDict()
        self._fabric = NatsCaller("fabric", mode_for)
        self._anonymous = NatsCaller("anonymous", mode_for)
        if cfg.allow_anonymous:
            log.warning(
                "NATS tasks without a credential are accepted (AGENT_FABRIC_NATS_DOOR_ALLOW_ANONYMOUS): "
                "anyone who can publish to agent.execute.* runs tasks in any non-LIVE tenant"
            )

    async def screen(self, msgs: list[Any], refuse: Callable[[Any, FabricError], None]) -> list[Vetted]:
        """The messages whose publisher checks out, each with who it is. Refused ones go to `refuse`;
        rate-limited ones, and ones whose key could not be looked up, go back to JetStream for later."""
        vetted: list[Vetted] = []
        for msg in msgs:
            try:
                caller = await self.caller(msg)
            except FabricError as exc:
                refuse(msg, exc)
                continue
            except Exception as exc:  # the database is away (API key lookup): try again later
                log.warning("could not check a NATS task's credential; redelivering", extra={"error": str(exc)})
                await _nak(msg, 1.0)
                continue
            if caller.principal is not None:
                wait = self._limiter.acquire(caller.principal.credential)
                if wait is not None:
                    await _nak(msg, wait)
                    continue
            vetted.append(Vetted(msg, caller))
        return vetted

    async def caller(self, msg: Any) -> NatsCaller:
        headers: Mapping[str, str] = msg.headers or {}
        authorization = _header(headers, names.AUTHORIZATION_HEADER)
        if authorization is None:
            seal = _header(headers, names.SEAL_HEADER)
            if seal is not None:
                msg_id = _header(headers, names.MSG_ID_HEADER) or ""
                if self._seal.verify(seal, TASK_PURPOSE, msg_id, msg.data):
                    return self._fabric
                raise CredentialRefused(
                    "the Agent-Fabric-Seal header does not match the message", code="unauthenticated"
                )
            if self._cfg.allow_anonymous:
                return self._anonymous
            raise CredentialRefused(
                "no credential: send the header `Authorization: Bearer <JWT or API key>`", code="unauthenticated"
            )
        scheme, _, value = authorization.strip().partition(" ")  # CLIs may keep the space after "K:"
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise CredentialRefused(
                "the Authorization header must read `Bearer <JWT or API key>`", code="unauthenticated"
            )
        published = _published_at(msg)
        try:
            if value.startswith(KEY_PREFIX):
                return NatsCaller("credential", self._mode_for, await self._key_principal(value, published))
            return await self._token_caller(value, published)
        except Unauthenticated as exc:
            raise CredentialRefused(exc.message, code="unauthenticated") from None

    async def _token_caller(self, token: str, published: float) -> NatsCaller:
        """A JWT's caller. A publisher sends the same token with many tasks: its signature is
        checked once (scripts/bench/nats_door.py measures both costs), then its expiry, revocation
        and role on every message. The caller is kept with the token, and made anew only when
        the role's permissions changed."""
        seen = self._tokens_seen.get(token)
        if seen is None:
            verified = await self._tokens.verify(token, at=published)
            caller = NatsCaller("credential", self._mode_for, verified)
            self._tokens_seen[token] = (verified, caller)
            while len(self._tokens_seen) > MAX_CACHED_TOKENS:
                self._tokens_seen.popitem(last=False)
            return caller
        self._tokens_seen.move_to_end(token)
        known, caller = seen
        if known.token_expires is None or known.token_expires <= published:
            raise Unauthenticated("invalid token: it had expired when the message was published")
        if self._is_revoked("token", known.token_id) or self._is_revoked("key", known.key_id):
            raise Unauthenticated("token has been revoked")
        permissions = self._permissions_for(known.role)  # a custom role may have changed or gone
        if permissions is None:
            raise Unauthenticated(f"token carries no known role (got {known.role!r})")
        if permissions is known.permissions or permissions == known.permissions:
            return caller
        current = replace(known, permissions=permissions)
        caller = NatsCaller("credential", self._mode_for, current)
        self._tokens_seen[token] = (current, caller)
        return caller

    async def _key_principal(self, presented: str, published: float) -> Principal:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is None or now - cached[1] > self._cfg.key_cache_seconds:
            holder = await self._credentials.key_holder(presented)
            self._keys[digest] = (holder, now)
            self._keys.move_to_end(digest)
            while len(self._keys) > MAX_CACHED_KEYS:
                self._keys.popitem(last=False)
        else:
            holder = cached[0]
        if self._is_revoked("key", holder.key_id):
            raise Unauthenticated("API key has been revoked")
        if holder.expires_at is not None and holder.expires_at.timestamp() <= published:
            raise Unauthenticated("API key had expired when the message was published")
        permissions = self._permissions_for(holder.role)
        if permissions is None:
            raise Unauthenticated(f"API key carries no known role (got {holder.role!r})")
        return Principal(
            subject=holder.subject,
            role=holder.role,
            tenant_id=holder.tenant_id if holder.role != "admin" else None,
            token_id=None,
            permissions=permissions,
            key_id=holder.key_id,
        )


def without_credentials(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """Headers as a dead letter may keep them: no bearer token, no key, no seal."""
    if headers is None:
        return None
    return {k: ("[redacted]" if k.lower() in _HIDDEN_HEADERS else v) for k, v in headers.items()}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _published_at(msg: Any) -> float:
    """When JetStream stored the message (its timestamp survives redeliveries); now if unknown."""
    try:
        return float(msg.metadata.timestamp.timestamp())
    except Exception:
        return time.time()


async def _nak(msg: Any, delay: float) -> None:
    try:
        await msg.nak(delay=delay)
    except Exception as exc:  # the ack wait then redelivers it anyway
        log.warning("could not hand a NATS task back", extra={"error": str(exc)})
