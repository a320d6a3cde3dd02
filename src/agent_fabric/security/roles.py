"""Roles and what they may do. Every route names the one permission it needs (security/deps.py).

Builtin roles are fixed; custom roles are named permission sets stored in the database and
shared live by every replica (security/access_state.py). Every role but admin is bound to the
tenant in its token.
"""

from __future__ import annotations

from typing import Final

TASKS_SUBMIT: Final = "tasks:submit"
TASKS_READ: Final = "tasks:read"
# Cancelling: whoever may submit in a tenant may cancel its tasks (every role but viewer).
TASKS_CANCEL: Final = "tasks:cancel"
POLICIES_READ: Final = "policies:read"
POLICIES_WRITE: Final = "policies:write"
POLICIES_CHECK: Final = "policies:check"
APPROVALS_READ: Final = "approvals:read"
APPROVALS_REQUEST: Final = "approvals:request"
APPROVALS_DECIDE: Final = "approvals:decide"
BUDGETS_READ: Final = "budgets:read"
BUDGETS_WRITE: Final = "budgets:write"
AUDIT_READ: Final = "audit:read"
CONFIG_READ: Final = "config:read"
CONFIG_WRITE: Final = "config:write"
KEYS_MANAGE: Final = "keys:manage"
ROLES_MANAGE: Final = "roles:manage"
# The seed's /api/v2/agent/* surface: POD administrators (and admins) only.
POD_ADMIN: Final = "pod:admin"
# Managed agents (/api/v1/agents): read records, configure (an agent: its own), change and register,
# scan the fabric's agents directories (admins: the catalogue is the whole fabric's).
AGENTS_READ: Final = "agents:read"
AGENTS_CONFIGURE: Final = "agents:configure"
AGENTS_WRITE: Final = "agents:write"
AGENTS_DISCOVER: Final = "agents:discover"
# Routes that take no bearer token because they exchange a credential for one.
PUBLIC: Final = "public"

_READ = frozenset({TASKS_READ, POLICIES_READ, APPROVALS_READ, BUDGETS_READ, AGENTS_READ})
_AGENT = _READ | {TASKS_SUBMIT, TASKS_CANCEL, POLICIES_CHECK, APPROVALS_REQUEST, AGENTS_CONFIGURE}
_POD_ADMIN = _AGENT | {
    POLICIES_WRITE,
    APPROVALS_DECIDE,
    BUDGETS_WRITE,
    AUDIT_READ,
    CONFIG_READ,
    CONFIG_WRITE,
    POD_ADMIN,
    KEYS_MANAGE,
    AGENTS_WRITE,
}
# Defining roles changes what every tenant's tokens may do: admins only.
_ADMIN = _POD_ADMIN | {ROLES_MANAGE, AGENTS_DISCOVER}

PERMISSIONS: Final = frozenset(_ADMIN)

BUILTIN_ROLES: Final[dict[str, frozenset[str]]] = {
    # Every tenant, every action.
    "admin": frozenset(_ADMIN),
    # A POD's administrator: everything in its own tenant, including its agents' API keys.
    "pod_admin": frozenset(_POD_ADMIN),
    # An agent or service acting for its tenant: submit and cancel tasks, ask the policy, request approvals, read.
    "agent": frozenset(_AGENT),
    # Read-only, its own tenant (not the audit trail nor the configuration).
    "viewer": frozenset(_READ),
}

# Roles a pod_admin may hand out in API keys of its own tenant (never admin).
DELEGABLE_BY_POD_ADMIN: Final = frozenset({"pod_admin", "agent", "viewer"})
