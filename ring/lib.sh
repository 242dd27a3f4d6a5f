# ring/lib.sh: what the ring's scripts share (sourced, not run).
#
# Paths, ports, the component list, pidfile handling and the "does it really
# answer" probe of every component. Owns no process: up.sh starts, down.sh stops.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RING_DIR="${RUNBOOK_RING_DIR:-$REPO/.ring}"
PIDS="$RING_DIR/pids"
LOGS="$RING_DIR/logs"
SECRETS="$RING_DIR/secrets"
TLS="$RING_DIR/tls"
PGDATA="$RING_DIR/pg"
PGSOCK="$RING_DIR/pg-run"
PG_ADMIN_PASSWORD_FILE="$SECRETS/pg-admin-password"
PGBIN=/usr/lib/postgresql/15/bin
DOCKER_SOCK="$RING_DIR/docker.sock"

MOTO_PORT=4566
PG_PORT=15432
REDIS_TLS_PORT=16380
NATS_PORT=14222
NATS_MON_PORT=18222
REGISTRY_PORT=5000
# The ring's "ECS" (ring/ecs_agent.py): status endpoint, its state files, the stand-ins' ports.
ECS_AGENT_PORT=18900
AGENT_DIR="$RING_DIR/agent"
FINN_STANDIN_PORT=13000
DIXIE_STANDIN_PORT=13001
# The GitHub stand-in (ring/standins/github.py, T3.2): its repository state and its one token.
GITHUB_PORT=18700
GITHUB_STATE="$RING_DIR/github/state.json"
GITHUB_TOKEN_FILE="$SECRETS/github-token"

# Start order; down.sh stops in reverse. ecs-agent is started by up.sh after seeding
# (it runs the stand-ins of the ECS services, ring/standins/), so it comes last.
COMPONENTS=(moto postgres redis nats dockerd registry github ecs-agent)

address_of() {
  case $1 in
    moto)     echo "http://127.0.0.1:$MOTO_PORT" ;;
    postgres) echo "127.0.0.1:$PG_PORT" ;;
    redis)    echo "rediss://127.0.0.1:$REDIS_TLS_PORT" ;;
    nats)     echo "nats://127.0.0.1:$NATS_PORT" ;;
    dockerd)  echo "unix://$DOCKER_SOCK" ;;
    registry) echo "http://127.0.0.1:$REGISTRY_PORT" ;;
    github)   echo "http://127.0.0.1:$GITHUB_PORT" ;;
    ecs-agent) echo "http://127.0.0.1:$ECS_AGENT_PORT/state" ;;
  esac
}

# A word that the component's /proc/PID/cmdline must contain, so that a pid
# reused by another program after a reboot is not mistaken for ours.
cmdline_word() {
  case $1 in
    moto) echo moto_server ;; postgres) echo postgres ;; redis) echo redis-server ;;
    nats) echo nats-server ;; dockerd) echo dockerd ;; registry) echo docker-registry ;;
    github) echo standins/github.py ;; ecs-agent) echo ecs_agent.py ;;
  esac
}

pidfile_of() { echo "$PIDS/$1.pid"; }

# Alive and not a zombie (our daemons are re-parented to pid 1, which may reap late).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

# Print the recorded pid if it names a live process of that component.
live_pid() {
  local f pid
  f=$(pidfile_of "$1")
  [ -s "$f" ] || return 1
  pid=$(head -n1 "$f" | tr -dc '0-9')
  [ -n "$pid" ] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(cmdline_word "$1")" || return 1
  echo "$pid"
}

# Does the component answer on its address? (quick, no waiting)
answers() {
  case $1 in
    moto)     curl -sf -m 2 -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" ;;
    postgres) "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 ;;
    redis)    [ -f "$TLS/ca.crt" ] && [ "$(timeout 3 redis-cli --tls --cacert "$TLS/ca.crt" -h 127.0.0.1 -p "$REDIS_TLS_PORT" ping 2>/dev/null)" = PONG ] ;;
    nats)     curl -sf -m 2 -o /dev/null "http://127.0.0.1:$NATS_MON_PORT/healthz" ;;
    dockerd)  [ -S "$DOCKER_SOCK" ] && curl -sf -m 3 -o /dev/null --unix-socket "$DOCKER_SOCK" http://docker/_ping ;;
    registry) curl -sf -m 2 -o /dev/null "http://127.0.0.1:$REGISTRY_PORT/v2/" ;;
    github)   curl -sf -m 2 -o /dev/null "http://127.0.0.1:$GITHUB_PORT/__ring/healthz" ;;
    # 200 only while its poll loop has ticked within the last 5 s
    ecs-agent) curl -sf -m 2 -o /dev/null "http://127.0.0.1:$ECS_AGENT_PORT/healthz" ;;
  esac
}

