//! Gatekeeper's objects in the cluster, as Gatekeeper users apply them:
//! `kubectl apply -f template.yaml`, then a constraint of its kind.
//!
//! A watch on ConstraintTemplates (`templates.gatekeeper.sh`) keeps their
//! list; for each template the constraint CRD of its kind
//! (`<kind>.constraints.gatekeeper.sh`, cluster-scoped, `v1beta1` and
//! `v1alpha1`) is created by server-side apply, and a watch on that kind
//! keeps its constraints. Every change recompiles the policy set (files
//! plus these objects, [`PolicyStore::set_cluster_documents`]); a set that
//! does not compile is refused and counted as a failed reload, and the last
//! good one keeps serving, as with files.
//!
//! The CRD accepts any `spec.parameters`: they are checked against the
//! template's schema when the set is compiled, so a constraint of the wrong
//! shape is reported by the webhook (log, `mapguard_policy_reloads_total`)
//! rather than by `kubectl apply`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::{Value as Json, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, ReloadResult};
use crate::policies::PolicyStore;

const TEMPLATES_GROUP: &str = "templates.gatekeeper.sh";
const CONSTRAINTS_GROUP: &str = "constraints.gatekeeper.sh";
/// Field manager of the constraint CRDs mapguard creates.
const MANAGER: &str = "mapguard-webhook";
/// How long changes are gathered before one recompilation.
const SETTLE: Duration = Duration::from_millis(200);

fn template_resource() -> ApiResource {
    ApiResource {
        group: TEMPLATES_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{TEMPLATES_GROUP}/v1"),
        kind: "ConstraintTemplate".into(),
        plural: "constrainttemplates".into(),
    }
}

fn constraint_resource(kind: &str) -> ApiResource {
    ApiResource {
        group: CONSTRAINTS_GROUP.into(),
        version: "v1beta1".into(),
        api_version: format!("{CONSTRAINTS_GROUP}/v1beta1"),
        kind: kind.into(),
        plural: kind.to_ascii_lowercase(),
    }
}

/// The kind a template defines.
fn template_kind(template: &Json) -> Option<String> {
    template
        .pointer("/spec/crd/spec/names/kind")
        .and_then(Json::as_str)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// The constraint CRD of a template's kind.
pub fn constraint_crd(kind: &str) -> Json {
    let plural = kind.to_ascii_lowercase();
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "enforcementAction": {"type": "string"},
                    "match": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "parameters": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }
    });
    let version = |name: &str, storage: bool| {
        json!({"name": name, "served": true, "storage": storage,
               "schema": {"openAPIV3Schema": schema}, "subresources": {"status": {}}})
    };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{CONSTRAINTS_GROUP}"),
            "labels": {"app.kubernetes.io/managed-by": "mapguard"}
        },
        "spec": {
            "group": CONSTRAINTS_GROUP,
            "names": {"kind": kind, "listKind": format!("{kind}List"), "plural": plural,
                      "singular": plural, "categories": ["constraint", "constraints"]},
            "scope": "Cluster",
            "versions": [version("v1beta1", true), version("v1alpha1", false)]
        }
    })
}

/// The cluster's templates and constraints, as documents.
#[derive(Debug, Default)]
struct Objects {
    /// By template name.
    templates: BTreeMap<String, Json>,
    /// By (kind, constraint name).
    constraints: BTreeMap<(String, String), Json>,
}

impl Objects {
    fn documents(&self) -> Vec<(String, Json)> {
        let templates = self
            .templates
            .iter()
            .map(|(name, t)| (format!("cluster: ConstraintTemplate {name}"), t.clone()));
        let constraints = self
            .constraints
            .iter()
            .map(|((kind, name), c)| (format!("cluster: {kind} {name}"), c.clone()));
        templates.chain(constraints).collect()
    }
}

/// An object from the API server as a document (with apiVersion and kind,
/// which watch events may leave out).
fn document(object: &DynamicObject, resource: &ApiResource) -> Option<(String, Json)> {
    let name = object.metadata.name.clone()?;
    let mut json = serde_json::to_value(object).ok()?;
    json["apiVersion"] = json!(resource.api_version);
    json["kind"] = json!(resource.kind);
    Some((name, json))
}

