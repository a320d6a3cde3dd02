#!/usr/bin/env bash
# Init-container entry point: bring the database schema to head before the service starts.
# Reads AGENT_FABRIC_DATABASE_URL like the service does; a non-zero exit keeps the pod from starting.
set -euo pipefail
if [ -z "${AGENT_FABRIC_DATABASE_URL:-}" ]; then
  echo "run-migrations: AGENT_FABRIC_DATABASE_URL is not set" >&2
  exit 2
fi
exec agent-fabric migrate
