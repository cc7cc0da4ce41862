//! Gatekeeper's objects in the cluster, as Gatekeeper users apply them:
//! `kubectl apply -f template.yaml`, then a constraint of its kind.
//!
//! A reflector on ConstraintTemplates (`templates.gatekeeper.sh`) keeps their
//! list; for each template the constraint CRD of its kind
//! (`<kind>.constraints.gatekeeper.sh`, cluster-scoped, `v1beta1` and
//! `v1alpha1`) is created by server-side apply, and a reflector on that kind
//! keeps its constraints. Every change recompiles the policy set (files
//! plus these objects, [`PolicyStore::set_cluster_documents`]).
//!
//! Each object is admitted on its own: a template whose Rego does not
//! compile, a second template of a kind, a constraint whose parameters do
//! not fit its template's schema (the CRD accepts any `spec.parameters`)
//! or whose template is rejected, is left out alone, and its last admitted
//! version keeps serving if there is one. Each rejection is reported on the
//! object, as a Warning Event (reason `Rejected`, `kubectl describe`
//! shows it), in the log and in `mapguard_gatekeeper_rejected_objects`;
//! the other objects serve. `/readyz` waits until the templates and the
//! constraints of each template's kind were listed and compiled in once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{self, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use mapguard_kube::{Backoff, Reflector, Update};
use serde_json::{Value as Json, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::{GatekeeperKind, ReloadResult};
use crate::state::AppState;

const TEMPLATES_GROUP: &str = "templates.gatekeeper.sh";
const CONSTRAINTS_GROUP: &str = "constraints.gatekeeper.sh";
/// Field manager of the constraint CRDs mapguard creates.
const MANAGER: &str = "mapguard-webhook";
/// How long changes are gathered before one recompilation.
const SETTLE: Duration = Duration::from_millis(200);
/// Longest Event note the API accepts.
const MAX_NOTE: usize = 1024;

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
    /// Whether the templates were listed once.
    templates_listed: bool,
    /// Kinds whose constraints were listed once (or that can have none:
    /// their CRD was refused).
    kinds_listed: BTreeSet<String>,
}

fn template_label(name: &str) -> String {
    format!("cluster: ConstraintTemplate {name}")
}

fn constraint_label(kind: &str, name: &str) -> String {
    format!("cluster: {kind} {name}")
}

impl Objects {
    /// `(label, document)` of every object, templates first.
    fn documents(&self) -> Vec<(String, Json)> {
        let templates = self
            .templates
            .iter()
            .map(|(name, t)| (template_label(name), t.clone()));
        let constraints = self
            .constraints
            .iter()
            .map(|((kind, name), c)| (constraint_label(kind, name), c.clone()));
        templates.chain(constraints).collect()
    }

    /// The kinds the templates define.
    fn kinds(&self) -> Vec<String> {
        self.templates.values().filter_map(template_kind).collect()
    }

    /// Whether every object of the cluster was listed once.
    fn listed(&self) -> bool {
        self.templates_listed && self.kinds().iter().all(|k| self.kinds_listed.contains(k))
    }

    /// The object a label names, and its kind.
    fn reference(&self, label: &str) -> Option<(GatekeeperKind, ObjectReference)> {
        let found = self
            .templates
            .iter()
            .find(|(name, _)| template_label(name) == label)
            .map(|(_, t)| (GatekeeperKind::ConstraintTemplate, t))
            .or_else(|| {
                self.constraints
                    .iter()
                    .find(|((kind, name), _)| constraint_label(kind, name) == label)
                    .map(|(_, c)| (GatekeeperKind::Constraint, c))
            });
        let (kind, object) = found?;
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Json::as_str)
                .map(str::to_owned)
        };
        Some((
            kind,
            ObjectReference {
                api_version: text("/apiVersion"),
                kind: text("/kind"),
                name: text("/metadata/name"),
                uid: text("/metadata/uid"),
                resource_version: text("/metadata/resourceVersion"),
                ..ObjectReference::default()
            },
        ))
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

