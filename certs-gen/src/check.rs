//! Whether a stored serving certificate can keep serving: the test
//! `mapguard-certs-gen --in-cluster` applies to the Secret it finds before
//! deciding to keep it.
//!
//! A pair is kept when the key belongs to the certificate, the certificate
//! chains to the CA bundle as a TLS server certificate for every name of the
//! [`CertRequest`] (checked by rustls' own WebPKI verifier, as a client would),
//! and neither it nor the CA that issued it expires within the rotation
//! window. Anything else is an [`Unusable`] naming the first problem found.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::OffsetDateTime;

use crate::CertRequest;

/// Why a stored certificate, key and CA bundle must be replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// A key of the Secret is absent or empty.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A PEM block does not parse.
    #[error("{what} does not parse: {reason}")]
    Unparsable {
        /// `ca.crt`, `tls.crt` or `tls.key`.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("tls.key does not belong to tls.crt: {0}")]
    KeyMismatch(String),
    /// The certificate does not verify for one of the names the webhook is
    /// called by (or does not chain to the bundle at all).
    #[error("tls.crt is not valid for {name}: {reason}")]
    NotValidFor {
        /// The DNS name or IP address.
        name: String,
        /// The verifier's message.
        reason: String,
    },
    /// The certificate expires within the rotation window.
    #[error("tls.crt expires at {not_after}, within the rotation window of {window}")]
    ExpiresSoon {
        /// Its `notAfter`, RFC 3339.
        not_after: String,
        /// The window, human-readable.
        window: String,
    },
    /// The CA that issued the certificate expires within the rotation window.
    #[error(
        "the CA that issued tls.crt expires at {not_after}, within the rotation window of {window}"
    )]
    CaExpiresSoon {
        /// Its `notAfter`, RFC 3339.
        not_after: String,
        /// The window, human-readable.
        window: String,
    },
}

/// A pair that may keep serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Valid {
    /// When the serving certificate expires.
    pub not_after: OffsetDateTime,
}

/// Checks `cert_pem` (serving certificate, chain allowed) and `key_pem`
/// against the CA bundle `bundle_pem` for the names of `request`, at `now`
/// with a rotation window of `window`.
pub fn check(
    bundle_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    request: &CertRequest,
    now: SystemTime,
    window: Duration,
) -> Result<Valid, Unusable> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bundle = pem_certs(bundle_pem, "ca.crt")?;
    let chain = pem_certs(cert_pem, "tls.crt")?;
    if key_pem.trim().is_empty() {
        return Err(Unusable::Missing("tls.key"));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Unusable::Unparsable {
            what: "tls.key",
            reason: e.to_string(),
        })?;
    CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|e| Unusable::KeyMismatch(e.to_string()))?;

    let leaf = &chain[0];
    verify_names(&bundle, leaf, &chain[1..], request, &provider, now)?;

    let horizon = OffsetDateTime::from(now) + window;
    let leaf_info = parsed(leaf, "tls.crt")?;
    let not_after = leaf_info.not_after;
    if not_after <= horizon {
        return Err(Unusable::ExpiresSoon {
            not_after: rfc3339(not_after),
            window: human(window),
        });
    }
    // The trust anchor's own validity is not part of WebPKI path
    // validation: check the CA that issued the certificate here.
    for ca in &bundle {
        let ca_info = parsed(ca, "ca.crt")?;
        if ca_info.subject == leaf_info.issuer && ca_info.not_after <= horizon {
            return Err(Unusable::CaExpiresSoon {
                not_after: rfc3339(ca_info.not_after),
                window: human(window),
            });
        }
    }
    Ok(Valid { not_after })
}

