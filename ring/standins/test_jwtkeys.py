"""Unit tests of ring/standins/jwtkeys.py (no ring needed):
python3 -m unittest discover -s ring/standins -p 'test_*.py'"""

from __future__ import annotations

import json
import time
import unittest

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import jwtkeys as jk

HS = "0123456789abcdef" * 4  # a 64-character hex secret, as 001's T2.5 makes


def rotated(active, published, pems, hs=HS):
    return jk.Keys.build(json.dumps({"active": active, "published": published}), pems, hs)


class Keys(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a_kid, cls.a_pem = jk.generate()
        cls.b_kid, cls.b_pem = jk.generate()
        cls.pems = {cls.a_kid: cls.a_pem, cls.b_kid: cls.b_pem}

    def test_kid_is_the_rfc7638_thumbprint(self):
        key = jk.load_private_pem(self.a_pem)
        jwk = jk.public_jwk(key.public_key())
        self.assertEqual(self.a_kid, jk.thumbprint(jwk))
        self.assertRegex(self.a_kid, jk.KID_RE)
        # Member order and extra members do not change it (RFC 7638 §3).
        self.assertEqual(self.a_kid, jk.thumbprint({"y": jwk["y"], "x": jwk["x"], "kty": "EC", "crv": "P-256",
                                                    "kid": "whatever", "use": "sig"}))

    def test_jwks_has_every_published_es256_kid_and_never_the_hs256_entry(self):
        keys = rotated(self.a_kid, [jk.HS256, self.a_kid, self.b_kid], self.pems)
        doc = keys.jwks()
        self.assertEqual([self.a_kid, self.b_kid], [k["kid"] for k in doc["keys"]])
        for k in doc["keys"]:
            self.assertEqual({"kty", "crv", "x", "y", "kid", "alg", "use"}, set(k))
            self.assertEqual(("EC", "P-256", "ES256", "sig"), (k["kty"], k["crv"], k["alg"], k["use"]))
            self.assertNotIn("d", k)  # never the private member

    def test_token_of_every_published_kid_verifies_and_carries_its_kid(self):
        keys = rotated(self.b_kid, [self.a_kid, self.b_kid], self.pems)
        for kid in (self.a_kid, self.b_kid):
            token, meta = keys.issue("0xabc", 60, kid=kid)
            claims, why, seen = keys.verify(token)
            self.assertEqual("", why)
            self.assertEqual((kid, "ES256"), (seen["kid"], seen["alg"]))
            self.assertEqual(("dixie-bff", "dixie-bff", "0xabc"), (claims["iss"], claims["aud"], claims["sub"]))
        _, meta = keys.issue("0xabc", 60)
        self.assertEqual(self.b_kid, meta["kid"])

    def test_unpublished_kid_is_refused_with_its_name(self):
        old = rotated(self.a_kid, [self.a_kid], self.pems)
        token, _ = old.issue("0xabc", 600)
        new = rotated(self.b_kid, [self.b_kid], self.pems)
        claims, why, seen = new.verify(token)
        self.assertIsNone(claims)
        self.assertIn(f"kid {self.a_kid} is not in the key set", why)
        self.assertEqual(self.a_kid, seen["kid"])

    def test_unknown_kid_is_refused(self):
        keys = rotated(self.a_kid, [self.a_kid], self.pems)
        stranger_kid, stranger_pem = jk.generate()
        token = jk.sign_es256({"iss": "dixie-bff", "aud": "dixie-bff", "exp": time.time() + 60},
                              jk.load_private_pem(stranger_pem), stranger_kid)
        self.assertIsNone(keys.verify(token)[0])
        self.assertIn("is not in the key set", keys.verify(token)[1])

    def test_published_kid_with_a_foreign_signature_is_refused(self):
        keys = rotated(self.a_kid, [self.a_kid], self.pems)
        _, stranger_pem = jk.generate()
        token = jk.sign_es256({"iss": "dixie-bff", "aud": "dixie-bff", "exp": time.time() + 60},
                              jk.load_private_pem(stranger_pem), self.a_kid)
        self.assertIsNone(keys.verify(token)[0])
        self.assertIn("invalid signature", keys.verify(token)[1])

    def test_expired_token_is_refused(self):
        keys = rotated(self.a_kid, [self.a_kid], self.pems)
        token, _ = keys.issue("0xabc", -1)
        claims, why, _ = keys.verify(token)
        self.assertIsNone(claims)
        self.assertIn("expired", why)
        token, _ = keys.issue("0xabc", 10, now=1000)
        self.assertIn("expired", keys.verify(token, now=1010)[1])  # exp == now: expired
        self.assertEqual("", keys.verify(token, now=1009)[1])

    def test_wrong_issuer_audience_and_missing_exp_are_refused(self):
        keys = rotated(self.a_kid, [self.a_kid], self.pems)
        key = jk.load_private_pem(self.a_pem)
        for claims, want in (({"iss": "other", "aud": "dixie-bff", "exp": time.time() + 60}, "issuer or audience"),
                             ({"iss": "dixie-bff", "aud": "freeside", "exp": time.time() + 60}, "issuer or audience"),
                             ({"iss": "dixie-bff", "aud": "dixie-bff"}, "no numeric exp")):
            self.assertIn(want, keys.verify(jk.sign_es256(claims, key, self.a_kid))[1])

    def test_alg_none_and_hs256_with_the_public_key_are_refused(self):
        keys = rotated(self.a_kid, [self.a_kid], self.pems)
        good, _ = keys.issue("0xabc", 60)
        h, c, _ = good.split(".")
        none_header = jk.b64url(json.dumps({"alg": "none", "kid": self.a_kid}).encode())
        self.assertIn("alg 'none' is not accepted", keys.verify(f"{none_header}.{c}.")[1])
        # Algorithm confusion: HMAC keyed with the published public key.
        pub = jk.load_private_pem(self.a_pem).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        forged = jk.sign_hs256({"iss": "dixie-bff", "aud": "dixie-bff", "exp": time.time() + 60}, pub)
        self.assertIn("alg 'HS256' is not accepted", keys.verify(forged)[1])
        self.assertEqual("malformed token", keys.verify("abc")[1])

    def test_hs256_entry_keeps_001s_tokens_until_it_is_retired(self):
        legacy = jk.Keys.legacy(HS)
        token, meta = legacy.issue("0xabc", 60)
        self.assertEqual(("HS256", None), (meta["alg"], meta["kid"]))
        self.assertEqual("", legacy.verify(token)[1])
        self.assertEqual([], legacy.jwks()["keys"])
        both = rotated(self.a_kid, [jk.HS256, self.a_kid], self.pems)
        self.assertEqual("", both.verify(token)[1])
        retired = rotated(self.a_kid, [self.a_kid], self.pems)
        self.assertIn("alg 'HS256' is not accepted", retired.verify(token)[1])
        self.assertIn("not configured", jk.Keys.legacy(None).verify(token)[1])
        self.assertIn("not configured", jk.Keys.legacy("PLACEHOLDER").verify(token)[1])

    def test_key_set_errors_name_the_problem(self):
        for text, want in (("nope", "not JSON"), ("[]", "not a JSON object"),
                           ('{"active": "x", "published": []}', "non-empty list"),
                           (json.dumps({"active": self.b_kid, "published": [self.a_kid]}), "not one of the published"),
                           (json.dumps({"active": self.a_kid, "published": [self.a_kid, self.a_kid]}), "twice"),
                           ('{"active": "dixie-20260301-1a2b3c4d", "published": ["dixie-20260301-1a2b3c4d"]}',
                            "not an RFC 7638 thumbprint"),
                           (json.dumps({"active": self.a_kid, "published": [self.a_kid], "pending": 1}),
                            "unknown field")):
            with self.assertRaises(jk.KeysetError) as e:
                jk.Keys.build(text, self.pems, HS)
            self.assertIn(want, str(e.exception))

    def test_published_kid_needs_its_private_key_of_the_right_kind(self):
        with self.assertRaises(jk.KeysetError) as e:
            rotated(self.a_kid, [self.a_kid, self.b_kid], {self.a_kid: self.a_pem})
        self.assertIn(f"published kid {self.b_kid} has no private key", str(e.exception))
        with self.assertRaises(jk.KeysetError) as e:  # a key filed under another key's kid
            rotated(self.a_kid, [self.a_kid], {self.a_kid: self.b_pem})
        self.assertIn(f"thumbprint is {self.b_kid}", str(e.exception))
        key = jk.load_private_pem(self.a_pem)
        sec1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption()).decode()
        with self.assertRaises(jk.KeysetError) as e:
            rotated(self.a_kid, [self.a_kid], {self.a_kid: sec1})
        self.assertIn("SEC1", str(e.exception))
        p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        with self.assertRaises(jk.KeysetError) as e:
            rotated(self.a_kid, [self.a_kid], {self.a_kid: p384})
        self.assertIn("not a P-256", str(e.exception))
        with self.assertRaises(jk.KeysetError) as e:
            jk.Keys.build(json.dumps({"active": jk.HS256, "published": [jk.HS256]}), {}, "short")
        self.assertIn("32 characters", str(e.exception))

    def test_errors_never_carry_key_material(self):
        body = "".join(self.a_pem.strip().splitlines()[1:-1])
        for pem in (self.a_pem.replace("PRIVATE KEY-----", "PRIVATE KEY-----\nZZZ", 1), self.a_pem[:-40]):
            try:
                rotated(self.a_kid, [self.a_kid], {self.a_kid: pem})
            except jk.KeysetError as e:
                self.assertNotIn(body[:16], str(e))
                self.assertNotIn(body[-16:], str(e))

    def test_verification_against_a_fetched_jwks(self):
        keys = rotated(self.a_kid, [self.a_kid, self.b_kid], self.pems)
        public = jk.jwks_public_keys(json.loads(json.dumps(keys.jwks())))
        self.assertEqual({self.a_kid, self.b_kid}, set(public))
        token, _ = keys.issue("0xabc", 60, kid=self.b_kid)
        self.assertEqual("", jk.verify(token, public)[1])
        only_a = jk.jwks_public_keys({"keys": [k for k in keys.jwks()["keys"] if k["kid"] == self.a_kid]})
        self.assertIn("is not in the key set", jk.verify(token, only_a)[1])


if __name__ == "__main__":
    unittest.main()
