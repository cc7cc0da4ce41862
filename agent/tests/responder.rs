//! The responder against a real kube-apiserver, with the identity and RBAC
//! of `manifests/responder/rbac.yaml` (a token of its ServiceAccount):
//!
//! - its decisions: the threshold, dry run, eviction through the Eviction
//!   API refused and then allowed by a PodDisruptionBudget (whose status
//!   the test sets: there is no controller-manager here), the per-workload
//!   and cluster rate limits, cordoning; each decision an Event and a
//!   metric;
//! - its cluster budget cannot be forged: a tenant allowed to create Events
//!   everywhere forges the responder's Events, and the responder still
//!   acts; the tenant cannot write the budget's ConfigMap;
//! - its input: what the node agent (its ServiceAccount) writes in a
//!   record's status is acted on; a record a tenant creates and edits,
//!   status included, is not.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Node, Pod};
use k8s_openapi::api::events::v1::Event as NewEvent;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mapguard_agent::responder::budget::BUDGET_CONFIGMAP;
use mapguard_agent::responder::{
    Cause, Outcome, REASON_CORDONED, REASON_DRY_RUN, REASON_EVICTED, REASON_EVICTION_BLOCKED,
    REPORTING_CONTROLLER, Responder, ResponderConfig, ResponseAction, Trigger, input,
};
use mapguard_api::resource::MapViolation;
use mapguard_testenv::{BoundPod, TestEnv};
use prometheus_client::registry::Registry;
use serde_json::json;

const NODE: &str = "node-responder";
const NS: &str = "mapguard-system";

fn config(action: ResponseAction, dry_run: bool, cluster_per_hour: u32) -> ResponderConfig {
    ResponderConfig {
        action,
        threshold: 3,
        window: Duration::from_secs(600),
        workload_interval: Duration::from_secs(3600),
        cluster_per_hour,
        dry_run,
    }
}

fn trigger(namespace: &str, pod: &str, workload: &str) -> Trigger {
    Trigger {
        namespace: namespace.into(),
        pod: pod.into(),
        node: NODE.into(),
        workload: workload.into(),
        cause: Cause::Violation,
    }
}

fn manifest(path: &str) -> String {
    format!("{}/../manifests/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl apply -f` of `files` (paths under manifests/).
fn apply(env: &TestEnv, files: &[&str]) {
    let mut command = env
        .kubectl()
        .expect("kubectl (installed with the API server)");
    command.arg("apply");
    for f in files {
        command.args(["-f", &manifest(f)]);
    }
    let out = command.output().expect("run kubectl apply");
    assert!(
        out.status.success(),
        "kubectl apply {files:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// kube's configuration of a kubeconfig file.
async fn kube_config(path: &Path) -> kube::Config {
    let file = kube::config::Kubeconfig::read_from(path).expect("a kubeconfig");
    kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("kube config")
}

/// A client that acts as ServiceAccount `namespace/name` (a token of the
/// TokenRequest API), with its RBAC.
async fn client_of(env: &TestEnv, namespace: &str, name: &str) -> (kube::Config, Client) {
    let path = env
        .service_account_kubeconfig(namespace, name)
        .await
        .expect("a ServiceAccount kubeconfig");
    let config = kube_config(&path).await;
    let client = Client::try_from(config.clone()).expect("a client");
    (config, client)
}

async fn create<K>(api: &Api<K>, value: serde_json::Value)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let object: K = serde_json::from_value(value.clone()).expect("an object");
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create {value}: {e}"));
}

async fn create_pod(client: &Client, namespace: &str, name: &str, app: &str) -> String {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    BoundPod::new(namespace, name, NODE)
        .labels(&[("app", app)])
        .create(client)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Running and Ready, as a kubelet would report it: the Eviction API
    // ignores budgets for Pending Pods.
    let status = json!({"status": {"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    let pod = pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch Pod status");
    pod.metadata.uid.expect("a UID")
}

/// Reasons of the Events regarding `name` in `namespace` ("" for every
/// namespace).
async fn reasons(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let events: Api<CoreEvent> = if namespace.is_empty() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    };
    let mut reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .collect();
    reasons.sort();
    reasons
}

/// Sets the PDB's status as its controller would: `allowed` disruptions.
async fn set_pdb_status(client: &Client, namespace: &str, name: &str, allowed: i32) {
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    let pdb = pdbs.get(name).await.expect("GET PDB");
    let generation = pdb.metadata.generation.unwrap_or(1);
    let status = json!({"status": {
        "observedGeneration": generation,
        "disruptionsAllowed": allowed,
        "currentHealthy": 1 + allowed,
        "desiredHealthy": 1,
        "expectedPods": 1 + allowed,
    }});
    pdbs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch PDB status");
}

async fn deleting(client: &Client, namespace: &str, name: &str) -> bool {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("GET pod")
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
}

/// A tenant's ServiceAccount (`shop/tenant`) that may create Events in
/// every namespace, both APIs, and do anything with MapViolation records
/// in its namespace but write their status.
async fn tenant(env: &TestEnv, admin: &Client) -> Client {
    create(
        &Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), "shop"),
        json!({"metadata": {"name": "tenant"}}),
    )
    .await;
    let subject = json!([{"kind": "ServiceAccount", "name": "tenant", "namespace": "shop"}]);
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    create(
        &Api::<ClusterRole>::all(admin.clone()),
        json!({"metadata": {"name": "tenant-events"}, "rules": [
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ]}),
    )
    .await;
    create(
        &Api::<ClusterRoleBinding>::all(admin.clone()),
        json!({"metadata": {"name": "tenant-events"}, "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tenant-events"}}),
    )
    .await;
    create(
        &Api::<Role>::namespaced(admin.clone(), "shop"),
        json!({"metadata": {"name": "tenant-records"}, "rules": [
            {"apiGroups": ["mapguard.io"], "resources": ["mapviolations"], "verbs": ["*"]},
        ]}),
    )
    .await;
    create(
        &Api::<RoleBinding>::namespaced(admin.clone(), "shop"),
        json!({"metadata": {"name": "tenant-records"}, "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant-records"}}),
    )
    .await;
    client_of(env, "shop", "tenant").await.1
}

