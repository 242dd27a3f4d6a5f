"""ring/standins/jwtkeys.py: Dixie's JWT key contract on the ring (docs/ring.md, "Keys").

Shared by the Dixie stand-in (signs, serves the JWKS, verifies) and the Finn stand-in
(verifies against a JWKS it fetched). Pure functions over Python's `cryptography` (a moto
dependency); no network, no logging, and never a key's material in an error text.

- ES256 (ECDSA P-256, SHA-256), signatures as JWS wants them (r || s, 64 bytes).
- A private key is a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), unencrypted, on P-256.
- A kid is the key's RFC 7638 SHA-256 thumbprint (43 base64url characters), as the real
  Dixie names its one key; a key whose thumbprint is not its kid is refused.
- The key set (`DIXIE_JWT_KEYSET`, a plain String parameter) is JSON
  {"active": kid, "published": [kid, ...]}: Dixie signs with `active` and accepts every
  `published` kid; `active` must be published. The reserved entry "hs256" stands for 001's
  HS256 secret (DIXIE_JWT_PRIVATE_KEY): it can be active or published like a kid, but never
  appears in the JWKS (a shared secret cannot be published). No key set at all means
  {"active": "hs256", "published": ["hs256"]}, the state before the first rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

ISSUER = AUDIENCE = "dixie-bff"
HS256 = "hs256"
KID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
KEYSET_FIELDS = {"active", "published"}


class KeysetError(ValueError):
    """A key set or a key that Dixie cannot use; the text names what and why, never a secret."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(part: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", part):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --- keys ------------------------------------------------------------------------------
def generate() -> tuple[str, str]:
    """A new P-256 key: (kid, PKCS#8 PEM). For tests and the ring's check script."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return thumbprint(public_jwk(key.public_key())), pem


def load_private_pem(pem: str, where: str = "the key") -> ec.EllipticCurvePrivateKey:
    """A PKCS#8 PEM P-256 private key, or KeysetError saying what it is instead."""
    text = (pem or "").strip()
    if "-----BEGIN EC PRIVATE KEY-----" in text:
        raise KeysetError(f"{where} is a SEC1 PEM (BEGIN EC PRIVATE KEY), not PKCS#8 (BEGIN PRIVATE KEY): "
                          "convert it with `openssl pkcs8 -topk8 -nocrypt`")
    if "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text:
        raise KeysetError(f"{where} is an encrypted PKCS#8 PEM: Dixie needs it unencrypted")
    if not text.startswith("-----BEGIN PRIVATE KEY-----"):
        raise KeysetError(f"{where} is not a PKCS#8 PEM (want -----BEGIN PRIVATE KEY-----, {len(text)} chars)")
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise KeysetError(f"{where} does not parse as a PKCS#8 private key ({type(e).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        raise KeysetError(f"{where} is not a P-256 (secp256r1) EC key but {kind}: ES256 needs P-256")
    return key


def public_jwk(pub: ec.EllipticCurvePublicKey) -> dict:
    n = pub.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}


def thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 over the required members (crv, kty, x, y) in lexicographic order."""
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canon.encode()).digest())


def jwk_public_key(jwk: dict) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise KeysetError(f"JWK kty {jwk.get('kty')!r} crv {jwk.get('crv')!r}: want EC P-256")
    try:
        x, y = (int.from_bytes(b64url_decode(jwk[c]), "big") for c in ("x", "y"))
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (KeyError, TypeError, ValueError) as e:
        raise KeysetError(f"JWK kid {jwk.get('kid')!r} is not a valid P-256 point ({type(e).__name__})") from None


# --- the key set -------------------------------------------------------------------------
def parse_keyset(text: str) -> tuple[str, list[str]]:
    """(active, published) from DIXIE_JWT_KEYSET's JSON, or KeysetError."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise KeysetError(f"not JSON ({e.msg} at {e.pos})") from None
    if not isinstance(doc, dict):
        raise KeysetError("not a JSON object {\"active\": kid, \"published\": [kid, ...]}")
    extra = sorted(set(doc) - KEYSET_FIELDS)
    if extra:
        raise KeysetError(f"unknown field(s) {', '.join(extra)}: only active and published")
    active, published = doc.get("active"), doc.get("published")
    if not isinstance(published, list) or not published or not all(isinstance(k, str) for k in published):
        raise KeysetError("published must be a non-empty list of kids")
    if len(set(published)) != len(published):
        raise KeysetError("published names a kid twice")
    for kid in published:
        if kid != HS256 and not KID_RE.match(kid):
            raise KeysetError(f"published kid {kid!r} is not an RFC 7638 thumbprint (43 base64url characters) "
                              f"nor {HS256!r}")
    if not isinstance(active, str) or active not in published:
        raise KeysetError(f"active {active!r} is not one of the published kids")
    return active, published


