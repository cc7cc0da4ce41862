//! Gatekeeper's `data.inventory` in the webhook: the objects of the kinds
//! named by `--inventory` (GROUP/VERSION/KIND), kept current by one
//! reflector per kind (the toolkit's), bounded by `--inventory-max-objects`
//! (what does not fit is left out and counted). Changes are gathered for a
//! moment and published as one [`Inventory`] snapshot that evaluations
//! pick up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Api, Client};
use mapguard_kube::{Backoff, Reflector, Update};
use mapguard_policy::Inventory;
use serde_json::{Value as Json, json};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::state::AppState;

/// How long changes are gathered before one snapshot.
const SETTLE: Duration = Duration::from_millis(500);

/// Why an `--inventory` entry cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "--inventory {0:?}: expected GROUP/VERSION/KIND or VERSION/KIND (v1/Service, networking.k8s.io/v1/Ingress)"
)]
pub struct KindError(String);

/// Parses `networking.k8s.io/v1/Ingress` or `v1/Service`.
pub fn parse_kind(text: &str) -> Result<GroupVersionKind, KindError> {
    let parts: Vec<&str> = text.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(KindError(text.to_string()));
    }
    match parts.as_slice() {
        [version, kind] => Ok(GroupVersionKind::gvk("", version, kind)),
        [group, version, kind] => Ok(GroupVersionKind::gvk(group, version, kind)),
        _ => Err(KindError(text.to_string())),
    }
}

/// (kind, namespace, name) → object.
type Objects = BTreeMap<(String, String, String), Json>;

/// Keeps the inventory of `kinds` in `state` until dropped.
pub async fn run(
    client: Client,
    kinds: Vec<GroupVersionKind>,
    max_objects: usize,
    state: AppState,
) {
    let objects: Arc<Mutex<Objects>> = Arc::default();
    let changed = Arc::new(Notify::new());
    let mut watches = Vec::new();
    for gvk in kinds {
        watches.push(tokio::spawn(watch_kind(
            client.clone(),
            gvk,
            max_objects,
            objects.clone(),
            changed.clone(),
            state.metrics().clone(),
        )));
    }
    let _abort = scopeguard(watches);
    loop {
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
        let inventory = {
            let objects = objects.lock().unwrap_or_else(|e| e.into_inner());
            Inventory::from_objects(objects.values())
        };
        state.metrics().set_inventory_objects(inventory.len());
        tracing::debug!(objects = inventory.len(), "inventory updated");
        state.set_inventory(inventory);
    }
}

/// Aborts the watches when the inventory task ends.
fn scopeguard(tasks: Vec<tokio::task::JoinHandle<()>>) -> impl Drop {
    struct Abort(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            for task in &self.0 {
                task.abort();
            }
        }
    }
    Abort(tasks)
}

/// Resolves `gvk` by discovery, then keeps its objects.
async fn watch_kind(
    client: Client,
    gvk: GroupVersionKind,
    max_objects: usize,
    objects: Arc<Mutex<Objects>>,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let resource = loop {
        match kube::discovery::pinned_kind(&client, &gvk).await {
            Ok((resource, _)) => break resource,
            Err(error) => {
                let error = crate::telemetry::error_chain(&error);
                tracing::warn!(kind = %gvk.kind, %error, "inventory kind not found by discovery; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    };
    let reflector = Reflector::<DynamicObject>::new(resource.clone());
    let listed = reflector.cache();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut warned = false;
    let publish = |update| {
        let mut held = objects.lock().unwrap_or_else(|e| e.into_inner());
        let mut insert = |held: &mut Objects, object: &DynamicObject| {
            let Some((key, json)) = entry(object, &resource) else {
                return;
            };
            if held.len() >= max_objects && !held.contains_key(&key) {
                metrics.inventory_dropped();
                if !warned {
                    warned = true;
                    tracing::warn!(max_objects, kind = %resource.kind, "inventory full; objects left out (mapguard_inventory_dropped_total)");
                }
                return;
            }
            held.insert(key, json);
        };
        match update {
            Update::Listed => {
                held.retain(|(kind, _, _), _| *kind != resource.kind);
                // In the API server's order (namespace, name): which
                // objects fit the bound does not depend on hashing.
                let mut list = listed.state();
                list.sort_by(|a, b| {
                    (&a.metadata.namespace, &a.metadata.name)
                        .cmp(&(&b.metadata.namespace, &b.metadata.name))
                });
                for object in list {
                    insert(&mut held, &object);
                }
            }
            Update::Applied(object) => insert(&mut held, &object),
            Update::Deleted(object) => {
                if let Some((key, _)) = entry(&object, &resource) {
                    held.remove(&key);
                }
            }
            Update::Failed(error) => {
                let error = crate::telemetry::error_chain(&error);
                tracing::warn!(kind = %gvk.kind, %error, "inventory watch failed; retrying");
                return;
            }
        }
        drop(held);
        changed.notify_one();
    };
    reflector
        .run(api, watcher::Config::default(), publish)
        .await;
}

/// The object as inventory holds it: apiVersion and kind set, managed
/// fields left out.
fn entry(
    object: &DynamicObject,
    resource: &ApiResource,
) -> Option<((String, String, String), Json)> {
    let name = object.metadata.name.clone()?;
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let mut json = serde_json::to_value(object).ok()?;
    json["apiVersion"] = json!(resource.api_version);
    json["kind"] = json!(resource.kind);
    if let Some(meta) = json.get_mut("metadata").and_then(Json::as_object_mut) {
        meta.remove("managedFields");
    }
    Some(((resource.kind.clone(), namespace, name), json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_with_or_without_a_group() {
        let ingress = parse_kind("networking.k8s.io/v1/Ingress").expect("parses");
        assert_eq!(
            (
                ingress.group.as_str(),
                ingress.version.as_str(),
                ingress.kind.as_str()
            ),
            ("networking.k8s.io", "v1", "Ingress")
        );
        let service = parse_kind("v1/Service").expect("parses");
        assert_eq!(
            (service.group.as_str(), service.kind.as_str()),
            ("", "Service")
        );
        for bad in ["Service", "a/b/c/d", "v1/", "/v1/Service"] {
            assert!(parse_kind(bad).is_err(), "{bad}");
        }
    }
}
