#!/usr/bin/env bash
# ring/setup.sh: install what the local rehearsal ring needs, idempotently.
#
# Installs only what is missing (Debian packages, moto server from PyPI), never
# leaves a system service running (policy-rc.d blocks postinst starts), checks the
# machine image's terraform and provider mirror, and writes the ring's terraform
# CLI config. Safe to run again: a second run installs nothing.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RING_DIR="${RUNBOOK_RING_DIR:-$REPO/.ring}"
START=$(date +%s.%N)

say()  { printf 'setup: %s\n' "$*"; }
die()  { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, dpkg); re-run with sudo"

# --- Debian packages -------------------------------------------------------
# package -> a file or command that proves it is installed
declare -A PROOF=(
  [docker.io]=dockerd
  [docker-registry]=/usr/bin/docker-registry
  [redis-server]=redis-server
  [nats-server]=nats-server
  [postgresql-15]=/usr/lib/postgresql/15/bin/postgres
  [postgresql-client-15]=/usr/lib/postgresql/15/bin/psql
  [openssl]=openssl
  [curl]=curl
  # The web view's browser tests (tests/cli/browser.rs): headless, driven over WebDriver.
  [chromium]=/usr/bin/chromium
  [chromium-driver]=/usr/bin/chromedriver
)
missing=()
for pkg in docker.io docker-registry redis-server nats-server postgresql-15 postgresql-client-15 openssl curl \
           chromium chromium-driver; do
  proof=${PROOF[$pkg]}
  if dpkg -s "$pkg" >/dev/null 2>&1 && { [ -x "$proof" ] || command -v "$proof" >/dev/null 2>&1; }; then
    say "$pkg: already installed"
  else
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  # Keep postinst scripts from starting system services (redis, postgres,
  # docker, docker-registry) that would take our ports or fight our own daemons.
  POLICY=/usr/sbin/policy-rc.d
  policy_backup=""
  if [ -e "$POLICY" ]; then policy_backup=$(mktemp); cp -p "$POLICY" "$policy_backup"; fi
  restore_policy() {
    if [ -n "$policy_backup" ]; then mv -f "$policy_backup" "$POLICY"; else rm -f "$POLICY"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\n# written by runbook ring/setup.sh during install\nexit 101\n' >"$POLICY"
  chmod 0755 "$POLICY"

  say "apt-get update (something must be installed)"
  apt-get update -qq || die "apt-get update failed: check that the Debian mirror is reachable"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed: run it by hand to see why"
  restore_policy
  trap - EXIT
  say "installed: ${missing[*]}"

  # Belt and braces: if a service started anyway (some postinst scripts bypass
  # invoke-rc.d), stop it so it does not hold the ports or the package dirs.
  for svc in redis-server postgresql docker containerd docker-registry nats-server; do
    if command -v service >/dev/null 2>&1 && service "$svc" status >/dev/null 2>&1; then
      say "stopping system service $svc started by its package"
      service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
fi

# LLVM's linker, optional: .ci/run links the test binaries with it when it is there (about 1.6 s
# a binary instead of GNU ld's 7.5); without it CI is about 20 s slower, never red.
if command -v ld.lld >/dev/null 2>&1; then
  say "lld: already installed"
elif DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lld >/dev/null 2>&1; then
  say "installed: lld"
else
  say "WARNING: lld did not install (apt-get install lld); .ci/run links with GNU ld"
fi

# --- moto server (PyPI) ------------------------------------------------------
PY=$(command -v python3) || die "python3 not found: install python3 (3.11) first"
if "$PY" -c 'import moto.server, flask, flask_cors, boto3' >/dev/null 2>&1 && command -v moto_server >/dev/null 2>&1; then
  say "moto[server] and boto3: already installed ($("$PY" -c 'import moto; print(moto.__version__)'))"
else
  say "installing moto[server] and boto3 from PyPI"
  "$PY" -m pip install -q 'moto[server]' boto3 \
    || die "pip install 'moto[server]' boto3 failed: check that PyPI is reachable"
  hash -r
  command -v moto_server >/dev/null 2>&1 \
    || die "moto_server is not on PATH after pip install; add $("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))') to PATH"
fi

# --- the stand-in tasks' PyPI packages (ring/standins/dixie.py speaks PostgreSQL) ---
if "$PY" -c 'import psycopg; psycopg.pq.version()' >/dev/null 2>&1; then
  say "psycopg: already installed ($("$PY" -c 'import psycopg; print(psycopg.__version__)'))"
else
  say "installing psycopg[binary] from PyPI (the Dixie stand-in's PostgreSQL client)"
  "$PY" -m pip install -q 'psycopg[binary]' \
    || die "pip install 'psycopg[binary]' failed: check that PyPI is reachable"
fi

# --- terraform and its provider mirror (come with the machine image) ---------
[ -x /usr/local/bin/terraform ] \
  || die "/usr/local/bin/terraform is missing: it comes with the machine image (terraform 1.11.4) and cannot be downloaded here; use a machine built from the project's image"
[ -d /opt/tf-plugins ] \
  || die "/opt/tf-plugins (the AWS provider filesystem mirror) is missing: it comes with the machine image and the provider registry is unreachable; use a machine built from the project's image"
find /opt/tf-plugins -mindepth 1 -path '*hashicorp/aws*' -print -quit | grep -q . \
  || die "/opt/tf-plugins has no hashicorp/aws provider: the machine image's provider mirror is incomplete"
say "terraform: $(/usr/local/bin/terraform version 2>/dev/null | head -1), provider mirror /opt/tf-plugins present"

mkdir -p "$RING_DIR"
cat >"$RING_DIR/terraformrc" <<'EOF'
# written by ring/setup.sh: terraform uses only the machine's provider mirror
provider_installation {
  filesystem_mirror {
    path = "/opt/tf-plugins"
  }
}
EOF
say "wrote $RING_DIR/terraformrc (point TF_CLI_CONFIG_FILE at it; ring.env does)"

END=$(date +%s.%N)
say "done in $(awk -v a="$START" -v b="$END" 'BEGIN{printf "%.1f", b-a}') s"
