//! The one gate in front of every route of `runbook serve`, the live event stream included:
//! the `Host` and `Origin` a browser sent (DNS rebinding), the token (a `Bearer` header, or
//! the cookie `/login?token=…` exchanged it for), then the method. It decides from the
//! request's head alone and must not read the state DB or render a page.

use std::net::SocketAddr;

use crate::secret::Secret;

/// The cookie a login sets: a session key made at start, never the token itself, so that it
/// dies with the server.
pub(crate) const COOKIE: &str = "runbook_session";

/// The shortest token accepted from a file or the environment: a short one can be guessed.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// Why `serve` refuses to start with this bind and token.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GateError {
    #[error(
        "--bind {0}: any address but loopback needs a token, so that whoever reaches it must prove who they are; \
         give one with --token-file FILE or RUNBOOK_SERVE_TOKEN (or bind 127.0.0.1)"
    )]
    NoToken(SocketAddr),
    #[error(
        "--bind {0}: an unspecified address accepts any Host header, which is how DNS rebinding reaches a local \
         server; bind the one address people use to reach this machine (e.g. --bind 10.0.0.5:8765)"
    )]
    Unspecified(SocketAddr),
    #[error("the token is {0} characters long: give at least {MIN_TOKEN_LEN} (e.g. openssl rand -hex 32)")]
    ShortToken(usize),
}

/// What the gate says of one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// On to the route.
    Pass,
    /// `/login` with the right token: set this cookie and send the browser to `/`, so that
    /// the token leaves the address bar and the history.
    LoggedIn { cookie: String },
    /// Refused with this status (403 Host/Origin, 401 token, 405 method), and why.
    Refuse { status: u16, why: &'static str },
}

/// The parts of a request the gate reads.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Asked<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) host: Option<&'a str>,
    pub(crate) origin: Option<&'a str>,
    pub(crate) authorization: Option<&'a str>,
    pub(crate) cookie: Option<&'a str>,
}

pub(crate) struct Gate {
    token: Option<Secret<String>>,
    session: Secret<String>,
    /// The `Host` values served: the bound address, and `localhost:PORT` on loopback.
    hosts: Vec<String>,
}

impl Gate {
    /// The gate for a server bound at `bound` (the address the listener really has, its port
    /// chosen). Refuses what would leave a server open to the network.
    pub(crate) fn new(bound: SocketAddr, token: Option<Secret<String>>) -> Result<Self, GateError> {
        if bound.ip().is_unspecified() {
            return Err(GateError::Unspecified(bound));
        }
        if let Some(token) = &token
            && token.expose().len() < MIN_TOKEN_LEN
        {
            return Err(GateError::ShortToken(token.expose().len()));
        }
        if !bound.ip().is_loopback() && token.is_none() {
            return Err(GateError::NoToken(bound));
        }
        let mut hosts = vec![bound.to_string()];
        if bound.ip().is_loopback() {
            hosts.push(format!("localhost:{}", bound.port()));
        }
        // A browser leaves out port 80.
        if bound.port() == 80 {
            hosts = hosts.iter().flat_map(|h| [h.clone(), h.trim_end_matches(":80").to_string()]).collect();
        }
        Ok(Gate { token, session: Secret::random_hex32(), hosts })
    }

    /// Whether a token is asked for.
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub(crate) fn check(&self, asked: &Asked<'_>) -> Verdict {
        let served = |host: &str| self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host));
        if !asked.host.is_some_and(served) {
            return Verdict::Refuse { status: 403, why: "this server answers only to the address it is bound to" };
        }
        if let Some(origin) = asked.origin {
            let same = origin.strip_prefix("http://").is_some_and(served);
            if !same {
                return Verdict::Refuse { status: 403, why: "a request from another origin is refused" };
            }
        }
        if let Some(token) = &self.token {
            if asked.path == "/login" {
                let given = asked.query.into_iter().flat_map(super::query_pairs).find(|(k, _)| k == "token");
                return match given {
                    Some((_, given)) if same_secret(&given, token.expose()) && is_read(asked.method) => {
                        Verdict::LoggedIn { cookie: self.session.expose().clone() }
                    }
                    _ => Verdict::Refuse { status: 401, why: "wrong or missing token" },
                };
            }
            let bearer = asked
                .authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|given| same_secret(given.trim(), token.expose()));
            let cookie = asked.cookie.is_some_and(|header| {
                header
                    .split(';')
                    .filter_map(|c| c.trim().split_once('='))
                    .any(|(name, value)| name == COOKIE && same_secret(value, self.session.expose()))
            });
            if !bearer && !cookie {
                return Verdict::Refuse {
                    status: 401,
                    why: "a token is needed: open the /login?token=… address `runbook serve` printed, or send \
                          Authorization: Bearer TOKEN",
                };
            }
        }
        if !is_read(asked.method) {
            return Verdict::Refuse { status: 405, why: "this view is read-only: GET and HEAD only" };
        }
        Verdict::Pass
    }
}

