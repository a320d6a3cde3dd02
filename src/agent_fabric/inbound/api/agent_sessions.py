"""/api/v2/agent/message and /api/v2/agent/sessions: talking to Agent Zero through the fabric (seed 000 req. 2, 9).

POD administrators of that POD (or admins) only; the `Pod` dependency audits every request
before it reaches Agent Zero and puts the POD's mode in every response (inbound/api/pod.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent_fabric.audit.entries import Caller
from agent_fabric.inbound.api.deps import Offset
from agent_fabric.inbound.api.pod import Pod, PodCall
from agent_fabric.storage.session_store import STATUSES

router = APIRouter(prefix="/api/v2/agent", tags=["agent-v2"])

SESSION_ID_PATTERN = r"^[0-9a-f-]{36}$"
SessionPath = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="The session's id (a UUID).")]
MAX_MESSAGE_CHARS = 100_000


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(..., min_length=1, max_length=MAX_MESSAGE_CHARS, description="What to tell the agent.")
    session_id: str | None = Field(
        None, pattern=SESSION_ID_PATTERN, description="The session to continue; omitted: a new session."
    )
    agent_profile: str | None = Field(
        None, min_length=1, max_length=128, description="Agent Zero profile of a new session's chat."
    )


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_profile: str | None = Field(
        None, min_length=1, max_length=128, description="Agent Zero profile of the session's chat."
    )


def caller_of(pod: PodCall) -> Caller:
    return pod.caller


@router.post("/message", summary="Send a message to Agent Zero (opens a session unless session_id is given)")
async def post_message(body: MessageIn, pod: Pod) -> JSONResponse:
    answer = await pod.fabric.sessions.send(caller_of(pod), body.message, body.session_id, body.agent_profile)
    reply: dict[str, Any] = {
        "session_id": answer.session.id,
        "session_started": answer.started,
        "response": answer.response,
        "session": answer.session.view(),
    }
    return pod.reply(reply)


@router.get("/sessions", summary="The POD's Agent Zero sessions, newest first")
async def list_sessions(
    pod: Pod,
    status: Annotated[str | None, Query(pattern=f"^({'|'.join(STATUSES)})$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> JSONResponse:
    items, total = await pod.fabric.sessions.page(pod.tenant_id, status, limit, offset)
    return pod.reply({"items": [s.view() for s in items], "total": total, "limit": limit, "offset": offset})


@router.post(
    "/sessions",
    summary="Open a session without a message (connect its WebSocket, then send the first message there)",
    status_code=201,
)
async def open_session(pod: Pod, body: SessionIn | None = None) -> JSONResponse:
    session = await pod.fabric.sessions.open(caller_of(pod), body.agent_profile if body else None)
    return pod.reply(session.view(), 201)


@router.get("/sessions/{session_id}", summary="One session's details")
async def get_session(session_id: SessionPath, pod: Pod) -> JSONResponse:
    return pod.reply((await pod.fabric.sessions.get(pod.tenant_id, session_id)).view())


@router.post("/sessions/{session_id}/terminate", summary="End a session: its Agent Zero chat and event log are deleted")
async def terminate_session(session_id: SessionPath, pod: Pod) -> JSONResponse:
    return pod.reply((await pod.fabric.sessions.terminate(caller_of(pod), session_id)).view())
