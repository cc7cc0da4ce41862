//! Pods as the tests of the node agent, the responder and the plugin need
//! them: bound to a Node by name (`spec.nodeName`, as the scheduler would
//! bind them; nothing runs them), one container `app`, with the labels,
//! annotations and controller a test gives.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Map, Value, json};

use crate::TestEnvError;

/// The image of every test Pod's container (never pulled).
pub const POD_IMAGE: &str = "registry.example/app:1";

/// A Pod bound to a node, to build up and create.
#[derive(Debug, Clone)]
pub struct BoundPod {
    namespace: String,
    name: String,
    node: String,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    owners: Vec<Value>,
}

fn map(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect()
}

impl BoundPod {
    /// Pod `namespace/name` bound to `node`.
    pub fn new(namespace: &str, name: &str, node: &str) -> Self {
        BoundPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            labels: Map::new(),
            annotations: Map::new(),
            owners: Vec::new(),
        }
    }

    /// Adds these annotations.
    pub fn annotations(mut self, pairs: &[(&str, &str)]) -> Self {
        self.annotations.extend(map(pairs));
        self
    }

    /// Adds these labels.
    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.labels.extend(map(pairs));
        self
    }

    /// Controlled by ReplicaSet `name` (its `uid`), as a Deployment's Pod.
    pub fn controlled_by_replicaset(mut self, name: &str, uid: &str) -> Self {
        self.owners.push(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
            "uid": uid, "controller": true,
        }));
        self
    }

    /// The Pod object.
    pub fn object(&self) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": self.annotations,
                "ownerReferences": self.owners,
            },
            "spec": {
                "nodeName": self.node,
                "containers": [{"name": "app", "image": POD_IMAGE}],
            },
        }))
        .expect("a Pod literal deserializes")
    }

    /// Creates the namespace if it is missing, then the Pod; returns the
    /// Pod as stored (with its uid).
    pub async fn create(&self, client: &kube::Client) -> Result<Pod, TestEnvError> {
        ensure_namespace(client, &self.namespace).await?;
        Api::<Pod>::namespaced(client.clone(), &self.namespace)
            .create(&PostParams::default(), &self.object())
            .await
            .map_err(|source| TestEnvError::Kube {
                what: format!("create Pod {}/{}", self.namespace, self.name),
                source,
            })
    }
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<(), TestEnvError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
        .expect("a Namespace literal deserializes");
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(TestEnvError::Kube {
            what: format!("create Namespace {name}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_is_bound_and_carries_what_was_given() {
        let pod = BoundPod::new("shop", "web-1", "node-a")
            .annotations(&[("mapguard.io/mode", "kill")])
            .labels(&[("app", "web")])
            .controlled_by_replicaset("web-5d4f", "uid-1")
            .object();
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(spec.containers[0].name, "app");
        let meta = pod.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        assert_eq!(
            meta.annotations.expect("annotations")["mapguard.io/mode"],
            "kill"
        );
        assert_eq!(meta.labels.expect("labels")["app"], "web");
        let owner = &meta.owner_references.expect("owners")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ReplicaSet", Some(true))
        );
    }
}
