//! The project folder's named files: `runbooks/<name>.toml` and
//! `runbooks/environments/<name>.toml`, found by name, read once, with their sha256 (a resumed
//! run says when a file changed since the run began), and parsed as TOML with messages that say
//! how to correct them. Reads only.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// A named TOML file, read.
#[derive(Debug, Clone)]
pub(crate) struct NamedFile {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    /// sha256 of `text`, hex.
    pub(crate) hash: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("no {what} named `{name}`; available: {}{}", available.join(", "), hint)]
    NotFound { what: &'static str, name: String, available: Vec<String>, hint: &'static str },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

/// Which kind of named file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Named {
    Runbook,
    Environment,
}

impl Named {
    fn dir(self, project: &Path) -> PathBuf {
        match self {
            Named::Runbook => project.join("runbooks"),
            Named::Environment => project.join("runbooks").join("environments"),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Named::Runbook => "runbook",
            Named::Environment => "environment",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Named::Runbook => "",
            Named::Environment => " (files in runbooks/environments/)",
        }
    }

    /// Reads `<dir>/<name>.toml`; a name that is not a plain file name is not found.
    pub(crate) fn read(self, project: &Path, name: &str) -> Result<NamedFile, LookupError> {
        let dir = self.dir(project);
        let path = dir.join(format!("{name}.toml"));
        if !valid_name(name) || !path.is_file() {
            return Err(LookupError::NotFound {
                what: self.what(),
                name: name.to_string(),
                available: list_toml_stems(&dir),
                hint: self.hint(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| LookupError::Read { path: path.clone(), source })?;
        let hash = sha256_hex(text.as_bytes());
        Ok(NamedFile { path, text, hash })
    }
}

impl NamedFile {
    /// The file as `T`, or toml's account of what is wrong and where, with the fix.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        // Parsed as a plain table first: a syntax error then has its own fix.
        let (error, fix) = match toml::from_str::<toml::Table>(&self.text) {
            Err(e) => {
                let fix = self.syntax_fix(&e);
                (e, Some(fix))
            }
            Ok(_) => match toml::from_str::<T>(&self.text) {
                Ok(parsed) => return Ok(parsed),
                Err(e) => {
                    let fix = self.data_fix(&e);
                    (e, fix)
                }
            },
        };
        let message = self.shown(&error);
        Err(match fix {
            Some(fix) => format!("{}\n    fix: {fix}", message.trim_end()),
            None => message.trim_end().to_string(),
        })
    }

    fn syntax_fix(&self, error: &toml::de::Error) -> String {
        let span = error.span().and_then(|s| self.text.get(s)).unwrap_or_default();
        if error.message() == "duplicate key" && !span.is_empty() {
            match self.line_at(error) {
                Some((_, line)) if line.trim_start().starts_with('[') => {
                    format!("the table [{span}] appears twice; merge the two into one")
                }
                _ => format!("`{span}` is set twice in the same table; keep one"),
            }
        } else {
            "this is not valid TOML; correct it where shown (text values in double quotes, tables as [name] or \
             [[name]], one `key = value` per line)"
                .into()
        }
    }

    fn data_fix(&self, error: &toml::de::Error) -> Option<String> {
        let field = error.message().strip_prefix("missing field `")?.strip_suffix('`')?;
        Some(match self.line_at(error) {
            Some((number, line)) if line.trim_start().starts_with('[') => {
                format!("add `{field} = …` to the {} table at line {number}", line.trim())
            }
            _ => format!("add `{field} = …` at the top of the file, before any [table]"),
        })
    }

    /// toml's account of the error, with the line it quotes; on a line whose key holds or names
    /// a secret, or whose value looks like one, the key and the line number only, and no quoted
    /// text of the message (`invalid type: string "ghp_…"`).
    fn shown(&self, error: &toml::de::Error) -> String {
        let Some((number, line)) = self.line_at(error) else { return error.to_string() };
        let key = line.split('=').next().unwrap_or_default().trim();
        let secret_valued = line.split('"').skip(1).step_by(2).any(|v| crate::secret::secret_shape(v).is_some());
        let unquoted = line.split_once('=').map(|(_, v)| v.trim()).filter(|v| !v.starts_with(['"', '\'', '{', '[']));
        let secret_unquoted = unquoted.is_some_and(|v| crate::secret::secret_shape(v).is_some());
        if !crate::secret::is_secret_key(key) && !secret_valued && !secret_unquoted {
            return error.to_string();
        }
        let mut scrubbed = String::new();
        for (i, part) in error.message().split('"').enumerate() {
            match i % 2 {
                0 => scrubbed.push_str(part),
                _ => scrubbed.push_str("\"…\""),
            }
        }
        let key: String = key.chars().take(60).collect();
        format!(
            "TOML error at line {number}, in `{key}`: {} (the line is not shown: it holds or names a secret)",
            scrubbed.trim_end()
        )
    }

    /// The number and text of the line where `error` points.
    fn line_at(&self, error: &toml::de::Error) -> Option<(usize, &str)> {
        let start = error.span()?.start;
        let before = self.text.get(..start)?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[line_start..].lines().next().unwrap_or_default();
        Some((before.matches('\n').count() + 1, line))
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}

fn list_toml_stems(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_paths_are_not_found_and_the_rest_are_listed() {
        let dir = std::env::temp_dir().join(format!("runbook-project-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("runbooks/environments")).unwrap();
        std::fs::write(dir.join("runbooks/b.toml"), "x").unwrap();
        std::fs::write(dir.join("runbooks/a.toml"), "y").unwrap();
        for bad in ["../a", ".hidden", "", "a/b"] {
            assert!(matches!(Named::Runbook.read(&dir, bad), Err(LookupError::NotFound { .. })), "{bad}");
        }
        let err = Named::Runbook.read(&dir, "c").unwrap_err().to_string();
        assert_eq!(err, "no runbook named `c`; available: a, b");
        let err = Named::Environment.read(&dir, "c").unwrap_err().to_string();
        assert!(err.ends_with("(files in runbooks/environments/)"), "{err}");
        let found = Named::Runbook.read(&dir, "a").unwrap();
        assert_eq!((found.text.as_str(), found.hash.len()), ("y", 64));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A secret written where its name belongs, or on a line TOML cannot read, is never echoed.
    #[test]
    fn an_error_on_a_secret_line_shows_the_key_not_the_value() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Source {
            ssm: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct File {
            token: Option<Source>,
            admin_password: Option<Source>,
            webhook: Option<Source>,
        }
        let cases = [
            "token = \"ghp_16C7e42F292c6912E7710c838347Ae178B4aZq9\"\n",
            "admin_password = \"Zq9MasterPassword!\"\n",
            "webhook = https://hooks.slack.com/services/T0/B0/Zq9SecretTail\n",
            "webhook = \"https://hooks.slack.com/services/T0/B0/Zq9SecretTail\n",
        ];
        for text in cases {
            let file = NamedFile { path: PathBuf::from("x.toml"), text: text.to_string(), hash: String::new() };
            let err = file.parse::<File>().unwrap_err();
            assert!(!err.contains("Zq9") && !err.contains("ghp_"), "{text}: {err}");
            assert!(err.contains("line 1, in `"), "{text}: {err}");
        }
        let file = NamedFile { path: PathBuf::from("x.toml"), text: "region = 12\n".into(), hash: String::new() };
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Plain {
            region: String,
        }
        assert!(file.parse::<Plain>().unwrap_err().contains("region = 12"), "other lines are quoted as before");
    }
}
