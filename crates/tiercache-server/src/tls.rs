//! TLS on the gRPC port: rustls (ring provider), certificate files reloaded on change, optional
//! mutual TLS.
//!
//! # Components
//! - [`TlsAcceptor`]: loads `[tls]` (errors name the field), holds the serving certificate in a
//!   [`ResolvesServerCert`] and the client-certificate verifier, and swaps both when the files
//!   change ([`TlsAcceptor::reload`]). New connections get the new certificate; open ones keep
//!   the session they negotiated.
//! - [`TlsAcceptor::incoming`]: the stream of finished TLS connections given to tonic. The
//!   accept loop only accepts; each handshake runs in its own task under
//!   [`HANDSHAKE_TIMEOUT`], so a slow or broken client never holds up the others.
//! - [`TlsConn`]: one connection; its tonic `ConnectInfo` is the [`PeerIdentity`] (see
//!   [`peer_identity`]), which tonic puts in every request's extensions.
//! - [`TlsStats`]: handshake and reload failures and the certificate's expiry, read by the
//!   metrics.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt as _;
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::config::{ConfigError, TlsConfig};
use crate::identity::PeerIdentity;

/// How long a client may take to finish the TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider of every TLS connection the server makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Counters and gauges of the TLS listener, observed by the metrics at collection time.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Reloads that found changed files which did not load (the old ones keep serving).
    pub reload_failures: AtomicU64,
    /// The serving leaf certificate's notAfter, in Unix seconds.
    pub cert_not_after: AtomicI64,
}

/// The contents of the files, to tell whether they changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// What one set of files loads to.
struct Loaded {
    key: Arc<CertifiedKey>,
    not_after: i64,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// The serving certificate, swapped in place on reload.
#[derive(Debug)]
struct CertResolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// Accepts TLS connections with the certificate (and client CA) of `[tls]`, reloaded on change.
pub struct TlsAcceptor {
    config: TlsConfig,
    resolver: Arc<CertResolver>,
    /// The rustls config new handshakes use; rebuilt when the client CA changes (the verifier
    /// is part of it), while the certificate is swapped in the shared resolver.
    server_config: RwLock<Arc<rustls::ServerConfig>>,
    /// The file contents last loaded (or last found bad, so a bad set is reported once).
    files: Mutex<Files>,
    stats: Arc<TlsStats>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Loads the files of `config`; an error names the field and the file.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, ConfigError> {
        let files = read_files(config)?;
        let loaded = load(config, &files)?;
        let resolver = Arc::new(CertResolver(RwLock::new(loaded.key)));
        let server_config = server_config(resolver.clone(), loaded.verifier)?;
        let stats = Arc::new(TlsStats::default());
        stats
            .cert_not_after
            .store(loaded.not_after, Ordering::Relaxed);
        warn_if_expired(config, loaded.not_after);
        Ok(Arc::new(Self {
            config: config.clone(),
            resolver,
            server_config: RwLock::new(server_config),
            files: Mutex::new(files),
            stats,
        }))
    }

    /// Returns the counters the metrics read.
    pub fn stats(&self) -> Arc<TlsStats> {
        self.stats.clone()
    }