/// The certificates of a PEM text; at least one.
fn pem_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Unusable> {
    if pem.trim().is_empty() {
        return Err(Unusable::Missing(what));
    }
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Unusable::Unparsable {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Unusable::Unparsable {
            what,
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

/// Verifies `leaf` as a server certificate for every name of `request`.
fn verify_names(
    bundle: &[CertificateDer<'static>],
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    request: &CertRequest,
    provider: &Arc<CryptoProvider>,
    now: SystemTime,
) -> Result<(), Unusable> {
    let mut roots = RootCertStore::empty();
    for ca in bundle {
        roots.add(ca.clone()).map_err(|e| Unusable::Unparsable {
            what: "ca.crt",
            reason: e.to_string(),
        })?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Unusable::Unparsable {
            what: "ca.crt",
            reason: e.to_string(),
        })?;
    let now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    for name in request.subject_alt_names() {
        let server_name =
            ServerName::try_from(name.as_str()).map_err(|e| Unusable::NotValidFor {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        verifier
            .verify_server_cert(leaf, intermediates, &server_name, &[], now)
            .map_err(|e| Unusable::NotValidFor {
                name: name.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// What the checks need of one certificate.
struct Parsed {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    not_after: OffsetDateTime,
}

fn parsed(der: &CertificateDer<'_>, what: &'static str) -> Result<Parsed, Unusable> {
    let unparsable = |reason: String| Unusable::Unparsable { what, reason };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| unparsable(e.to_string()))?;
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| unparsable(e.to_string()))?;
    Ok(Parsed {
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        not_after,
    })
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// `30d`, `12h`, `90m` or `45s`: the largest unit that divides `d`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;

    const DAY: Duration = Duration::from_secs(86_400);

    fn request() -> CertRequest {
        CertRequest::new("mapguard-webhook", "mapguard-system")
    }

    #[test]
    fn a_fresh_pair_is_valid_until_its_window() {
        let certs = generate(&request()).expect("generate");
        let now = SystemTime::now();
        let valid = check(
            &certs.ca_cert_pem,
            &certs.cert_pem,
            &certs.key_pem,
            &request(),
            now,
            30 * DAY,
        )
        .expect("a fresh pair is valid");
        let left = valid.not_after - OffsetDateTime::from(now);
        assert!(
            left > time::Duration::days(360),
            "a year's certificate: {left}"
        );
        let near = check(
            &certs.ca_cert_pem,
            &certs.cert_pem,
            &certs.key_pem,
            &request(),
            now,
            400 * DAY,
        );
        assert!(
            matches!(near, Err(Unusable::ExpiresSoon { .. })),
            "{near:?}"
        );
    }

    #[test]
    fn wrong_names_keys_and_cas_are_named() {
        let certs = generate(&request()).expect("generate");
        let now = SystemTime::now();
        let other = generate(&request()).expect("generate another");
        let check_with = |bundle: &str, cert: &str, key: &str, request: &CertRequest| {
            check(bundle, cert, key, request, now, DAY)
        };

        let mismatch = check_with(
            &certs.ca_cert_pem,
            &certs.cert_pem,
            &other.key_pem,
            &request(),
        );
        assert!(
            matches!(mismatch, Err(Unusable::KeyMismatch(_))),
            "{mismatch:?}"
        );

        // Both CAs have the same name: the signature gives the other away.
        let untrusted = check_with(
            &other.ca_cert_pem,
            &certs.cert_pem,
            &certs.key_pem,
            &request(),
        );
        assert!(
            matches!(&untrusted, Err(Unusable::NotValidFor { reason, .. }) if reason.contains("BadSignature")),
            "{untrusted:?}"
        );

        let mut renamed = request();
        renamed.service = "other".to_owned();
        let wrong_name = check_with(
            &certs.ca_cert_pem,
            &certs.cert_pem,
            &certs.key_pem,
            &renamed,
        );
        assert!(
            matches!(&wrong_name, Err(Unusable::NotValidFor { name, .. }) if name == "other.mapguard-system.svc"),
            "{wrong_name:?}"
        );

        let missing = check_with("", &certs.cert_pem, &certs.key_pem, &request());
        assert_eq!(missing, Err(Unusable::Missing("ca.crt")));
        let garbage = check_with(&certs.ca_cert_pem, "not PEM", &certs.key_pem, &request());
        assert!(
            matches!(
                garbage,
                Err(Unusable::Unparsable {
                    what: "tls.crt",
                    ..
                })
            ),
            "{garbage:?}"
        );
    }

    /// A CA valid for `ca_days` that issued a certificate valid for
    /// `leaf_days` (rcgen lets the leaf outlive its CA, as outside tools may).
    fn pair(ca_name: &str, ca_days: i64, leaf_days: i64) -> (String, String, String) {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
            KeyPair,
        };
        let now = OffsetDateTime::now_utc();
        let mut ca = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ca_name);
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.not_before = now - time::Duration::DAY;
        ca.not_after = now + time::Duration::days(ca_days);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let mut leaf = CertificateParams::new(request().subject_alt_names()).expect("SANs");
        leaf.not_before = now - time::Duration::DAY;
        leaf.not_after = now + time::Duration::days(leaf_days);
        let key = KeyPair::generate().expect("key");
        let cert = leaf.signed_by(&key, &ca).expect("leaf");
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_ca_expiring_within_the_window_is_caught_and_others_ignored() {
        let now = SystemTime::now();
        let (ca, cert, key) = pair("short CA", 10, 100);
        let result = check(&ca, &cert, &key, &request(), now, 20 * DAY);
        assert!(
            matches!(result, Err(Unusable::CaExpiresSoon { .. })),
            "{result:?}"
        );
        assert!(
            check(&ca, &cert, &key, &request(), now, 5 * DAY).is_ok(),
            "outside the window the CA is fine"
        );

        // A short-lived CA in the bundle that did not issue the certificate
        // (the previous one, kept while the webhook reloads) is ignored.
        let (old_ca, _, _) = pair("old CA", 10, 10);
        let (ca, cert, key) = pair("new CA", 1000, 100);
        let bundle = format!("{ca}{old_ca}");
        let result = check(&bundle, &cert, &key, &request(), now, 20 * DAY);
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn durations_print_as_flags_read_them() {
        assert_eq!(human(30 * DAY), "30d");
        assert_eq!(human(Duration::from_secs(5400)), "90m");
        for d in [
            30 * DAY,
            Duration::from_secs(5400),
            Duration::from_secs(45),
            Duration::ZERO,
        ] {
            assert_eq!(mapguard_duration::parse(&human(d)), Ok(d), "{}", human(d));
        }
    }
}