# Is a TCP port on 127.0.0.1 taken by anyone?
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_of() {
  case $1 in
    moto) echo $MOTO_PORT ;; postgres) echo $PG_PORT ;; redis) echo $REDIS_TLS_PORT ;;
    nats) echo $NATS_PORT ;; registry) echo $REGISTRY_PORT ;; dockerd) echo "" ;;
    github) echo $GITHUB_PORT ;; ecs-agent) echo $ECS_AGENT_PORT ;;
  esac
}

# The stand-in tasks the agent runs: one "SERVICE PID PORT" line per $AGENT_DIR/SERVICE.json.
standin_records() {
  local f
  for f in "$AGENT_DIR"/*.json; do
    [ -e "$f" ] || continue
    case $(basename "$f") in poll.json) continue ;; esac
    python3 - "$f" <<'PY' 2>/dev/null || true
import json, os, sys
f = sys.argv[1]
r = json.load(open(f))
print(os.path.basename(f)[:-5], int(r["pid"]), int(r["port"]))
PY
  done
}

# Is PID a live stand-in process (ring/standins/*.py)?
standin_alive() {
  alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'ring/standins/'
}

# up.sh writes this when dockerd cannot run on the machine at all.
DOCKERD_UNAVAILABLE="$RING_DIR/dockerd.unavailable"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

# One ring, many callers (parallel test binaries, an operator): up, reset, down
# and seed take turns on this lock. Children see RING_LOCK_HELD and do not re-lock.
ring_lock() { # WHO
  mkdir -p "$RING_DIR"
  if [ "${RING_LOCK_HELD:-}" = 1 ]; then return 0; fi
  exec 9>"$RING_DIR/ring.lock"
  if ! flock -n 9; then
    printf '%s: waiting for another ring script (lock %s)\n' "$1" "$RING_DIR/ring.lock" >&2
    flock -w "${RING_LOCK_WAIT:-120}" 9 \
      || { printf '%s: ERROR: another ring script held %s for %ss; is one stuck? (ps aux | grep ring/)\n' "$1" "$RING_DIR/ring.lock" "${RING_LOCK_WAIT:-120}" >&2; exit 1; }
  fi
  export RING_LOCK_HELD=1
}

# What the sprint created outside moto: PostgreSQL database and role `dixie`, the
# registry's `dixie-armitage`, Redis's keys, the GitHub stand-in's merges (back to its seed:
# PRs #52-#55 open). Forgotten whenever moto's account starts over (reset.sh; up.sh when it
# starts a new moto), so the ring stays one consistent "before the sprint".
# Returns 1 with FORGET_WHY set when a part fails.
forget_sprint() {
  local pg_err out
  pg_err=$( (cd / && runuser -u postgres -- "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 \
      -h "$PGSOCK" -p "$PG_PORT" -U postgres -d postgres) 2>&1 <<'SQL'
DROP DATABASE IF EXISTS dixie WITH (FORCE);
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dixie') THEN
    EXECUTE 'DROP OWNED BY dixie';
    EXECUTE 'DROP ROLE dixie';
  END IF;
END $$;
SQL
  ) || { FORGET_WHY="PostgreSQL cleanup failed: $pg_err (is the ring up? ring/status.sh)"; return 1; }

  rm -rf "$RING_DIR/registry/docker/registry/v2/repositories/dixie-armitage"

  if [ -f "$TLS/ca.crt" ]; then
    out=$(timeout 5 redis-cli --tls --cacert "$TLS/ca.crt" -h 127.0.0.1 -p "$REDIS_TLS_PORT" flushall 2>&1) \
      && [ "$out" = OK ] || { FORGET_WHY="Redis FLUSHALL failed: $out (is the ring up? ring/status.sh)"; return 1; }
  fi

  if live_pid github >/dev/null; then
    out=$(curl -sS -m 5 -X POST "http://127.0.0.1:$GITHUB_PORT/__ring/reset" 2>&1) \
      || { FORGET_WHY="the GitHub stand-in's reset failed: $out (see $LOGS/github.log)"; return 1; }
  else
    rm -f "$GITHUB_STATE"  # seeded again when it starts
  fi
}
