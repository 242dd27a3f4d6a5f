//! Where a PostgreSQL state DB is: `postgres://user[:password]@host[:port]/database?params`,
//! as libpq reads it, with the parts `tokio_postgres` does not know handled here (`sslmode`
//! `verify-ca`/`verify-full`, `sslrootcert`, `PGPASSWORD`, the pass file). What is shown of it
//! never holds the password.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

use super::Tls;

/// Whether `--state` names a PostgreSQL database rather than a SQLite file.
pub(crate) fn is_url(state: &Path) -> bool {
    let text = state.as_os_str().to_string_lossy();
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

#[derive(Clone)]
pub(in crate::state) struct Location {
    pub(in crate::state) config: tokio_postgres::Config,
    pub(super) tls: Option<Tls>,
    /// `postgres://user@host:port/database`: what messages name.
    pub(in crate::state) shown: PathBuf,
}

impl Location {
    /// Reads the URL; the error never quotes it (it may hold a password).
    pub(in crate::state) fn parse(url: &str) -> Result<Self, String> {
        check_user_info(url)?;
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut ssl_mode = None;
        let mut ca_file = None;
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => ssl_mode = Some(decode(value)),
                "sslrootcert" => ca_file = Some(PathBuf::from(decode(value))),
                _ => passed.push(pair),
            }
        }
        let rest = if passed.is_empty() { base.to_string() } else { format!("{base}?{}", passed.join("&")) };
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            format!("not a PostgreSQL URL of the form postgres://user@host:port/database?sslmode=verify-full: {e}")
        })?;
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "postgres".into());
            config.user(&user);
        }
        let user = config.get_user().unwrap_or_default().to_string();
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => {
                config.host("localhost");
                "localhost".to_string()
            }
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let shown = PathBuf::from(format!("postgres://{user}@{host}:{port}/{dbname}"));
        let unix = matches!(config.get_hosts().first(), Some(Host::Unix(_)));
        let loopback = unix
            || match config.get_hostaddrs().first() {
                Some(addr) => addr.is_loopback(),
                None => host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback()),
            };
        let mode = ssl_mode.as_deref().unwrap_or("prefer");
        let tls = match mode {
            "require" | "verify-ca" | "verify-full" => true,
            "disable" if !loopback => {
                return Err(format!(
                    "{}: sslmode=disable is refused for a host that is not this machine: the state DB is reached over TLS",
                    shown.display()
                ));
            }
            "disable" => false,
            "allow" | "prefer" => !loopback,
            other => return Err(format!("{}: unknown sslmode {other:?}", shown.display())),
        };
        if tls && unix {
            return Err(format!("{}: TLS over a Unix socket is not supported: name a TCP host", shown.display()));
        }
        if config.get_password().is_none() {
            let password = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()).or_else(|| {
                let file = std::env::var_os("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")))?;
                pass_file_lookup(&file, &host, port, &dbname, &user)
            });
            if let Some(password) = password {
                config.password(password);
            }
        }
        config.application_name("runbook");
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        let tls = tls.then_some(Tls { server_name: host, ca_file });
        Ok(Location { config, tls, shown })
    }
}

/// The user name and password before the URL's last `@` may hold only what a URL allows there:
/// an `@`, `/`, `?` or `#` in them makes the parsers split the URL elsewhere (the password's
/// tail read as the host, and printed with it). Refused, quoting nothing of the URL.
fn check_user_info(url: &str) -> Result<(), String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let Some((user_info, _)) = rest.rsplit_once('@') else { return Ok(()) };
    match user_info.chars().find(|c| matches!(c, '@' | '/' | '?' | '#')) {
        Some(c) => Err(format!(
            "the PostgreSQL URL's user name or password holds a `{c}` that is not percent-encoded, so the URL \
             cannot be read (nothing of it is shown: it may hold a password); write `@` as %40, `/` as %2F, `?` \
             as %3F and `#` as %23, or leave the password out of the URL and set PGPASSWORD or ~/.pgpass"
        )),
        None => Ok(()),
    }
}

