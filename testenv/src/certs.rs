//! Credentials of one test control plane, made fresh for each start: a CA
//! that signs the API server's serving certificate (`127.0.0.1`,
//! `localhost`) and the admin's client certificate (group
//! `system:masters`, so RBAC lets it do everything), and the key that signs
//! service-account tokens (recent releases refuse to start without one).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::TestEnvError;

/// User name of the admin client certificate.
pub const ADMIN_USER: &str = "mapguard-testenv-admin";
/// Group of the admin client certificate (bound to `cluster-admin`).
pub const ADMIN_GROUP: &str = "system:masters";

/// PEM text of everything a control plane needs.
pub struct ControlPlaneCerts {
    /// The CA (`--client-ca-file`, and the kubeconfig's trust anchor).
    pub ca_cert: String,
    /// The API server's serving certificate.
    pub serving_cert: String,
    /// Its private key (PKCS#8).
    pub serving_key: String,
    /// The admin's client certificate.
    pub admin_cert: String,
    /// Its private key (PKCS#8).
    pub admin_key: String,
    /// Private key signing service-account tokens (PKCS#8).
    pub service_account_key: String,
    /// Its public key, which verifies them.
    pub service_account_public_key: String,
}

impl std::fmt::Debug for ControlPlaneCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneCerts")
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

fn err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TestEnvError {
    move |source| TestEnvError::Certs { what, source }
}

fn key(what: &'static str) -> Result<KeyPair, TestEnvError> {
    KeyPair::generate().map_err(err(what))
}

/// Valid from a day ago (tolerates clock skew) for a week: far longer than
/// any test, short enough that a leaked file is worthless.
fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::DAY;
    params.not_after = now + time::Duration::WEEK;
}

fn leaf(
    sans: Vec<String>,
    common_name: &str,
    organization: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, TestEnvError> {
    let mut params = CertificateParams::new(sans).map_err(err("certificate parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    Ok(params)
}

impl ControlPlaneCerts {
    /// Generates a CA, the serving and admin certificates it signs, and the
    /// service-account key (all ECDSA P-256).
    pub fn generate() -> Result<Self, TestEnvError> {
        let mut ca = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mapguard-testenv CA");
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut ca);
        let ca = CertifiedIssuer::self_signed(ca, key("CA key")?).map_err(err("CA certificate"))?;

        let serving_key = key("serving key")?;
        let serving = leaf(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            "kube-apiserver",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?
        .signed_by(&serving_key, &ca)
        .map_err(err("serving certificate"))?;

        let admin_key = key("admin key")?;
        let admin = leaf(
            Vec::new(),
            ADMIN_USER,
            Some(ADMIN_GROUP),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?
        .signed_by(&admin_key, &ca)
        .map_err(err("admin client certificate"))?;

        let sa = key("service-account key")?;
        Ok(Self {
            ca_cert: ca.pem(),
            serving_cert: serving.pem(),
            serving_key: serving_key.serialize_pem(),
            admin_cert: admin.pem(),
            admin_key: admin_key.serialize_pem(),
            service_account_key: sa.serialize_pem(),
            service_account_public_key: sa.public_key_pem(),
        })
    }
}
