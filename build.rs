//! Names the commit the binary is built from, for `runbook --version`: `RUNBOOK_COMMIT`, the
//! short hash of HEAD, or "commit unknown" outside a git checkout (a source archive).
//! Runs again when HEAD moves (a commit, a checkout), not on every edit.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

fn main() {
    let commit =
        git(&["rev-parse", "--short=12", "HEAD"]).map_or_else(|| "commit unknown".into(), |c| format!("commit {c}"));
    println!("cargo:rustc-env=RUNBOOK_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    // Only files that exist: cargo runs a build script again on every build while a file it
    // watches is missing (packed-refs often is; a loose ref is after `git gc`).
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]).filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
