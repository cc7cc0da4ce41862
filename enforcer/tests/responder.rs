//! The opt-in responder against a real kube-apiserver: the threshold, dry
//! run, eviction through the Eviction API refused and then allowed by a
//! PodDisruptionBudget (whose status the test sets: there is no
//! controller-manager here), the per-workload and cluster rate limits, and
//! cordoning; each decision an Event and a metric.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mapguard_enforcer::daemon::responder::{
    Cause, Outcome, REASON_CORDONED, REASON_DRY_RUN, REASON_EVICTED, REASON_EVICTION_BLOCKED,
    Responder, ResponderConfig, ResponseAction, Trigger,
};
use mapguard_testenv::TestEnv;
use prometheus_client::registry::Registry;
use serde_json::json;

const NODE: &str = "node-responder";

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
        workload: workload.into(),
        cause: Cause::Violation,
    }
}

async fn create_pod(client: &Client, namespace: &str, name: &str, app: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .expect("a Pod");
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create Pod {namespace}/{name}: {e}"));
    // Running and Ready, as a kubelet would report it: the Eviction API
    // ignores budgets for Pending Pods.
    let status = json!({"status": {"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch Pod status");
}

/// Reasons of the Events regarding `kind/name` in `namespace` ("" for the
/// cluster scope).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_acts_on_a_real_api_server() {
    let test = "the_responder_acts_on_a_real_api_server";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    let kubeconfig = kube::config::Kubeconfig::read_from(env.kubeconfig()).expect("kubeconfig");
    let kube = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    let responder =
        |c: ResponderConfig| Responder::new(&kube, NODE.into(), c).expect("a responder");
    env.create_node(NODE).await.expect("create the Node");
    for ns in ["shop", "pay"] {
        let namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).expect("a Namespace");
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create namespace");
    }
    create_pod(&client, "shop", "cart-1", "cart").await;
    create_pod(&client, "pay", "pay-1", "pay").await;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "cart"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "cart"}}},
    }))
    .expect("a PDB");
    Api::<PodDisruptionBudget>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &pdb)
        .await
        .expect("create PDB");
    set_pdb_status(&client, "shop", "cart", 0).await;

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

    // Another workload, but the cluster already had its limit (2 an hour)?
    // One eviction so far: a cordon elsewhere makes two.
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
    // Two actions in the last hour in the cluster: a third workload waits,
    // even on a responder that never acted itself.
    let fresh = responder(config(ResponseAction::Evict, false, 2));
    let other = trigger("pay", "pay-1", "StatefulSet/ledger");
    for _ in 0..2 {
        fresh.observe(&other).await;
    }
    assert_eq!(
        fresh.observe(&other).await,
        Outcome::ClusterRateLimited { in_last_hour: 2 }
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
