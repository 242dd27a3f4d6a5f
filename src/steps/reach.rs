//! Proofs that an endpoint really answers: an HTTP GET (JSON), a PostgreSQL login, a Redis
//! PING over TLS, a NATS PING. Every address goes through the environment's `dial`, so a
//! loopback-only ring never opens a connection to anything else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::environment::Environment;
use crate::secret::Secret;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `scheme://[user[:password]@]host[:port][/path]`, as far as these checks need it.
struct Url<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    password: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    path: &'a str,
}

/// The scheme, host and port a URL names, its credentials left out
/// (`nats://u:p@10.1.2.3:4222` → `nats`, `10.1.2.3`, `Some(4222)`); `None` when the port is not
/// a number from 0 to 65535.
pub(crate) fn endpoint_of(url: &str) -> Option<(String, String, Option<u16>)> {
    parse(url).map(|u| (u.scheme.to_string(), u.host.to_string(), u.port))
}

fn parse(url: &str) -> Option<Url<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pw)) => (Some(user), Some(pw)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, Some(p.parse().ok()?)),
        _ => (hostport, None),
    };
    Some(Url { scheme, user, password, host, port, path })
}

/// Checks, before anything runs, that `url` is an `http(s)://host[:port]/…` URL.
pub(crate) fn check_http_url(field: &str, url: &str) -> Result<(), String> {
    let ok = parse(url).is_some_and(|u| {
        matches!(u.scheme, "http" | "https") && !u.host.is_empty() && !u.host.starts_with(':') && !u.host.contains(' ')
    });
    if ok { Ok(()) } else { Err(format!("{field} = {url:?} is not an http:// or https:// URL")) }
}

/// GET `url` and parse its JSON body, whatever the status (Dixie answers 200 when unhealthy).
pub(crate) async fn get_json(env: &Environment, url: &str) -> Result<(u16, serde_json::Value, Duration), String> {
    let parsed = parse(url).ok_or_else(|| format!("not a URL: {url}"))?;
    let default_port = if parsed.scheme == "https" { 443 } else { 80 };
    let addr = env.dial(parsed.host, parsed.port.unwrap_or(default_port))?;
    let client =
        reqwest::Client::builder().resolve(parsed.host, addr).timeout(TIMEOUT).build().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let response =
        client.get(url).send().await.map_err(|e| format!("GET {url}: {}", crate::error_chain::error_chain(&e)))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    let json = serde_json::from_str(&body).map_err(|_| {
        format!("GET {url}: HTTP {status}, body is not JSON: {}", body.chars().take(200).collect::<String>())
    })?;
    Ok((status, json, started.elapsed()))
}