/// A query value, percent-decoded as libpq does.
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The password of the first line of a libpq pass file (`host:port:database:user:password`,
/// `*` matches anything, `\` escapes `:` and `\`) that matches. Like libpq, a file that its
/// group or others may read is ignored.
fn pass_file_lookup(file: &Path, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let port = port.to_string();
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).find_map(|line| {
        let fields = pass_file_fields(line);
        let [h, p, d, u, password] = fields.as_slice() else { return None };
        let matches = |field: &str, value: &str| field == "*" || field == value;
        (matches(h, host) && matches(p, &port) && matches(d, dbname) && matches(u, user)).then(|| password.clone())
    })
}

/// A pass file line's five fields, unescaped; the fifth runs to the end of the line.
fn pass_file_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_shown_of_a_url_never_holds_its_password() {
        let loc = Location::parse("postgres://deployer:s3cr%3At@db.example.com:6432/runbook_state?sslmode=verify-full")
            .unwrap();
        assert_eq!(loc.shown, Path::new("postgres://deployer@db.example.com:6432/runbook_state"));
        assert_eq!(loc.config.get_password(), Some(&b"s3cr:t"[..]));
        let tls = loc.tls.unwrap();
        assert_eq!((tls.server_name.as_str(), tls.ca_file), ("db.example.com", None));
        let err = Location::parse("postgres://deployer:s3cret@db.example.com/x?sslmode=bogus").err().unwrap();
        assert!(!err.contains("s3cret"), "{err}");
        let err = Location::parse("postgres://deployer:s3cret@db.example.com/x?nonsense=1").err().unwrap();
        assert!(!err.contains("s3cret"), "{err}");
    }

    /// `postgres://user:a@Zq9SecretTail7@host/db` printed `…@Zq9SecretTail7@127.0.0.1 …`: no part
    /// of the user info is ever shown, whatever character the password holds.
    #[test]
    fn no_part_of_a_password_is_shown_whatever_it_holds() {
        let specials = "@/?#:%&=+ !$'()*,;[]{}|\\^`\"<>~";
        for c in specials.chars() {
            let url = format!("postgres://user:a{c}Zq9SecretTail7@127.0.0.1:5432/db");
            let shown = match Location::parse(&url) {
                Ok(loc) => loc.shown.display().to_string(),
                Err(e) => e,
            };
            for secret in ["Zq9SecretTail7", &format!("a{c}Zq9")] {
                assert!(!shown.contains(secret), "{c:?}: {shown}");
            }
        }
        let err = Location::parse("postgres://user:a@Zq9SecretTail7@127.0.0.1/db").err().unwrap();
        assert!(err.contains("write `@` as %40"), "{err}");
        let loc = Location::parse("postgres://user:a%40Zq9SecretTail7@127.0.0.1/db").unwrap();
        assert_eq!(loc.config.get_password(), Some(&b"a@Zq9SecretTail7"[..]), "percent-encoded, it is read");
    }

    #[test]
    fn tls_is_used_when_asked_for_and_always_off_this_machine() {
        let tls = |url: &str| Location::parse(url).map(|l| l.tls.is_some());
        assert_eq!(tls("postgres://u@127.0.0.1:5432/db"), Ok(false));
        assert_eq!(tls("postgres://u@localhost/db?sslmode=require"), Ok(true));
        assert_eq!(tls("postgresql://u@rds.example.com/db"), Ok(true));
        assert!(tls("postgres://u@rds.example.com/db?sslmode=disable").is_err());
        let loc =
            Location::parse("postgres://u@localhost:15432/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt").unwrap();
        assert_eq!(loc.tls.unwrap().ca_file, Some(PathBuf::from("/tmp/ca.crt")));
    }

    #[test]
    fn the_pass_file_is_read_as_libpq_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        let file = std::env::temp_dir().join(format!("runbook-pgpass-{}", std::process::id()));
        std::fs::write(&file, "# comment\nother:5432:*:u:no\ndb.example.com:*:runbook_state:u:pa\\:ss\\\\word\n")
            .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            pass_file_lookup(&file, "db.example.com", 5432, "runbook_state", "u").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(pass_file_lookup(&file, "db.example.com", 5432, "runbook_state", "v"), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pass_file_lookup(&file, "db.example.com", 5432, "runbook_state", "u"), None, "readable by others");
        std::fs::remove_file(&file).unwrap();
    }
}