/// The tenant forges `n` Events that look like the responder's evictions
/// (reporting controller, reason, action), in `namespace`, regarding Pod
/// `decoy` there.
async fn forge_evictions(tenant: &Client, namespace: &str, n: usize) {
    let events: Api<NewEvent> = Api::namespaced(tenant.clone(), namespace);
    for i in 0..n {
        let event = NewEvent {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("forged-{i}")),
                ..Default::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some("mapguard-responder".into()),
            action: Some("Evict".into()),
            reason: Some(REASON_EVICTED.into()),
            type_: Some("Warning".into()),
            note: Some("evicted: forged".into()),
            regarding: Some(k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(namespace.into()),
                name: Some("decoy".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        events
            .create(&PostParams::default(), &event)
            .await
            .unwrap_or_else(|e| panic!("the tenant forges an Event in {namespace}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_acts_on_a_real_api_server() {
    let test = "the_responder_acts_on_a_real_api_server";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    apply(
        &env,
        &[
            "namespace.yaml",
            "crd/mapviolations.yaml",
            "responder/rbac.yaml",
        ],
    );
    let (kube, _) = client_of(&env, NS, "mapguard-responder").await;
    let responder = |c: ResponderConfig| Responder::new(&kube, NS, c).expect("a responder");
    env.create_node(NODE).await.expect("create the Node");
    for ns in ["shop", "pay"] {
        create(
            &Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
            json!({"metadata": {"name": ns}}),
        )
        .await;
    }
    create_pod(&client, "shop", "cart-1", "cart").await;
    create_pod(&client, "pay", "pay-1", "pay").await;
    create(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), "shop"),
        json!({
            "metadata": {"name": "cart"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "cart"}}},
        }),
    )
    .await;
    set_pdb_status(&client, "shop", "cart", 0).await;

    // A tenant who may create Events anywhere forges ten of the
    // responder's evictions, in its namespace and in the Node's.
    let tenant = tenant(&env, &client).await;
    forge_evictions(&tenant, "shop", 5).await;
    forge_evictions(&tenant, "default", 5).await;
    // ... and cannot touch the budget, which is in mapguard's namespace.
    let denied = Api::<ConfigMap>::namespaced(tenant.clone(), NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": BUDGET_CONFIGMAP},
                "data": {"actions": "9999999999 evict forged\n"}}))
            .expect("a ConfigMap"),
        )
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "the tenant writes the responder's budget: {denied:?}"
    );

    // Off: nothing, ever.
    let off = responder(config(ResponseAction::Off, false, 5));
    for _ in 0..5 {
        assert_eq!(
            off.observe(&trigger("shop", "cart-1", "Deployment/cart"))
                .await,
            Outcome::Off
        );
    }

    // Dry run: counts to the threshold, then records what it would do.
    let dry = responder(config(ResponseAction::Evict, true, 5));
    let t = trigger("shop", "cart-1", "Deployment/cart");
    assert_eq!(dry.observe(&t).await, Outcome::BelowThreshold { seen: 1 });
    assert_eq!(dry.observe(&t).await, Outcome::BelowThreshold { seen: 2 });
    assert_eq!(
        dry.observe(&t).await,
        Outcome::DryRun(ResponseAction::Evict)
    );
    assert!(
        !deleting(&client, "shop", "cart-1").await,
        "a dry run evicts nothing"
    );
    assert_eq!(reasons(&client, "shop", "cart-1").await, [REASON_DRY_RUN]);

    // Evict: the PDB allows no disruption, so the Eviction API refuses.
    // Two actions an hour: the ten forged Events do not count.
    let evict = responder(config(ResponseAction::Evict, false, 2));
    let mut registry = Registry::default();
    evict.register(&mut registry);
    for _ in 0..2 {
        evict.observe(&t).await;
    }
    match evict.observe(&t).await {
        Outcome::EvictionBlocked(message) => {
            assert!(message.contains("disruption budget"), "{message}")
        }
        other => panic!("expected the PDB to block the eviction: {other:?}"),
    }
    assert!(!deleting(&client, "shop", "cart-1").await);
    // Allowed now: the next trigger past the threshold evicts.
    set_pdb_status(&client, "shop", "cart", 1).await;
    for _ in 0..2 {
        evict.observe(&t).await;
    }
    assert_eq!(evict.observe(&t).await, Outcome::Evicted);
    assert!(
        deleting(&client, "shop", "cart-1").await,
        "the Pod is being deleted"
    );
    assert_eq!(
        reasons(&client, "shop", "cart-1").await,
        [REASON_EVICTED, REASON_EVICTION_BLOCKED, REASON_DRY_RUN]
    );
    // The same workload again within the interval: not acted on.
    for _ in 0..2 {
        evict.observe(&t).await;
    }
    assert_eq!(evict.observe(&t).await, Outcome::WorkloadRateLimited);

    // One eviction so far (the refused one was given back): a cordon of
    // another workload's node makes two.
    let cordon = responder(config(ResponseAction::Cordon, false, 2));
    let p = trigger("pay", "pay-1", "Deployment/pay");
    for _ in 0..2 {
        cordon.observe(&p).await;
    }
    assert_eq!(cordon.observe(&p).await, Outcome::Cordoned);
    let node = Api::<Node>::all(client.clone())
        .get(NODE)
        .await
        .expect("GET node");
    assert_eq!(
        node.spec.and_then(|s| s.unschedulable),
        Some(true),
        "the node is cordoned"
    );
    assert_eq!(reasons(&client, "", NODE).await, [REASON_CORDONED]);
    // Two actions in the last hour, in the budget: a third workload waits,
    // even on a responder that never acted itself (a restarted one).
    let fresh = responder(config(ResponseAction::Evict, false, 2));
    let other = trigger("pay", "pay-1", "StatefulSet/ledger");
    for _ in 0..2 {
        fresh.observe(&other).await;
    }
    assert_eq!(
        fresh.observe(&other).await,
        Outcome::ClusterRateLimited { in_last_hour: 2 }
    );
    let budget = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get(BUDGET_CONFIGMAP)
        .await
        .expect("the budget ConfigMap");
    let lines = budget.data.unwrap_or_default()["actions"].clone();
    assert_eq!(lines.lines().count(), 2, "two actions claimed: {lines}");
    assert!(
        lines.contains("evict pod shop/cart-1") && lines.contains(&format!("cordon node {NODE}")),
        "{lines}"
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    for (outcome, n) in [
        ("below_threshold", 6),
        ("eviction_blocked", 1),
        ("evicted", 1),
        ("workload_rate_limited", 1),
    ] {
        let line = format!(
            "mapguard_responder_actions_total{{action=\"evict\",outcome=\"{outcome}\"}} {n}\n"
        );
        assert!(text.contains(&line), "{line} in {text}");
    }
}