/// Logs in with a `postgresql://` URL (its password is a secret) and runs `query`, which
/// must return one bigint; returns it.
pub(crate) async fn postgres_count(
    env: &Environment,
    url: &Secret<String>,
    query: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<i64, String> {
    let rows = postgres_query(env, url, query, &[], ca_file).await?;
    let row = rows.first().ok_or("the query returned no row")?;
    row.try_get::<_, i64>(0).map_err(|e| e.to_string())
}

/// Logs in with a `postgresql://` URL (its password is a secret) and returns the rows of
/// `query` with `params`. Errors name the role, host and database, never the password.
pub(crate) async fn postgres_query(
    env: &Environment,
    url: &Secret<String>,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ca_file: Option<&std::path::Path>,
) -> Result<Vec<tokio_postgres::Row>, String> {
    let (client, target) = postgres_connect(env, url, ca_file, "runbook").await?;
    client.query(query, params).await.map_err(|e| format!("{target}: {}", crate::error_chain::error_chain(&e)))
}

/// A session logged in with a `postgresql://` URL over TLS (its password is a secret), as
/// `application` in `pg_stat_activity`, and how errors name it (`role@host:port/database`, never
/// the password). The session lives as long as the client.
pub(crate) async fn postgres_connect(
    env: &Environment,
    url: &Secret<String>,
    ca_file: Option<&std::path::Path>,
    application: &str,
) -> Result<(tokio_postgres::Client, String), String> {
    let parsed = parse(url.expose())
        .filter(|u| u.scheme.starts_with("postgres"))
        .ok_or("DATABASE_URL is not a postgresql:// URL")?;
    let addr = env.dial(parsed.host, parsed.port.unwrap_or(5432))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(parsed.user.unwrap_or("postgres"))
        .password(parsed.password.unwrap_or_default())
        .dbname(parsed.path.split('?').next().unwrap_or_default())
        .application_name(application)
        .connect_timeout(TIMEOUT);
    let target = format!(
        "{}@{}:{}/{}",
        parsed.user.unwrap_or("postgres"),
        parsed.host,
        parsed.port.unwrap_or(5432),
        parsed.path
    );
    let (client, connection) = crate::pg_tls::connect(config, parsed.host, ca_file)
        .await
        .map_err(|e| format!("cannot log in as {target}: {e}"))?;
    tokio::spawn(connection);
    Ok((client, target))
}

/// Redis `PING` → `+PONG` over TLS (`rediss://`), verified against `ca_file` or the system roots.
pub(crate) async fn redis_ping(
    env: &Environment,
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<Duration, String> {
    let parsed = parse(url)
        .filter(|u| u.scheme == "rediss")
        .ok_or("REDIS_URL is not a rediss:// URL (ElastiCache is TLS-only)")?;
    let addr = env.dial(parsed.host, parsed.port.unwrap_or(6379))?;
    let config = crate::pg_tls::client_config(ca_file)?;
    // The certificate names the host the URL names (on the ring: 127.0.0.1).
    let name = rustls::pki_types::ServerName::try_from(parsed.host.to_string()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", parsed.host))?;
        tls.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(tls).read_line(&mut line).await.map_err(|e| e.to_string())?;
        if line.trim() == "+PONG" { Ok(()) } else { Err(format!("Redis answered {:?} to PING", line.trim())) }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("Redis {url} did not answer within {}s", TIMEOUT.as_secs()))??;
    Ok(started.elapsed())
}

/// NATS: read INFO, send CONNECT and PING, expect PONG.
pub(crate) async fn nats_ping(env: &Environment, url: &str) -> Result<Duration, String> {
    let parsed = parse(url).filter(|u| u.scheme == "nats").ok_or("NATS_URL is not a nats:// URL")?;
    let addr = env.dial(parsed.host, parsed.port.unwrap_or(4222))?;
    let started = Instant::now();
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {}:{} (dialled {addr}): {e}", parsed.host, parsed.port.unwrap_or(4222)))?;
        let mut reader = BufReader::new(tcp);
        let mut line = String::new();
        reader.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if !line.starts_with("INFO") {
            return Err(format!("not a NATS server: {:?}", line.trim()));
        }
        reader.get_mut().write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n").await.map_err(|e| e.to_string())?;
        line.clear();
        reader.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if line.trim() == "PONG" { Ok(()) } else { Err(format!("NATS answered {:?} to PING", line.trim())) }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("NATS {url} did not answer within {}s", TIMEOUT.as_secs()))??;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_pass_the_check() {
        assert!(check_http_url("health_url", "https://dixie-armitage.arrakis.community/api/health").is_ok());
        assert!(check_http_url("health_url", "http://127.0.0.1:3001/api/health").is_ok());
        for bad in ["not a url", "ftp:/bad", "ftp://host/x", "http://", "http://:80/x"] {
            assert!(check_http_url("health_url", bad).unwrap_err().contains("is not an http"), "{bad}");
        }
    }

    #[test]
    fn parses_the_urls_of_the_plan() {
        let u = parse("postgresql://dixie:pw@db.example.com:5432/dixie").unwrap();
        assert_eq!(
            (u.scheme, u.user, u.password, u.host, u.port, u.path),
            ("postgresql", Some("dixie"), Some("pw"), "db.example.com", Some(5432), "dixie")
        );
        let u = parse("https://dixie-armitage.arrakis.community/api/health").unwrap();
        assert_eq!((u.host, u.port, u.path), ("dixie-armitage.arrakis.community", None, "api/health"));
        let u = parse("nats://10.1.2.3:4222").unwrap();
        assert_eq!((u.host, u.port), ("10.1.2.3", Some(4222)));
    }
}
