//! Objects tests need in a cluster that has no kubelet and no in-cluster
//! Services: Nodes to bind Pods to, webhook configurations that call a
//! server on 127.0.0.1 by URL, and kubeconfigs that act as a
//! ServiceAccount (what a Pod of that account would be allowed to do).

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt as _};
use serde_json::json;

use crate::{TestEnv, TestEnvError};

/// Field manager of the objects applied by this crate.
const FIELD_MANAGER: &str = "mapguard-testenv";

/// `clientConfig` calling `base_url` (`https://127.0.0.1:PORT`) at the path
/// `existing` names (its `service.path`, or the path of its `url`), trusting
/// `ca_pem`. A Service reference cannot work here: nothing routes Service
/// addresses to 127.0.0.1.
pub fn url_client_config(
    base_url: &str,
    existing: &WebhookClientConfig,
    ca_pem: &str,
) -> WebhookClientConfig {
    let path = existing
        .service
        .as_ref()
        .and_then(|s| s.path.clone())
        .or_else(|| {
            existing.url.as_deref().and_then(|u| {
                let rest = u.split_once("://").map_or(u, |(_, rest)| rest);
                rest.find('/').map(|i| rest[i..].to_owned())
            })
        })
        .unwrap_or_default();
    WebhookClientConfig {
        url: Some(format!("{}{path}", base_url.trim_end_matches('/'))),
        service: None,
        ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
    }
}

/// Server-side applies `object` (created or updated as a whole).
async fn apply<K>(env: &TestEnv, object: &K) -> Result<K, TestEnvError>
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(env.client());
    let name = object.name_any();
    let mut object = object.clone();
    // Apply refuses objects that carry these.
    object.meta_mut().resource_version = None;
    object.meta_mut().managed_fields = None;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(|source| TestEnvError::Kube {
        what: format!("apply {} {name}", K::kind(&K::DynamicType::default())),
        source,
    })
}

impl TestEnv {
    /// Creates a Node `name` (labels `kubernetes.io/hostname`, `os`, `arch`)
    /// for Pods to name in `spec.nodeName`. Nothing runs on it.
    pub async fn create_node(&self, name: &str) -> Result<Node, TestEnvError> {
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }))
        .expect("a Node literal deserializes");
        Api::<Node>::all(self.client())
            .create(&PostParams::default(), &node)
            .await
            .map_err(|source| TestEnvError::Kube {
                what: format!("create Node {name}"),
                source,
            })
    }

    /// Applies `config` with every webhook's `clientConfig` turned into the
    /// URL form at `base_url` (see [`url_client_config`]), trusting `ca_pem`.
    ///
    /// The API server picks a new configuration up from its own watch, a
    /// moment after this returns: wait for a request to be judged before
    /// relying on it.
    pub async fn register_validating_webhook(
        &self,
        config: &ValidatingWebhookConfiguration,
        base_url: &str,
        ca_pem: &str,
    ) -> Result<ValidatingWebhookConfiguration, TestEnvError> {
        let mut config = config.clone();
        for webhook in config.webhooks.iter_mut().flatten() {
            webhook.client_config = url_client_config(base_url, &webhook.client_config, ca_pem);
        }
        apply(self, &config).await
    }

    /// A kubeconfig file (in the environment's folder) that authenticates
    /// as ServiceAccount `namespace/name` with a token of the TokenRequest
    /// API, valid for an hour: kubectl or a binary given it acts with that
    /// account's RBAC and in its namespace by default, as its Pod would.
    /// Its context is `as-NAME`. The account must exist.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<std::path::PathBuf, TestEnvError> {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token = Api::<ServiceAccount>::namespaced(self.client(), namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|source| TestEnvError::Kube {
                what: format!("request a token for ServiceAccount {namespace}/{name}"),
                source,
            })?
            .status
            .map(|s| s.token)
            .unwrap_or_default();
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testenv", "cluster": {
                "server": self.url(),
                "certificate-authority-data": crate::files::base64(self.ca_cert_pem()),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": format!("as-{name}"), "context": {
                "cluster": "testenv", "user": user, "namespace": namespace,
            }}],
            "current-context": format!("as-{name}"),
        });
        let path = self.dir().join(format!("kubeconfig-{namespace}-{name}"));
        let text = yaml_serde::to_string(&doc).expect("a JSON value serializes to YAML");
        std::fs::write(&path, text).map_err(|source| TestEnvError::Io {
            what: "write a ServiceAccount's kubeconfig",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// As [`Self::register_validating_webhook`], for a mutating one.
    pub async fn register_mutating_webhook(
        &self,
        config: &MutatingWebhookConfiguration,
        base_url: &str,
        ca_pem: &str,
    ) -> Result<MutatingWebhookConfiguration, TestEnvError> {
        let mut config = config.clone();
        for webhook in config.webhooks.iter_mut().flatten() {
            webhook.client_config = url_client_config(base_url, &webhook.client_config, ca_pem);
        }
        apply(self, &config).await
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::ServiceReference;

    use super::*;

    #[test]
    fn a_service_reference_becomes_a_url_with_its_path() {
        let service = WebhookClientConfig {
            service: Some(ServiceReference {
                name: "mapguard-webhook".to_owned(),
                namespace: "mapguard-system".to_owned(),
                path: Some("/validate".to_owned()),
                port: Some(443),
            }),
            ..WebhookClientConfig::default()
        };
        let config = url_client_config("https://127.0.0.1:8443/", &service, "PEM");
        assert_eq!(
            config.url.as_deref(),
            Some("https://127.0.0.1:8443/validate")
        );
        assert!(config.service.is_none());
        assert_eq!(config.ca_bundle, Some(ByteString(b"PEM".to_vec())));

        let url = WebhookClientConfig {
            url: Some("https://example.org:9443/mutate?x=1".to_owned()),
            ..WebhookClientConfig::default()
        };
        assert_eq!(
            url_client_config("https://127.0.0.1:1", &url, "")
                .url
                .as_deref(),
            Some("https://127.0.0.1:1/mutate?x=1")
        );
    }
}
