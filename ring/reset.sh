#!/usr/bin/env bash
# ring/reset.sh: put a running ring back in its fresh, just-seeded state.
#
# Without restarting anything: moto reset + seed, drop PostgreSQL database and
# role `dixie`, forget the registry repository `dixie-armitage`, flush Redis, the GitHub
# stand-in back to its seed (PRs #52-#55 open) and its token into moto's SSM again.
# ecs-agent keeps running: reset waits for its first complete poll after the seed,
# which stops the stand-ins of services that are gone (dixie-armitage) and starts
# the seeded loa-finn-armitage's new deployment, and for that Finn to answer.
# A delay a test left for the Finn stand-in's /health or for Route53's answers is removed.
# Quiet on success (one line); says what failed otherwise.
set -euo pipefail

# shellcheck source=ring/lib.sh
. "$(dirname "$0")/lib.sh"
START=$(now)
ring_lock reset
die() { printf 'reset: ERROR: %s\n' "$*" >&2; exit 1; }

# The delays a test may have left for the stand-in Finn's /health and Route53's answer.
rm -f "$RING_DIR/finn-delay-ms" "$RING_DIR/route53-delay-ms"

# PostgreSQL and the registry run while moto resets and seeds (the slow part).
python3 "$REPO/ring/seed.py" --reset --quiet --github-token &
moto_job=$!

forget_sprint || { wait "$moto_job" || true; die "$FORGET_WHY"; }

wait "$moto_job" || die "moto reset, seed or the GitHub token failed (see above and $LOGS/moto.log)"

agent_note=""
if live_pid ecs-agent >/dev/null; then
  seeded=$(date +%s.%N)
  deadline=$(( $(date +%s) + 15 ))
  until python3 - "$AGENT_DIR/poll.json" "$seeded" <<'PY' 2>/dev/null
import json, sys
p = json.load(open(sys.argv[1]))
sys.exit(0 if p["ok"] and p["started_at"] > float(sys.argv[2]) else 1)
PY
  do
    [ "$(date +%s)" -lt "$deadline" ] || die "ecs-agent did not complete a poll of moto within 15 s after the seed; see $LOGS/ecs-agent.log"
    sleep 0.1
  done
  [ ! -e "$AGENT_DIR/dixie-armitage.json" ] \
    || die "ecs-agent still runs a dixie-armitage stand-in after the reset; see $LOGS/ecs-agent.log"
  until curl -sf -m 1 -o /dev/null "http://127.0.0.1:$FINN_STANDIN_PORT/health"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "the loa-finn-armitage stand-in does not answer on 127.0.0.1:$FINN_STANDIN_PORT; see $LOGS/ecs-agent.log and $LOGS/loa-finn-armitage.log"
    sleep 0.1
  done
  agent_note=", ecs-agent caught up"
else
  printf 'reset: WARNING: ecs-agent is not running, so no stand-in task runs: ring/up.sh starts it\n' >&2
fi
printf 'reset: ring is fresh (moto reset and seeded, dixie db/role dropped, registry repo dixie-armitage removed, redis flushed, github PRs open again%s) in %s s\n' "$agent_note" "$(elapsed "$START")"
