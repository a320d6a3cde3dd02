"""/api/v2/agent/instances: Agent Zero instances registered through the API.

A POD administrator registers instances owned by its POD: that POD's Agent Zero work goes to them
(in their mode's set) and no other POD's. An admin may register one shared by every POD
(`shared: true`). The API key is write-only: no response and no audit entry carries it.
Registrations and removals apply on every replica within a moment (agent_zero/registry.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agent_fabric.errors import FabricError, Forbidden
from agent_fabric.inbound.api.pod import Pod, PodCall
from agent_fabric.settings import Mode

router = APIRouter(prefix="/api/v2/agent/instances", tags=["agent-v2"])

InstanceId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$")]


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., min_length=1, max_length=2048, description="The instance's base URL (http or https).")
    api_key: SecretStr = Field(..., min_length=1, max_length=512, description="Its X-API-KEY (never returned).")
    mode_set: Mode | None = Field(None, description="The set that routes to it; default: the POD's mode now.")
    shared: bool = Field(False, description="Admins: serve every POD instead of this one.")


def _is_admin(pod: PodCall) -> bool:
    return pod.principal.tenant_id is None  # only the admin role is bound to no tenant


@router.post("", summary="Register an Agent Zero instance for the POD (or, admins, for every POD)")
async def register_instance(registration: Registration, pod: Pod) -> JSONResponse:
    mode_set = registration.mode_set or pod.mode
    asked = {"url": registration.url, "mode_set": mode_set, "shared": registration.shared}
    registry = pod.fabric.fleet_manager.instances
    try:
        if registration.shared and not _is_admin(pod):
            raise Forbidden("only an admin registers an instance shared by every POD", code="admin_only")
        record = await registry.register(
            url=registration.url,
            api_key=registration.api_key.get_secret_value(),
            mode_set=mode_set,
            tenant_id=None if registration.shared else pod.tenant_id,
            caller=pod.caller,  # the registration's audit entry commits with it
        )
    except FabricError as exc:  # nothing changed: the refusal is audited on its own
        pod.audit("agent.instance.register", request=asked, response={"error": exc.code, "detail": exc.message})
        raise
    return pod.reply(_view(pod, record.id), 201)


@router.get("", summary="The instances the POD may use: its own, the shared ones, the environment's")
async def list_instances(pod: Pod) -> JSONResponse:
    registry = pod.fabric.fleet_manager.instances
    serving = {i.url for i in pod.fabric.fleet_manager.fleet.candidates(pod.tenant_id)}
    items = [{**v, "serving": v["url"] in serving} for v in registry.views_for(pod.tenant_id)]
    return pod.reply({"pod_id": pod.tenant_id, "items": items})


@router.get("/{instance_id}", summary="One registered instance")
async def get_instance(instance_id: InstanceId, pod: Pod) -> JSONResponse:
    pod.fabric.fleet_manager.instances.get(instance_id, pod.tenant_id)
    return pod.reply(_view(pod, instance_id))


@router.delete("/{instance_id}", summary="Unregister an instance (new work stops going to it at once)")
async def remove_instance(instance_id: InstanceId, pod: Pod) -> JSONResponse:
    registry = pod.fabric.fleet_manager.instances
    record = await registry.remove(instance_id, caller=pod.caller, admin=_is_admin(pod))  # audited in its transaction
    return pod.reply({"id": record.id, "url": record.url, "removed": True})


def _view(pod: PodCall, instance_id: str) -> dict[str, Any]:
    registry = pod.fabric.fleet_manager.instances
    record = registry.get(instance_id, pod.tenant_id)
    instance = registry.instance(record)
    if instance is None:  # removed by another request meanwhile
        return {"id": record.id, "url": record.url, "mode_set": record.mode_set, "tenant_id": record.tenant_id}
    serving = any(c is instance for c in pod.fabric.fleet_manager.fleet.candidates(pod.tenant_id))
    return {**registry.view(instance), "serving": serving}
