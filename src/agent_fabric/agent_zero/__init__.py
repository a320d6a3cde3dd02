"""Agent Zero, reached only over its own HTTP API (see ../shared/agent-zero-api.md); never vendored."""
