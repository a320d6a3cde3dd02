#!/usr/bin/env bash
# `make compose-test`: run the integration suite against docker-compose.test.yml.
#
#   1. build the image and start NATS, Postgres, Dragonfly and the service; wait until all are healthy
#   2. smoke-test the running service container (tests/deploy/test_compose.py, `smoke` tests)
#   3. stop the service container, then run the integration suite against the three backing services
#      (the container would otherwise pull from the same durable JetStream consumers as the tests)
#   4. tear everything down, volumes included, whatever happened
#
# Extra arguments go to the integration pytest run, e.g. `scripts/compose-test.sh -k redis -x`.
# COMPOSE_TEST_PATHS overrides what that run collects (default: tests/integration).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

compose_file="docker-compose.test.yml"
compose=(docker compose -f "$compose_file")
python="${PYTHON:-$repo_root/.venv/bin/python}"
[[ -x "$python" ]] || python="python3"

if ! docker info >/dev/null 2>&1; then
  echo "compose-test: no reachable Docker engine; start Docker (the compose file itself is checked by tests/deploy/test_compose.py)" >&2
  exit 2
fi

# shellcheck disable=SC2329  # invoked by the EXIT trap below
cleanup() {
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

"${compose[@]}" up -d --build --wait

# Addresses as seen from the host; the ports are the ones published in docker-compose.test.yml.
export AGENT_FABRIC_TEST_NATS_URL="nats://127.0.0.1:14222"
export AGENT_FABRIC_TEST_NATS_MONITORING_URL="http://127.0.0.1:18222"
export AGENT_FABRIC_TEST_POSTGRES_DSN="postgresql://agent_fabric:agent_fabric@127.0.0.1:15432/agent_fabric"
export AGENT_FABRIC_TEST_REDIS_URL="redis://127.0.0.1:16380/0"
export AGENT_FABRIC_TEST_SERVICE_URL="http://127.0.0.1:18080"

status=0
"$python" -m pytest tests/deploy/test_compose.py -m compose_smoke -q -p no:cacheprovider || status=$?

if [[ $status -eq 0 ]]; then
  "${compose[@]}" stop agent-fabric
  unset AGENT_FABRIC_TEST_SERVICE_URL
  # shellcheck disable=SC2086  # COMPOSE_TEST_PATHS is a space-separated list of paths
  "$python" -m pytest ${COMPOSE_TEST_PATHS:-tests/integration} "$@" || status=$?
else
  echo "compose-test: the service container failed its smoke test; its logs:" >&2
  "${compose[@]}" logs --no-color --tail=200 agent-fabric >&2 || true
fi

exit "$status"