/// Watches templates and their constraints until dropped; marks `state`
/// ready once all were listed and compiled in.
pub async fn run(client: Client, state: AppState) {
    let objects = Arc::new(Mutex::new(Objects::default()));
    let changed = Arc::new(Notify::new());
    let _compiler = AbortOnDrop(tokio::spawn(compile_on_change(
        objects.clone(),
        changed.clone(),
        state.clone(),
    )));
    let _reporter = AbortOnDrop(tokio::spawn(report_rejections(
        client.clone(),
        objects.clone(),
        state,
    )));
    let mut watches: BTreeMap<String, AbortOnDrop> = BTreeMap::new();
    let resource = template_resource();
    let reflector = Reflector::<DynamicObject>::new(resource.clone());
    let listed = reflector.cache();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let publish = |update| {
        {
            let mut held = objects.lock().unwrap_or_else(|e| e.into_inner());
            match update {
                Update::Listed => {
                    held.templates = listed
                        .state()
                        .iter()
                        .filter_map(|t| document(t, &resource))
                        .collect();
                    held.templates_listed = true;
                }
                Update::Applied(t) => {
                    if let Some((name, json)) = document(&t, &resource) {
                        held.templates.insert(name, json);
                    }
                }
                Update::Deleted(t) => {
                    if let Some(name) = t.metadata.name {
                        held.templates.remove(&name);
                    }
                }
                Update::Failed(error) => {
                    let error = crate::telemetry::error_chain(&error);
                    tracing::warn!(%error, "ConstraintTemplate watch failed; retrying");
                    return;
                }
            }
            let kinds = held.kinds();
            watches.retain(|kind, _| kinds.contains(kind));
            held.constraints.retain(|(kind, _), _| kinds.contains(kind));
            held.kinds_listed.retain(|kind| kinds.contains(kind));
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
    };
    reflector
        .run(api, watcher::Config::default(), publish)
        .await;
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
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while let Err(error) = crds
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
    {
        if matches!(&error, kube::Error::Api(status) if status.is_invalid()) {
            // No constraint of this kind can exist: nothing to wait for.
            let mut held = objects.lock().unwrap_or_else(|e| e.into_inner());
            if held.kinds_listed.insert(kind.clone()) {
                changed.notify_one();
            }
        }
        let error = crate::telemetry::error_chain(&error);
        tracing::warn!(%kind, %error, "cannot create the constraint CRD; retrying");
        tokio::time::sleep(backoff.next()).await;
    }
    tracing::info!(%kind, crd = %name, "constraint CRD in place; watching its constraints");
    let resource = constraint_resource(&kind);
    let reflector = Reflector::<DynamicObject>::new(resource.clone());
    let listed = reflector.cache();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let key =
        |c: &DynamicObject| document(c, &resource).map(|(name, json)| ((kind.clone(), name), json));
    let publish = |update| {
        {
            let mut objects = objects.lock().unwrap_or_else(|e| e.into_inner());
            match update {
                Update::Listed => {
                    objects.constraints.retain(|(k, _), _| *k != kind);
                    let list = listed.state();
                    objects
                        .constraints
                        .extend(list.iter().filter_map(|c| key(c)));
                    objects.kinds_listed.insert(kind.clone());
                }
                Update::Applied(c) => {
                    if let Some((k, json)) = key(&c) {
                        objects.constraints.insert(k, json);
                    }
                }
                Update::Deleted(c) => {
                    if let Some((k, _)) = key(&c) {
                        objects.constraints.remove(&k);
                    }
                }
                Update::Failed(error) => {
                    let error = crate::telemetry::error_chain(&error);
                    tracing::warn!(%kind, %error, "constraint watch failed; retrying");
                    return;
                }
            }
        }
        changed.notify_one();
    };
    reflector
        .run(api, watcher::Config::default(), publish)
        .await;
}

/// Recompiles after each burst of changes; the first compilation of
/// everything listed makes the webhook ready.
async fn compile_on_change(objects: Arc<Mutex<Objects>>, changed: Arc<Notify>, state: AppState) {
    let metrics = state.metrics().clone();
    loop {
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
        let (documents, listed) = {
            let held = objects.lock().unwrap_or_else(|e| e.into_inner());
            (held.documents(), held.listed())
        };
        let count = documents.len();
        let store = state.policies().clone();
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
                    rejected = store.rejections().borrow().len(),
                    policies = n,
                    listed,
                    "Gatekeeper objects from the cluster compiled in"
                );
                if listed {
                    state.set_gatekeeper_synced(true);
                }
            }
            Ok(Err(error)) => {
                metrics.policy_reload(ReloadResult::failure);
                tracing::error!(%error, "Gatekeeper objects from the cluster rejected; the previous policies keep serving");
            }
            Err(error) => tracing::error!(%error, "compiling Gatekeeper objects panicked"),
        }
    }
}

/// Reports each rejected object once per distinct error: a Warning Event
/// on it, a log line, and the count per kind in
/// `mapguard_gatekeeper_rejected_objects`.
async fn report_rejections(client: Client, objects: Arc<Mutex<Objects>>, state: AppState) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: MANAGER.into(),
            instance: None,
        },
    );
    let mut rejections = state.policies().rejections();
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let list = rejections.borrow_and_update().clone();
        let mut now = BTreeMap::new();
        let mut templates = 0;
        let mut constraints = 0;
        for rejection in list.iter() {
            let found = objects
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reference(&rejection.label);
            // Deleted since: the next compilation leaves it out.
            let Some((kind, reference)) = found else {
                continue;
            };
            match kind {
                GatekeeperKind::ConstraintTemplate => templates += 1,
                GatekeeperKind::Constraint => constraints += 1,
            }
            now.insert(rejection.label.clone(), rejection.message.clone());
            if reported.get(&rejection.label) == Some(&rejection.message) {
                continue;
            }
            let serving = if rejection.previous_serving {
                "its previous version keeps serving"
            } else {
                "not served"
            };
            tracing::warn!(
                object = %rejection.label,
                error = %rejection.message,
                serving,
                "Gatekeeper object rejected"
            );
            let event = events::Event {
                type_: EventType::Warning,
                reason: "Rejected".into(),
                note: Some(truncate(
                    format!("mapguard: {}; {serving}", rejection.message),
                    MAX_NOTE,
                )),
                action: "Compile".into(),
                secondary: None,
            };
            if let Err(error) = recorder.publish(&event, &reference).await {
                let error = crate::telemetry::error_chain(&error);
                tracing::warn!(object = %rejection.label, %error, "cannot publish the rejection Event");
            }
        }
        let metrics = state.metrics();
        metrics.set_gatekeeper_rejected(GatekeeperKind::ConstraintTemplate, templates);
        metrics.set_gatekeeper_rejected(GatekeeperKind::Constraint, constraints);
        reported = now;
        if rejections.changed().await.is_err() {
            return;
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
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
