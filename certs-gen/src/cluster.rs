//! `mapguard-certs-gen --in-cluster`: the serving certificate kept in a
//! Secret and its CA in the webhook configurations' `caBundle`, through the
//! API server (in-cluster service account, or a kubeconfig).
//!
//! One run, [`reconcile`]:
//!
//! 1. reads the Secret: a pair that can keep serving ([`check`](crate::check))
//!    is kept; an absent, unparsable, misnamed or mismatched one, or one
//!    expiring within the rotation window, is replaced by a new CA and
//!    certificate;
//! 2. sets the `caBundle` of every webhook of the named configurations to the
//!    Secret's `ca.crt` *before* a new certificate is stored, so the API
//!    server trusts it by the time the webhook's Pods load it; a rotation's
//!    bundle also holds the previous CA while it is valid, so Pods still
//!    serving the old certificate stay trusted until they reload;
//! 3. writes the Secret: a create, or an update guarded by the
//!    resourceVersion it read (another writer in between makes the run start
//!    over, at most [`ATTEMPTS`] times).
//!
//! Nothing is written when everything is current, so a run is idempotent.
//! A refusal by RBAC is a [`ClusterError::Forbidden`] naming the verb and
//! the resource. The CA's key is never stored: a rotation makes a new CA.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use mapguard_kube::ClientError;
use mapguard_kube::errors::{ApiErrorClass, classify_status};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::check::{Unusable, check, human};
use crate::{CA_CERT_FILE, CertRequest, CertsError, TLS_CERT_FILE, TLS_KEY_FILE, generate};

/// Field manager of the patches and writes.
pub const FIELD_MANAGER: &str = "mapguard-certs-gen";
/// How many times a run starts over when another writer changed the Secret.
pub const ATTEMPTS: u32 = 3;
/// Interval of the checks while waiting for a webhook configuration.
const POLL: Duration = Duration::from_secs(1);
/// The Secret type the webhook's mount expects (`tls.crt`, `tls.key`).
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// What to keep in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterRequest {
    /// Names and validity of the serving certificate; the Secret lives in
    /// its namespace.
    pub cert: CertRequest,
    /// Name of the Secret (`tls.crt`, `tls.key`, `ca.crt`).
    pub secret: String,
    /// ValidatingWebhookConfigurations whose webhooks get the `caBundle`.
    pub validating_webhooks: Vec<String>,
    /// MutatingWebhookConfigurations whose webhooks get the `caBundle`.
    pub mutating_webhooks: Vec<String>,
    /// A certificate (or its CA) expiring within this window is replaced.
    pub rotate_before: Duration,
    /// How long to wait for a webhook configuration to exist (a Job may
    /// start before `kubectl apply` has created them).
    pub wait: Duration,
}

impl ClusterRequest {
    /// The defaults of the manifests: Secret `mapguard-webhook-tls`, both
    /// configurations named `mapguard`, a 30-day window, a 2-minute wait.
    pub fn new(cert: CertRequest) -> Self {
        Self {
            cert,
            secret: "mapguard-webhook-tls".to_owned(),
            validating_webhooks: vec!["mapguard".to_owned()],
            mutating_webhooks: vec!["mapguard".to_owned()],
            rotate_before: Duration::from_secs(30 * 86_400),
            wait: Duration::from_secs(120),
        }
    }

    /// Refuses a window as long as the validity: every run would rotate.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let validity = Duration::from_secs(u64::from(self.cert.validity_days) * 86_400);
        if self.rotate_before >= validity {
            return Err(ClusterError::WindowTooLong {
                window: human(self.rotate_before),
                validity_days: self.cert.validity_days,
            });
        }
        Ok(())
    }

    fn configurations(&self) -> impl Iterator<Item = (Configuration, &str)> {
        let validating = self.validating_webhooks.iter();
        let mutating = self.mutating_webhooks.iter();
        validating
            .map(|n| (Configuration::Validating, n.as_str()))
            .chain(mutating.map(|n| (Configuration::Mutating, n.as_str())))
            .filter(|(_, name)| !name.is_empty())
    }

    /// The Secret, as named in messages.
    pub fn secret_object(&self) -> String {
        format!("{:?} in namespace {}", self.secret, self.cert.namespace)
    }
}

/// The two kinds of webhook configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Configuration {
    /// `ValidatingWebhookConfiguration`.
    Validating,
    /// `MutatingWebhookConfiguration`.
    Mutating,
}

impl Configuration {
    /// The kind.
    pub fn kind(self) -> &'static str {
        match self {
            Configuration::Validating => "ValidatingWebhookConfiguration",
            Configuration::Mutating => "MutatingWebhookConfiguration",
        }
    }

    /// The resource RBAC rules name.
    pub fn resource(self) -> &'static str {
        match self {
            Configuration::Validating => "validatingwebhookconfigurations",
            Configuration::Mutating => "mutatingwebhookconfigurations",
        }
    }

    fn api_resource(self) -> ApiResource {
        match self {
            Configuration::Validating => ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
            Configuration::Mutating => ApiResource::erase::<MutatingWebhookConfiguration>(&()),
        }
    }
}

