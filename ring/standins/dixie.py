#!/usr/bin/env python3
"""ring/standins/dixie.py: stand-in for the Dixie BFF task on the local rehearsal ring.

Configured like the ECS task, from its environment: the 8 SSM params (FINN_URL,
FINN_WS_URL, DATABASE_URL, REDIS_URL, NATS_URL, DIXIE_JWT_PRIVATE_KEY, DIXIE_ADMIN_KEY,
DIXIE_CORS_ORIGINS) plus PORT, DIXIE_VERSION, RING_ADDRESS_MAP, RING_REDIS_CA and
DIXIE_MIGRATIONS_DIR. Every address it dials goes through the address map and must be
loopback after mapping (see addrmap.py); https/wss URLs that map to loopback are spoken
to as plain http (the ring has no TLS termination); rediss:// is real TLS with the CA.

At start-up, if DATABASE_URL is configured: the forward migrations (*.sql but not
*_down.sql, by name) under a PostgreSQL advisory lock, recorded in _migrations.
If PostgreSQL cannot be reached or a migration fails, it keeps serving (postgresql
unreachable/unhealthy) and retries every 5 s, where the real service would exit and
ECS would start a new task. A checksum mismatch is not retried.

GET /api/health: always HTTP 200; body computed from live checks at request time.
GET /api/health/migrations: the _migrations rows.

JWT keys (docs/ring.md, "Keys"): at start-up it reads the key set DIXIE_JWT_KEYSET and each
published kid's private key from SSM itself (as Dixie would with its task role): the key set
/dixie/<DIXIE_ENVIRONMENT>/DIXIE_JWT_KEYSET (or DIXIE_JWT_KEYSET_PARAM), the keys under
/dixie/<DIXIE_ENVIRONMENT>/jwt-keys/<kid> (or DIXIE_JWT_KEYS_PATH). No key set (or PLACEHOLDER):
001's HS256 key as before. A key set it cannot use (bad JSON, a published kid without its key,
a key that is not PKCS#8 P-256 or not its kid's) stops the task with exit code 1, named in
its log: a Dixie that cannot tell which tokens are good must not serve. Reads keys only at
start: a key set change takes a new deployment.
POST /__ring/errors {"count": N, "message": "..."}: a rehearsal control (not Dixie's): print N
ERROR lines (default 3) on stdout, as a crashing request handler would; the ring's ECS agent
ships them to CloudWatch Logs, where `runbook diagnose` finds them.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from addrmap import DEFAULT_PORTS, AddressMap, Refused  # noqa: E402
from serve import JsonHandler, serve  # noqa: E402
import dixie_api  # noqa: E402  (the routes the smoke gate calls)
import jwtkeys  # noqa: E402  (the key contract)

PARAMS = ["FINN_URL", "FINN_WS_URL", "DATABASE_URL", "REDIS_URL", "NATS_URL",
          "DIXIE_JWT_PRIVATE_KEY", "DIXIE_ADMIN_KEY", "DIXIE_CORS_ORIGINS"]
SECRET_PARAMS = {"DIXIE_JWT_PRIVATE_KEY", "DIXIE_ADMIN_KEY"}
CHECK_TIMEOUT = 1.0
CIRCUIT_THRESHOLD = 3
CIRCUIT_RECOVERY_S = 10.0
MIGRATION_RETRY_S = 5.0
# Dixie's own key (seed 003's Dixie, migrate.ts): the first 4 bytes of SHA-256("dixie-bff:migration"),
# big-endian, masked with 0x7FFFFFFF; so the stand-in and runbook contend for the same lock.
ADVISORY_LOCK_KEY = 2084904821
GOVERNANCE_RESOURCE_TYPES = ["knowledge_corpus", "knowledge_governor", "fleet"]

log = logging.getLogger("dixie")
STARTED = time.monotonic()
ENV = {k: os.environ.get(k, "") for k in PARAMS}
AMAP = AddressMap(os.environ.get("RING_ADDRESS_MAP"))
REDIS_CA = os.environ.get("RING_REDIS_CA", "")
VERSION = os.environ.get("DIXIE_VERSION") or "unknown"


def configured(name: str) -> bool:
    v = ENV.get(name, "").strip()
    return bool(v) and v != "PLACEHOLDER"


def redact(name: str) -> str:
    v = ENV.get(name, "")
    if not v:
        return "(unset)"
    if v == "PLACEHOLDER":
        return "PLACEHOLDER"
    if name in SECRET_PARAMS:
        return f"(set, {len(v)} chars)"
    try:
        u = urllib.parse.urlsplit(v)
        if u.password:
            netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
            return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    except ValueError:
        pass
    return v


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ms(t0: float) -> int:
    return int(round((time.monotonic() - t0) * 1000))


def dial(url: str) -> tuple[urllib.parse.SplitResult, str, int]:
    """Parse a URL and map its address: (parts, ip, port), or Refused/ValueError."""
    u = urllib.parse.urlsplit(url.strip())
    if not u.hostname:
        raise ValueError(f"no host in URL {redact_url(url)}")
    port = u.port or DEFAULT_PORTS.get(u.scheme.lower())
    if port is None:
        raise ValueError(f"no port and unknown scheme {u.scheme!r}")
    ip, mport = AMAP.resolve(u.hostname, port)
    return u, ip, mport


def redact_url(url: str) -> str:
    try:
        u = urllib.parse.urlsplit(url)
        if u.password:
            return url.replace(u.password, "***")
    except ValueError:
        pass
    return url


# --- security groups -----------------------------------------------------------------
def ring_client(service: str, endpoint: str):
    """A boto3 client of the ring's moto, quick to give up, marked as this stand-in's."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2,
                      user_agent_extra="ring-standin-dixie"))