    /// Reads the files again and, when they changed and load, serves them to new connections.
    /// Returns whether a new set was put in place; on an error the old set keeps serving and
    /// `reload_failures` counts it (once per bad set of files).
    pub fn reload(&self) -> Result<bool, ConfigError> {
        let files = match read_files(&self.config) {
            Ok(f) => f,
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut current = self.files.lock();
        if *current == files {
            return Ok(false);
        }
        let ca_changed = current.client_ca != files.client_ca;
        // Remember the bad set too, so it is not reported again every interval.
        let loaded = load(&self.config, &files);
        *current = files;
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        if ca_changed {
            let config = server_config(self.resolver.clone(), loaded.verifier)?;
            *self.server_config.write() = config;
        }
        *self.resolver.0.write() = loaded.key;
        self.stats
            .cert_not_after
            .store(loaded.not_after, Ordering::Relaxed);
        warn_if_expired(&self.config, loaded.not_after);
        Ok(true)
    }

    /// [`reload`](Self::reload), logging the outcome.
    fn reload_logged(&self) {
        match self.reload() {
            Ok(true) => tracing::info!(
                cert_file = %self.config.cert_file.display(),
                "tls certificate files changed; new connections get the new certificate"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(
                error = %e,
                "cannot reload tls files; the previous certificate keeps serving"
            ),
        }
    }

    /// Runs the TLS handshake on an accepted connection, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsConn> {
        let remote_addr = tcp.peer_addr().ok();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config.read().clone());
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "tls handshake timed out",
            )),
        };
        match stream {
            Ok(stream) => {
                let identity = peer_identity(remote_addr, stream.get_ref().1);
                Ok(TlsConn { stream, identity })
            }
            Err(e) => {
                self.stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = ?remote_addr, error = %e, "tls handshake failed");
                Err(e)
            }
        }
    }

    /// Returns the stream of TLS connections accepted from `tcp`, for tonic's
    /// `serve_with_incoming_shutdown`, and the task that accepts them (abort it to stop
    /// listening). Handshakes run in tasks of their own; failed ones are counted and dropped.
    /// The files are checked for changes every `reload_interval` from the same task.
    pub fn incoming(
        self: Arc<Self>,
        mut tcp: TcpIncoming,
    ) -> (
        ReceiverStream<Result<TlsConn, io::Error>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(128);
        let task = tokio::spawn(async move {
            let every = self.config.reload_interval.max(Duration::from_millis(10));
            let mut reload = tokio::time::interval(every);
            reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            reload.tick().await;
            loop {
                tokio::select! {
                    conn = tcp.next() => match conn {
                        Some(Ok(conn)) => {
                            let (acceptor, tx) = (self.clone(), tx.clone());
                            tokio::spawn(async move {
                                if let Ok(conn) = acceptor.accept(conn).await {
                                    let _ = tx.send(Ok(conn)).await;
                                }
                            });
                        }
                        Some(Err(e)) => {
                            // Out of file descriptors and the like: back off instead of
                            // spinning on the error.
                            tracing::warn!(error = %e, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        None => break,
                    },
                    _ = reload.tick() => {
                        let this = self.clone();
                        let _ = tokio::task::spawn_blocking(move || this.reload_logged()).await;
                    }
                    _ = tx.closed() => break,
                }
            }
        });
        (ReceiverStream::new(rx), task)
    }
}

fn read_files(config: &TlsConfig) -> Result<Files, ConfigError> {
    Ok(Files {
        cert: read("tls.cert_file", &config.cert_file)?,
        key: read("tls.key_file", &config.key_file)?,
        client_ca: match &config.client_ca_file {
            Some(p) => Some(read("tls.client_ca_file", p)?),
            None => None,
        },
    })
}

fn invalid(field: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message,
    }
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn certs(
    field: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            field,
            format!("no CERTIFICATE block in {}", path.display()),
        ));
    }
    Ok(certs)
}

fn load(config: &TlsConfig, files: &Files) -> Result<Loaded, ConfigError> {
    let provider = provider();
    let chain = certs("tls.cert_file", &config.cert_file, &files.cert)?;
    let not_after = not_after(&chain[0]).ok_or_else(|| {
        invalid(
            "tls.cert_file",
            format!(
                "the first certificate in {} is not valid X.509",
                config.cert_file.display()
            ),
        )
    })?;
    // The PEM error never quotes the file, so no key material reaches the message.
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        invalid(
            "tls.key_file",
            format!(
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in {}: {e}",
                config.key_file.display()
            ),
        )
    })?;
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        invalid(
            "tls.key_file",
            format!(
                "{} does not match the certificate in tls.cert_file or is not a supported key: {e}",
                config.key_file.display()
            ),
        )
    })?;
    let verifier = match (&config.client_ca_file, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certs("tls.client_ca_file", path, pem)? {
                roots.add(ca).map_err(|e| {
                    invalid(
                        "tls.client_ca_file",
                        format!("bad CA certificate in {}: {e}", path.display()),
                    )
                })?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid("tls.client_ca_file", e.to_string()))?
        }
        _ => WebPkiClientVerifier::no_client_auth(),
    };
    Ok(Loaded {
        key: Arc::new(key),
        not_after,
        verifier,
    })
}

fn server_config(
    resolver: Arc<CertResolver>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Whether a certificate valid until `not_after` (Unix seconds) has expired at `now`.
pub fn has_expired(not_after: i64, now: std::time::SystemTime) -> bool {
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    not_after <= now
}

/// Logs a warning when the certificate about to be served has expired: every client will refuse
/// it until the files are replaced. It is served anyway (the files may be replaced any moment, and
/// refusing to start would turn a renewal hiccup into an outage of the port).
fn warn_if_expired(config: &TlsConfig, not_after: i64) {
    if has_expired(not_after, std::time::SystemTime::now()) {
        tracing::warn!(
            cert_file = %config.cert_file.display(),
            not_after,
            "the tls certificate has expired; clients will refuse it until the files are replaced"
        );
    }
}

/// Returns the notAfter of a DER certificate in Unix seconds, or `None` if it does not parse.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Returns the subject alternative names of a DER certificate: its DNS names, then its URIs.
/// Empty when it has none or does not parse.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    let names = &san.value.general_names;
    let dns = names.iter().filter_map(|n| match n {
        GeneralName::DNSName(s) => Some(s.to_string()),
        _ => None,
    });
    let uris = names.iter().filter_map(|n| match n {
        GeneralName::URI(s) => Some(s.to_string()),
        _ => None,
    });
    dns.chain(uris).collect()
}