/// Writes record `name` of a race in `pod` seen `count` times: created
/// (status in the body too), replaced (status too), then its status
/// replaced through the status subresource, as the agent does.
async fn record(
    records: &Api<MapViolation>,
    name: &str,
    pod: &str,
    uid: &str,
    count: i64,
) -> Result<(), kube::Error> {
    let now = Time(Timestamp::now());
    let status = json!({
        "count": count, "firstSeen": now, "lastSeen": now, "action": "audit",
        "detectedBy": "writing_flag", "node": NODE, "pod": pod, "podUid": uid,
        "binary": "/app",
    });
    let mut object: MapViolation = serde_json::from_value(json!({
        "apiVersion": "mapguard.io/v1alpha1",
        "kind": "MapViolation",
        "metadata": {"name": name},
        "spec": {"kind": "concurrent_write", "op": "assign", "conflictingOp": "assign",
            "site": "main.main main.go:10", "stack": ["main.main /src/main.go:10"]},
        "status": status,
    }))
    .expect("a record");
    let stored = match records.get_opt(name).await? {
        Some(stored) => stored,
        None => records.create(&PostParams::default(), &object).await?,
    };
    object.metadata.resource_version = stored.metadata.resource_version;
    let mut replaced = records
        .replace(name, &PostParams::default(), &object)
        .await?;
    replaced.status = Some(serde_json::from_value(status).expect("a status"));
    records
        .replace_status(name, &PostParams::default(), &replaced)
        .await?;
    Ok(())
}