class Firewall:
    """The security groups between this task and what it dials, as AWS enforces them: a
    connection to PostgreSQL (5432), Redis (6379) or NATS (4222) is allowed only when the
    target's group has an inbound rule for that port naming one of the task's groups, or a CIDR
    that holds the task's address. Asked of the ring's EC2 (moto) at each check, so a rule added
    or revoked takes effect on the next connection, as on AWS. Without the agent's network
    facts (a stand-in started by hand) nothing is enforced."""

    TARGETS = {5432: "arrakis-staging-rds-sg", 6379: "arrakis-staging-redis-sg", 4222: "arrakis-staging-nats-sg"}

    def __init__(self) -> None:
        self.groups = {g for g in os.environ.get("RING_TASK_SECURITY_GROUPS", "").split(",") if g}
        self.address = os.environ.get("RING_TASK_ADDRESS", "")
        self.endpoint = os.environ.get("RING_EC2_ENDPOINT", "")
        self.ec2 = None

    def client(self):
        if self.ec2 is None:
            self.ec2 = ring_client("ec2", self.endpoint)
        return self.ec2

    def check(self, port: int) -> None:
        """Raises ConnectionError, as the connect timeout AWS would give, when blocked."""
        target = self.TARGETS.get(port)
        if not target or not self.endpoint or not self.groups:
            return
        found = self.client().describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [target]}])["SecurityGroups"]
        if not found:
            raise ConnectionError(f"timed out: security group {target} does not exist")
        for perm in found[0].get("IpPermissions", []):
            proto = perm.get("IpProtocol")
            if proto not in ("tcp", "-1", "6"):
                continue
            if proto != "-1" and not (perm.get("FromPort", 0) <= port <= perm.get("ToPort", 65535)):
                continue
            if any(p.get("GroupId") in self.groups for p in perm.get("UserIdGroupPairs", [])):
                return
            if self.address and any(
                    ipaddress.ip_address(self.address) in ipaddress.ip_network(r["CidrIp"], strict=False)
                    for r in perm.get("IpRanges", [])):
                return
        raise ConnectionError(
            f"timed out: security group {found[0]['GroupId']} ({target}) has no inbound rule for tcp/{port} "
            f"from {', '.join(sorted(self.groups))} or {self.address}")


FIREWALL = Firewall()