/// What happened to the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOutcome {
    /// There was none; a new CA and certificate were stored.
    Created,
    /// The stored pair can keep serving.
    Kept,
    /// The stored pair could not, for this reason; a new one was stored.
    Replaced(Unusable),
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The Secret's fate.
    pub secret: SecretOutcome,
    /// When the serving certificate now in the Secret expires.
    pub not_after: OffsetDateTime,
    /// From when a run will rotate it (its expiry less the window).
    pub rotate_after: OffsetDateTime,
    /// Configurations whose `caBundle` this run set.
    pub patched: Vec<(Configuration, String)>,
    /// Configurations whose `caBundle` was already the Secret's CA bundle.
    pub current: Vec<(Configuration, String)>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// RBAC refused a step.
    #[error(
        "RBAC forbids {verb} on {resource} {object}: {message} (mapguard-certs-gen's ServiceAccount needs the rules of manifests/certs-gen/rbac.yaml)"
    )]
    Forbidden {
        /// The verb refused (`get`, `create`, `update`, `patch`).
        verb: &'static str,
        /// The resource (`secrets`, `validatingwebhookconfigurations`, ...).
        resource: &'static str,
        /// The object, quoted, with its namespace if any.
        object: String,
        /// The API server's message.
        message: String,
    },
    /// Any other failure of a request.
    #[error("cannot {verb} {resource} {object}: {source}")]
    Api {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// The object.
        object: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// A named webhook configuration did not appear in time.
    #[error(
        "{kind} {name:?} does not exist (waited {}): apply the manifests first (kubectl apply -k manifests/) or name the right one (--validating-webhook, --mutating-webhook)",
        human(*waited)
    )]
    ConfigurationMissing {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
        /// How long the run waited.
        waited: Duration,
    },
    /// A webhook configuration has no webhook to give the CA to.
    #[error("{kind} {name:?} has no webhooks to give the CA bundle to")]
    NoWebhooks {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Another writer changed the Secret under every attempt.
    #[error(
        "the Secret {object} changed under each of {attempts} attempts to write it (is another mapguard-certs-gen running?)"
    )]
    Contended {
        /// The Secret.
        object: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The rotation window is not shorter than the validity.
    #[error(
        "--rotate-before {window} is not shorter than the certificate's validity of {validity_days} days: every run would rotate"
    )]
    WindowTooLong {
        /// The window.
        window: String,
        /// The validity.
        validity_days: u32,
    },
    /// Generating the new pair failed.
    #[error(transparent)]
    Certs(#[from] CertsError),
    /// The `--kubeconfig` file is unusable.
    #[error(transparent)]
    Kubeconfig(ClientError),
    /// No API server could be configured.
    #[error(
        "no Kubernetes API to talk to (in-cluster service account, KUBECONFIG or ~/.kube/config): {0}"
    )]
    Client(#[source] ClientError),
}

/// A client from `kubeconfig` (its current context), or kube's default:
/// `KUBECONFIG` or `~/.kube/config`, else the in-cluster service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClusterError> {
    mapguard_kube::client(kubeconfig)
        .await
        .map_err(|e| match e {
            e if e.is_kubeconfig() => ClusterError::Kubeconfig(e),
            e => ClusterError::Client(e),
        })
}

/// Keeps or replaces the Secret and points the configurations' `caBundle`
/// at its CA; see the module documentation for the order of the steps.
pub async fn reconcile(
    client: &kube::Client,
    request: &ClusterRequest,
) -> Result<Report, ClusterError> {
    request.validate()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &request.cert.namespace);
    for attempt in 1..=ATTEMPTS {
        let existing = secrets
            .get_opt(&request.secret)
            .await
            .map_err(|e| api_error("get", "secrets", request.secret_object(), e))?;
        let plan = plan(existing, request)?;
        let mut report = Report {
            secret: plan.outcome.clone(),
            not_after: plan.not_after,
            rotate_after: plan.not_after - request.rotate_before,
            patched: Vec::new(),
            current: Vec::new(),
        };
        for (kind, name) in request.configurations() {
            let entry = (kind, name.to_owned());
            if set_ca_bundle(client, kind, name, &plan.bundle, request.wait).await? {
                report.patched.push(entry);
            } else {
                report.current.push(entry);
            }
        }
        let Some(secret) = plan.write else {
            return Ok(report);
        };
        let (verb, written) = match secret.metadata.resource_version {
            None => ("create", secrets.create(&post_params(), &secret).await),
            Some(_) => (
                "update",
                secrets
                    .replace(&request.secret, &post_params(), &secret)
                    .await,
            ),
        };
        match written {
            Ok(_) => return Ok(report),
            // Another writer came first (AlreadyExists or Conflict): start
            // over from what it wrote.
            Err(kube::Error::Api(status))
                if classify_status(&status) == ApiErrorClass::Conflict =>
            {
                tracing::warn!(
                    verb,
                    attempt,
                    message = %status.message,
                    "the Secret changed while it was being written; starting over"
                );
            }
            Err(e) => return Err(api_error(verb, "secrets", request.secret_object(), e)),
        }
    }
    Err(ClusterError::Contended {
        object: request.secret_object(),
        attempts: ATTEMPTS,
    })
}

