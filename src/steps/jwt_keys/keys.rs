//! Dixie's JWT keys as docs/ring.md ("Keys") defines them, and as `ring/standins/jwtkeys.py`
//! implements them: ES256 (P-256) keys as unencrypted PKCS#8 PEM, kids that are RFC 7638
//! thumbprints, the key set `{"active": kid, "published": [kid, …]}` in its one compact form,
//! and the tokens the rotation's checks send.
//!
//! Pure functions over `aws-lc-rs` (rustls's own crypto): no network, no logging. A private
//! key only ever lives in a [`Secret`]; an error text never holds key material.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The key set's entry for 001's HS256 secret (`DIXIE_JWT_PRIVATE_KEY`): never in the JWKS.
pub(crate) const HS256: &str = "hs256";

/// Issuer and audience of Dixie's tokens.
pub(crate) const ISSUER: &str = "dixie-bff";

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn encode(alphabet: &[u8; 64], data: &[u8], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn decode(alphabet: &[u8; 64], text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = alphabet.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // The bits left over must be zero (a canonical encoding).
    (acc == 0).then_some(out)
}

/// base64url without padding (RFC 4648 §5, as JOSE writes it).
pub(crate) fn b64url(data: &[u8]) -> String {
    encode(URL_SAFE, data, false)
}

/// The bytes of unpadded base64url; `None` for anything else.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.contains('=') {
        return None;
    }
    decode(URL_SAFE, text)
}

/// Why a key, a key set or a token cannot be used; the text names what and why, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct KeyError(pub(crate) String);

/// Whether `kid` has the shape of an RFC 7638 SHA-256 thumbprint: 43 base64url characters.
pub(crate) fn is_thumbprint(kid: &str) -> bool {
    kid.len() == 43 && kid.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// The RFC 7638 thumbprint of a P-256 public key given as its uncompressed point `04 || x || y`.
pub(crate) fn thumbprint(point: &[u8]) -> Result<String, KeyError> {
    if point.len() != 65 || point[0] != 4 {
        return Err(KeyError(format!("not an uncompressed P-256 point ({} bytes)", point.len())));
    }
    let (x, y) = (b64url(&point[1..33]), b64url(&point[33..]));
    // The required members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    Ok(b64url(&Sha256::digest(canonical.as_bytes())))
}

/// An ES256 signing key as Dixie loads it, with the kid it proved to have.
pub(crate) struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl SigningKey {
    #[cfg(test)]
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// A new P-256 key: its kid and its PKCS#8 PEM (to go to SSM as a SecureString, and nowhere else).
    pub(crate) fn generate() -> Result<(String, Secret<String>), KeyError> {
        let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| KeyError("the crypto library could not generate a P-256 key".into()))?;
        let pem = Secret::new(pem_wrap(document.as_ref()));
        let key = SigningKey::load(&pem, "the new key")?;
        Ok((key.kid, pem))
    }

    /// The key of a PKCS#8 PEM on P-256, or why not (`where` names it: `…/jwt-keys/<kid>`). As
    /// the stand-in does, a SEC1 PEM, an encrypted one and another curve are refused saying so.
    pub(crate) fn load(pem: &Secret<String>, place: &str) -> Result<Self, KeyError> {
        let text = pem.expose().trim();
        if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            return Err(KeyError(format!(
                "{place} is a SEC1 PEM (BEGIN EC PRIVATE KEY), not PKCS#8 (BEGIN PRIVATE KEY): convert it with \
                 `openssl pkcs8 -topk8 -nocrypt`"
            )));
        }
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(KeyError(format!("{place} is an encrypted PKCS#8 PEM: Dixie needs it unencrypted")));
        }
        let body = text
            .strip_prefix("-----BEGIN PRIVATE KEY-----")
            .and_then(|rest| rest.strip_suffix("-----END PRIVATE KEY-----"))
            .ok_or_else(|| {
                KeyError(format!(
                    "{place} is not a PKCS#8 PEM (want -----BEGIN PRIVATE KEY-----, {} characters)",
                    text.len()
                ))
            })?;
        let base64: String = body.split_whitespace().collect();
        let der = Secret::new(
            decode(STANDARD, &base64)
                .ok_or_else(|| KeyError(format!("{place} is not a PKCS#8 PEM: its body is not base64")))?,
        );
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.expose()).map_err(|e| {
            KeyError(format!("{place} is not a P-256 (secp256r1) PKCS#8 private key ({e}): ES256 needs P-256"))
        })?;
        let kid = thumbprint(pair.public_key().as_ref())?;
        Ok(SigningKey { kid, pair })
    }

    /// [`SigningKey::load`], refused unless the key's thumbprint is `kid`.
    pub(crate) fn load_as(pem: &Secret<String>, kid: &str, place: &str) -> Result<Self, KeyError> {
        let key = SigningKey::load(pem, place)?;
        if key.kid != kid {
            return Err(KeyError(format!("{place} holds a key whose RFC 7638 thumbprint is {}, not {kid}", key.kid)));
        }
        Ok(key)
    }

    /// An ES256 JWT of `claims`, header `{alg, typ, kid}`, signature `r || s` as JWS wants it.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> Result<Secret<String>, KeyError> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| KeyError(format!("the crypto library could not sign with kid {}", self.kid)))?;
        Ok(Secret::new(format!("{input}.{}", b64url(signature.as_ref()))))
    }
}

