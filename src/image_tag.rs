//! `ImageTag`: a Docker image tag as ECR accepts it, never `latest`.
//!
//! ECR repositories here are IMMUTABLE: a `latest` tag could be pushed once and never
//! redeployed. Every param that names a tag deserializes into this type, so the refusal
//! happens while the runbook loads, before anything runs.

use std::fmt;

use serde::Deserialize;

/// A valid tag, or empty ("the app checkout's short git SHA", decided at run time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImageTag(String);

impl ImageTag {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text == "latest" {
            return Err("image tag \"latest\" is refused: ECR tags are IMMUTABLE and `latest` cannot be \
                        redeployed; use the git SHA (the default) or --var image_tag=<sha>"
                .into());
        }
        // Docker's rule: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
        let valid = text.is_empty()
            || (text.len() <= 128
                && text.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
        if !valid {
            return Err(format!(
                "image tag {text:?} is not a Docker tag: use up to 128 letters, digits, `_`, `.` and `-`, \
                 not starting with `.` or `-`"
            ));
        }
        Ok(Self(text.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ImageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ImageTag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_and_non_tags_are_refused() {
        assert!(ImageTag::parse("latest").unwrap_err().contains("IMMUTABLE"));
        assert!(ImageTag::parse("a b/c").unwrap_err().contains("not a Docker tag"));
        assert!(ImageTag::parse("-x").is_err());
        assert!(ImageTag::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn shas_and_empty_are_tags() {
        assert_eq!(ImageTag::parse("3f2a9c1").unwrap().as_str(), "3f2a9c1");
        assert!(ImageTag::parse("").unwrap().is_empty());
        assert!(ImageTag::parse("v1.2_rc-3").is_ok());
    }
}
