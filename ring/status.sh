#!/usr/bin/env bash
# ring/status.sh: one line per ring component (name, address, pid, up/down).
#
# "up" means the recorded pid is alive AND the component really answers on its
# address. Exit 0 if every component is up, 1 otherwise. Changes nothing.
set -euo pipefail

# shellcheck source=ring/lib.sh
. "$(dirname "$0")/lib.sh"

all_up=0
printf '%-9s %-44s %-8s %s\n' COMPONENT ADDRESS PID STATE
for name in "${COMPONENTS[@]}"; do
  pid=$(live_pid "$name" || true)
  if [ -n "$pid" ] && answers "$name"; then
    state=up
  elif [ -n "$pid" ]; then
    state="down (pid $pid alive but not answering; see $LOGS/$name.log)"; all_up=1
  elif [ "$name" = dockerd ] && [ -s "$DOCKERD_UNAVAILABLE" ]; then
    state="down (unavailable on this machine: $(head -c 160 "$DOCKERD_UNAVAILABLE"))"; all_up=1
  elif answers "$name"; then
    state="down (something answers, but not a process this ring started)"; all_up=1
  else
    state=down; all_up=1
  fi
  printf '%-9s %-44s %-8s %s\n' "$name" "$(address_of "$name")" "${pid:--}" "$state"
done
# The stand-in tasks ecs-agent runs (informational: which services have one depends on moto).
while read -r svc spid sport; do
  if standin_alive "$spid"; then
    code=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$sport/$([ "$svc" = dixie-armitage ] && echo api/health || echo health)" || true)
    state="running (health HTTP $code)"
  else
    state="exited (ecs-agent restarts it; see $LOGS/$svc.log)"
  fi
  printf '%-9s %-44s %-8s %s\n' "  task" "$svc http://127.0.0.1:$sport" "$spid" "$state"
done < <(standin_records)
if [ "$all_up" -ne 0 ]; then
  printf 'status: the ring is not fully up: run ring/up.sh\n' >&2
fi
exit "$all_up"
