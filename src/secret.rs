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

/// `message` with each of `values` that it quotes (as written, or escaped as `{:?}` writes it)
/// made safe to show: a secret-shaped one replaced by what it looks like (a URL keeps its scheme
/// and host), a long one cut. For refusals that quote the value they refuse: the value may be
/// a token pasted in the wrong place.
pub(crate) fn redact<'a>(message: String, values: impl IntoIterator<Item = &'a str>) -> String {
    const LONG: usize = 200;
    // (as quoted, shown instead), longest first; replaced in one pass, so that what is shown
    // instead is never replaced again.
    let mut swaps: Vec<(String, String)> = Vec::new();
    for value in values.into_iter().filter(|v| v.len() >= 8) {
        let shown = match secret_shape(value) {
            Some(shape) if shape.starts_with("a URL") => url_without_secrets(value),
            Some(shape) => format!("(not shown: {shape})"),
            None if value.chars().count() > LONG => {
                let start: String = value.chars().take(40).collect();
                format!("{}… ({} characters)", start.escape_debug(), value.chars().count())
            }
            None => continue,
        };
        let escaped = format!("{value:?}");
        for form in [value, &escaped[1..escaped.len() - 1]] {
            if form != shown && message.contains(form) && !swaps.iter().any(|(f, _)| f == form) {
                swaps.push((form.to_string(), shown.clone()));
            }
        }
    }
    if swaps.is_empty() {
        return message;
    }
    swaps.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(c) = rest.chars().next() {
        match swaps.iter().find(|(form, _)| rest.starts_with(form.as_str())) {
            Some((form, shown)) => {
                out.push_str(shown);
                rest = &rest[form.len()..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// `scheme://host…` of a text holding a URL: no user info, path, query or fragment, where
/// webhooks and connection URLs keep their secrets.
fn url_without_secrets(text: &str) -> String {
    let (before, rest) = text.split_once("://").unwrap_or(("", text));
    let scheme: String = before.chars().rev().take_while(|c| c.is_ascii_alphanumeric() || "+.-".contains(*c)).collect();
    let scheme: String = scheme.chars().take(20).collect::<Vec<_>>().into_iter().rev().collect();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => host,
        // An `@` further on: a password holding `/`; the host cannot be told from it.
        None if rest.contains('@') => "",
        None => authority,
    };
    if before == scheme && host == rest.trim_end_matches('/') && host.len() <= 100 {
        return text.to_string(); // scheme://host[:port]: nothing to hide
    }
    let host: String = host.chars().take(100).collect();
    format!("{scheme}://{}… (the rest not shown)", host.escape_debug())
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
    fn a_quoted_value_shaped_like_a_secret_is_replaced_and_a_long_one_cut() {
        let token = "ghp_R2d2C3poX9y8W7v6U5t4S3r2Q1p0O9n8M7l6";
        let said = redact(format!("token = {token:?}: not a name"), [token]);
        assert_eq!(said, "token = \"(not shown: an API token)\": not a name");
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n";
        assert!(!redact(format!("got {pem:?}"), [pem]).contains("MIGHAgEAMBMG"));
        for (url, host) in [
            ("postgres://dixie:Pw0rd@db.example.com:5432/dixie", "postgres://db.example.com:5432…"),
            ("postgres://dixie:Pw/0rd@db.example.com/dixie", "postgres://…"),
            ("https://hooks.slack.com/services/T0/B0/Xyz?k=Pw0rd", "https://hooks.slack.com…"),
        ] {
            let said = redact(format!("url = {url:?} is not"), [url]);
            assert!(said.contains(host) && !said.contains("Pw") && !said.contains("Xyz"), "{said}");
        }
        let long = "x".repeat(5_000);
        let said = redact(format!("name = {long:?}"), [long.as_str()]);
        assert!(said.len() < 100 && said.contains("(5000 characters)"), "{said}");
        assert_eq!(redact("name = \"dixie\"".into(), ["dixie"]), "name = \"dixie\"");
        // One pass: what is shown instead is not replaced again; a URL with nothing to hide stays.
        let said = redact("url = \"http://h:9/x\", at http://h:9".into(), ["http://h:9/x", "http://h:9"]);
        assert_eq!(said, "url = \"http://h:9… (the rest not shown)\", at http://h:9");
    }

    #[test]
    fn generated_secrets_are_64_hex_characters_and_differ() {
        let (a, b) = (Secret::random_hex32(), Secret::random_hex32());
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