def keyset_json(active: str, published: list[str]) -> str:
    """The canonical text of a key set (what a runbook step writes)."""
    parse_keyset(json.dumps({"active": active, "published": published}))
    return json.dumps({"active": active, "published": published}, separators=(",", ":"))


class Keys:
    """Dixie's keys as loaded at task start: the active kid, the published kids and, for each
    published ES256 kid, its private key (the public one is derived from it)."""

    def __init__(self, active: str, published: list[str], private: dict[str, ec.EllipticCurvePrivateKey],
                 hs256_secret: str | None, configured: bool) -> None:
        self.active, self.published, self.private = active, list(published), dict(private)
        self.hs256_secret = hs256_secret if hs256_secret and hs256_secret != "PLACEHOLDER" else None
        self.configured = configured  # False: no key set, 001's HS256 only
        self.public = {kid: k.public_key() for kid, k in self.private.items()}

    @classmethod
    def legacy(cls, hs256_secret: str | None) -> "Keys":
        return cls(HS256, [HS256], {}, hs256_secret, configured=False)

    @classmethod
    def build(cls, keyset_text: str, private_pems: dict[str, str | None], hs256_secret: str | None,
              where: str = "jwt-keys/") -> "Keys":
        """From the key set's text and each published ES256 kid's PEM (None: no such parameter)."""
        active, published = parse_keyset(keyset_text)
        private = {}
        for kid in published:
            if kid == HS256:
                secret = hs256_secret if hs256_secret != "PLACEHOLDER" else None
                if not secret or len(secret.strip()) < 32:
                    raise KeysetError(f"{HS256!r} is published but DIXIE_JWT_PRIVATE_KEY is not a secret of "
                                      "32 characters or more")
                continue
            pem = private_pems.get(kid)
            if pem is None:
                raise KeysetError(f"published kid {kid} has no private key ({where}{kid} not found): a kid is "
                                  "published only while its private key exists (the public key is derived from it)")
            key = load_private_pem(pem, f"{where}{kid}")
            actual = thumbprint(public_jwk(key.public_key()))
            if actual != kid:
                raise KeysetError(f"{where}{kid} holds a key whose RFC 7638 thumbprint is {actual}, not {kid}")
            private[kid] = key
        return cls(active, published, private, hs256_secret, configured=True)

    def describe(self) -> str:
        if not self.configured:
            return "no key set: HS256 with DIXIE_JWT_PRIVATE_KEY (" + ("set" if self.hs256_secret else "NOT set") + ")"
        return f"active {self.active}, published {', '.join(self.published)}"

    def jwks(self) -> dict:
        return {"keys": [public_jwk(self.public[kid]) | {"kid": kid, "alg": "ES256", "use": "sig"}
                         for kid in self.published if kid != HS256]}

    def issue(self, subject: str, lifetime_s: int, wallet: str | None = None, kid: str | None = None,
              now: float | None = None) -> tuple[str, dict]:
        """A token signed with `kid` (default: the active one): (token, {kid, alg, iat, exp})."""
        kid = kid or self.active
        if kid not in self.published:
            raise KeysetError(f"kid {kid} is not published")
        now = int(time.time() if now is None else now)
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "wallet": wallet or subject,
                  "iat": now, "exp": now + int(lifetime_s), "jti": str(uuid.uuid4())}
        if kid == HS256:
            if not self.hs256_secret:
                raise KeysetError("DIXIE_JWT_PRIVATE_KEY is not configured")
            token = sign_hs256(claims, self.hs256_secret)
            return token, {"kid": None, "alg": "HS256", "iat": claims["iat"], "exp": claims["exp"]}
        return sign_es256(claims, self.private[kid], kid), {"kid": kid, "alg": "ES256", "iat": claims["iat"],
                                                            "exp": claims["exp"]}

    def verify(self, token: str, now: float | None = None) -> tuple[dict | None, str, dict]:
        """(claims or None, why not, {kid, alg}) with every published kid."""
        if not self.configured and not self.hs256_secret:
            return None, "DIXIE_JWT_PRIVATE_KEY is not configured", {}
        return verify(token, self.public, self.hs256_secret if HS256 in self.published else None, now)


