#!/usr/bin/env bash
# ring/reset.sh: put a running ring back in its fresh, just-seeded state.
#
# Without restarting anything: moto reset + seed, drop PostgreSQL database and
# role `dixie`, forget the registry repository `dixie-armitage`, flush Redis.
# Quiet on success (one line); says what failed otherwise.
set -euo pipefail

# shellcheck source=ring/lib.sh
. "$(dirname "$0")/lib.sh"
START=$(now)
ring_lock reset
die() { printf 'reset: ERROR: %s\n' "$*" >&2; exit 1; }

# PostgreSQL and the registry run while moto resets and seeds (the slow part).
python3 "$REPO/ring/seed.py" --reset --quiet &
moto_job=$!

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
) || { wait "$moto_job" || true; die "PostgreSQL cleanup failed: $pg_err (is the ring up? ring/status.sh)"; }

rm -rf "$RING_DIR/registry/docker/registry/v2/repositories/dixie-armitage"

if [ -f "$TLS/ca.crt" ]; then
  out=$(timeout 5 redis-cli --tls --cacert "$TLS/ca.crt" -h 127.0.0.1 -p "$REDIS_TLS_PORT" flushall 2>&1) \
    && [ "$out" = OK ] || { wait "$moto_job" || true; die "Redis FLUSHALL failed: $out (is the ring up? ring/status.sh)"; }
fi

wait "$moto_job" || die "moto reset or seed failed (see above and $LOGS/moto.log)"
printf 'reset: ring is fresh (moto reset and seeded, dixie db/role dropped, registry repo dixie-armitage removed, redis flushed) in %s s\n' "$(elapsed "$START")"
