#!/usr/bin/env bash
# ring/up.sh: start the local rehearsal ring on loopback, idempotently.
#
# Components: moto (AWS APIs), PostgreSQL 15 (RDS), redis-server with TLS
# (ElastiCache), nats-server, dockerd and docker-registry (build and ECR push),
# and after seeding ecs-agent (ring/ecs_agent.py: runs the stand-in tasks of the
# ECS services dixie-armitage and loa-finn-armitage, ring/standins/), and github
# (ring/standins/github.py: the GitHub REST endpoints T3.2 uses, one repository).
# A component whose pidfile names a live process that answers is left alone.
# Then seeds moto (ring/seed.py), puts the GitHub stand-in's token into moto's SSM
# (ring/github_token.py), writes $RING_DIR/ring.env and prints a table.
set -euo pipefail

# shellcheck source=ring/lib.sh
. "$(dirname "$0")/lib.sh"
START=$(now)
ring_lock up
WAIT_SECONDS=${RING_WAIT_SECONDS:-20}

say()  { printf 'up: %s\n' "$*"; }
warn() { printf 'up: WARNING: %s\n' "$*" >&2; }
die()  { printf 'up: ERROR: %s\n' "$*" >&2; exit 1; }
log_tail() { [ -f "$1" ] && tail -n 8 "$1" | sed 's/^/    | /' >&2 || true; }

[ "$(id -u)" -eq 0 ] || die "must run as root (PostgreSQL runs as OS user postgres, dockerd needs root); re-run with sudo"

# --- prerequisites -----------------------------------------------------------
SCRIPTS_DIR=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
MOTO_BIN="$SCRIPTS_DIR/moto_server"
[ -x "$MOTO_BIN" ] || MOTO_BIN=$(command -v moto_server || true)
for need in "$MOTO_BIN" redis-server redis-cli nats-server dockerd docker /usr/bin/docker-registry "$PGBIN/postgres" "$PGBIN/pg_ctl" openssl curl; do
  [ -n "$need" ] && { [ -x "$need" ] || command -v "$need" >/dev/null 2>&1; } \
    || die "${need:-moto_server} is not installed: run ring/setup.sh first"
done

mkdir -p "$RING_DIR" "$PIDS" "$LOGS" "$TLS" "$RING_DIR/redis" "$RING_DIR/registry" "$AGENT_DIR" "$(dirname "$GITHUB_STATE")"
chmod 0755 "$RING_DIR"
install -d -m 0700 "$SECRETS"

# --- secrets and TLS material (generated once, never changed) -----------------
if [ ! -s "$PG_ADMIN_PASSWORD_FILE" ]; then
  (umask 077; openssl rand -hex 16 >"$PG_ADMIN_PASSWORD_FILE")
  say "generated the PostgreSQL admin password in $PG_ADMIN_PASSWORD_FILE"
fi
chmod 0600 "$PG_ADMIN_PASSWORD_FILE"
PG_ADMIN_PASSWORD=$(tr -d '[:space:]' <"$PG_ADMIN_PASSWORD_FILE")

# The one token the GitHub stand-in accepts (GitHub's classic format, ghp_ + 36 characters).
if [ ! -s "$GITHUB_TOKEN_FILE" ]; then
  (umask 077; printf 'ghp_%s\n' "$(openssl rand -hex 18)" >"$GITHUB_TOKEN_FILE")
  say "generated the GitHub stand-in's token in $GITHUB_TOKEN_FILE"
fi
chmod 0600 "$GITHUB_TOKEN_FILE"

# The server certificate names loopback and, for PostgreSQL, moto's RDS endpoint names (RDS's
# own certificates name the instance endpoint; clients verify it, not the address dialled).
RING_SERVER_NAMES="IP:127.0.0.1,DNS:localhost,DNS:*.aaaaaaaaaa.us-east-1.rds.amazonaws.com"
if [ -s "$TLS/server.crt" ] && ! openssl x509 -in "$TLS/server.crt" -noout -ext subjectAltName 2>/dev/null \
    | grep -q 'rds.amazonaws.com'; then
  say "the ring's server certificate does not name the RDS endpoint: making a new one"
  rm -f "$TLS/server.crt" "$TLS/server.key"