/// Returns what a finished handshake verified about the peer: its address and the names of the
/// client certificate (only ever present once rustls verified it against the client CA).
pub fn peer_identity(
    remote_addr: Option<SocketAddr>,
    conn: &rustls::ServerConnection,
) -> PeerIdentity {
    PeerIdentity {
        remote_addr,
        cert_names: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| cert_names(c))
            .unwrap_or_default(),
    }
}

/// One accepted TLS connection.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    identity: PeerIdentity,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// Returns what the handshake verified about the peer.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiercache_testkit::{TestCa, TestPki};

    /// `[tls]` for the files of `pki` (built here: the testkit's config type is another copy
    /// of this crate's).
    fn config(pki: &TestPki, mtls: bool) -> TlsConfig {
        TlsConfig {
            client_ca_file: mtls.then(|| pki.path("ca.crt")),
            ..TlsConfig::new(pki.path("tls.crt"), pki.path("tls.key"))
        }
    }

    #[test]
    fn expiry_is_judged_against_now() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        assert!(has_expired(999, now));
        assert!(has_expired(1_000, now));
        assert!(!has_expired(1_001, now));
    }

    fn error(config: &TlsConfig) -> String {
        TlsAcceptor::load(config).unwrap_err().to_string()
    }

    #[test]
    fn loads_a_valid_set_and_reports_its_expiry() {
        let pki = TestPki::new();
        let acceptor = TlsAcceptor::load(&config(&pki, true)).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let not_after = acceptor.stats().cert_not_after.load(Ordering::Relaxed);
        assert!(
            (now + 86_000..now + 87_000).contains(&not_after),
            "{not_after}"
        );
        assert!(
            !acceptor.reload().unwrap(),
            "unchanged files are not reloaded"
        );
    }

    #[test]
    fn start_up_errors_name_the_field() {
        let pki = TestPki::new();
        let mut c = config(&pki, false);
        c.cert_file = pki.path("missing.crt");
        let e = error(&c);
        assert!(
            e.contains("tls.cert_file: cannot read") && e.contains("missing.crt"),
            "{e}"
        );

        pki.write("garbage.crt", "hello\n");
        c.cert_file = pki.path("garbage.crt");
        let e = error(&c);
        assert!(e.contains("tls.cert_file: no CERTIFICATE block"), "{e}");

        pki.write(
            "bad.crt",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        c.cert_file = pki.path("bad.crt");
        let e = error(&c);
        assert!(e.contains("tls.cert_file: bad PEM"), "{e}");

        let mut c = config(&pki, false);
        pki.write(
            "other.key",
            &TestCa::new("x")
                .server_cert(tiercache_testkit::Validity::Current)
                .key_pem,
        );
        c.key_file = pki.path("other.key");
        let e = error(&c);
        assert!(
            e.contains("tls.key_file") && e.contains("does not match"),
            "{e}"
        );

        c.key_file = pki.path("ca.crt");
        let e = error(&c);
        assert!(e.contains("tls.key_file: no PEM private key"), "{e}");

        let mut c = config(&pki, true);
        c.client_ca_file = Some(pki.path("nope.crt"));
        let e = error(&c);
        assert!(e.contains("tls.client_ca_file: cannot read"), "{e}");
    }

    #[test]
    fn key_material_never_reaches_errors() {
        let pki = TestPki::new();
        let key = pki.server.key_pem.clone();
        // A key file holding a key cut in half.
        pki.write("tls.key", &key[..key.len() / 2]);
        let e = error(&config(&pki, false));
        assert!(e.contains("tls.key_file"), "{e}");
        let body: String = key.lines().nth(1).unwrap().chars().take(16).collect();
        assert!(!e.contains(&body), "{e}");
    }

    #[test]
    fn a_bad_reload_keeps_the_old_certificate() {
        let pki = TestPki::new();
        let acceptor = TlsAcceptor::load(&config(&pki, false)).unwrap();
        let before = acceptor.resolver.0.read().cert[0].clone();
        pki.write("tls.crt", "not a certificate\n");
        let e = acceptor.reload().unwrap_err();
        assert!(e.to_string().contains("tls.cert_file"), "{e}");
        assert_eq!(acceptor.resolver.0.read().cert[0], before);
        assert_eq!(acceptor.stats.reload_failures.load(Ordering::Relaxed), 1);
        // The same bad set is reported once, not at every check.
        assert!(!acceptor.reload().unwrap());
        let next = pki.ca.server_cert(tiercache_testkit::Validity::Current);
        pki.write_server(&next);
        assert!(acceptor.reload().unwrap());
        assert_ne!(acceptor.resolver.0.read().cert[0], before);
    }

    #[test]
    fn cert_names_are_dns_then_uri_sans() {
        let ca = TestCa::new("ca");
        let pair = ca.client_cert(&["spiffe://td/ns/a", "a.svc", "b.svc"]);
        let der = CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).unwrap();
        assert_eq!(cert_names(&der), ["a.svc", "b.svc", "spiffe://td/ns/a"]);
        assert!(cert_names(b"junk").is_empty());
    }
}
