#!/usr/bin/env python3
"""ring/check_keys.py: prove the stand-ins keep the JWT key contract (docs/ring.md, "Keys")
against the running ring. Exit 0 when every check passed, 1 when one failed, 2 when it could
not run (no ring, or a key set is already there and --force was not given).

    flock /work/ring.lock bash -c 'bash ring/up.sh && python3 ring/check_keys.py; bash ring/down.sh'

What it does, as a rotation and a revocation would, with boto3 against moto (127.0.0.1:4566):
the stand-in Dixie's service is sprint 2's `dixie-armitage` when it runs, else a minimal one this
script registers (and removes after). Then, redeploying Dixie (update-service
--force-new-deployment) after every key set change:
  1. from 001's HS256 secret to ES256 key A (the first rotation): publish A beside "hs256",
     switch signing to A, retire "hs256" (an HS256 token is then refused);
  2. the dual-kid rotation A -> B: the JWKS holds both; the Finn stand-in, which cached {A},
     refuses a B token until its cache's max-age has passed, then accepts it; signing switches
     to B; an A token verifies until A is unpublished, then fails naming the kid;
     refused on the way: a token of an unknown kid, a forged signature, an expired token, a
     wrong audience, alg none;
  3. the revocation of B: new key D active and alone at once; a B token is refused by Dixie and,
     once told (its cache dropped), by Finn;
  4. a key set naming a kid whose private key is missing: the new task refuses to start.
Afterwards it removes every key and the key set it wrote and redeploys Dixie, back on HS256.
Private keys live in this process's memory and in SSM only; nothing prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "ring" / "standins"))
import jwtkeys as jk  # noqa: E402

RING_DIR = Path(os.environ.get("RUNBOOK_RING_DIR") or REPO / ".ring")
ENDPOINT = "http://127.0.0.1:4566"
CLUSTER = "arrakis-staging-cluster"
DIXIE_SERVICE = "dixie-armitage"
FINN_SERVICE = "loa-finn-armitage"
PREFIX = "/dixie/armitage"
KEYSET = f"{PREFIX}/DIXIE_JWT_KEYSET"
KEYS_PATH = f"{PREFIX}/jwt-keys/"
DIXIE = "http://127.0.0.1:13001"
FINN = "http://127.0.0.1:13000"
AGENT = "http://127.0.0.1:18900"
JWKS = "/api/auth/.well-known/jwks.json"
WAIT_S = 30.0


class Stop(Exception):
    """The check cannot go on."""


def http(method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 3.0):
    """(status, JSON body or None, headers); a refused connection is status 0."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            raw, status, headers = res.read(), res.status, dict(res.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, dict(e.headers)
    except (urllib.error.URLError, OSError):
        return 0, None, {}
    try:
        return status, json.loads(raw or b"null"), headers
    except ValueError:
        return status, None, headers