fi
if [ ! -s "$TLS/ca.crt" ] || [ ! -s "$TLS/server.crt" ] || [ ! -s "$TLS/server.key" ]; then
  say "generating the ring's CA (if absent) and a server certificate for $RING_SERVER_NAMES in $TLS"
  (
    umask 077; cd "$TLS"
    if [ ! -s ca.crt ] || [ ! -s ca.key ]; then
      openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.crt -days 3650 -subj "/CN=runbook rehearsal ring CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    fi
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    printf '%s\n' "subjectAltName=$RING_SERVER_NAMES" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
      -extfile server.ext -out server.crt 2>/dev/null
    rm -f server.csr server.ext
    chmod 0644 ca.crt server.crt
  ) || die "openssl could not make the ring's certificates in $TLS: remove that folder and re-run"
fi

# --- per-component start functions (background, pid recorded) ------------------
declare -A STATE=() PID_OF=() LAUNCHED=()

spawn() { # NAME CMD...: start in its own session, log to logs/NAME.log, record pid
  local name=$1; shift
  : >"$LOGS/$name.log"
  # Without any descriptor this script inherited (a caller's `flock .ring/user.lock`, the
  # ring lock on 9): a long-lived component holding one would hold that lock for ever.
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done
    exec setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null
  ) &
  LAUNCHED[$name]=$!
  [ "$name" = dockerd ] || echo "$!" >"$(pidfile_of "$name")"
}

start_moto() {
  # The recorder (off until a test starts it) lists the API calls a re-run makes. moto_server.py
  # is moto's own server with Route53's change answer that spares terraform a 10-30 s sleep, and
  # CreateTargetGroup idempotent as on AWS.
  spawn moto env RUNBOOK_RING_DIR="$RING_DIR" MOTO_ECS_SERVICE_RUNNING=1 MOTO_IAM_LOAD_MANAGED_POLICIES=true \
    MOTO_RECORDER_FILEPATH="$RING_DIR/moto-recording.jsonl" \
    python3 "$REPO/ring/moto_server.py" -H 127.0.0.1 -p "$MOTO_PORT"
}

start_redis() {
  spawn redis redis-server --port 0 --tls-port "$REDIS_TLS_PORT" --bind 127.0.0.1 \
    --tls-cert-file "$TLS/server.crt" --tls-key-file "$TLS/server.key" --tls-ca-cert-file "$TLS/ca.crt" \
    --tls-auth-clients no --daemonize no --dir "$RING_DIR/redis" --save '' --appendonly no
}

start_nats() {
  spawn nats nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT"
}

start_registry() {
  cat >"$RING_DIR/registry.yml" <<EOF
# written by ring/up.sh: the ring's own registry (Debian's default config wants htpasswd)
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $RING_DIR/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REGISTRY_PORT
  headers:
    X-Content-Type-Options: [nosniff]
EOF
  spawn registry /usr/bin/docker-registry serve "$RING_DIR/registry.yml"
}

start_github() {
  spawn github python3 "$REPO/ring/standins/github.py" --port "$GITHUB_PORT" \
    --state "$GITHUB_STATE" --token-file "$GITHUB_TOKEN_FILE"
}

start_dockerd() {
  rm -f "$(pidfile_of dockerd)" "$DOCKER_SOCK"
  spawn dockerd dockerd --host "unix://$DOCKER_SOCK" --data-root "$RING_DIR/docker-data" \
    --exec-root "$RING_DIR/docker-exec" --pidfile "$(pidfile_of dockerd)" \
    --bridge none --iptables=false --ip-masq=false --ip-forward=false
}

pg_as_postgres() { (cd / && runuser -u postgres -- "$@"); }
pg_psql_socket() { pg_as_postgres "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$PG_PORT" -U postgres -d postgres "$@"; }

