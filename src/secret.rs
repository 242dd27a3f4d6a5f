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