class Check:
    def __init__(self, force: bool) -> None:
        cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=10,
                     user_agent_extra="ring-check-keys")
        session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
        self.ssm = session.client("ssm", endpoint_url=ENDPOINT, config=cfg)
        self.ecs = session.client("ecs", endpoint_url=ENDPOINT, config=cfg)
        self.force = force
        self.failures: list[str] = []
        self.passed = 0
        self.made_params: list[str] = []    # removed at the end
        self.made_kids: list[str] = []
        self.owned_service = False
        self.admin = ""
        self.private: dict[str, str] = {}   # kid -> PEM, in memory only
        self.t0 = time.monotonic()

    # --- reporting --------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def ok(self, cond: bool, what: str, detail: str = "") -> bool:
        if cond:
            self.passed += 1
            self.say(f"ok    {what}")
        else:
            self.failures.append(f"{what}: {detail}")
            self.say(f"FAIL  {what}: {detail}")
        return cond

    # --- SSM and ECS ----------------------------------------------------------------------
    def param(self, name: str) -> str | None:
        try:
            return self.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except ClientError as e:
            if e.response["Error"]["Code"] == "ParameterNotFound":
                return None
            raise

    def put(self, name: str, value: str, kind: str, overwrite: bool = True) -> None:
        self.ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=overwrite)
        if name not in self.made_params:
            self.made_params.append(name)

    def delete(self, name: str) -> None:
        try:
            self.ssm.delete_parameter(Name=name)
        except ClientError as e:
            if e.response["Error"]["Code"] != "ParameterNotFound":
                raise
        if name in self.made_params:
            self.made_params.remove(name)

    def new_key(self, label: str) -> str:
        kid, pem = jk.generate()
        self.private[kid] = pem
        self.put(KEYS_PATH + kid, pem, "SecureString", overwrite=False)
        self.made_kids.append(kid)
        self.say(f"key {label}: kid {kid} written to {KEYS_PATH}{kid} (SecureString, PKCS#8 P-256)")
        return kid

    def keyset(self, active: str, published: list[str]) -> None:
        self.put(KEYSET, jk.keyset_json(active, published), "String")
        self.say(f"key set: active {short(active)}, published [{', '.join(short(k) for k in published)}]")

    def agent_task(self, service: str) -> dict | None:
        status, body, _ = http("GET", f"{AGENT}/state")
        return (body or {}).get("tasks", {}).get(service) if status == 200 else None

    def redeploy(self, service: str = DIXIE_SERVICE, expect_up: bool = True) -> str:
        """Force a new deployment and wait for the agent to run its task (and, expect_up, for the
        stand-in to answer)."""
        svc = self.ecs.update_service(cluster=CLUSTER, service=service, forceNewDeployment=True)["service"]
        dep = next(d["id"] for d in svc["deployments"] if d["status"] == "PRIMARY")
        deadline = time.monotonic() + WAIT_S
        url = f"{DIXIE}{JWKS}" if service == DIXIE_SERVICE else f"{FINN}/health"
        while time.monotonic() < deadline:
            task = self.agent_task(service)
            if task and task.get("deployment_id") == dep and task.get("running"):
                if not expect_up:
                    return dep
                if http("GET", url, timeout=1)[0] == 200:
                    self.say(f"{service} redeployed ({dep}), answering")
                    return dep
            if not expect_up and self.refused_since(dep):
                return dep
            time.sleep(0.2)
        raise Stop(f"{service}: the task of deployment {dep} did not come up within {WAIT_S:.0f} s "
                   f"(see {RING_DIR}/logs/{service}.log)")

    def refused_since(self, dep: str) -> str | None:
        """The stand-in's 'JWT keys refused' line, if the task of deployment `dep` logged one."""
        try:
            text = (RING_DIR / "logs" / f"{DIXIE_SERVICE}.log").read_text(errors="replace")
        except OSError:
            return None
        marker = text.rfind(f"deployment {dep},")
        if marker < 0:
            return None
        for line in text[marker:].splitlines():
            if "JWT keys refused" in line:
                return line
        return None

    # --- the service under test -----------------------------------------------------------------
    def prepare(self) -> None:
        if http("GET", f"{AGENT}/healthz")[0] != 200:
            raise Stop(f"the ring's ecs-agent does not answer on {AGENT}: bring the ring up (ring/up.sh)")
        if self.param(KEYSET) is not None and not self.force:
            raise Stop(f"{KEYSET} exists: a rotation may be under way; this check would overwrite it "
                       "(--force to run anyway)")
        svc = self.ecs.describe_services(cluster=CLUSTER, services=[DIXIE_SERVICE])["services"]
        if svc and svc[0]["status"] == "ACTIVE" and svc[0]["desiredCount"] >= 1:
            self.say(f"using the ring's {DIXIE_SERVICE} service ({svc[0]['taskDefinition'].rsplit('/', 1)[-1]})")
        else:
            self.make_service()
        self.admin = self.param(f"{PREFIX}/DIXIE_ADMIN_KEY") or ""
        if not self.admin or self.admin == "PLACEHOLDER":
            raise Stop(f"{PREFIX}/DIXIE_ADMIN_KEY is not set: the token route needs the admin key")
        if self.param("/loa-finn/armitage/DIXIE_BASE_URL") is None:
            # What sprint 2's T2.7 writes; removed again at the end.
            self.put("/loa-finn/armitage/DIXIE_BASE_URL", "https://dixie-armitage.arrakis.community", "SecureString")
            self.redeploy(FINN_SERVICE)
        self.redeploy()  # a task that read the current SSM

    def make_service(self) -> None:
        """A minimal dixie-armitage on a fresh ring: the keys' routes need no database."""
        self.owned_service = True
        for name, value in (("DIXIE_ADMIN_KEY", os.urandom(16).hex()), ("DIXIE_JWT_PRIVATE_KEY", os.urandom(32).hex())):
            if self.param(f"{PREFIX}/{name}") is None:
                self.put(f"{PREFIX}/{name}", value, "SecureString", overwrite=False)
        td = self.ecs.register_task_definition(
            family="dixie-armitage-keycheck", networkMode="bridge",
            containerDefinitions=[{
                "name": "dixie", "image": "127.0.0.1:5000/dixie-armitage:keycheck", "memory": 256, "essential": True,
                "environment": [{"name": "DIXIE_ENVIRONMENT", "value": "armitage"}],
                "secrets": [{"name": n, "valueFrom": f"{PREFIX}/{n}"} for n in ("DIXIE_ADMIN_KEY", "DIXIE_JWT_PRIVATE_KEY")],
            }])["taskDefinition"]["taskDefinitionArn"]
        self.ecs.create_service(cluster=CLUSTER, serviceName=DIXIE_SERVICE, taskDefinition=td, desiredCount=1)
        self.say(f"no {DIXIE_SERVICE} service on the ring: made a minimal one ({td.rsplit('/', 1)[-1]})")

    # --- tokens ------------------------------------------------------------------------------
    def issue(self, **req) -> dict:
        status, body, _ = http("POST", f"{DIXIE}/api/auth/token", req, token=self.admin)
        if status != 200:
            raise Stop(f"POST /api/auth/token {req} answered {status} {body}")
        return body

    def dixie_verify(self, token: str) -> tuple[int, dict]:
        status, body, _ = http("GET", f"{DIXIE}/api/auth/verify", token=token)
        return status, body or {}

    def finn_verify(self, token: str) -> dict:
        status, body, _ = http("POST", f"{FINN}/debug/verify", {"token": token})
        if status not in (200, 503):
            raise Stop(f"Finn's POST /debug/verify answered {status} {body}")
        return body or {}

    def mint(self, kid: str, signer: str | None = None, **claims) -> str:
        """A token made here with a key this check holds (signer: another kid's key under `kid`)."""
        now = int(time.time())
        base = {"iss": "dixie-bff", "aud": "dixie-bff", "sub": "0xcheck", "iat": now, "exp": now + 300}
        key = jk.load_private_pem(self.private[signer or kid])
        return jk.sign_es256(base | claims, key, kid)

    def accepted(self, token: str, kid: str | None, what: str) -> None:
        status, body = self.dixie_verify(token)
        self.ok(status == 200 and body.get("kid") == kid, what, f"HTTP {status} {body}")

    def refused(self, token: str, reason: str, what: str) -> None:
        status, body = self.dixie_verify(token)
        self.ok(status == 401 and reason in str(body.get("error")), what, f"HTTP {status} {body} (want 401, '{reason}')")

    def jwks(self) -> tuple[list[str], dict, dict]:
        status, body, headers = http("GET", f"{DIXIE}{JWKS}")
        if status != 200:
            raise Stop(f"GET {JWKS} answered {status}")
        return [k.get("kid") for k in body.get("keys", [])], body, headers

    # --- the scenario ---------------------------------------------------------------------------
    def run(self) -> None:
        self.prepare()
        kids, _, headers = self.jwks()
        self.ok(kids == [], "before any key set: the JWKS is empty (001's HS256 secret)", f"kids {kids}")
        cc = headers.get("Cache-Control", "")
        self.ok("max-age=" in cc, "the JWKS carries Cache-Control max-age", f"Cache-Control {cc!r}")
        t = self.issue()
        self.ok(t["alg"] == "HS256" and t["kid"] is None, "before any key set: Dixie signs HS256", str(t))
        self.accepted(t["token"], None, "before any key set: an HS256 token verifies")

        self.say("--- 1. the first rotation: 001's HS256 secret -> ES256 key A")
        a = self.new_key("A")
        self.keyset(jk.HS256, [jk.HS256, a])
        self.redeploy()
        kids, doc, _ = self.jwks()
        self.ok(kids == [a], "JWKS holds A only (the HS256 secret is never published)", f"kids {kids}")
        jwk = doc["keys"][0] if doc["keys"] else {}
        self.ok(set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
                and (jwk.get("kty"), jwk.get("crv"), jwk.get("alg"), jwk.get("use")) == ("EC", "P-256", "ES256", "sig")
                and jk.thumbprint(jwk) == a,
                "A's JWK is EC P-256 ES256 sig, no private member, kid = its RFC 7638 thumbprint", str(sorted(jwk)))
        self.ok(self.issue()["alg"] == "HS256", "still signing HS256 while A is only published")
        self.keyset(a, [jk.HS256, a])
        self.redeploy()
        t = self.issue()
        self.ok(t["kid"] == a and t["alg"] == "ES256", "signing switched: a new token carries kid A", str(t))
        self.accepted(t["token"], a, "an A token verifies on Dixie")
        hs = self.issue(kid=jk.HS256)["token"]
        self.accepted(hs, None, "an HS256 token still verifies while 'hs256' is published")
        self.keyset(a, [a])
        self.redeploy()
        self.refused(hs, "alg 'HS256' is not accepted", "after 'hs256' is retired, an unexpired HS256 token is refused")

        self.say("--- 2. the dual-kid rotation A -> B, with Finn caching Dixie's JWKS")
        http("DELETE", f"{FINN}/debug/jwks-cache")
        ta = self.issue()["token"]
        f = self.finn_verify(ta)
        self.ok(f.get("valid") is True and f.get("kid") == a, "Finn verifies an A token (and caches {A})", str(f))
        b = self.new_key("B")
        self.keyset(a, [a, b])
        self.redeploy()
        kids, _, _ = self.jwks()
        self.ok(sorted(kids) == sorted([a, b]), "JWKS served by Dixie holds both kids A and B", f"kids {kids}")
        tb = self.issue(kid=b)["token"]  # a B token before the switch: what an early switch would hand out
        cache = http("GET", f"{FINN}/debug/jwks-cache")[1] or {}
        if self.ok(cache.get("fresh") and cache.get("kids") == [a],
                   "Finn's cache is still {A} (fetched before B was published)", str(cache)):
            f = self.finn_verify(tb)
            self.ok(f.get("valid") is False and f"kid {b} is not in the key set" in str(f.get("reason")),
                    "Finn refuses a B token while its cached JWKS lacks B", str(f))
            wait = float(cache.get("expires_in_s") or 0) + 0.3
            self.say(f"waiting {wait:.1f} s for Finn's cache to expire (the step-4 wait)")
            time.sleep(wait)
        f = self.finn_verify(tb)
        self.ok(f.get("valid") is True and f.get("kid") == b, "after the cache TTL, Finn verifies the B token", str(f))
        self.keyset(b, [a, b])
        self.redeploy()
        t = self.issue()
        self.ok(t["kid"] == b, "signing switched: a new token carries kid B", str(t))
        self.accepted(t["token"], b, "a B token verifies on Dixie")
        old = self.mint(a)
        self.accepted(old, a, "an A token still verifies on Dixie while A is published")
        self.ok(self.finn_verify(old).get("valid") is True, "... and on Finn")
        self.say("refusals while A and B are published:")
        c_kid, c_pem = jk.generate()
        self.private[c_kid] = c_pem  # never written to SSM
        self.refused(self.mint(c_kid), f"kid {c_kid} is not in the key set", "a token of an unknown kid is refused")
        f = self.finn_verify(self.mint(c_kid))
        self.ok(f.get("valid") is False, "... and refused by Finn", str(f))
        self.refused(self.mint(a, signer=c_kid), "invalid signature", "kid A signed with another key is refused")
        expired = self.issue(expires_in=-5)["token"]
        self.refused(expired, "expired", "an expired token from Dixie is refused")
        self.refused(self.mint(b, exp=int(time.time()) - 1), "expired", "a token whose exp has just passed is refused")
        f = self.finn_verify(expired)
        self.ok(f.get("valid") is False and "expired" in str(f.get("reason")), "... and by Finn", str(f))
        self.refused(self.mint(b, aud="freeside"), "wrong issuer or audience", "a token for another audience is refused")
        none = jk.b64url(json.dumps({"alg": "none", "kid": b}).encode()) + "." + old.split(".")[1] + "."
        self.refused(none, "alg 'none' is not accepted", "alg none is refused")
        self.keyset(b, [b])
        self.redeploy()
        kids, _, _ = self.jwks()
        self.ok(kids == [b], "A retired: the JWKS holds B only", f"kids {kids}")
        self.refused(old, f"kid {a} is not in the key set", "the unexpired A token is now refused, naming kid A")
        self.delete(KEYS_PATH + a)
        self.ok(self.param(KEYS_PATH + a) is None, "A's private key is deleted from SSM")
        self.accepted(t["token"], b, "B tokens still verify")

        self.say("--- 3. revocation of B: D takes over at once, no overlap")
        tb = self.issue()["token"]
        f = self.finn_verify(tb)
        self.ok(f.get("valid") is True, "before: Finn verifies the B token (its cache holds B)", str(f))
        d = self.new_key("D")
        self.keyset(d, [d])
        self.redeploy()
        self.refused(tb, f"kid {b} is not in the key set", "after the revocation Dixie refuses the B token")
        self.accepted(self.issue()["token"], d, "Dixie signs and verifies with D")
        cache = http("GET", f"{FINN}/debug/jwks-cache")[1] or {}
        if cache.get("fresh") and b in (cache.get("kids") or []):
            f = self.finn_verify(tb)
            self.ok(f.get("valid") is True, "Finn, not told, still accepts the revoked B token from its cache "
                    "(why revocation must tell or redeploy it)", str(f))
        http("DELETE", f"{FINN}/debug/jwks-cache")
        f = self.finn_verify(tb)
        self.ok(f.get("valid") is False and f"kid {b} is not in the key set" in str(f.get("reason")),
                "Finn, told (cache dropped), refuses the B token", str(f))
        self.delete(KEYS_PATH + b)

        self.say("--- 4. a published kid without its private key")
        ghost, _ = jk.generate()
        self.keyset(d, [d, ghost])
        dep = self.redeploy(expect_up=False)
        deadline = time.monotonic() + 10
        line = None
        while time.monotonic() < deadline and not (line := self.refused_since(dep)):
            time.sleep(0.2)
        self.ok(line is not None and f"published kid {ghost} has no private key" in line,
                "the new task refuses to start, naming the kid", str(line))
        self.ok(http("GET", f"{DIXIE}{JWKS}", timeout=1)[0] == 0, "and nothing serves tokens meanwhile")
        self.keyset(d, [d])
        self.redeploy()
        self.accepted(self.issue()["token"], d, "with the key set fixed, the next deployment serves again")

    def cleanup(self) -> None:
        self.say("--- cleanup: the key set and every key this check wrote, Dixie back on HS256")
        for name in list(self.made_params):
            if name == KEYSET or name.startswith(KEYS_PATH) or self.owned_service or name.startswith("/loa-finn/"):
                self.delete(name)
        for kid in self.made_kids:
            self.delete(KEYS_PATH + kid)
        if self.owned_service:
            self.ecs.update_service(cluster=CLUSTER, service=DIXIE_SERVICE, desiredCount=0)
            self.ecs.delete_service(cluster=CLUSTER, service=DIXIE_SERVICE)
            self.say(f"removed the minimal {DIXIE_SERVICE} service")
        else:
            self.redeploy()
            kids, _, _ = self.jwks()
            self.ok(kids == [] and self.issue()["alg"] == "HS256", "after cleanup Dixie is back on 001's HS256 secret",
                    f"kids {kids}")


def short(kid: str) -> str:
    return kid if kid == jk.HS256 else kid[:8] + "…"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="run even if a key set is already in SSM (it is removed)")
    args = ap.parse_args()
    check = Check(args.force)
    code = 0
    try:
        check.run()
    except Stop as e:
        check.say(f"STOP  {e}")
        code = 2 if not check.made_params and not check.passed else 1
    except Exception:  # noqa: BLE001 - any surprise is a failure, with its trace
        traceback.print_exc()
        code = 1
    finally:
        try:
            if check.made_params or check.owned_service:
                check.cleanup()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            check.failures.append("cleanup failed (see the trace)")
    if check.failures:
        code = 1
    print(f"check_keys: {check.passed} passed, {len(check.failures)} failed"
          + "".join(f"\n  FAIL {f}" for f in check.failures), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
