"""The shipped Agent Zero profiles are configuration Agent Zero can load, and the default routing
table only names profiles that are shipped."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent_fabric.settings import DEFAULT_PROFILE_ROUTES

PROFILES = Path(__file__).resolve().parents[2] / "deploy" / "agent-zero" / "agents"
EXPECTED = {
    "gpubroker-orchestrator",
    "gpubroker-provisioner",
    "gpubroker-optimizer",
    "gpubroker-monitor",
    "gpubroker-provider",
}


def test_each_profile_has_agent_yaml_and_prompt_overrides() -> None:
    assert {p.name for p in PROFILES.iterdir() if p.is_dir()} == EXPECTED
    for profile in PROFILES.iterdir():
        meta = yaml.safe_load((profile / "agent.yaml").read_text())
        assert set(meta) == {"title", "description", "context"} and all(isinstance(v, str) and v for v in meta.values())
        prompts = list((profile / "prompts").glob("agent.system.*.md"))
        assert prompts and all(p.read_text().strip() for p in prompts)


def test_routing_table_names_shipped_profiles() -> None:
    assert set(DEFAULT_PROFILE_ROUTES.values()) <= EXPECTED
    assert set(DEFAULT_PROFILE_ROUTES) == {
        "FIND_GPU",
        "DEPLOY_GPU",
        "SCALE_GPU",
        "TERMINATE_GPU",
        "OPTIMIZE_COST",
        "HEALTH_CHECK",
    }