class NatsTasks:
    """The addresses of the NATS service's RUNNING tasks, from the ring's ECS (moto): a
    NATS_URL naming an address no task has any more (the task restarted elsewhere) reaches
    nothing, as on AWS. Only known with the agent's facts; cached for a second."""

    def __init__(self) -> None:
        self.endpoint = os.environ.get("RING_EC2_ENDPOINT", "")
        self.cluster = os.environ.get("RING_CLUSTER", "arrakis-staging-cluster")
        self.service = os.environ.get("RING_NATS_SERVICE", "arrakis-staging-nats")
        self.ecs = None
        self.cached: tuple[float, set[str]] = (0.0, set())

    def addresses(self) -> set[str] | None:
        if not self.endpoint:
            return None
        if time.monotonic() - self.cached[0] < 1.0:
            return self.cached[1]
        if self.ecs is None:
            self.ecs = ring_client("ecs", self.endpoint)
        running = self.ecs.list_tasks(cluster=self.cluster, desiredStatus="RUNNING")["taskArns"]
        tasks = self.ecs.describe_tasks(cluster=self.cluster, tasks=running)["tasks"] if running else []
        found = {d["value"] for t in tasks
                 if t.get("group") == f"service:{self.service}" and t.get("lastStatus") == "RUNNING"
                 for a in t.get("attachments", []) for d in a.get("details", [])
                 if d.get("name") == "privateIPv4Address"}
        self.cached = (time.monotonic(), found)
        return found


NATS_TASKS = NatsTasks()


def dial_through(url: str, service_port: int) -> tuple[urllib.parse.SplitResult, str, int]:
    """`dial`, after the security groups allow a connection to the service's port."""
    parts = dial(url)
    FIREWALL.check(parts[0].port or service_port)
    return parts


# --- PostgreSQL ------------------------------------------------------------------
def pg_connect(timeout: float = 2.0):
    import psycopg  # psycopg[binary], installed by ring/setup.sh

    u, ip, port = dial_through(ENV["DATABASE_URL"], 5432)
    if u.scheme.lower() not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL scheme {u.scheme!r} is not postgres")
    q = dict(urllib.parse.parse_qsl(u.query))
    kwargs = {k: v for k, v in q.items() if k in ("application_name", "options")}
    # The ring's PostgreSQL takes TLS only (as RDS with force_ssl): verified against the ring's
    # CA and the URL's host name (hostaddr is the address the map dials).
    return psycopg.connect(
        host=u.hostname, hostaddr=ip, port=port, dbname=urllib.parse.unquote(u.path.lstrip("/")) or None,
        user=urllib.parse.unquote(u.username or "") or None,
        password=urllib.parse.unquote(u.password or "") or None,
        sslmode="verify-full", sslrootcert=REDIS_CA or "system",
        connect_timeout=max(2, int(timeout)), autocommit=True,
        **({"application_name": "dixie-ring-standin"} | kwargs),
    )