start_postgres() {
  install -d -o postgres -g postgres -m 0700 "$PGDATA"
  install -d -o postgres -g postgres -m 0755 "$PGSOCK"
  pg_as_postgres test -w "$PGDATA" \
    || die "OS user postgres cannot reach $PGDATA: make every parent folder traversable (chmod o+x), or set RUNBOOK_RING_DIR to a folder it can reach"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    say "postgres: initdb of a new cluster in $PGDATA"
    pg_as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 >"$LOGS/postgres-initdb.log" 2>&1 \
      || { log_tail "$LOGS/postgres-initdb.log"; die "initdb failed, see $LOGS/postgres-initdb.log; remove $PGDATA and re-run"; }
    echo "include_if_exists = 'ring.conf'" >>"$PGDATA/postgresql.conf"
  fi
  # Rewritten on every start so that a moved RING_DIR still works; only if changed.
  local conf
  conf=$(cat <<EOF
# written by ring/up.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGSOCK'
password_encryption = 'scram-sha-256'
# TLS only over TCP (pg_hba: hostssl), like RDS with rds.force_ssl=1
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
# a rehearsal ring: durability traded for speed
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
)
  [ "$(cat "$PGDATA/ring.conf" 2>/dev/null)" = "$conf" ] || printf '%s\n' "$conf" >"$PGDATA/ring.conf"
  cat >"$PGDATA/pg_hba.conf" <<'EOF'
# written by ring/up.sh: peer for the postgres OS user on the socket; over TCP, TLS and a
# password only (no `host` line: a connection without TLS is refused, as RDS with force_ssl)
local     all   postgres                 peer
local     all   all                      scram-sha-256
hostssl   all   all       127.0.0.1/32   scram-sha-256
hostssl   all   all       ::1/128        scram-sha-256
EOF
  # PostgreSQL reads its key only if its own user owns it, private.
  install -o postgres -g postgres -m 0600 "$TLS/server.key" "$PGDATA/server.key"
  install -o postgres -g postgres -m 0644 "$TLS/server.crt" "$PGDATA/server.crt"
  chown postgres:postgres "$PGDATA/ring.conf" "$PGDATA/pg_hba.conf"
  touch "$LOGS/postgres.log"; chown postgres:postgres "$LOGS/postgres.log"
  if ! setsid runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGS/postgres.log" \
        -w -t "$WAIT_SECONDS" -s start </dev/null >/dev/null 2>&1 9>&-; then
    log_tail "$LOGS/postgres.log"
    die "PostgreSQL did not start within ${WAIT_SECONDS}s, see $LOGS/postgres.log (is 127.0.0.1:$PG_PORT taken?)"
  fi
  head -n1 "$PGDATA/postmaster.pid" >"$(pidfile_of postgres)"
  LAUNCHED[postgres]=$(cat "$(pidfile_of postgres)")
}

# The arrakis_admin role: created once with the password from the file.
ensure_pg_admin() {
  if [ "$(pg_psql_socket -c "SELECT 1 FROM pg_roles WHERE rolname = 'arrakis_admin'")" != 1 ]; then
    printf "CREATE ROLE arrakis_admin WITH LOGIN SUPERUSER CREATEDB CREATEROLE PASSWORD '%s';\n" \
      "$PG_ADMIN_PASSWORD" | pg_psql_socket -f - \
      || die "could not create role arrakis_admin, see $LOGS/postgres.log"
    say "postgres: created superuser role arrakis_admin (password in $PG_ADMIN_PASSWORD_FILE)"
  elif ! PGPASSWORD=$PG_ADMIN_PASSWORD PGCONNECT_TIMEOUT=3 "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$PG_PORT" \
        -U arrakis_admin -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
    printf "ALTER ROLE arrakis_admin WITH PASSWORD '%s';\n" "$PG_ADMIN_PASSWORD" | pg_psql_socket -f - \
      || die "could not reset the password of arrakis_admin, see $LOGS/postgres.log"
    warn "postgres: arrakis_admin did not accept the password in $PG_ADMIN_PASSWORD_FILE; set it back to the file's value"
  fi
}

wait_ready() { # NAME: bounded wait until it answers; 0 ready, 1 not
  local name=$1 pid=${LAUNCHED[$1]:-} deadline
  deadline=$(( $(date +%s) + WAIT_SECONDS ))
  while [ "$(date +%s)" -le "$deadline" ]; do
    answers "$name" && return 0
    if [ -n "$pid" ] && ! alive "$pid"; then
      FAIL_WHY="$name exited during start-up"; return 1
    fi
    sleep 0.1
  done
  FAIL_WHY="$name did not answer on $(address_of "$name") within ${WAIT_SECONDS}s"
  return 1
}

