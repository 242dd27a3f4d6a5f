//! The project folder's named files: `runbooks/<name>.toml` and
//! `runbooks/environments/<name>.toml`, found by name, read once, with their sha256 (a resumed
//! run says when a file changed since the run began). Reads only.

use std::path::{Path, PathBuf};

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
}
