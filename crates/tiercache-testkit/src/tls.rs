//! Certificates made at test time (rcgen): a CA, server certificates for `localhost` and
//! `127.0.0.1`, client certificates with chosen SANs, written as PEM files to a temporary
//! directory the [`TestPki`] owns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tiercache_server::config::TlsConfig;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// One certificate authority: its certificate and the key that signs with it.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").finish_non_exhaustive()
    }
}

impl CertPair {
    /// Returns the pair as a tonic client identity.
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From an hour ago to a day from now.
    Current,
    /// From two days ago to a day ago: expired.
    Expired,
}

impl TestCa {
    /// Returns a new CA named `name`.
    ///
    /// # Panics
    ///
    /// Panics if rcgen fails (it does not for these parameters).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::Current);
        let key = KeyPair::generate().expect("generate a CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-sign the CA"),
        }
    }

    /// Returns the CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a server certificate for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self, validity: Validity) -> CertPair {
        self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
        )
    }

    /// Issues a client certificate whose SANs are `names`: DNS names, or URIs when they
    /// contain `://`.
    pub fn client_cert(&self, names: &[&str]) -> CertPair {
        self.issue(
            names,
            ExtendedKeyUsagePurpose::ClientAuth,
            Validity::Current,
        )
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> CertPair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
        params.subject_alt_names = names
            .iter()
            .map(|n| {
                if n.contains("://") {
                    SanType::URI((*n).try_into().expect("an ASCII URI"))
                } else if let Ok(ip) = n.parse() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName((*n).try_into().expect("an ASCII DNS name"))
                }
            })
            .collect();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        params.is_ca = IsCa::NoCa;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity);
        let key = KeyPair::generate().expect("generate a key");
        let cert = params
            .signed_by(&key, &*self.issuer)
            .expect("sign a certificate");
        CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let now = rcgen::date_time_ymd(2000, 1, 1)
        + (std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            - Duration::from_secs(946_684_800));
    let (from, to) = match validity {
        Validity::Current => (
            now - Duration::from_secs(3600),
            now + Duration::from_secs(86_400),
        ),
        Validity::Expired => (
            now - Duration::from_secs(2 * 86_400),
            now - Duration::from_secs(86_400),
        ),
    };
    params.not_before = from;
    params.not_after = to;
}

/// A CA and a server certificate it issued, written to a temporary directory as `ca.crt`,
/// `tls.crt` and `tls.key` (the names cert-manager gives a Kubernetes TLS secret).
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA that issued the server certificate (and the client certificates tests ask for).
    pub ca: TestCa,
    /// The server certificate in `tls.crt` / `tls.key`.
    pub server: CertPair,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TestPki {
    /// Makes a CA and a current server certificate and writes them.
    ///
    /// # Panics
    ///
    /// Panics if the directory or files cannot be written.
    pub fn new() -> Self {
        Self::with_server_validity(Validity::Current)
    }

    /// Like [`new`](Self::new) with a server certificate of the given validity.
    pub fn with_server_validity(validity: Validity) -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir for certificates");
        let ca = TestCa::new("tiercache test ca");
        let server = ca.server_cert(validity);
        let pki = Self { dir, ca, server };
        pki.write("ca.crt", &pki.ca.cert_pem());
        pki.write_server(&pki.server.clone());
        pki
    }

    /// Returns the directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns the path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `name` in the directory, replacing the file whole (write to a
    /// temporary name, then rename, as cert-manager's volume updates do).
    pub fn write(&self, name: &str, contents: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write a certificate file");
        std::fs::rename(&tmp, self.path(name)).expect("rename a certificate file");
    }

    /// Replaces `tls.crt` and `tls.key` with `pair` (key first, then certificate).
    pub fn write_server(&self, pair: &CertPair) {
        self.write("tls.key", &pair.key_pem);
        self.write("tls.crt", &pair.cert_pem);
    }

    /// Returns the server's `[tls]` for these files, without client certificates.
    pub fn server_config(&self) -> TlsConfig {
        TlsConfig::new(self.path("tls.crt"), self.path("tls.key"))
    }

    /// Returns the server's `[tls]` requiring client certificates issued by `ca.crt`.
    pub fn mtls_server_config(&self) -> TlsConfig {
        TlsConfig {
            client_ca_file: Some(self.path("ca.crt")),
            ..self.server_config()
        }
    }

    /// Returns a tonic client config trusting this CA, for `localhost`.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("localhost")
    }

    /// [`client_config`](Self::client_config) with a client certificate from this CA whose SANs
    /// are `names`.
    pub fn mtls_client_config(&self, names: &[&str]) -> ClientTlsConfig {
        self.client_config()
            .identity(self.ca.client_cert(names).identity())
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