/// Watches templates and their constraints until dropped.
pub async fn run(client: Client, store: Arc<PolicyStore>, metrics: Arc<Metrics>) {
    let objects = Arc::new(Mutex::new(Objects::default()));
    let changed = Arc::new(Notify::new());
    let _compiler = AbortOnDrop(tokio::spawn(compile_on_change(
        objects.clone(),
        changed.clone(),
        store,
        metrics,
    )));
    let mut watches: BTreeMap<String, AbortOnDrop> = BTreeMap::new();
    let resource = template_resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut initial: Option<BTreeMap<String, Json>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                let error = crate::telemetry::error_chain(&error);
                tracing::warn!(%error, "ConstraintTemplate watch failed; retrying");
                continue;
            }
        };
        {
            let mut held = objects.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Init => initial = Some(BTreeMap::new()),
                Event::InitApply(t) => {
                    if let (Some(buffer), Some((name, json))) =
                        (initial.as_mut(), document(&t, &resource))
                    {
                        buffer.insert(name, json);
                    }
                }
                Event::InitDone => held.templates = initial.take().unwrap_or_default(),
                Event::Apply(t) => {
                    if let Some((name, json)) = document(&t, &resource) {
                        held.templates.insert(name, json);
                    }
                }
                Event::Delete(t) => {
                    if let Some(name) = t.metadata.name {
                        held.templates.remove(&name);
                    }
                }
            }
            if initial.is_some() {
                continue;
            }
            let kinds: Vec<String> = held.templates.values().filter_map(template_kind).collect();
            watches.retain(|kind, _| kinds.contains(kind));
            held.constraints.retain(|(kind, _), _| kinds.contains(kind));
            for kind in kinds {
                if let std::collections::btree_map::Entry::Vacant(slot) = watches.entry(kind) {
                    let task = tokio::spawn(watch_constraints(
                        client.clone(),
                        slot.key().clone(),
                        objects.clone(),
                        changed.clone(),
                    ));
                    slot.insert(AbortOnDrop(task));
                }
            }
        }
        changed.notify_one();
    }
}

/// Creates the constraint CRD of `kind`, then keeps its constraints.
async fn watch_constraints(
    client: Client,
    kind: String,
    objects: Arc<Mutex<Objects>>,
    changed: Arc<Notify>,
) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = constraint_crd(&kind);
    let name = crd["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut delay = Duration::from_millis(500);
    while let Err(error) = crds
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
    {
        let error = crate::telemetry::error_chain(&error);
        tracing::warn!(%kind, %error, "cannot create the constraint CRD; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    tracing::info!(%kind, crd = %name, "constraint CRD in place; watching its constraints");
    let resource = constraint_resource(&kind);
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut initial: Option<BTreeMap<(String, String), Json>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                let error = crate::telemetry::error_chain(&error);
                tracing::warn!(%kind, %error, "constraint watch failed; retrying");
                continue;
            }
        };
        let key = |c: &DynamicObject| {
            document(c, &resource).map(|(name, json)| ((kind.clone(), name), json))
        };
        {
            let mut objects = objects.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Init => initial = Some(BTreeMap::new()),
                Event::InitApply(c) => {
                    if let (Some(buffer), Some((k, json))) = (initial.as_mut(), key(&c)) {
                        buffer.insert(k, json);
                    }
                }
                Event::InitDone => {
                    objects.constraints.retain(|(k, _), _| *k != kind);
                    objects
                        .constraints
                        .extend(initial.take().unwrap_or_default());
                }
                Event::Apply(c) => {
                    if let Some((k, json)) = key(&c) {
                        objects.constraints.insert(k, json);
                    }
                }
                Event::Delete(c) => {
                    if let Some((k, _)) = key(&c) {
                        objects.constraints.remove(&k);
                    }
                }
            }
            if initial.is_some() {
                continue;
            }
        }
        changed.notify_one();
    }
}

/// Recompiles after each burst of changes.
async fn compile_on_change(
    objects: Arc<Mutex<Objects>>,
    changed: Arc<Notify>,
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
) {
    loop {
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
        let documents = objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .documents();
        let count = documents.len();
        let store = store.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            store.set_cluster_documents(documents).map(|n| (n, store))
        })
        .await;
        match compiled {
            Ok(Ok((n, store))) => {
                metrics.policy_reload(ReloadResult::success);
                metrics.set_policies(store.current().policies());
                tracing::info!(
                    objects = count,
                    policies = n,
                    "Gatekeeper objects from the cluster compiled in"
                );
            }
            Ok(Err(error)) => {
                metrics.policy_reload(ReloadResult::failure);
                tracing::error!(%error, "Gatekeeper objects from the cluster rejected; the previous policies keep serving");
            }
            Err(error) => tracing::error!(%error, "compiling Gatekeeper objects panicked"),
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constraint_crd_is_cluster_scoped_and_named_after_the_kind() {
        let crd = constraint_crd("K8sRequiredLabels");
        assert_eq!(
            crd["metadata"]["name"],
            "k8srequiredlabels.constraints.gatekeeper.sh"
        );
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["kind"], "K8sRequiredLabels");
        let versions: Vec<&str> = crd["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["name"].as_str().expect("a name"))
            .collect();
        assert_eq!(versions, ["v1beta1", "v1alpha1"]);
        // Typed, so the API server accepts it.
        serde_json::from_value::<CustomResourceDefinition>(crd).expect("a CRD");
    }
}
