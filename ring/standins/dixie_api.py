"""ring/standins/dixie_api.py: the routes of the Dixie stand-in that the smoke gate calls (003 §6:
auth, chat, fleet, reputation, governance), as Dixie's own staging smoke tests use them
(shared/dixie-facts.md), and the key contract's (docs/ring.md, "Keys"): the JWKS, and a token
route for tests (the stand-in cannot do SIWE). Health stays in dixie.py. Where the seeds are
silent, the assumption is written in docs/ring.md ("The smoke routes", "Keys").

Tokens are verified with every published kid of the key set dixie.py loads at task start
(jwtkeys.Keys; without a key set, 001's HS256 secret as before). A refused token logs one
WARNING line `JWT_VALIDATION_FAILED kid=… alg=… reason=…` (never the token).

Secrets: the JWT keys and the admin key are compared or used, never logged or echoed.

A rehearsal control (not Dixie's): POST /__ring/faults {"method", "path", "fail": [bool, ...],
"status"} makes the route's next answers that would be a success answer `status` instead, one
list entry per such answer (true: fail); DELETE /__ring/faults clears every fault.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
import uuid

import jwtkeys

CAPABILITIES = ["chat", "knowledge", "fleet.spawn", "reputation.query"]
GOVERNORS = [
    {"resourceType": "knowledge_corpus", "health": "healthy"},
    {"resourceType": "knowledge_governor", "health": "healthy"},
    {"resourceType": "fleet", "health": "healthy"},
]

log = logging.getLogger("dixie")
# The ring's defaults (production: 3600 and 3600, shared/dixie-facts.md); the task's environment
# may set them (docs/ring.md, "Keys").
JWT_TTL_DEFAULT_S = 30
JWKS_MAX_AGE_DEFAULT_S = 10
JWKS_PATH = "/api/auth/.well-known/jwks.json"

_faults_lock = threading.Lock()
_faults: dict[tuple[str, str], dict] = {}


def set_fault(spec: dict) -> tuple[int, dict]:
    try:
        key = (str(spec["method"]).upper(), str(spec["path"]))
        fail = [bool(x) for x in spec["fail"]]
        status = int(spec.get("status", 503))
    except (KeyError, TypeError, ValueError) as e:
        return 400, {"error": f"want {{method, path, fail: [bool], status}}: {e}"}
    with _faults_lock:
        _faults[key] = {"fail": fail, "status": status}
    return 200, {"fault": {"method": key[0], "path": key[1], "fail": fail, "status": status}}


def clear_faults() -> tuple[int, dict]:
    with _faults_lock:
        _faults.clear()
    return 200, {"faults": 0}


def _fault(method: str, path: str) -> int | None:
    """The status a faulted route answers in place of this success, if any."""
    with _faults_lock:
        f = _faults.get((method, path))
        if not f or not f["fail"]:
            return None
        return f["status"] if f["fail"].pop(0) else None


class Api:
    """The routes, given Dixie's configuration and a PostgreSQL connector (reputation lives in
    Dixie's database: it survives a restart of the task)."""

    def __init__(self, env: dict, pg_connect, keys: jwtkeys.Keys | None = None) -> None:
        self.env = env
        self.pg_connect = pg_connect
        # Replaced by dixie.py with the key set it loads at start; until then 001's HS256 key.
        self.keys = keys or jwtkeys.Keys.legacy(env.get("DIXIE_JWT_PRIVATE_KEY", ""))
        self.jwt_ttl = _seconds("DIXIE_JWT_TTL_SECONDS", JWT_TTL_DEFAULT_S, 1)
        self.jwks_max_age = _seconds("DIXIE_JWKS_MAX_AGE_SECONDS", JWKS_MAX_AGE_DEFAULT_S, 0)

    def _bearer(self, headers) -> str | None:
        auth = headers.get("Authorization") or ""
        return auth[7:].strip() if auth.startswith("Bearer ") else None

    def _user(self, headers) -> tuple[dict | None, tuple[int, dict] | None]:
        token = self._bearer(headers)
        if token is None:
            return None, (401, {"error": "authentication required"})
        claims, why, seen = self.keys.verify(token)
        if claims is None:
            log.warning("JWT_VALIDATION_FAILED kid=%s alg=%s reason=%s", seen.get("kid") or "-",
                        seen.get("alg") or "-", why)
            return None, (401, {"error": why})
        return claims | {"_kid": seen.get("kid"), "_alg": seen.get("alg")}, None

    def _issue(self, headers, body: bytes) -> tuple[int, dict]:
        """POST /api/auth/token (ring only, admin key): a token signed as Dixie signs them now."""
        refused = self._admin(headers)
        if refused:
            return refused
        req = _json(body) if body else {}
        if not isinstance(req, dict):
            return 400, {"error": "want a JSON object {sub?, wallet?, kid?, expires_in?}"}
        sub, wallet, kid = req.get("sub", "0x0000000000000000000000000000000000000001"), req.get("wallet"), req.get("kid")
        expires_in = req.get("expires_in", self.jwt_ttl)
        if not isinstance(sub, str) or not sub or len(sub) > 200 or (wallet is not None and not isinstance(wallet, str)):
            return 400, {"error": "sub (and wallet) must be short non-empty strings"}
        if not isinstance(expires_in, int) or isinstance(expires_in, bool) or not -3600 <= expires_in <= self.jwt_ttl:
            return 400, {"error": f"expires_in must be an integer from -3600 to the token lifetime, {self.jwt_ttl} s"}
        if kid is not None and (not isinstance(kid, str) or kid not in self.keys.published):
            return 400, {"error": f"kid {kid!r} is not published (published: {', '.join(self.keys.published)})"}
        try:
            token, meta = self.keys.issue(sub, expires_in, wallet=wallet, kid=kid)
        except jwtkeys.KeysetError as e:
            return 503, {"error": f"cannot sign: {e}"}
        log.info("issued a test token: kid %s, alg %s, exp %d", meta["kid"] or "-", meta["alg"], meta["exp"])
        return 200, {"token": token, **meta}

    def _admin(self, headers) -> tuple[int, dict] | None:
        key = self.env.get("DIXIE_ADMIN_KEY", "")
        given = self._bearer(headers)
        if given is None:
            return 401, {"error": "admin key required"}
        if not key or key == "PLACEHOLDER" or not hmac.compare_digest(given.encode(), key.encode()):
            return 403, {"error": "forbidden"}
        return None

    def handle(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict] | None:
        """The answer to a request, or None when the route is not one of these."""
        answer = self._route(method, path, query, headers, body)
        if answer is not None and 200 <= answer[0] < 300:
            failed = _fault(method, path)
            if failed is not None:
                return failed, {"error": f"rehearsed fault on {method} {path}"}
        return answer

    def _route(self, method, path, query, headers, body):
        if (method, path) == ("GET", "/api/auth/verify"):
            claims, refused = self._user(headers)
            if refused:
                return refused
            return 200, {"wallet": claims.get("wallet") or claims.get("sub"), "role": "user", "exp": claims["exp"],
                         "kid": claims["_kid"], "alg": claims["_alg"]}
        if (method, path) == ("GET", JWKS_PATH):
            return 200, self.keys.jwks(), {"Cache-Control": f"public, max-age={self.jwks_max_age}"}
        if (method, path) == ("POST", "/api/auth/token"):
            return self._issue(headers, body)
        if (method, path) == ("POST", "/api/auth/siwe"):
            req = _json(body)
            if not isinstance(req, dict) or not isinstance(req.get("message"), str) \
                    or not isinstance(req.get("signature"), str):
                return 400, {"error": "want {message, signature}"}
            # The stand-in cannot recover an Ethereum signer (no secp256k1 here): every
            # signature is refused, as a bad one is by Dixie (docs/ring.md).
            return 401, {"error": "invalid signature"}
        if (method, path) == ("POST", "/api/chat"):
            _, refused = self._user(headers)
            if refused:
                return refused
            req = _json(body)
            prompt = req.get("prompt") if isinstance(req, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                return 400, {"error": "prompt must be a non-empty string"}
            return 200, {"sessionId": str(uuid.uuid4()), "response": "ok"}
        if (method, path) == ("GET", "/api/agent/capabilities"):
            _, refused = self._user(headers)
            if refused:
                return refused
            return 200, {"capabilities": CAPABILITIES}
        if (method, path) == ("POST", "/api/agent/query"):
            _, refused = self._user(headers)
            if refused:
                return refused
            return 202, {"taskId": str(uuid.uuid4()), "status": "queued"}
        if (method, path) == ("GET", "/api/reputation/query"):
            key = (query.get("routingKey") or [""])[0]
            if not key:
                return 400, {"error": "routingKey is required"}
            nft = key[4:] if key.startswith("nft:") else key
            try:
                with self.pg_connect() as conn:
                    row = conn.execute("SELECT score FROM reputation_aggregates WHERE nft_id = %s", (nft,)).fetchone()
            except Exception as e:  # noqa: BLE001
                return 503, {"error": f"reputation store unavailable: {type(e).__name__}"}
            return 200, {"routingKey": key, "score": float(row[0]) if row else None}
        if (method, path) == ("GET", "/api/reputation/population"):
            refused = self._admin(headers)
            if refused:
                return refused
            return 200, {"population": []}
        if (method, path) == ("GET", "/api/health/governance"):
            refused = self._admin(headers)
            if refused:
                return refused
            return 200, {"governors": GOVERNORS, "totalResources": len(GOVERNORS), "degradedResources": 0,
                         "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return None


def _seconds(name: str, default: int, least: int) -> int:
    try:
        return max(least, int(os.environ.get(name) or default))
    except ValueError:
        log.warning("%s is not an integer: using %d", name, default)
        return default


def _json(body: bytes):
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
