"""/ws/agent/{session_id}/: a session's events live, and messages sent into it (seed 000 req. 3).

- Auth: the JWT as `Authorization: Bearer` or `?token=`; pod_admin of the session's POD (or admin),
  MFA for LIVE PODs. Refusals close the socket with 4401 / 4403 / 4404 and a reason; a refused
  attempt is audited (`access_denied`), as are connects and disconnects.
- First frame: `{"type": "session", "session": {...}, "mode"}`. Then every event of the session
  as `{"type": "event", "id": seq, "kind": message|progress|response|error|terminated, "data", "at"}`:
  first those after `?last_event_id=` from the session's log, then live ones, without gap or
  repeat (subscribe, replay, relay what the replay did not cover). A terminated session sends its
  `terminated` event and closes with 1000.
- Client frames: `{"type": "message", "message": "..."}` sends a message into the session; its
  events arrive like any other. (To see a first answer stream in, open the session empty with
  POST /api/v2/agent/sessions, connect, then send.) A refusal (busy, budget, Agent Zero down) comes back as
  `{"type": "error", "status", "code", "detail"}`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, WebSocket, WebSocketDisconnect

from agent_fabric.audit.entries import AuditEntry, Caller
from agent_fabric.errors import FabricError, InvalidRequest, NotFound
from agent_fabric.events.json_limits import DEFAULT_MAX_JSON_DEPTH, json_depth
from agent_fabric.fabric import Fabric
from agent_fabric.inbound.api.agent_sessions import MAX_MESSAGE_CHARS
from agent_fabric.inbound.api.deps import pod_tenant
from agent_fabric.outbound.sse import LIVE_ONLY_KINDS
from agent_fabric.security import roles
from agent_fabric.security.ws_auth import WsAuth, close_code, close_reason, require_ws
from agent_fabric.storage import session_store as store
from agent_fabric.storage.column_bounds import MAX_BIGINT
from agent_fabric.tasks import TENANT_ID_PATTERN

router = APIRouter(tags=["agent-v2"])
log = logging.getLogger(__name__)

WsPodAdmin = Annotated[WsAuth, Depends(require_ws(roles.POD_ADMIN))]
CLOSED = {"type": "_closed"}  # the reader's note to the relay loop that the client left


@router.websocket("/ws/agent/{session_id}/")
async def agent_ws(
    websocket: WebSocket,
    session_id: str,
    auth: WsPodAdmin,
    last_event_id: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
    tenant_id: Annotated[str | None, Query(pattern=TENANT_ID_PATTERN)] = None,
) -> None:
    fabric: Fabric = websocket.app.state.fabric
    await websocket.accept()
    try:
        caller, session = await _admit(fabric, auth, session_id, tenant_id)
    except FabricError as refusal:
        if refusal.status == 403:
            _audit_denied(fabric, auth, session_id, refusal)
        await websocket.close(close_code(refusal), close_reason(refusal.message))
        return
    _audit(fabric, caller, "agent_ws.connected", session_id, {"last_event_id": last_event_id})
    try:
        await Relay(websocket, fabric, caller, session).run(last_event_id)
    finally:
        _audit(fabric, caller, "agent_ws.disconnected", session_id, None)


async def _admit(
    fabric: Fabric, auth: WsAuth, session_id: str, tenant_id: str | None
) -> tuple[Caller, store.SessionRecord]:
    if auth.refusal is not None:
        raise auth.refusal
    principal = auth.principal
    assert principal is not None  # require_ws returns a principal or a refusal
    tenant = tenant_id or principal.tenant_id
    if tenant is None:  # an admin who named no POD acts in the session's
        found = await store.get(fabric.engine, session_id)
        if found is None:
            raise NotFound(f"no Agent Zero session {session_id!r}", code="session_not_found")
        tenant = found.tenant_id
    tenant = pod_tenant(fabric, principal, tenant)
    session = await fabric.sessions.get(tenant, session_id)
    return Caller(principal.subject, tenant, fabric.governance.tenants.mode_for(tenant)), session


class Relay:
    """One connection: the session's events out, the client's messages in."""

    def __init__(self, websocket: WebSocket, fabric: Fabric, caller: Caller, session: store.SessionRecord) -> None:
        self._ws = websocket
        self._fabric = fabric
        self._caller = caller
        self._session = session
        self._sends: set[asyncio.Task[None]] = set()

    async def run(self, last_event_id: int) -> None:
        session_id = self._session.id
        async with self._fabric.sessions.events.subscribe(session_id) as queue:
            # After the subscription: from this frame on, nothing published for the session is missed.
            await self._send({"type": "session", "session": self._session.view(), "mode": self._caller.mode})
            # An id past the log (a stale client, a guess) means "everything so far": live events
            # still count up from the log's end. The row was read after every event it counts.
            last = min(last_event_id, self._session.last_seq)
            for event in await store.events_after(self._fabric.engine, session_id, last):
                await self._send({"type": "event", **event.wire(session_id)})
                last = event.seq
            if self._session.status == store.TERMINATED:
                ended = store.Event(
                    self._session.last_seq + 1, "terminated", {"reason": "ended"}, self._session.last_activity_at
                )
                await self._send({"type": "event", **ended.wire(session_id)})
                await self._ws.close(1000, "session terminated")
                return
            reader = asyncio.create_task(self._read(queue), name=f"ws-reader-{session_id}")
            try:
                await self._relay(queue, last)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                # A message already sent goes on without the socket: its events stay in the log.
                await asyncio.gather(*self._sends, return_exceptions=True)

    async def _relay(self, queue: asyncio.Queue[dict[str, Any]], last: int) -> None:
        while True:
            item = await queue.get()
            if item is CLOSED:
                return
            if "type" in item:  # an error frame of a message this socket sent
                await self._send(item)
                continue
            if item["kind"] in LIVE_ONLY_KINDS:  # LLM tokens of the answer being written (no seq)
                await self._send({"type": "event", **item})
                continue
            if item["kind"] != "terminated":
                if item["id"] <= last:
                    continue  # already replayed from the log
                last = item["id"]
            await self._send({"type": "event", **item})
            if item["kind"] == "terminated":
                await self._ws.close(1000, "session terminated")
                return

    async def _read(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        try:
            while True:
                frame = await self._ws.receive_text()
                try:
                    message = _message_of(frame)
                except InvalidRequest as exc:
                    queue.put_nowait(_error_frame(exc))
                    continue
                task = asyncio.create_task(self._send_message(message, queue))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
        except WebSocketDisconnect:
            pass
        finally:
            queue.put_nowait(CLOSED)

    async def _send_message(self, message: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        try:
            await self._fabric.sessions.send(self._caller, message, self._session.id)
        except FabricError as exc:
            queue.put_nowait(_error_frame(exc))
        except Exception:
            log.exception("WebSocket message failed", extra={"session_id": self._session.id})
            queue.put_nowait(_error_frame(FabricError("the fabric failed to send this message; it is logged")))

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._ws.send_text(orjson.dumps(frame).decode())


# The message with every character as a six-character unicode escape, and the rest of the frame.
MAX_FRAME_CHARS = 6 * MAX_MESSAGE_CHARS + 1024


def _message_of(frame: str) -> str:
    if len(frame) > MAX_FRAME_CHARS:
        raise InvalidRequest(f"frames are at most {MAX_FRAME_CHARS} characters")
    if json_depth(frame, stop_after=DEFAULT_MAX_JSON_DEPTH) > DEFAULT_MAX_JSON_DEPTH:
        raise InvalidRequest(f"frames nest at most {DEFAULT_MAX_JSON_DEPTH} levels deep")
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise InvalidRequest('frames are JSON objects: {"type": "message", "message": "..."}') from None
    if not isinstance(body, dict) or body.get("type") != "message":
        raise InvalidRequest('the only client frame is {"type": "message", "message": "..."}')
    message = body.get("message")
    if not isinstance(message, str) or not 1 <= len(message) <= MAX_MESSAGE_CHARS:
        raise InvalidRequest(f"message must be a string of 1 to {MAX_MESSAGE_CHARS} characters")
    return message


def _error_frame(exc: FabricError) -> dict[str, Any]:
    return {"type": "error", "status": exc.status, "code": exc.code, "detail": exc.message}


def _audit(fabric: Fabric, caller: Caller, action: str, session_id: str, request: Any) -> None:
    fabric.governance.audit.record(caller.entry(action, request=request, session_id=session_id))


def _audit_denied(fabric: Fabric, auth: WsAuth, session_id: str, refusal: FabricError) -> None:
    principal = auth.principal
    tenant = principal.tenant_id if principal else None
    fabric.governance.audit.record(
        AuditEntry(
            "access_denied",
            principal.subject if principal else "anonymous",
            tenant,
            fabric.governance.tenants.mode_for(tenant),
            request={"path": f"/ws/agent/{session_id}/", "role": principal.role if principal else None},
            response={"status": 403, "code": refusal.code, "detail": refusal.message},
            session_id=session_id,
        )
    )
