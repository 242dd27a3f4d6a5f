"""ring/standins/dixie_api.py: the routes of the Dixie stand-in that the smoke gate calls (003 §6:
auth, chat, fleet, reputation, governance), as Dixie's own staging smoke tests use them
(shared/dixie-facts.md). Health stays in dixie.py. Where the seeds are silent, the assumption is
written in docs/ring.md ("The smoke routes").

Secrets: the JWT key and the admin key are compared, never logged or echoed.

A rehearsal control (not Dixie's): POST /__ring/faults {"method", "path", "fail": [bool, ...],
"status"} makes the route's next answers that would be a success answer `status` instead, one
list entry per such answer (true: fail); DELETE /__ring/faults clears every fault.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid

CAPABILITIES = ["chat", "knowledge", "fleet.spawn", "reputation.query"]
GOVERNORS = [
    {"resourceType": "knowledge_corpus", "health": "healthy"},
    {"resourceType": "knowledge_governor", "health": "healthy"},
    {"resourceType": "fleet", "health": "healthy"},
]

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


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_jwt(token: str, key: str) -> tuple[dict | None, str]:
    """HS256 over the key's text, issuer and audience dixie-bff, not expired."""
    if not key or key == "PLACEHOLDER":
        return None, "DIXIE_JWT_PRIVATE_KEY is not configured"
    try:
        header_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(_b64url_decode(header_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        sig = _b64url_decode(sig_b64)
    except (ValueError, json.JSONDecodeError):
        return None, "malformed token"
    if header.get("alg") != "HS256":
        return None, f"alg {header.get('alg')!r} is not accepted"
    want = hmac.new(key.encode(), f"{header_b64}.{claims_b64}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(want, sig):
        return None, "invalid signature"
    if claims.get("iss") != "dixie-bff" or claims.get("aud") != "dixie-bff":
        return None, "wrong issuer or audience"
    if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < time.time():
        return None, "token expired"
    return claims, ""


class Api:
    """The routes, given Dixie's configuration and a PostgreSQL connector (reputation lives in
    Dixie's database: it survives a restart of the task)."""

    def __init__(self, env: dict, pg_connect) -> None:
        self.env = env
        self.pg_connect = pg_connect

    def _bearer(self, headers) -> str | None:
        auth = headers.get("Authorization") or ""
        return auth[7:].strip() if auth.startswith("Bearer ") else None

    def _user(self, headers) -> tuple[dict | None, tuple[int, dict] | None]:
        token = self._bearer(headers)
        if token is None:
            return None, (401, {"error": "authentication required"})
        claims, why = verify_jwt(token, self.env.get("DIXIE_JWT_PRIVATE_KEY", ""))
        if claims is None:
            return None, (401, {"error": why})
        return claims, None

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
            return 200, {"wallet": claims.get("wallet") or claims.get("sub"), "role": "user", "exp": claims["exp"]}
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


def _json(body: bytes):
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