fn is_read(method: &str) -> bool {
    method == "GET" || method == "HEAD"
}

/// Equal, in a time that does not depend on where they differ.
fn same_secret(given: &str, secret: &str) -> bool {
    let (a, b) = (given.as_bytes(), secret.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-token";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn gate(bind: &str, token: Option<&str>) -> Gate {
        Gate::new(addr(bind), token.map(|t| Secret::new(t.to_string()))).unwrap()
    }

    fn get<'a>(host: &'a str, path: &'a str) -> Asked<'a> {
        Asked { method: "GET", path, host: Some(host), ..Asked::default() }
    }

    const ROUTES: &[&str] =
        &["/", "/style.css", "/runs/1", "/runs/1/events", "/runs/1/steps/T2.1/attempts/1/log", "/nowhere"];

    #[test]
    fn a_bind_beyond_loopback_without_a_token_is_refused_at_start() {
        for bind in ["10.0.0.5:8765", "192.168.1.2:80", "[2001:db8::1]:8765"] {
            assert_eq!(Gate::new(addr(bind), None).err(), Some(GateError::NoToken(addr(bind))), "{bind}");
        }
        for bind in ["0.0.0.0:8765", "[::]:8765"] {
            let token = Some(Secret::new(TOKEN.to_string()));
            assert_eq!(Gate::new(addr(bind), token).err(), Some(GateError::Unspecified(addr(bind))), "{bind}");
        }
        assert!(Gate::new(addr("127.0.0.1:8765"), None).is_ok());
        assert!(Gate::new(addr("[::1]:8765"), None).is_ok());
        assert!(Gate::new(addr("10.0.0.5:8765"), Some(Secret::new(TOKEN.into()))).is_ok());
    }

    #[test]
    fn a_token_one_short_of_the_minimum_is_refused_and_the_minimum_accepted() {
        let short = "x".repeat(MIN_TOKEN_LEN - 1);
        assert_eq!(
            Gate::new(addr("10.0.0.5:1"), Some(Secret::new(short))).err(),
            Some(GateError::ShortToken(MIN_TOKEN_LEN - 1))
        );
        assert!(Gate::new(addr("10.0.0.5:1"), Some(Secret::new("x".repeat(MIN_TOKEN_LEN)))).is_ok());
        assert!(Gate::new(addr("10.0.0.5:1"), Some(Secret::new(String::new()))).is_err());
    }

    #[test]
    fn every_route_wants_the_token_the_event_stream_included() {
        let g = gate("10.0.0.5:8765", Some(TOKEN));
        for path in ROUTES {
            let bare = get("10.0.0.5:8765", path);
            assert!(matches!(g.check(&bare), Verdict::Refuse { status: 401, .. }), "{path} without a token");
            for wrong in ["Bearer wrong", "Bearer ", "Basic MDEyMzQ1Njc4OWFiY2RlZi10b2tlbg==", TOKEN] {
                let asked = Asked { authorization: Some(wrong), ..bare };
                assert!(matches!(g.check(&asked), Verdict::Refuse { status: 401, .. }), "{path} with {wrong}");
            }
            let almost = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
            let asked = Asked { authorization: Some(&almost), ..bare };
            assert!(matches!(g.check(&asked), Verdict::Refuse { status: 401, .. }), "{path}: a prefix");
            let forged = format!("{COOKIE}={TOKEN}");
            let asked = Asked { cookie: Some(&forged), ..bare };
            assert!(matches!(g.check(&asked), Verdict::Refuse { status: 401, .. }), "{path}: the token as cookie");
            let bearer = format!("Bearer {TOKEN}");
            assert_eq!(g.check(&Asked { authorization: Some(&bearer), ..bare }), Verdict::Pass, "{path}");
        }
    }

    #[test]
    fn login_exchanges_the_token_for_a_session_cookie_that_then_opens_every_route() {
        let g = gate("10.0.0.5:8765", Some(TOKEN));
        let wrong = Asked { query: Some("token=nope"), ..get("10.0.0.5:8765", "/login") };
        assert!(matches!(g.check(&wrong), Verdict::Refuse { status: 401, .. }));
        let missing = get("10.0.0.5:8765", "/login");
        assert!(matches!(g.check(&missing), Verdict::Refuse { status: 401, .. }));
        let query = format!("token={TOKEN}");
        let right = Asked { query: Some(&query), ..get("10.0.0.5:8765", "/login") };
        let Verdict::LoggedIn { cookie } = g.check(&right) else { panic!("the right token logs in") };
        assert_ne!(cookie, TOKEN, "the cookie is not the token");
        let header = format!("theme=dark; {COOKIE}={cookie}");
        for path in ROUTES {
            assert_eq!(g.check(&Asked { cookie: Some(&header), ..get("10.0.0.5:8765", path) }), Verdict::Pass);
        }
        let stale = format!("{COOKIE}={}", "0".repeat(cookie.len()));
        assert!(matches!(
            g.check(&Asked { cookie: Some(&stale), ..get("10.0.0.5:8765", "/") }),
            Verdict::Refuse { status: 401, .. }
        ));
    }

    #[test]
    fn host_must_be_the_bound_address_and_origin_when_sent_must_match() {
        let g = gate("127.0.0.1:8765", None);
        for host in ["127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765"] {
            assert_eq!(g.check(&get(host, "/")), Verdict::Pass, "{host}");
        }
        for host in ["evil.example:8765", "127.0.0.1", "localhost:8766", "127.0.0.1:8765.evil.example", ""] {
            assert!(matches!(g.check(&get(host, "/")), Verdict::Refuse { status: 403, .. }), "{host}");
        }
        let no_host = Asked { host: None, ..get("", "/") };
        assert!(matches!(g.check(&no_host), Verdict::Refuse { status: 403, .. }));
        for origin in ["http://evil.example", "null", "https://127.0.0.1:8765", "http://127.0.0.1:8766"] {
            let asked = Asked { origin: Some(origin), ..get("127.0.0.1:8765", "/runs/1/events") };
            assert!(matches!(g.check(&asked), Verdict::Refuse { status: 403, .. }), "{origin}");
        }
        let same = Asked { origin: Some("http://localhost:8765"), ..get("127.0.0.1:8765", "/") };
        assert_eq!(g.check(&same), Verdict::Pass);
        // Host is judged before the token: a rebinding page learns nothing from a 401.
        let t = gate("10.0.0.5:8765", Some(TOKEN));
        assert!(matches!(t.check(&get("localhost:8765", "/")), Verdict::Refuse { status: 403, .. }));
    }

    #[test]
    fn on_port_80_the_host_may_leave_the_port_out() {
        let g = gate("127.0.0.1:80", None);
        for host in ["127.0.0.1:80", "127.0.0.1", "localhost", "localhost:80"] {
            assert_eq!(g.check(&get(host, "/")), Verdict::Pass, "{host}");
        }
        let asked = Asked { origin: Some("http://localhost"), ..get("localhost", "/") };
        assert_eq!(g.check(&asked), Verdict::Pass);
        assert!(matches!(gate("127.0.0.1:8765", None).check(&get("127.0.0.1", "/")), Verdict::Refuse { .. }));
    }

    #[test]
    fn only_get_and_head_pass() {
        let g = gate("127.0.0.1:8765", None);
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get"] {
            let asked = Asked { method, ..get("127.0.0.1:8765", "/") };
            assert!(matches!(g.check(&asked), Verdict::Refuse { status: 405, .. }), "{method}");
        }
        assert_eq!(g.check(&Asked { method: "HEAD", ..get("127.0.0.1:8765", "/") }), Verdict::Pass);
    }
}
