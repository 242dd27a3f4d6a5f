//! PostgreSQL over TLS, as RDS with `rds.force_ssl=1` asks: rustls, the server's certificate
//! verified against a CA bundle (the RDS global bundle on AWS, the ring's CA locally) *and* the
//! server's own name, not the address dialled (the ring maps RDS host names to loopback).
//! TLS is required: a server that does not offer it is refused, never spoken to in plain text.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// A TLS client config trusting the PEM certificates in `ca_file`, or the system's roots when
/// `None`.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            for cert in certs {
                roots.add(cert.map_err(|e| format!("CA file {}: {e}", path.display()))?).map_err(|e| e.to_string())?;
            }
            if roots.is_empty() {
                return Err(format!("CA file {} holds no certificate", path.display()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects `config` (whose host is the address dialled) over TLS, verifying `server_name`.
pub(crate) async fn connect(
    mut config: tokio_postgres::Config,
    server_name: &str,
    ca_file: Option<&Path>,
) -> Result<(tokio_postgres::Client, impl Future<Output = ()> + Send + 'static), String> {
    let tls = client_config(ca_file)?;
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| format!("{server_name}: {e}"))?;
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config
        .connect(MakeRustls(Connector { config: Arc::new(tls), name }))
        .await
        .map_err(|e| explain(&crate::error_chain::error_chain(&e)))?;
    Ok((client, async move {
        let _ = connection.await;
    }))
}

/// What a failed connection means, said so: a server without TLS, or one that takes TLS only
/// (for a client that did not offer it), is not a wrong password.
/// Whether a TLS handshake failed because the connection was closed under it (`tls handshake
/// eof`, a reset): the server went away, which is transient, unlike a certificate it refused.
pub(crate) fn closed_in_handshake(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    let closed = ["handshake eof", "unexpected eof", "connection reset", "broken pipe", "connection closed"];
    closed.iter().any(|c| error.contains(c)) && !error.contains("certificate")
}

pub(crate) fn explain(error: &str) -> String {
    if error.contains("server does not support TLS") {
        format!("{error}: this server does not offer TLS, and runbook connects to PostgreSQL over TLS only")
    } else if error.contains("no encryption") || error.contains("SSL off") {
        format!("{error}: the server accepts TLS connections only")
    } else {
        error.to_string()
    }
}

#[derive(Clone)]
struct Connector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

struct MakeRustls(Connector);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connector;
    type Error = io::Error;

    // The name tokio-postgres passes is the address dialled; the certificate names the server.
    fn make_tls_connect(&mut self, _dialled: &str) -> Result<Connector, io::Error> {
        Ok(self.0.clone())
    }
}

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Stream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(Stream(tls))
        })
    }
}

pub(crate) struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let err = client_config(Some(Path::new("/nonexistent/rds-global-bundle.pem"))).unwrap_err();
        assert!(err.contains("/nonexistent/rds-global-bundle.pem"), "{err}");
        let empty = std::env::temp_dir().join(format!("runbook-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert!(err.contains("holds no certificate"), "{err}");
    }

    #[test]
    fn refusals_for_want_of_tls_say_so() {
        assert!(explain("error performing TLS handshake: server does not support TLS").contains("TLS only"));
        let hba = "db error: FATAL: no pg_hba.conf entry for host \"127.0.0.1\", user \"dixie\", database \"dixie\", no encryption";
        assert!(explain(hba).ends_with("the server accepts TLS connections only"));
        assert_eq!(
            explain("password authentication failed for user \"dixie\""),
            "password authentication failed for user \"dixie\""
        );
    }
}