async fn wait_for_reason(client: &Client, namespace: &str, pod: &str, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reasons(client, namespace, pod)
        .await
        .iter()
        .any(|r| r == reason)
    {
        assert!(
            Instant::now() < deadline,
            "no {reason} Event on {namespace}/{pod}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_acts_on_what_only_the_agents_write() {
    let test = "the_responder_acts_on_what_only_the_agents_write";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    apply(
        &env,
        &[
            "namespace.yaml",
            "crd/mapviolations.yaml",
            "enforcer/rbac.yaml",
            "enforcer/rbac-records.yaml",
            "responder/rbac.yaml",
        ],
    );
    let out = env
        .kubectl()
        .expect("kubectl")
        .args([
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/mapviolations.mapguard.io",
        ])
        .output()
        .expect("kubectl wait");
    assert!(out.status.success(), "the CRD is served");
    env.create_node(NODE).await.expect("create the Node");
    create(
        &Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
        json!({"metadata": {"name": "shop"}}),
    )
    .await;
    let genuine = create_pod(&client, "shop", "cart-1", "cart").await;
    let target = create_pod(&client, "shop", "ledger-1", "ledger").await;
    let tenant = tenant(&env, &client).await;

    // The responder, as its ServiceAccount, in dry run at the first one.
    let (kube, responder_client) = client_of(&env, NS, "mapguard-responder").await;
    let responder = Responder::new(
        &kube,
        NS,
        ResponderConfig {
            threshold: 1,
            ..config(ResponseAction::Evict, true, 3)
        },
    )
    .expect("a responder");
    let mut registry = Registry::default();
    responder.register(&mut registry);
    let decisions = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text.lines()
            .filter(|l| l.starts_with("mapguard_responder_actions_total{"))
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let synced = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn(input::run(
        responder_client,
        Arc::new(responder),
        Arc::clone(&synced),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !synced.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the records are listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The tenant creates a record naming its other Pod, status and all,
    // and replaces it, status and all: the status is not written (the
    // subresource is refused), the responder sees nothing.
    let forged = Api::<MapViolation>::namespaced(tenant.clone(), "shop");
    let denied = record(&forged, "forged", "ledger-1", &target, 5).await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "the tenant writes a record's status: {denied:?}"
    );
    let written = forged.get("forged").await.expect("the tenant's record");
    assert!(written.status.is_none(), "{written:?}");
    // The agent's record of the other Pod: acted on.
    let (_, agent) = client_of(&env, NS, "mapguard-enforcer").await;
    let records = Api::<MapViolation>::namespaced(agent, "shop");
    record(&records, "genuine", "cart-1", &genuine, 1)
        .await
        .expect("the agent writes its record");
    wait_for_reason(&client, "shop", "cart-1", REASON_DRY_RUN).await;
    // The watch delivers in order: the tenant's record came first.
    assert_eq!(
        reasons(&client, "shop", "ledger-1").await,
        Vec::<String>::new()
    );
    // A repeat of the same pair (count 2): one more trigger, within the
    // workload's interval.
    record(&records, "genuine", "cart-1", &genuine, 2)
        .await
        .expect("the agent counts a repeat");
    let deadline = Instant::now() + Duration::from_secs(20);
    let expected = [
        r#"mapguard_responder_actions_total{action="evict",outcome="dry_run"} 1"#,
        r#"mapguard_responder_actions_total{action="evict",outcome="workload_rate_limited"} 1"#,
    ];
    let expected = expected.map(str::to_owned).into();
    while decisions() != expected {
        assert!(
            Instant::now() < deadline,
            "the agent's two counts, and nothing of the tenant's: {:?}",
            decisions()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
}