/// An HS256 JWT of `claims` with 001's secret (its text is the HMAC key, as Dixie's jose uses it).
pub(crate) fn sign_hs256(secret: &Secret<String>, claims: &serde_json::Value) -> Secret<String> {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let input = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.expose().as_bytes()),
        input.as_bytes(),
    );
    Secret::new(format!("{input}.{}", b64url(tag.as_ref())))
}

/// The claims of a test token as Dixie issues them: `sub`/`wallet`, issuer and audience
/// `dixie-bff`, `iat`, `exp` (`lifetime_s` later) and a `jti` that says who made it.
pub(crate) fn claims(wallet: &str, now_s: i64, lifetime_s: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER,
        "aud": ISSUER,
        "sub": wallet,
        "wallet": wallet,
        "iat": now_s,
        "exp": now_s + lifetime_s,
        "jti": format!("runbook-rotate-{}", hex::encode(rand::random::<[u8; 8]>())),
    })
}

/// The `kid` and `alg` of a JWT's header, or why it is not a JWT.
pub(crate) fn token_header(token: &str) -> Result<(Option<String>, Option<String>), KeyError> {
    let refuse = || KeyError("not a JWT (three base64url parts, a JSON header)".into());
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(refuse());
    };
    let header: serde_json::Value =
        serde_json::from_slice(&b64url_decode(header).ok_or_else(refuse)?).map_err(|_| refuse())?;
    let text = |k: &str| header.get(k).and_then(|v| v.as_str()).map(String::from);
    Ok((text("kid"), text("alg")))
}

/// PKCS#8 DER as a PEM: `-----BEGIN PRIVATE KEY-----`, base64 in lines of 64 characters.
fn pem_wrap(der: &[u8]) -> String {
    let base64 = encode(STANDARD, der, true);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// `DIXIE_JWT_KEYSET`: Dixie signs with `active` and accepts and publishes every `published` kid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySet {
    pub(crate) active: String,
    pub(crate) published: Vec<String>,
}

impl KeySet {
    /// What no key set (absent, empty or `PLACEHOLDER`) means: 001's HS256 only.
    pub(crate) fn legacy() -> Self {
        KeySet { active: HS256.into(), published: vec![HS256.into()] }
    }