# --- tokens --------------------------------------------------------------------------------
def _encode(header: dict, claims: dict) -> str:
    return b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        b64url(json.dumps(claims, separators=(",", ":")).encode())


def sign_es256(claims: dict, key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    signing_input = _encode({"alg": "ES256", "typ": "JWT", "kid": kid}, claims)
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def sign_hs256(claims: dict, secret: str) -> str:
    signing_input = _encode({"alg": "HS256", "typ": "JWT"}, claims)
    return signing_input + "." + b64url(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())


def verify(token: str, public: dict[str, ec.EllipticCurvePublicKey], hs256_secret: str | None = None,
           now: float | None = None) -> tuple[dict | None, str, dict]:
    """Verify `token` with the ES256 keys `public` (kid -> key) and, when given, the HS256
    secret: (claims, "", {kid, alg}) or (None, reason, {kid, alg}). Checks alg, kid,
    signature, then issuer/audience, exp and nbf (no leeway, as jose's default)."""
    try:
        header_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(b64url_decode(header_b64))
        claims = json.loads(b64url_decode(claims_b64))
        sig = b64url_decode(sig_b64)
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("not objects")
    except (ValueError, AttributeError):
        return None, "malformed token", {}
    alg, kid = header.get("alg"), header.get("kid")
    seen = {"kid": kid if isinstance(kid, str) else None, "alg": alg if isinstance(alg, str) else None}
    accepted = (["ES256"] if public else []) + (["HS256"] if hs256_secret else [])
    signing_input = f"{header_b64}.{claims_b64}".encode()
    if alg == "ES256" and "ES256" in accepted:
        if not isinstance(kid, str) or not kid:
            return None, "no kid in the token's header", seen
        key = public.get(kid)
        if key is None:
            return None, f"kid {kid} is not in the key set (published: {', '.join(sorted(public))})", seen
        if len(sig) != 64:
            return None, "invalid signature (ES256 wants 64 bytes r||s)", seen
        try:
            key.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
                       signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return None, f"invalid signature for kid {kid}", seen
    elif alg == "HS256" and "HS256" in accepted:
        want = hmac.new(hs256_secret.encode(), signing_input, hashlib.sha256).digest()
        if not hmac.compare_digest(want, sig):
            return None, "invalid signature", seen
    else:
        return None, f"alg {alg!r} is not accepted (accepted: {', '.join(accepted) or 'none'})", seen
    aud = claims.get("aud")
    if claims.get("iss") != ISSUER or not (aud == AUDIENCE or (isinstance(aud, list) and AUDIENCE in aud)):
        return None, "wrong issuer or audience", seen
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return None, "token has no numeric exp", seen
    if exp <= now:
        return None, f"token expired {int(now - exp)} s ago", seen
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and nbf > now:
        return None, "token not valid yet (nbf)", seen
    return claims, "", seen


def jwks_public_keys(jwks: dict) -> dict[str, ec.EllipticCurvePublicKey]:
    """kid -> public key of a JWKS document's ES256 signing keys (others are skipped)."""
    out = {}
    for jwk in (jwks or {}).get("keys") or []:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("alg", "ES256") != "ES256" or jwk.get("use", "sig") != "sig":
            continue
        out[jwk["kid"]] = jwk_public_key(jwk)
    return out
