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
if [ "$all_up" -ne 0 ]; then
  printf 'status: the ring is not fully up: run ring/up.sh\n' >&2
fi
exit "$all_up"