    /// The key set of a parameter's value, with the stand-in's rules (`jwtkeys.parse_keyset`).
    pub(crate) fn parse(text: &str) -> Result<Self, KeyError> {
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "PLACEHOLDER" {
            return Ok(KeySet::legacy());
        }
        let doc: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| KeyError(format!("not JSON ({e})")))?;
        let object = doc
            .as_object()
            .ok_or_else(|| KeyError(r#"not a JSON object {"active": kid, "published": [kid, ...]}"#.into()))?;
        let extra: Vec<&str> =
            object.keys().map(String::as_str).filter(|k| !["active", "published"].contains(k)).collect();
        if !extra.is_empty() {
            return Err(KeyError(format!("unknown field(s) {}: only active and published", extra.join(", "))));
        }
        let published: Vec<String> = match object.get("published").and_then(|p| p.as_array()) {
            Some(list) if !list.is_empty() && list.iter().all(|k| k.is_string()) => {
                list.iter().filter_map(|k| k.as_str().map(String::from)).collect()
            }
            _ => return Err(KeyError("published must be a non-empty list of kids".into())),
        };
        let mut seen = std::collections::BTreeSet::new();
        if !published.iter().all(|k| seen.insert(k)) {
            return Err(KeyError("published names a kid twice".into()));
        }
        if let Some(kid) = published.iter().find(|k| *k != HS256 && !is_thumbprint(k)) {
            return Err(KeyError(format!(
                "published kid {kid:?} is not an RFC 7638 thumbprint (43 base64url characters) nor \"{HS256}\""
            )));
        }
        let active = match object.get("active").and_then(|a| a.as_str()) {
            Some(a) if published.iter().any(|k| k == a) => a.to_string(),
            other => {
                let shown = other.map_or_else(|| "absent".to_string(), |a| format!("{a:?}"));
                return Err(KeyError(format!("active {shown} is not one of the published kids")));
            }
        };
        Ok(KeySet { active, published })
    }

    /// The one text a runbook writes (`jwtkeys.keyset_json`): compact, `active` then `published`.
    pub(crate) fn to_json(&self) -> String {
        serde_json::json!({"active": self.active, "published": self.published}).to_string()
    }

    pub(crate) fn publishes(&self, kid: &str) -> bool {
        self.published.iter().any(|k| k == kid)
    }

    /// The published ES256 kids (every one but `hs256`), in order: what the JWKS must hold.
    pub(crate) fn es256_kids(&self) -> Vec<&str> {
        self.published.iter().map(String::as_str).filter(|k| *k != HS256).collect()
    }
}

impl std::fmt::Display for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "active {}, published [{}]", self.active, self.published.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 test key (made for this test by ring/standins/jwtkeys.py; protects nothing) and
    /// the kid the stand-in computes for it.
    const PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwfqUGWjZcfPdz+7I
16c8SVwy6YY/NljVgKlY/vafeNahRANCAARBJvMklXe8S4q114QXDIHH/MVeEbAT
AOFivEH9oWduRLPVHsp/hGEotTshjZ0jqy7Yx8FcYyWcCVJ8+EeMMDEe
-----END PRIVATE KEY-----
";
    const KID: &str = "xzYD3qI_XP9PLQczk-e3z6FBsUkvqB9tRw2HxJsAvQE";

