"""Lifecycle states of a managed agent and the transitions that make sense (seed 004 section 6).

    discovered -> registered -> running -> stopped | failed -> running

The registry refuses any other move with a 409 naming what is allowed from where the agent is.
Pure: no I/O, so the process runtime and the API share one answer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class AgentStatus(StrEnum):
    DISCOVERED = "discovered"
    REGISTERED = "registered"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


TRANSITIONS: Final[dict[AgentStatus, frozenset[AgentStatus]]] = {
    AgentStatus.DISCOVERED: frozenset({AgentStatus.REGISTERED}),
    AgentStatus.REGISTERED: frozenset({AgentStatus.RUNNING}),
    # A start that never got going fails straight from running; a stop of a crashed agent is a failure.
    AgentStatus.RUNNING: frozenset({AgentStatus.STOPPED, AgentStatus.FAILED}),
    AgentStatus.STOPPED: frozenset({AgentStatus.RUNNING}),
    AgentStatus.FAILED: frozenset({AgentStatus.RUNNING, AgentStatus.STOPPED}),
}

# Deleting an agent whose process may be alive would orphan it: stop it first.
DELETABLE: Final = frozenset({AgentStatus.DISCOVERED, AgentStatus.REGISTERED, AgentStatus.STOPPED, AgentStatus.FAILED})


def allowed(current: AgentStatus, target: AgentStatus) -> bool:
    return target in TRANSITIONS[current]


def refusal(current: AgentStatus, target: AgentStatus) -> str:
    """Why a move is refused, for the 409 problem's detail."""
    nexts = ", ".join(sorted(TRANSITIONS[current])) or "nothing"
    return f"an agent in {current.value!r} cannot move to {target.value!r} (allowed from {current.value!r}: {nexts})"
