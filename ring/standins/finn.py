#!/usr/bin/env python3
"""ring/standins/finn.py: stand-in for the loa-finn task on the local rehearsal ring.

Listens on 127.0.0.1:PORT. GET /health -> 200 {"status": "healthy", "version",
"uptime_seconds", "timestamp"}: like the real Finn, nothing in it reports Dixie.
It reads its environment once at start (as a task does; DIXIE_BASE_URL included when
set) and logs it; GET /debug/config lists the names of the task's variables and the
values of the non-secret ones, so a rehearsal can see what the running task picked up.
$RUNBOOK_RING_DIR/finn-delay-ms, when present, slows /health by that many milliseconds (a
rehearsal of a slow Finn; Dixie then reports the latency).

It plays a client that verifies Dixie's tokens against Dixie's JWKS (docs/ring.md, "Keys"; the
real Finn reads Freeside's JWKS, not Dixie's). The JWKS is fetched on the first verification
and cached for the answer's Cache-Control max-age (FINN_JWKS_DEFAULT_MAX_AGE_SECONDS when it
has none), never less than FINN_JWKS_COOLDOWN_SECONDS, which is also the least time between two
fetches. A token whose kid the cache lacks is refused until the cache expires (no refetch on
an unknown kid: the worst case a rotation must survive). The only address it dials is the
JWKS URL (DIXIE_JWKS_URL, else DIXIE_BASE_URL + /api/auth/.well-known/jwks.json), through the
address map; https to loopback is spoken as plain http, as the Dixie stand-in does.
POST /debug/verify {"token"}: the verdict against the cached JWKS and the kid it used.
GET /debug/jwks-cache: the cached kids, when fetched, when they expire.
DELETE /debug/jwks-cache: a ring control (not Finn's): forget the cache, as a restart would.
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import os
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import jwtkeys
from addrmap import DEFAULT_PORTS, AddressMap, Refused
from serve import JsonHandler, serve

log = logging.getLogger("finn")
STARTED = time.monotonic()
STARTED_AT = datetime.datetime.now(datetime.timezone.utc)
VERSION = os.environ.get("FINN_VERSION") or "unknown"
RING_DIR = Path(os.environ.get("RUNBOOK_RING_DIR") or Path(__file__).resolve().parents[2] / ".ring")
# Values shown by /debug/config; every other variable shows its name only.
NON_SECRET = {"DIXIE_BASE_URL", "NODE_ENV", "LOG_LEVEL", "PORT", "FINN_VERSION", "DIXIE_JWKS_URL",
              "FINN_JWKS_COOLDOWN_SECONDS", "FINN_JWKS_DEFAULT_MAX_AGE_SECONDS"}
# The variables the task got from its definition and SSM (the ECS agent names them).
TASK_ENV = sorted({n for n in os.environ.get("RING_TASK_ENV_NAMES", "").split(",") if n}
                  | {n for n in NON_SECRET if n in os.environ})
CONFIG = {n: os.environ.get(n) for n in TASK_ENV}


JWKS_PATH = "/api/auth/.well-known/jwks.json"
FETCH_TIMEOUT_S = 2.0


def env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name) or default))
    except ValueError:
        return default


class JwksCache:
    """Dixie's JWKS as a verifying client caches it (jose's remote key set, with the TTL taken
    from max-age instead of a fixed 10 minutes, and no refetch on an unknown kid)."""

    def __init__(self) -> None:
        base = os.environ.get("DIXIE_BASE_URL", "").strip()
        self.url = os.environ.get("DIXIE_JWKS_URL", "").strip() or (base.rstrip("/") + JWKS_PATH if base else "")
        self.cooldown = env_seconds("FINN_JWKS_COOLDOWN_SECONDS", 1.0)
        self.default_max_age = env_seconds("FINN_JWKS_DEFAULT_MAX_AGE_SECONDS", 600.0)
        self.amap = AddressMap(os.environ.get("RING_ADDRESS_MAP"))
        self.lock = threading.Lock()
        self.keys: dict | None = None
        self.fetched_at: datetime.datetime | None = None
        self.fetched_mono = 0.0
        self.max_age: float | None = None
        self.ttl = 0.0
        self.attempt_mono: float | None = None
        self.fetches = 0
        self.last_error: str | None = None

    def fetch(self) -> tuple[dict, float | None]:
        if not self.url:
            raise ValueError("neither DIXIE_JWKS_URL nor DIXIE_BASE_URL is set")
        u = urllib.parse.urlsplit(self.url)
        scheme = u.scheme.lower()
        if scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"JWKS URL scheme {scheme!r} or host is not usable")
        ip, port = self.amap.resolve(u.hostname, u.port or DEFAULT_PORTS[scheme])
        conn = http.client.HTTPConnection(ip, port, timeout=FETCH_TIMEOUT_S)
        try:
            host = u.hostname + (f":{u.port}" if u.port and u.port != DEFAULT_PORTS[scheme] else "")
            conn.request("GET", u.path or "/", headers={"Host": host, "User-Agent": "finn-ring-standin"})
            res = conn.getresponse()
            body = res.read(1 << 20)
        finally:
            conn.close()
        if res.status != 200:
            raise ConnectionError(f"GET {u.path} answered HTTP {res.status}")
        doc = json.loads(body)
        max_age = None
        for part in (res.getheader("Cache-Control") or "").split(","):
            name, _, value = part.strip().partition("=")
            if name.lower() == "max-age" and value.strip().isdigit():
                max_age = float(value.strip())
        return doc, max_age

    def current(self) -> tuple[dict | None, str | None]:
        """(kid -> public key, None) from the cache, fetched again when it expired and the
        cooldown allows; (None, why) when there is no usable JWKS."""
        with self.lock:
            now = time.monotonic()
            fresh = self.keys is not None and now < self.fetched_mono + self.ttl
            cooling = self.attempt_mono is not None and now < self.attempt_mono + self.cooldown
            if fresh or cooling:
                return (self.keys, None) if self.keys is not None else (None, f"JWKS unavailable: {self.last_error}")
            self.attempt_mono = now
            try:
                doc, max_age = self.fetch()
                keys = jwtkeys.jwks_public_keys(doc)
            except (Refused, ValueError, OSError, http.client.HTTPException, jwtkeys.KeysetError) as e:
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                self.keys = None
                log.warning("JWKS fetch from %s failed: %s", self.url, self.last_error)
                return None, f"JWKS unavailable: {self.last_error}"
            self.keys, self.max_age, self.last_error = keys, max_age, None
            self.ttl = max(self.cooldown, self.default_max_age if max_age is None else max_age)
            self.fetched_mono, self.fetched_at = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
            self.fetches += 1
            log.info("JWKS fetched from %s: kids %s, cached %.0f s (max-age %s)", self.url,
                     ", ".join(sorted(keys)) or "none", self.ttl, "absent" if max_age is None else f"{max_age:.0f}")
            return keys, None

    def forget(self) -> None:
        with self.lock:
            self.keys, self.fetched_at, self.fetched_mono, self.attempt_mono = None, None, 0.0, None
        log.info("JWKS cache forgotten (ring control)")

    def state(self) -> dict:
        with self.lock:
            left = self.fetched_mono + self.ttl - time.monotonic() if self.keys is not None else None
            return {"url": self.url or None, "kids": sorted(self.keys) if self.keys is not None else None,
                    "fetched_at": iso(self.fetched_at) if self.fetched_at else None,
                    "max_age_s": self.max_age, "ttl_s": self.ttl if self.keys is not None else None,
                    "expires_in_s": round(left, 3) if left is not None else None,
                    "fresh": bool(left is not None and left > 0), "fetches": self.fetches,
                    "cooldown_s": self.cooldown, "last_error": self.last_error}


def slowness() -> float:
    """Seconds to wait before answering /health: a rehearsal of a slow Finn. The ring's
    tests write milliseconds to $RUNBOOK_RING_DIR/finn-delay-ms; absent means none."""
    try:
        return max(0.0, float((RING_DIR / "finn-delay-ms").read_text().strip()) / 1000.0)
    except (OSError, ValueError):
        return 0.0


def iso(t: datetime.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


JWKS = JwksCache()


class Handler(JsonHandler):
    server_version = "finn-ring-standin"

    def do_GET(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/health":
            time.sleep(slowness())
            self.send_json(200, {
                "status": "healthy",
                "version": VERSION,
                "uptime_seconds": int(time.monotonic() - STARTED),
                "timestamp": iso(datetime.datetime.now(datetime.timezone.utc)),
            })
        elif path == "/debug/config":
            self.send_json(200, {
                "env_names": TASK_ENV,
                "values": {n: CONFIG[n] for n in TASK_ENV if n in NON_SECRET},
                "deployment_id": os.environ.get("RING_DEPLOYMENT_ID"),
                "started_at": iso(STARTED_AT),
            })
        elif path == "/debug/jwks-cache":
            self.send_json(200, JWKS.state())
        else:
            self.send_json(404, {"error": "not found"})

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path != "/debug/verify":
            self.send_json(404, {"error": "not found"})
            return
        try:
            token = json.loads(body or b"{}").get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            self.send_json(400, {"error": "want a JSON object {\"token\": \"...\"}"})
            return
        keys, why = JWKS.current()
        if keys is None:
            self.send_json(503, {"valid": False, "reason": why, "jwks": JWKS.state()})
            return
        claims, why, seen = jwtkeys.verify(token, keys)
        cache = JWKS.state()
        answer = {"valid": claims is not None, "kid": seen.get("kid"), "alg": seen.get("alg"),
                  "jwks": {"kids": cache["kids"], "fetched_at": cache["fetched_at"]}}
        if claims is None:
            answer["reason"] = why
            log.info("token refused: kid %s: %s", seen.get("kid") or "-", why)
        else:
            answer["claims"] = {k: claims.get(k) for k in ("sub", "iat", "exp")}
        self.send_json(200, answer)

    def do_DELETE(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/debug/jwks-cache":
            JWKS.forget()
            self.send_json(200, JWKS.state())
        else:
            self.send_json(404, {"error": "not found"})



def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s finn[%(process)d] %(levelname)s %(message)s")
    port = int(os.environ.get("PORT") or 3000)
    log.info("starting loa-finn stand-in %s on 127.0.0.1:%d (deployment %s)", VERSION, port,
             os.environ.get("RING_DEPLOYMENT_ID") or "?")
    for n in TASK_ENV:
        v = CONFIG[n]
        shown = v if n in NON_SECRET or v in (None, "PLACEHOLDER") else f"(set, {len(v)} chars)"
        log.info("  %s = %s", n, shown)
    if CONFIG.get("DIXIE_BASE_URL") is None:
        log.info("  DIXIE_BASE_URL is not set")
    log.info("  JWKS %s: cached for its max-age (default %.0f s), cooldown %.0f s", JWKS.url or "(no URL)",
             JWKS.default_max_age, JWKS.cooldown)
    serve(port, Handler, log, "GET /health, /debug/config, /debug/jwks-cache; POST /debug/verify")


if __name__ == "__main__":
    main()