# --- bring each component up -----------------------------------------------------
to_start=()
for name in "${COMPONENTS[@]}"; do
  [ "$name" = ecs-agent ] && continue  # started after seeding, below
  if pid=$(live_pid "$name"); then
    PID_OF[$name]=$pid
    if answers "$name"; then
      STATE[$name]="already up"
      say "$name: already up (pid $pid)"
    else
      LAUNCHED[$name]=$pid
      STATE[$name]="waited"
      say "$name: running (pid $pid) but not answering yet; waiting"
    fi
    continue
  fi
  rm -f "$(pidfile_of "$name")"
  port=$(port_of "$name")
  if [ -n "$port" ] && port_taken "$port"; then
    die "$name: 127.0.0.1:$port is taken by a process this ring did not start (no live pid in $(pidfile_of "$name")): stop it (ss -ltnp 'sport = :$port' names it) and re-run"
  fi
  to_start+=("$name")
done

for name in "${to_start[@]}"; do
  case $name in
    postgres) ;;  # started below, synchronously, while the others boot
    *) say "$name: starting (log $LOGS/$name.log)"; "start_$name"; STATE[$name]=started ;;
  esac
done
if [[ " ${to_start[*]} " == *" postgres "* ]]; then
  say "postgres: starting (log $LOGS/postgres.log)"
  start_postgres
  STATE[postgres]=started
fi

for name in "${COMPONENTS[@]}"; do
  [ "$name" = ecs-agent ] && continue
  [ "${STATE[$name]}" = "already up" ] && continue
  if wait_ready "$name"; then
    if [ "$name" = dockerd ]; then
      PID_OF[$name]=$(live_pid dockerd || echo "${LAUNCHED[dockerd]}")
      rm -f "$DOCKERD_UNAVAILABLE"
    else
      PID_OF[$name]=${LAUNCHED[$name]}
    fi
    say "$name: ready on $(address_of "$name") (pid ${PID_OF[$name]})"
  elif [ "$name" = dockerd ]; then
    # Some machines cannot run a docker daemon at all (no overlay, no cgroups,
    # no privileges): the rest of the ring is still useful without it.
    reason=$(grep -iE 'level=(fatal|error)|failed|error' "$LOGS/dockerd.log" | tail -n1 | cut -c1-240)
    warn "dockerd could not run here: $FAIL_WHY${reason:+: $reason} (full log $LOGS/dockerd.log); image build and push steps will fail, the rest of the ring is up"
    printf '%s\n' "$FAIL_WHY${reason:+: $reason}" >"$DOCKERD_UNAVAILABLE"
    [ -n "${LAUNCHED[dockerd]:-}" ] && kill "${LAUNCHED[dockerd]}" 2>/dev/null || true
    rm -f "$(pidfile_of dockerd)"
    STATE[dockerd]="UNAVAILABLE"; PID_OF[dockerd]="-"
  else
    log_tail "$LOGS/$name.log"
    die "$FAIL_WHY; see $LOGS/$name.log (ring/down.sh stops what did start)"
  fi
done

ensure_pg_admin

# The database for runbook's own state in PostgreSQL (`--state postgres://…`): its tests
# create a schema each in it. Never dropped by a reset: it is not the sprint's.
if [ "$(pg_psql_socket -c "SELECT 1 FROM pg_database WHERE datname = 'runbook_state'")" != 1 ]; then
  pg_psql_socket -c "CREATE DATABASE runbook_state OWNER arrakis_admin" >/dev/null \
    || die "could not create database runbook_state, see $LOGS/postgres.log"
  say "postgres: created database runbook_state"
fi

# A new moto is a new, empty account: forget what the sprint made outside it too.
if [ "${STATE[moto]:-}" = started ]; then
  forget_sprint || die "$FORGET_WHY"
  say "moto started empty: dropped the sprint's PostgreSQL database/role, registry repository and Redis keys"
fi

# --- seed moto ------------------------------------------------------------------
say "seeding moto with the Armitage account's pre-sprint resources"
python3 "$REPO/ring/seed.py" | sed 's/^/up: /' || die "ring/seed.py failed (see above and $LOGS/moto.log)"
python3 "$REPO/ring/github_token.py" | sed 's/^/up: /' || die "ring/github_token.py failed (see above and $LOGS/moto.log)"

# --- ecs-agent: the ring's ECS, runs a stand-in per service deployment -------------
if pid=$(live_pid ecs-agent) && answers ecs-agent; then
  PID_OF[ecs-agent]=$pid; STATE[ecs-agent]="already up"
  say "ecs-agent: already up (pid $pid)"