class Migrations:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False
        self.error: str | None = None  # last failure (connection or SQL)
        self.mismatch: list[str] = []  # recorded files whose checksum differs: fatal
        self.applied: list[str] = []

    def files(self) -> list[Path]:
        d = Path(os.environ.get("DIXIE_MIGRATIONS_DIR") or "")
        if not d.is_dir():
            raise FileNotFoundError(f"DIXIE_MIGRATIONS_DIR {str(d)!r} is not a folder")
        return sorted((p for p in d.glob("*.sql") if not p.name.endswith("_down.sql")), key=lambda p: p.name)

    def run(self) -> bool:
        """One attempt; True when done (or fatally stuck on a checksum mismatch)."""
        with self.lock:
            if self.done or self.mismatch:
                return True
            t0 = time.monotonic()
            try:
                files = self.files()
                with pg_connect() as conn:
                    conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
                    try:
                        conn.execute(
                            "CREATE TABLE IF NOT EXISTS _migrations ("
                            " id serial PRIMARY KEY, filename text UNIQUE NOT NULL,"
                            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
                        recorded = dict(conn.execute("SELECT filename, checksum FROM _migrations").fetchall())
                        applied = []
                        for f in files:
                            body = f.read_bytes()
                            digest = hashlib.sha256(body).hexdigest()
                            if f.name in recorded:
                                if recorded[f.name] != digest:
                                    self.mismatch.append(f.name)
                                    log.error("migration %s: checksum mismatch (recorded %s, file %s); "
                                              "not applying any further migration", f.name, recorded[f.name], digest)
                                    break
                                continue
                            with conn.transaction():
                                conn.execute(body.decode())
                                conn.execute("INSERT INTO _migrations (filename, checksum) VALUES (%s, %s)",
                                             (f.name, digest))
                            applied.append(f.name)
                            log.info("migration %s applied (sha256 %s)", f.name, digest[:12])
                    finally:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
                self.applied += applied
                if self.mismatch:
                    self.error = f"checksum mismatch: {', '.join(self.mismatch)}"
                    return True
                log.info("migrations: %d applied, %d already recorded, %d files, in %d ms",
                         len(applied), len(files) - len(applied), len(files), ms(t0))
                self.done, self.error = True, None
                return True
            except Exception as e:  # noqa: BLE001 - reported in health and retried
                err = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                if err != self.error:
                    log.error("migrations failed (retrying every %.0f s): %s", MIGRATION_RETRY_S, err)
                self.error = err
                return False

    def loop(self) -> None:
        while not self.run():
            time.sleep(MIGRATION_RETRY_S)


MIGRATIONS = Migrations()


def check_postgres() -> dict:
    t0 = time.monotonic()
    try:
        with pg_connect(CHECK_TIMEOUT) as conn:
            conn.execute("SET statement_timeout = 1000")
            conn.execute("SELECT 1").fetchone()
        r = {"status": "healthy", "latency_ms": ms(t0)}
    except Exception as e:  # noqa: BLE001
        return {"status": "unreachable", "latency_ms": ms(t0), "error": short(e)}
    if MIGRATIONS.mismatch:
        r.update(status="unhealthy", error=f"migration checksum mismatch: {', '.join(MIGRATIONS.mismatch)}")
    elif not MIGRATIONS.done:
        r.update(status="unhealthy", error=f"migrations not applied: {MIGRATIONS.error or 'in progress'}")
    return r


def short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"[:300]


# --- Redis -------------------------------------------------------------------------
def check_redis() -> dict:
    t0 = time.monotonic()
    try:
        u, ip, port = dial_through(ENV["REDIS_URL"], 6379)
        scheme = u.scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"REDIS_URL scheme {scheme!r}")
        sock = socket.create_connection((ip, port), timeout=CHECK_TIMEOUT)
        try:
            if scheme == "rediss":
                ctx = ssl.create_default_context(cafile=REDIS_CA or None)
                # The ring's certificate names 127.0.0.1/localhost: verify against the mapped address.
                sock = ctx.wrap_socket(sock, server_hostname=ip)
            f = sock.makefile("rb")
            if u.password:
                user = urllib.parse.unquote(u.username or "")
                pw = urllib.parse.unquote(u.password)
                args = [b"AUTH"] + ([user.encode()] if user else []) + [pw.encode()]
                sock.sendall(resp(args))
                line = f.readline()
                if not line.startswith(b"+OK") and b"without any password configured" not in line:
                    raise ConnectionError(f"AUTH: {line.decode(errors='replace').strip()}")
            sock.sendall(resp([b"PING"]))
            line = f.readline()
            if not line.startswith(b"+PONG"):
                raise ConnectionError(f"PING answered {line.decode(errors='replace').strip()!r}")
        finally:
            sock.close()
        return {"status": "healthy", "latency_ms": ms(t0)}
    except Exception as e:  # noqa: BLE001
        return {"status": "unreachable", "latency_ms": ms(t0), "error": short(e)}