    #[test]
    fn base64_agrees_with_rfc_4648s_test_vectors() {
        let vectors = [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg")];
        for (plain, coded) in vectors.iter().chain(&[("fooba", "Zm9vYmE"), ("foobar", "Zm9vYmFy")]) {
            assert_eq!(b64url(plain.as_bytes()), *coded);
            assert_eq!(b64url_decode(coded).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode(STANDARD, b"fo", true), "Zm8=");
        assert_eq!(decode(STANDARD, "Zm8=").unwrap(), b"fo");
        // The URL-safe alphabet's two characters (RFC 4648 §5), and what it refuses.
        assert_eq!(b64url(&[0xfb, 0xff, 0xbf]), "-_-_");
        assert_eq!(b64url_decode("-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(b64url_decode("+/+/"), None, "the standard alphabet is not base64url");
        assert_eq!(b64url_decode("Zm8="), None, "no padding in JOSE");
        assert_eq!(b64url_decode("Z"), None, "one character is no byte");
        assert_eq!(b64url_decode("Zm9"), None, "leftover bits that are not zero");
    }

    #[test]
    fn the_thumbprint_hash_agrees_with_rfc_7638s_example_and_the_stand_ins_kid() {
        // RFC 7638 §3.1: the RSA example's canonical JSON and its thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        assert_eq!(b64url(&Sha256::digest(canonical.as_bytes())), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        let key = SigningKey::load(&Secret::new(PEM.into()), "test").unwrap();
        assert_eq!(key.kid(), KID);
        assert!(is_thumbprint(KID));
        assert!(thumbprint(&[4; 33]).is_err());
    }

    #[test]
    fn a_generated_key_is_a_pkcs8_pem_in_64_character_lines_that_loads_as_its_kid() {
        let (kid, pem) = SigningKey::generate().unwrap();
        assert!(is_thumbprint(&kid));
        let text = pem.expose();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n") && text.ends_with("-----END PRIVATE KEY-----\n"));
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(SigningKey::load_as(&pem, &kid, "p").unwrap().kid(), kid);
        let (other, _) = SigningKey::generate().unwrap();
        assert_ne!(kid, other, "a new key each time");
        assert_eq!(format!("{pem:?}"), "***");
    }

    #[test]
    fn keys_dixie_cannot_use_are_refused_naming_why_and_never_their_material() {
        let refused = |text: &str| SigningKey::load(&Secret::new(text.into()), "/d/jwt-keys/k").unwrap_err().0;
        let sec1 = PEM.replace("PRIVATE KEY", "EC PRIVATE KEY");
        assert!(refused(&sec1).contains("is a SEC1 PEM"), "{}", refused(&sec1));
        assert!(refused(&PEM.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")).contains("encrypted"));
        assert!(refused("hunter2hunter2").contains("is not a PKCS#8 PEM (want -----BEGIN PRIVATE KEY-----, 14"));
        let garbled = PEM.replace("MIGHAgEA", "MIGHAgE!");
        assert!(refused(&garbled).ends_with("its body is not base64"));
        let truncated = PEM.replace("AOFivEH9oWduRLPVHsp/hGEotTshjZ0jqy7Yx8FcYyWcCVJ8+EeMMDEe\n", "");
        let message = refused(&truncated);
        assert!(message.contains("is not a P-256 (secp256r1) PKCS#8 private key"), "{message}");
        assert!(!message.contains("MIGH"), "{message}");
        let wrong = SigningKey::load_as(&Secret::new(PEM.into()), &"A".repeat(43), "/d/jwt-keys/AAA").unwrap_err();
        assert_eq!(
            wrong.0,
            format!("/d/jwt-keys/AAA holds a key whose RFC 7638 thumbprint is {KID}, not {}", "A".repeat(43))
        );
    }

    #[test]
    fn a_signed_token_carries_its_kid_and_a_64_byte_signature() {
        let key = SigningKey::load(&Secret::new(PEM.into()), "test").unwrap();
        let token = key.sign(&claims("0xabc", 1_000, 30)).unwrap();
        assert_eq!(token_header(token.expose()).unwrap(), (Some(KID.into()), Some("ES256".into())));
        let sig = b64url_decode(token.expose().rsplit('.').next().unwrap()).unwrap();
        assert_eq!(sig.len(), 64);
        let body: serde_json::Value =
            serde_json::from_slice(&b64url_decode(token.expose().split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(
            (body["iss"].as_str(), body["aud"].as_str(), body["exp"].as_i64()),
            (Some(ISSUER), Some(ISSUER), Some(1_030))
        );
        let hs = sign_hs256(&Secret::new("k".repeat(32)), &claims("0xabc", 1_000, 30));
        assert_eq!(token_header(hs.expose()).unwrap(), (None, Some("HS256".into())));
        assert!(token_header("a.b").is_err() && token_header("!.b.c").is_err());
    }

    #[test]
    fn the_key_set_is_judged_as_the_stand_in_judges_it_and_written_in_its_one_form() {
        let both = KeySet { active: HS256.into(), published: vec![HS256.into(), KID.into()] };
        // jwtkeys.keyset_json("hs256", ["hs256", KID]), as the stand-in writes it.
        let text = format!(r#"{{"active":"hs256","published":["hs256","{KID}"]}}"#);
        assert_eq!(both.to_json(), text);
        assert_eq!(KeySet::parse(&text).unwrap(), both);
        assert_eq!(both.es256_kids(), [KID]);
        for absent in ["", "  ", "PLACEHOLDER"] {
            assert_eq!(KeySet::parse(absent).unwrap(), KeySet::legacy());
        }
        let refused = |text: &str| KeySet::parse(text).unwrap_err().0;
        assert!(refused("{").starts_with("not JSON"));
        assert!(refused("[]").starts_with("not a JSON object"));
        assert_eq!(
            refused(r#"{"active":"hs256","published":["hs256"],"x":1}"#),
            "unknown field(s) x: only active and published"
        );
        assert_eq!(refused(r#"{"active":"hs256"}"#), "published must be a non-empty list of kids");
        assert_eq!(refused(r#"{"active":"hs256","published":[]}"#), "published must be a non-empty list of kids");
        assert_eq!(
            refused(r#"{"active":"hs256","published":["hs256",1]}"#),
            "published must be a non-empty list of kids"
        );
        assert_eq!(refused(r#"{"active":"hs256","published":["hs256","hs256"]}"#), "published names a kid twice");
        assert!(
            refused(r#"{"active":"hs256","published":["hs256","dixie-20261206-abcd"]}"#)
                .contains("is not an RFC 7638 thumbprint")
        );
        assert_eq!(refused(r#"{"published":["hs256"]}"#), "active absent is not one of the published kids");
        assert_eq!(refused(r#"{"active":"x","published":["hs256"]}"#), "active \"x\" is not one of the published kids");
        // 42 and 44 characters: just short of and past a thumbprint.
        assert!(!is_thumbprint(&KID[..42]) && !is_thumbprint(&format!("{KID}A")));
    }
}
