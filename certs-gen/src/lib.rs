//! Certificate generation for the mapguard admission webhook.
//!
//! The Kubernetes API server calls admission webhooks over HTTPS only, and it
//! checks the serving certificate against the `caBundle` of the webhook
//! configuration. This crate creates, with rcgen, a private CA and a serving
//! certificate signed by it whose subject alternative names cover the
//! in-cluster Service DNS names (`NAME.NS.svc`, `NAME.NS.svc.cluster.local`)
//! and local testing (`localhost`, `127.0.0.1`).
//!
//! [`generate`] produces PEM text in memory (tests use it directly);
//! [`write_dir`] stores it as `ca.crt`, `tls.crt` and `tls.key` (the key with
//! mode 0600), refusing to overwrite existing files unless asked to.
//! [`cluster::reconcile`] keeps it in a Secret instead and gives the CA to
//! the webhook configurations' `caBundle`, replacing a pair that [`check`]
//! finds unusable or about to expire. The CA's own key is never written:
//! nobody can mint further certificates from it.

pub mod check;
pub mod cluster;
pub mod config;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// File name of the CA certificate (the webhook configuration's `caBundle`).
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the serving certificate.
pub const TLS_CERT_FILE: &str = "tls.crt";
/// File name of the serving certificate's private key (mode 0600).
pub const TLS_KEY_FILE: &str = "tls.key";

/// Errors while generating or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// rcgen refused the parameters or failed to sign.
    #[error("cannot generate the {what}: {source}")]
    Generate {
        /// Which certificate or key was being generated.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The service or namespace name is not a DNS label.
    #[error(
        "{field} {value:?} is not a valid DNS label (lowercase letters, digits and '-', at most 63)"
    )]
    InvalidName {
        /// `service` or `namespace`.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// An output file exists and `force` was not given.
    #[error("{path} already exists; pass --force to overwrite it")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Creating the directory or writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What to put into the serving certificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// Name of the webhook's Service.
    pub service: String,
    /// Namespace of the webhook's Service.
    pub namespace: String,
    /// Extra DNS names or IP addresses to include as SANs.
    pub extra_sans: Vec<String>,
    /// Validity of the serving certificate, in days (the CA gets ten times as long).
    pub validity_days: u32,
}

impl CertRequest {
    /// A request for `service` in `namespace`, valid for one year.
    pub fn new(service: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            namespace: namespace.into(),
            extra_sans: Vec::new(),
            validity_days: 365,
        }
    }

    /// Every subject alternative name of the serving certificate.
    pub fn subject_alt_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        let mut sans = vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
            svc.clone(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        for extra in &self.extra_sans {
            if !sans.contains(extra) {
                sans.push(extra.clone());
            }
        }
        sans
    }
}

/// A CA and a serving certificate signed by it, as PEM text.
#[derive(Clone)]
pub struct GeneratedCerts {
    /// The CA certificate (trust anchor for clients).
    pub ca_cert_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for GeneratedCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCerts")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A private certificate authority that can issue several serving
/// certificates (tests use it to rotate certificates under one trust anchor).
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    validity_days: u32,
}

impl Ca {
    /// Creates a new self-signed CA valid for `validity_days`.
    pub fn generate(common_name: &str, validity_days: u32) -> Result<Ca, CertsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "mapguard");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity_days);
        let key = KeyPair::generate().map_err(|source| CertsError::Generate {
            what: "CA key",
            source,
        })?;
        let issuer =
            CertifiedIssuer::self_signed(params, key).map_err(|source| CertsError::Generate {
                what: "CA certificate",
                source,
            })?;
        Ok(Ca {
            issuer,
            validity_days,
        })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a serving certificate for `request`, returning it with the CA.
    pub fn issue(&self, request: &CertRequest) -> Result<GeneratedCerts, CertsError> {
        check_label("service", &request.service)?;
        check_label("namespace", &request.namespace)?;
        let mut params = CertificateParams::new(request.subject_alt_names()).map_err(|source| {
            CertsError::Generate {
                what: "serving certificate parameters",
                source,
            }
        })?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("{}.{}.svc", request.service, request.namespace),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, request.validity_days.min(self.validity_days));
        let key = KeyPair::generate().map_err(|source| CertsError::Generate {
            what: "serving key",
            source,
        })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CertsError::Generate {
                what: "serving certificate",
                source,
            })?;
        Ok(GeneratedCerts {
            ca_cert_pem: self.cert_pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Generates a fresh CA and a serving certificate for `request`.
pub fn generate(request: &CertRequest) -> Result<GeneratedCerts, CertsError> {
    let ca = Ca::generate(
        "mapguard webhook CA",
        request.validity_days.saturating_mul(10),
    )?;
    ca.issue(request)
}

/// Paths of the files written by [`write_dir`].
#[derive(Debug, Clone)]
pub struct WrittenFiles {
    /// `DIR/ca.crt`.
    pub ca_cert: PathBuf,
    /// `DIR/tls.crt`.
    pub cert: PathBuf,
    /// `DIR/tls.key`.
    pub key: PathBuf,
}

/// Writes `certs` into `dir` (created if missing) as `ca.crt`, `tls.crt` and
/// `tls.key` (mode 0600). Without `force`, fails before writing anything if
/// any of the three exists.
pub fn write_dir(
    certs: &GeneratedCerts,
    dir: &Path,
    force: bool,
) -> Result<WrittenFiles, CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let files = WrittenFiles {
        ca_cert: dir.join(CA_CERT_FILE),
        cert: dir.join(TLS_CERT_FILE),
        key: dir.join(TLS_KEY_FILE),
    };
    let plan = [
        (&files.ca_cert, &certs.ca_cert_pem, 0o644),
        (&files.cert, &certs.cert_pem, 0o644),
        (&files.key, &certs.key_pem, 0o600),
    ];
    let existing = plan.iter().find(|(p, _, _)| p.symlink_metadata().is_ok());
    if let (false, Some((path, _, _))) = (force, existing) {
        return Err(CertsError::Exists {
            path: (*path).clone(),
        });
    }
    for (path, text, mode) in plan {
        write_file(path, text, mode)?;
    }
    Ok(files)
}

/// Writes `text` to a temporary file with `mode` and renames it over `path`,
/// so that a reader never sees a half-written file or a key with loose mode.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

fn check_label(field: &'static str, value: &str) -> Result<(), CertsError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CertsError::InvalidName {
            field,
            value: value.to_owned(),
        })
    }
}

/// Valid from yesterday (tolerates clock skew) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::DAY;
    params.not_after = now + time::Duration::DAY * days.max(1);
}
