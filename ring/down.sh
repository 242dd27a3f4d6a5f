#!/usr/bin/env bash
# ring/down.sh: stop what ring/up.sh started, by the recorded pids only.
#
# TERM, wait up to 10 s, then KILL; PostgreSQL with `pg_ctl stop -m fast`.
# ecs-agent goes first and stops its stand-in tasks itself; any stand-in it left
# (agent killed) is stopped by the pid in its $RING_DIR/agent/SERVICE.json.
# Never touches a process it has no pidfile for. Keeps all data (pg cluster,
# secrets, TLS, registry storage), so the next up.sh finds the same ring.
#
# ring/down.sh NAME...: stop only those components (a service lost mid-run, for the
# tests and for rehearsing an outage); ring/up.sh starts them again.
set -euo pipefail

# shellcheck source=ring/lib.sh
. "$(dirname "$0")/lib.sh"
START=$(now)
ring_lock down
say() { printf 'down: %s\n' "$*"; }
warn() { printf 'down: WARNING: %s\n' "$*" >&2; }

stop_pid() { # NAME PID: TERM, wait up to 10 s, then KILL
  local name=$1 pid=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    alive "$pid" || return 0
    sleep 0.1
  done
  warn "$name (pid $pid) did not stop within 10 s after TERM; sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}

for wanted in "$@"; do
  [[ " ${COMPONENTS[*]} " == *" $wanted "* ]] \
    || { printf 'down: ERROR: no ring component named `%s`; the components are: %s\n' "$wanted" "${COMPONENTS[*]}" >&2; exit 2; }
done
only=" $* "

stopped=0
for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
  name=${COMPONENTS[$i]}
  [ $# -eq 0 ] || [[ "$only" == *" $name "* ]] || continue
  pidfile=$(pidfile_of "$name")
  if ! pid=$(live_pid "$name"); then
    if [ -e "$pidfile" ]; then
      say "$name: not running (removing stale $pidfile)"
      rm -f "$pidfile"
    fi
    continue
  fi
  if [ "$name" = postgres ]; then
    if ! (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 10 -s stop) >/dev/null 2>&1; then
      warn "pg_ctl stop failed; stopping the postmaster by its pid"
      stop_pid postgres "$pid"
    fi
  elif [ "$name" = dockerd ]; then
    # dockerd stops its own containerd on TERM; make sure it did.
    cpid=$(cat "$RING_DIR/docker-exec/containerd/containerd.pid" 2>/dev/null || true)
    stop_pid dockerd "$pid"
    if [ -n "$cpid" ] && alive "$cpid" && tr '\0' ' ' <"/proc/$cpid/cmdline" | grep -q containerd; then
      stop_pid containerd "$cpid"
    fi
  else
    stop_pid "$name" "$pid"
  fi
  rm -f "$pidfile"
  say "$name: stopped (pid $pid)"
  stopped=$((stopped + 1))
done
if [ $# -gt 0 ]; then
  say "stopped $stopped of: $*; ring/up.sh starts what is missing"
  exit 0
fi
# Stand-ins the agent did not stop (it was killed or crashed): by their recorded pids only.
while read -r svc spid _port; do
  if standin_alive "$spid"; then
    stop_pid "$svc stand-in" "$spid"
    say "$svc stand-in: stopped (pid $spid)"
    stopped=$((stopped + 1))
  fi
done < <(standin_records)
rm -f "$AGENT_DIR"/*.json "$AGENT_DIR"/*.json.tmp
rm -f "$DOCKER_SOCK"
if [ "$stopped" -eq 0 ]; then
  say "nothing of the ring was running"
else
  say "stopped $stopped component(s) in $(elapsed "$START") s; data kept in $RING_DIR (ring/up.sh starts it again)"
fi
