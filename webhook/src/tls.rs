//! TLS for the admission endpoints: rustls (TLS 1.2 and 1.3 only) with a
//! serving certificate that can be swapped while the server runs.
//!
//! [`ReloadableCert`] implements rustls' `ResolvesServerCert`: every new
//! handshake reads the current [`CertifiedKey`]; [`ReloadableCert::reload`]
//! replaces it after the new pair parsed and matched. Established connections
//! keep the keys they negotiated, so rotation drops nothing.
//!
//! With `--client-ca` the handshake also asks for a client certificate and
//! refuses clients without one signed by a CA of that bundle
//! ([`client_verifier`]); with `--client-name`, also those whose certificate
//! carries none of the names. The bundle is re-read when it changes
//! ([`ReloadableClientCa`]), so a rotated CA is trusted without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

/// Errors loading the serving certificate or building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}: {source}")]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parse or I/O error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{path} contains no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key is unusable or does not belong to the certificate.
    #[error("serving key {key} does not fit certificate {cert}: {source}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol versions.
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The client CA bundle is unusable.
    #[error("cannot use {path} as --client-ca: {message}")]
    ClientCa {
        /// The bundle.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The crypto provider the webhook uses (ring), independent of any
/// process-wide default so that libraries and tests behave alike.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and key and checks that they belong together.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            what: "certificate",
            path: cert_path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Pem {
        what: "private key",
        path: key_path.to_owned(),
        source,
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|source| TlsError::KeyMismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}

/// The serving certificate, swappable at run time.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads the pair once; fails if it is unusable.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let key = load_certified_key(cert_path, key_path, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// The certificate and key files watched for changes.
    pub fn paths(&self) -> [&Path; 2] {
        [&self.cert_path, &self.key_path]
    }

    /// Re-reads both files; on success new handshakes use the new pair, on
    /// failure the current pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The pair serving new handshakes.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration with TLS 1.3 and 1.2 only, ALPN `h2` and
/// `http/1.1`, serving whatever `cert` currently holds, and checking client
/// certificates with `clients` when given.
pub fn server_config(
    cert: Arc<ReloadableCert>,
    provider: Arc<CryptoProvider>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?;
    let client_auth = clients.is_some();
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    if client_auth {
        // A resumed session is not checked again: after a CA rotation a
        // client of a removed CA could go on resuming. Every new
        // connection shows its certificate (the API server keeps its
        // connections open, so this costs little).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client certificates signed by a CA of the PEM bundle `ca_path`, and,
/// when `names` is not empty, carrying one of them as subject common name or
/// DNS subject alternative name. Clients without such a certificate fail
/// the handshake.
pub fn client_verifier(
    ca_path: &Path,
    names: &[String],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let ca_error = |message: String| TlsError::ClientCa {
        path: ca_path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(ca_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ca_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_error("no PEM certificate in it".to_owned()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ca_error(e.to_string()))?;
    if names.is_empty() {
        return Ok(inner);
    }
    Ok(Arc::new(NamedClients {
        inner,
        names: names.to_vec(),
    }))
}

/// The `--client-ca` check, swappable at run time: every handshake uses
/// the verifier built from the bundle's last good content.
///
/// It sends no CA names in its certificate request (the hints of a bundle
/// that may change under it would be stale): clients send their
/// certificate anyway, and the API server has only one.
#[derive(Debug)]
pub struct ReloadableClientCa {
    path: PathBuf,
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ReloadableClientCa {
    /// Reads the bundle once; fails if it is unusable.
    pub fn load(
        path: &Path,
        names: &[String],
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let verifier = client_verifier(path, names, provider.clone())?;
        Ok(Self {
            path: path.to_owned(),
            names: names.to_vec(),
            provider,
            current: RwLock::new(verifier),
        })
    }

    /// The bundle watched for changes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the bundle; on success new handshakes trust its CAs, on
    /// failure the current ones stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let verifier = client_verifier(&self.path, &self.names, self.provider.clone())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = verifier;
        Ok(())
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ClientCertVerifier for ReloadableClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A client verifier that also requires one of `names` on the certificate.
#[derive(Debug)]
struct NamedClients {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

/// A client certificate chained to the CA but carried none of the names.
#[derive(Debug, thiserror::Error)]
#[error(
    "client certificate names {presented:?} are not among the allowed {allowed:?} (--client-name)"
)]
struct NameNotAllowed {
    presented: Vec<String>,
    allowed: Vec<String>,
}

/// The subject common names and DNS subject alternative names of a
/// certificate.
fn certificate_names(der: &CertificateDer<'_>) -> Result<Vec<String>, rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    Ok(names)
}

impl ClientCertVerifier for NamedClients {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = certificate_names(end_entity)?;
        if presented.iter().any(|n| self.names.contains(n)) {
            return Ok(verified);
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(NameNotAllowed {
                presented,
                allowed: self.names.clone(),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