def resp(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


# --- NATS --------------------------------------------------------------------------
def check_nats() -> dict:
    errors = []
    for url in ENV["NATS_URL"].split(","):
        url = url.strip()
        if "://" not in url:
            url = "nats://" + url
        try:
            u, ip, port = dial_through(url, 4222)
            live = NATS_TASKS.addresses()
            if live is not None and u.hostname not in live:
                raise ConnectionError(f"timed out: {u.hostname} is no running NATS task (running: "
                                      f"{', '.join(sorted(live)) or 'none'}); NATS_URL is stale")
            with socket.create_connection((ip, port), timeout=CHECK_TIMEOUT) as sock:
                f = sock.makefile("rb")
                info = f.readline()
                if not info.startswith(b"INFO "):
                    raise ConnectionError(f"expected INFO, got {info[:60]!r}")
                connect = {"verbose": False}
                if u.username:
                    connect.update(user=urllib.parse.unquote(u.username),
                                   **({"pass": urllib.parse.unquote(u.password)} if u.password else {}))
                sock.sendall(b"CONNECT " + json.dumps(connect, separators=(",", ":")).encode() + b"\r\nPING\r\n")
                while True:
                    line = f.readline()
                    if not line:
                        raise ConnectionError("closed before PONG")
                    if line.startswith(b"PONG"):
                        return {"status": "connected"}
                    if line.startswith(b"-ERR"):
                        raise ConnectionError(line.decode(errors="replace").strip())
        except Exception as e:  # noqa: BLE001
            errors.append(short(e))
    return {"status": "unreachable", "error": "; ".join(errors)[:300]}


# --- Finn, with its circuit breaker ---------------------------------------------------
class Circuit:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0

    def check(self) -> dict:
        with self.lock:
            if self.state == "open":
                if time.monotonic() - self.opened_at < CIRCUIT_RECOVERY_S:
                    return {"status": "unreachable", "latency_ms": None,
                            "error": "circuit open (Finn failed %d times in a row)" % self.failures,
                            "circuit_state": "open"}
                self.set("half_open")
            r = probe_finn()
            if r["status"] == "healthy":
                self.failures = 0
                self.set("closed")
            else:
                self.failures += 1
                if self.state == "half_open" or self.failures >= CIRCUIT_THRESHOLD:
                    self.set("open")
                    self.opened_at = time.monotonic()
            r["circuit_state"] = self.state
            return r

    def set(self, state: str) -> None:
        if state != self.state:
            log.info("finn circuit: %s -> %s", self.state, state)
            self.state = state


def probe_finn() -> dict:
    t0 = time.monotonic()
    if not configured("FINN_URL"):
        return {"status": "unreachable", "latency_ms": 0, "error": f"FINN_URL is {redact('FINN_URL')}"}
    try:
        u, ip, port = dial(ENV["FINN_URL"])
        scheme = u.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"FINN_URL scheme {scheme!r}")
        # https to a loopback stand-in is spoken as plain http: the ring has no ALB/TLS.
        conn = http.client.HTTPConnection(ip, port, timeout=CHECK_TIMEOUT)
        try:
            default = DEFAULT_PORTS[scheme]
            host = u.hostname + (f":{u.port}" if u.port and u.port != default else "")
            conn.request("GET", u.path.rstrip("/") + "/health", headers={"Host": host, "User-Agent": "dixie-ring-standin"})
            res = conn.getresponse()
            body = res.read(65536)
        finally:
            conn.close()
    except (Refused, ValueError, OSError, http.client.HTTPException) as e:
        return {"status": "unreachable", "latency_ms": ms(t0), "error": short(e)}
    latency = ms(t0)
    if res.status != 200:
        return {"status": "degraded", "latency_ms": latency, "error": f"GET /health answered HTTP {res.status}"}
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        status = None
    if status != "healthy":
        return {"status": "degraded", "latency_ms": latency, "error": f"Finn reports status {status!r}"}
    return {"status": "healthy", "latency_ms": latency}


CIRCUIT = Circuit()
POOL = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="check")


def health() -> dict:
    checks = {"loa_finn": CIRCUIT.check}
    if configured("DATABASE_URL"):
        checks["postgresql"] = check_postgres
    if configured("REDIS_URL"):
        checks["redis"] = check_redis
    if configured("NATS_URL"):
        checks["nats"] = check_nats
    futures = {k: POOL.submit(f) for k, f in checks.items()}
    results = {}
    for k, fut in futures.items():
        try:
            results[k] = fut.result(timeout=CHECK_TIMEOUT + 1.5)
        except concurrent.futures.TimeoutError:
            results[k] = {"status": "unreachable", "error": "check timed out"}
            if k == "loa_finn":
                results[k].update(latency_ms=None, circuit_state=CIRCUIT.state)
        except Exception as e:  # noqa: BLE001
            results[k] = {"status": "unreachable", "error": short(e)}
    finn = results.pop("loa_finn")
    infra = {k: results[k] for k in ("postgresql", "redis", "nats") if k in results}
    if "nats" in infra and infra["nats"]["status"] != "connected":
        infra["nats"].pop("latency_ms", None)
    if finn["status"] == "unreachable":
        status = "unhealthy"
    elif finn["status"] == "degraded" or any(v["status"] not in ("healthy", "connected") for v in infra.values()):
        status = "degraded"
    else:
        status = "healthy"
    nats_ok = infra.get("nats", {}).get("status") == "connected"
    return {
        "status": status,
        "version": VERSION,
        "uptime_seconds": int(time.monotonic() - STARTED),
        "services": {"dixie": {"status": "healthy"}, "loa_finn": finn},
        "infrastructure": infra,
        "reputation_service": {"status": "healthy"},
        "governance": {"governor_count": 3, "resource_types": GOVERNANCE_RESOURCE_TYPES,
                       "health": "healthy" if nats_ok else "degraded"},
        "timestamp": now_iso(),
    }