/// The Secret to write (if any), the CA bundle the configurations must
/// hold, and what happened.
struct Plan {
    outcome: SecretOutcome,
    bundle: String,
    not_after: OffsetDateTime,
    write: Option<Secret>,
}

fn plan(existing: Option<Secret>, request: &ClusterRequest) -> Result<Plan, ClusterError> {
    let now = SystemTime::now();
    let stored = |secret: &Secret, key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let (outcome, old_bundle, mut secret) = match existing {
        None => (SecretOutcome::Created, String::new(), new_secret(request)),
        Some(secret) => {
            let bundle = stored(&secret, CA_CERT_FILE);
            let verdict = check(
                &bundle,
                &stored(&secret, TLS_CERT_FILE),
                &stored(&secret, TLS_KEY_FILE),
                &request.cert,
                now,
                request.rotate_before,
            );
            match verdict {
                Ok(valid) => {
                    return Ok(Plan {
                        outcome: SecretOutcome::Kept,
                        bundle,
                        not_after: valid.not_after,
                        write: None,
                    });
                }
                // Updated in place: its type, labels and resourceVersion stay.
                Err(unusable) => (SecretOutcome::Replaced(unusable), bundle, secret),
            }
        }
    };
    let certs = generate(&request.cert)?;
    let bundle = rotated_bundle(&certs.ca_cert_pem, &old_bundle, now);
    let not_after = check(
        &bundle,
        &certs.cert_pem,
        &certs.key_pem,
        &request.cert,
        now,
        request.rotate_before,
    )
    .map(|valid| valid.not_after)
    .unwrap_or_else(|unusable| {
        // generate() issues for exactly these names, and validate() keeps
        // the window inside the validity.
        unreachable!("a freshly generated pair is unusable: {unusable}")
    });
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (CA_CERT_FILE, &bundle),
        (TLS_CERT_FILE, &certs.cert_pem),
        (TLS_KEY_FILE, &certs.key_pem),
    ] {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    }
    secret.string_data = None;
    Ok(Plan {
        outcome,
        bundle,
        not_after,
        write: Some(secret),
    })
}

