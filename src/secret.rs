//! `Secret<T>`: a value that must never reach SQLite, logs, terminal output or `--json`.
//!
//! It has no `Serialize` and prints as `***`, so the compiler keeps it out of every sink.
//! The only way to the inner value is [`Secret::expose`], which a reviewer can grep for.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret<T>(T);

impl<T> Secret<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(value)
    }

    /// The inner value, for the one call that needs it (a connection string, an API call).
    pub(crate) fn expose(&self) -> &T {
        &self.0
    }
}

impl Secret<String> {
    /// 32 random bytes as 64 hex characters (`openssl rand -hex 32` in the sprint plan).
    pub(crate) fn random_hex32() -> Self {
        use rand::RngExt;
        let bytes: [u8; 32] = rand::rng().random();
        Self(hex::encode(bytes))
    }
}

/// What kind of secret `value` looks like, if it looks like one: a value written where a
/// secret's *name* belongs (an SSM parameter, a variable) must not be echoed back.
pub(crate) fn secret_shape(value: &str) -> Option<&'static str> {
    let v = value.trim();
    let token_prefixes = ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xoxb-", "xoxp-", "glpat-"];
    if token_prefixes.iter().any(|p| v.starts_with(p)) {
        return Some("an API token");
    }
    if v.contains("://") {
        return Some("a URL (a webhook or connection URL holds its secret in its path or user info)");
    }
    if v.contains("-----BEGIN") {
        return Some("a PEM key");
    }
    if v.starts_with("eyJ") && v.matches('.').count() == 2 {
        return Some("a JSON web token");
    }
    let hexish = v.len() >= 32 && v.chars().all(|c| c.is_ascii_hexdigit());
    let keyish =
        v.len() >= 32 && !v.contains('/') && v.chars().all(|c| c.is_ascii_alphanumeric() || "+=_-".contains(c));
    let mixed = v.chars().any(|c| c.is_ascii_digit()) && v.chars().any(|c| c.is_ascii_lowercase());
    if hexish || (keyish && mixed && v.chars().any(|c| c.is_ascii_uppercase())) {
        return Some("a key or password");
    }
    None
}

/// Keys of runbook and environment files whose values are, or name, secrets: an error on
/// their line shows the key, never the value.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let key = key.trim().trim_matches('"').to_ascii_lowercase();
    ["token", "password", "webhook", "secret", "private_key", "admin_key", "jwt_key", "database_url", "redis_url"]
        .iter()
        .any(|k| key.contains(k))
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new(String::from("hunter2"));
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn generated_secrets_are_64_hex_characters_and_differ() {
        let (a, b) = (Secret::random_hex32(), Secret::random_hex32());
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