def migration_rows() -> tuple[int, dict]:
    if not configured("DATABASE_URL"):
        return 404, {"error": "DATABASE_URL is not configured"}
    try:
        with pg_connect() as conn:
            rows = conn.execute("SELECT filename, checksum, applied_at FROM _migrations ORDER BY id").fetchall()
    except Exception as e:  # noqa: BLE001
        return 503, {"error": short(e)}
    return 200, {"migrations": [{"filename": f, "checksum": c, "applied_at": a.isoformat()} for f, c, a in rows],
                 "mismatch": MIGRATIONS.mismatch, "error": MIGRATIONS.error}


def key_params() -> tuple[str, str]:
    """(the key set's parameter name, the private keys' path, ending in /)."""
    prefix = f"/dixie/{os.environ.get('DIXIE_ENVIRONMENT') or 'armitage'}"
    path = os.environ.get("DIXIE_JWT_KEYS_PATH") or f"{prefix}/jwt-keys/"
    return os.environ.get("DIXIE_JWT_KEYSET_PARAM") or f"{prefix}/DIXIE_JWT_KEYSET", path.rstrip("/") + "/"


def load_keys() -> jwtkeys.Keys:
    """The key set and its published private keys, read from SSM once at start. Raises
    KeysetError (the task must not serve) when they are there but unusable or unreadable."""
    hs256 = ENV.get("DIXIE_JWT_PRIVATE_KEY") or None
    endpoint = os.environ.get("RING_AWS_ENDPOINT") or os.environ.get("RING_EC2_ENDPOINT") or ""
    keyset_param, keys_path = key_params()
    if not endpoint:
        log.info("JWT keys: no SSM endpoint (a stand-in started by hand): HS256 with DIXIE_JWT_PRIVATE_KEY only")
        return jwtkeys.Keys.legacy(hs256)
    from botocore.exceptions import BotoCoreError, ClientError

    ssm = ring_client("ssm", endpoint)
    try:
        text = ssm.get_parameter(Name=keyset_param, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ParameterNotFound":
            log.info("JWT keys: %s does not exist: HS256 with DIXIE_JWT_PRIVATE_KEY %s", keyset_param,
                     redact("DIXIE_JWT_PRIVATE_KEY"))
            return jwtkeys.Keys.legacy(hs256)
        raise jwtkeys.KeysetError(f"cannot read {keyset_param}: {e.response.get('Error', {}).get('Code')}") from None
    except (BotoCoreError, OSError) as e:
        raise jwtkeys.KeysetError(f"cannot read {keyset_param}: {type(e).__name__}") from None
    if text.strip() in ("", "PLACEHOLDER"):
        log.info("JWT keys: %s is %s: HS256 with DIXIE_JWT_PRIVATE_KEY", keyset_param, text.strip() or "empty")
        return jwtkeys.Keys.legacy(hs256)
    try:
        _, published = jwtkeys.parse_keyset(text)
    except jwtkeys.KeysetError as e:
        raise jwtkeys.KeysetError(f"{keyset_param}: {e}") from None
    names = [keys_path + kid for kid in published if kid != jwtkeys.HS256]
    pems: dict[str, str | None] = {}
    try:
        for i in range(0, len(names), 10):
            got = ssm.get_parameters(Names=names[i:i + 10], WithDecryption=True)
            pems.update({p["Name"][len(keys_path):]: p["Value"] for p in got["Parameters"]})
    except (ClientError, BotoCoreError, OSError) as e:
        raise jwtkeys.KeysetError(f"cannot read the private keys under {keys_path}: {type(e).__name__}") from None
    try:
        keys = jwtkeys.Keys.build(text, pems, hs256, where=keys_path)
    except jwtkeys.KeysetError as e:
        raise jwtkeys.KeysetError(f"{keyset_param}: {e}") from None
    log.info("JWT keys from %s: %s (private keys under %s)", keyset_param, keys.describe(), keys_path)
    return keys


LAST_STATUS = {"value": None}
API = dixie_api.Api(ENV, lambda: pg_connect())


class Handler(JsonHandler):
    server_version = "dixie-ring-standin"

    def do_GET(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/api/health":
            h = health()
            summary = (h["status"], h["services"]["loa_finn"]["status"],
                       tuple((k, v["status"]) for k, v in h["infrastructure"].items()))
            if summary != LAST_STATUS["value"]:
                LAST_STATUS["value"] = summary
                log.info("health now %s: loa_finn %s%s", h["status"], h["services"]["loa_finn"]["status"],
                         "".join(f", {k} {v['status']}" + (f" ({v['error']})" if v.get("error") else "")
                                 for k, v in h["infrastructure"].items())
                         + (f" [finn: {h['services']['loa_finn'].get('error')}]"
                            if h["services"]["loa_finn"].get("error") else ""))
            self.send_json(200, h)  # 200 even when unhealthy: the real service's quirk
        elif path == "/api/health/migrations":
            self.send_json(*migration_rows())
        elif (answer := self.api("GET", path)) is not None:
            self.send_json(*answer)
        else:
            self.send_json(404, {"error": "not found"})

    do_HEAD = do_GET

    def api(self, method: str, path: str) -> tuple[int, dict] | None:
        """The smoke gate's routes (dixie_api.py), and the ring's fault control for them."""
        body = b""
        if method in ("POST", "DELETE"):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/__ring/faults":
            if method == "DELETE":
                return dixie_api.clear_faults()
            if method == "POST":
                spec = dixie_api._json(body)
                return dixie_api.set_fault(spec if isinstance(spec, dict) else {})
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        return API.handle(method, path, query, self.headers, body)

    def do_DELETE(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        answer = self.api("DELETE", path)
        self.send_json(*(answer or (404, {"error": "not found"})))

    def do_POST(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path != "/__ring/errors":
            answer = self.api("POST", path)
            self.send_json(*(answer or (404, {"error": "not found"})))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            asked = json.loads(self.rfile.read(length) or b"{}")
            count = max(1, min(100, int(asked.get("count", 3))))
            message = str(asked.get("message") or "rehearsed failure")
        except (ValueError, AttributeError, TypeError) as e:
            self.send_json(400, {"error": f"want a JSON object {{count, message}}: {e}"})
            return
        for i in range(count):
            log.error("%s (%d of %d)", message, i + 1, count)
        self.send_json(200, {"logged": count})



def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s dixie[%(process)d] %(levelname)s %(message)s")
    port = int(os.environ.get("PORT") or 3001)
    log.info("starting Dixie stand-in %s on 127.0.0.1:%d", VERSION, port)
    for name in PARAMS:
        log.info("  %s = %s", name, redact(name))
    log.info("  RING_ADDRESS_MAP = %s (%d entries)%s", AMAP.path or "(unset)", len(AMAP.main.entries()),
             f" ERROR {AMAP.error}" if AMAP.error else "")
    if AMAP.overlay_in_use():
        log.warning("  address map OVERLAY %s in use (%d entries, they win): %s", AMAP.overlay.path,
                    AMAP.overlay_in_use(), ", ".join(f"{h}:{p} = {t[0]}:{t[1]}"
                                                     for (h, p), t in AMAP.overlay.entries().items()))
    log.info("  RING_REDIS_CA = %s, DIXIE_MIGRATIONS_DIR = %s", REDIS_CA or "(unset)",
             os.environ.get("DIXIE_MIGRATIONS_DIR") or "(unset)")
    try:
        API.keys = load_keys()
    except jwtkeys.KeysetError as e:
        log.error("JWT keys refused: %s. The task stops: fix the key set or the key and deploy again", e)
        sys.exit(1)
    log.info("  JWKS at %s (Cache-Control max-age=%d), token lifetime %d s", dixie_api.JWKS_PATH,
             API.jwks_max_age, API.jwt_ttl)
    if configured("DATABASE_URL"):
        if not MIGRATIONS.run():
            threading.Thread(target=MIGRATIONS.loop, name="migrations", daemon=True).start()
    else:
        log.info("DATABASE_URL is %s: no migrations", redact("DATABASE_URL"))
    serve(port, Handler, log, "GET /api/health, /api/health/migrations, the smoke routes of dixie_api.py")


if __name__ == "__main__":
    main()