else
  if [ -n "${pid:-}" ]; then
    warn "ecs-agent: pid $pid runs but its poll loop is stuck; restarting it"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile_of ecs-agent)"
  port_taken "$ECS_AGENT_PORT" \
    && die "ecs-agent: 127.0.0.1:$ECS_AGENT_PORT is taken by a process this ring did not start: stop it (ss -ltnp 'sport = :$ECS_AGENT_PORT' names it) and re-run"
  say "ecs-agent: starting (log $LOGS/ecs-agent.log; stand-ins log to $LOGS/<service>.log)"
  # RING_ADDRESS_MAP (optional) overrides the stand-ins' address map (default: local.toml).
  spawn ecs-agent env RUNBOOK_RING_DIR="$RING_DIR" ${RING_ADDRESS_MAP:+"RING_ADDRESS_MAP=$RING_ADDRESS_MAP"} \
    python3 "$REPO/ring/ecs_agent.py"
  STATE[ecs-agent]=started
  wait_ready ecs-agent || { log_tail "$LOGS/ecs-agent.log"; die "$FAIL_WHY; see $LOGS/ecs-agent.log"; }
  PID_OF[ecs-agent]=${LAUNCHED[ecs-agent]}
  say "ecs-agent: ready on $(address_of ecs-agent) (pid ${PID_OF[ecs-agent]})"
fi
# The seeded loa-finn-armitage has a task: wait (bounded) for its stand-in to answer.
deadline=$(( $(date +%s) + 10 ))
until curl -sf -m 1 -o /dev/null "http://127.0.0.1:$FINN_STANDIN_PORT/health"; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    warn "the loa-finn-armitage stand-in does not answer on 127.0.0.1:$FINN_STANDIN_PORT after 10 s; see $LOGS/ecs-agent.log and $LOGS/loa-finn-armitage.log"
    break
  fi
  sleep 0.1
done

# --- ring.env ---------------------------------------------------------------------
tmp=$(mktemp "$RING_DIR/ring.env.XXXXXX")
cat >"$tmp" <<EOF
# written by ring/up.sh: source it to talk to the local rehearsal ring
export RUNBOOK_RING_DIR='$RING_DIR'
export AWS_ENDPOINT_URL='http://127.0.0.1:$MOTO_PORT'
export AWS_ACCESS_KEY_ID='testing'
export AWS_SECRET_ACCESS_KEY='testing'
export AWS_DEFAULT_REGION='us-east-1'
export AWS_REGION='us-east-1'
export AWS_EC2_METADATA_DISABLED='true'
export DOCKER_HOST='unix://$DOCKER_SOCK'
export RING_REGISTRY='127.0.0.1:$REGISTRY_PORT'
export PGHOST='127.0.0.1'
export PGPORT='$PG_PORT'
export PGUSER='arrakis_admin'
export RING_PG_ADMIN_PASSWORD_FILE='$PG_ADMIN_PASSWORD_FILE'
export RING_REDIS_URL='rediss://127.0.0.1:$REDIS_TLS_PORT'
export RING_REDIS_CA_CERT='$TLS/ca.crt'
export RING_NATS_URL='nats://127.0.0.1:$NATS_PORT'
export RING_NATS_MONITOR_URL='http://127.0.0.1:$NATS_MON_PORT'
export RING_GITHUB_URL='http://127.0.0.1:$GITHUB_PORT'
export RING_GITHUB_TOKEN_FILE='$GITHUB_TOKEN_FILE'
export TF_CLI_CONFIG_FILE='$RING_DIR/terraformrc'
EOF
chmod 0644 "$tmp"
if cmp -s "$tmp" "$RING_DIR/ring.env"; then rm -f "$tmp"; else mv -f "$tmp" "$RING_DIR/ring.env"; fi
[ -f "$RING_DIR/terraformrc" ] || warn "$RING_DIR/terraformrc is missing: run ring/setup.sh (terraform needs it)"

# --- summary ----------------------------------------------------------------------
printf '\n%-9s %-44s %-8s %s\n' COMPONENT ADDRESS PID STATE
for name in "${COMPONENTS[@]}"; do
  printf '%-9s %-44s %-8s %s\n' "$name" "$(address_of "$name")" "${PID_OF[$name]:--}" "${STATE[$name]}"
done
while read -r svc spid sport; do
  printf '%-9s %-44s %-8s %s\n' "  task" "$svc http://127.0.0.1:$sport" "$spid" "$(standin_alive "$spid" && echo running || echo exited)"
done < <(standin_records)
printf '\n'
say "ring up in $(elapsed "$START") s; source $RING_DIR/ring.env to use it"