fn new_secret(request: &ClusterRequest) -> Secret {
    let labels = [
        ("app.kubernetes.io/name", "mapguard-webhook"),
        ("app.kubernetes.io/part-of", "mapguard"),
        ("app.kubernetes.io/managed-by", FIELD_MANAGER),
    ];
    Secret {
        metadata: ObjectMeta {
            name: Some(request.secret.clone()),
            namespace: Some(request.cert.namespace.clone()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some(TLS_SECRET_TYPE.to_owned()),
        ..Secret::default()
    }
}

/// The new CA, then the first CA of the previous bundle if it is still
/// valid (the one whose certificate the Pods may still be serving).
fn rotated_bundle(new_ca: &str, old_bundle: &str, now: SystemTime) -> String {
    let mut bundle = format!("{}\n", new_ca.trim_end());
    let still_valid = |block: &&str| {
        let Ok(der) = CertificateDer::from_pem_slice(block.as_bytes()) else {
            return false;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            return false;
        };
        OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .is_ok_and(|t| t > OffsetDateTime::from(now))
    };
    let previous = pem_blocks(old_bundle)
        .into_iter()
        .next()
        .filter(still_valid)
        .filter(|block| block.trim() != new_ca.trim());
    if let Some(previous) = previous {
        bundle.push_str(previous.trim_end());
        bundle.push('\n');
    }
    bundle
}

/// The `CERTIFICATE` blocks of a PEM text, as text.
fn pem_blocks(pem: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        blocks.push(&rest[start..end]);
        rest = &rest[end..];
    }
    blocks
}

/// Sets the `caBundle` of every webhook of configuration `name` to
/// `bundle_pem`, waiting up to `wait` for it to exist. Returns whether a
/// patch was needed.
async fn set_ca_bundle(
    client: &kube::Client,
    kind: Configuration,
    name: &str,
    bundle_pem: &str,
    wait: Duration,
) -> Result<bool, ClusterError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
    let object_name = format!("{name:?}");
    let started = Instant::now();
    let object = loop {
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| api_error("get", kind.resource(), object_name.clone(), e))?;
        match found {
            Some(object) => break object,
            None if started.elapsed() < wait => {
                tracing::info!(
                    kind = kind.kind(),
                    name,
                    "waiting for the webhook configuration to exist"
                );
                tokio::time::sleep(POLL).await;
            }
            None => {
                return Err(ClusterError::ConfigurationMissing {
                    kind: kind.kind(),
                    name: name.to_owned(),
                    waited: started.elapsed(),
                });
            }
        }
    };
    let want = base64::engine::general_purpose::STANDARD.encode(bundle_pem);
    let webhooks = object
        .data
        .get("webhooks")
        .and_then(Value::as_array)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| ClusterError::NoWebhooks {
            kind: kind.kind(),
            name: name.to_owned(),
        })?;
    let stale: Vec<Value> = webhooks
        .iter()
        .filter(|w| w.pointer("/clientConfig/caBundle").and_then(Value::as_str) != Some(&want))
        .filter_map(|w| w.get("name").cloned())
        .map(|webhook| json!({"name": webhook, "clientConfig": {"caBundle": want}}))
        .collect();
    if stale.is_empty() {
        return Ok(false);
    }
    // A strategic merge patch: the webhooks list merges by name, so only
    // caBundle changes and nothing else kubectl apply manages.
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Strategic(json!({"webhooks": stale})))
        .await
        .map_err(|e| api_error("patch", kind.resource(), object_name, e))?;
    Ok(true)
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// A failed request as a [`ClusterError`]: RBAC refusals (403) become
/// [`ClusterError::Forbidden`] with the step named.
fn api_error(
    verb: &'static str,
    resource: &'static str,
    object: String,
    error: kube::Error,
) -> ClusterError {
    match error {
        kube::Error::Api(status) if classify_status(&status) == ApiErrorClass::Forbidden => {
            ClusterError::Forbidden {
                verb,
                resource,
                object,
                message: status.message,
            }
        }
        source => ClusterError::Api {
            verb,
            resource,
            object,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_bundle_keeps_the_previous_valid_ca_only() {
        let old = generate(&CertRequest::new("a", "b")).expect("old");
        let new = generate(&CertRequest::new("a", "b")).expect("new");
        let now = SystemTime::now();
        let bundle = rotated_bundle(&new.ca_cert_pem, &old.ca_cert_pem, now);
        let blocks = pem_blocks(&bundle);
        assert_eq!(blocks.len(), 2, "{bundle}");
        assert_eq!(blocks[0].trim(), new.ca_cert_pem.trim());
        assert_eq!(blocks[1].trim(), old.ca_cert_pem.trim());

        // Rotating again drops the oldest: never more than two.
        let newer = generate(&CertRequest::new("a", "b")).expect("newer");
        let again = rotated_bundle(&newer.ca_cert_pem, &bundle, now);
        let blocks = pem_blocks(&again);
        assert_eq!(blocks.len(), 2, "{again}");
        assert_eq!(blocks[1].trim(), new.ca_cert_pem.trim());

        // An expired or unparsable previous CA is left out.
        let later = now + Duration::from_secs(20 * 365 * 86_400);
        let expired = rotated_bundle(&new.ca_cert_pem, &old.ca_cert_pem, later);
        assert_eq!(pem_blocks(&expired).len(), 1, "{expired}");
        let garbage = rotated_bundle(&new.ca_cert_pem, "garbage", now);
        assert_eq!(pem_blocks(&garbage).len(), 1, "{garbage}");
    }

    #[test]
    fn a_window_as_long_as_the_validity_is_refused() {
        let mut request = ClusterRequest::new(CertRequest::new("a", "b"));
        assert!(request.validate().is_ok(), "the defaults are consistent");
        request.rotate_before = Duration::from_secs(365 * 86_400);
        let error = request.validate().expect_err("would rotate on every run");
        assert!(error.to_string().contains("365d"), "{error}");
    }

    #[test]
    fn forbidden_names_the_verb_and_resource() {
        let status = kube::core::Status::failure(
            r#"secrets "x" is forbidden: User "u" cannot get resource "secrets""#,
            "Forbidden",
        )
        .with_code(403);
        let error = api_error(
            "get",
            "secrets",
            r#""x" in namespace y"#.to_owned(),
            kube::Error::Api(Box::new(status)),
        );
        let text = error.to_string();
        assert!(
            text.starts_with(
                r#"RBAC forbids get on secrets "x" in namespace y: secrets "x" is forbidden"#
            ),
            "{text}"
        );
        assert!(text.contains("manifests/certs-gen/rbac.yaml"), "{text}");
    }
}
