//! Violation records and Pod Events against a real kube-apiserver
//! (mapguard-testenv): the CRD as committed, records created, counted,
//! bounded and repaired, Events aggregated into series, RBAC failures, and
//! an API server outage ridden out by the queue.
//!
//! One API server serves every check (a start costs seconds), so they run
//! in order in one test, each a function named after what it shows; the
//! outage comes last since it stops the API server.

use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mapguard_agent::records::{
    Admission, EVENT_REASON, Origin, PodRef, RecordWriter, RecordsConfig,
};
use mapguard_api::resource::MapViolation;
use mapguard_api::vocab::{Kind, Op};
use mapguard_enforcer::report::events::ViolationRecord;
use mapguard_testenv::TestEnv;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prometheus_client::registry::Registry;
use serde_json::json;

mod records_support;

use records_support::{
    BOUND, Logs, NODE, PATIENCE, capture_logs, config, create_pod, encode, first_of_kind, flush,
    metric, origin, pod_events, service_account_client, text, violation, wait_until,
};

const CRD_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../manifests/crd/mapviolations.yaml"
);
const RBAC_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../manifests/enforcer/rbac-records.yaml"
);

// The committed CRD manifest is checked against the generated one in
// mapguard-api (api/src/resource.rs).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_events_in_a_real_api_server() {
    let test = "records_and_events_in_a_real_api_server";
    let logs = capture_logs();
    let Some(mut env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let started = Instant::now();
    let client = env.client();
    env.create_node(NODE).await.expect("create a Node");
    the_crd_applies_and_is_served(&client).await;

    let mut registry = Registry::default();
    let writer = RecordWriter::spawn(client.clone(), config(64), &mut registry);

    a_violation_creates_a_record_with_both_call_sites(&client, &writer).await;
    kubectl_get_prints_the_columns(&env);
    repeats_update_the_count_of_one_record(&client, &writer).await;
    two_agents_count_one_record_without_losing_updates(&client).await;
    events_appear_on_the_pod_and_repeats_aggregate(&env, &client, &writer, &registry).await;
    the_namespace_bound_drops_and_counts(&client, &writer, &registry).await;
    a_record_edited_into_another_pair_is_repaired(&client, &writer, &registry, logs).await;
    a_record_of_an_invalid_shape_is_replaced(&client, &writer, &registry, logs).await;
    a_deleted_record_is_recreated(&client, &writer).await;
    rbac_forbidding_create_is_a_clear_counted_failure(&env, &client, logs).await;
    the_agents_rbac_manifest_is_enough(&env, &client).await;
    a_hung_api_server_costs_a_timeout_and_a_retry(&env, &client).await;
    an_outage_is_ridden_out_by_the_queue(&mut env, &client, logs).await;
    eprintln!("{test}: checks took {:.1?}", started.elapsed());
}

async fn the_crd_applies_and_is_served(client: &Client) {
    let text = std::fs::read_to_string(CRD_MANIFEST).expect("read the CRD manifest");
    let crd: CustomResourceDefinition =
        yaml_serde::from_str(&text).expect("the CRD manifest parses");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("the API server accepts the CRD (a structural schema)");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stored = crds
            .get("mapviolations.mapguard.io")
            .await
            .expect("GET the CRD");
        let established = stored
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the CRD never became Established"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Established is set before discovery serves it everywhere: wait for a list.
    let mvs: Api<MapViolation> = Api::all(client.clone());
    wait_until("mapviolations are listed", || async {
        mvs.list(&ListParams::default()).await.is_ok()
    })
    .await;
}

async fn a_violation_creates_a_record_with_both_call_sites(client: &Client, writer: &RecordWriter) {
    let pod = create_pod(client, "shop", "cart-1").await;
    let v = violation(
        Kind::ConcurrentWrite,
        Op::Assign,
        Op::Delete,
        "main.assigner /src/cart/main.go:38",
        Some("main.deleter /src/cart/main.go:26"),
        "2026-11-24T21:20:16.965421Z",
    );
    let origin = Origin {
        pod: &pod,
        container: Some("app"),
        go_version: Some("go1.24.4"),
    };
    assert_eq!(writer.submit(&v, origin), Admission::Queued);
    flush(writer).await;

    let name = v.pair.object_name();
    let record = Api::<MapViolation>::namespaced(client.clone(), "shop")
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("the record {name} exists: {e}"));
    assert_eq!(record.spec.kind, "concurrent_write");
    assert_eq!(
        (record.spec.op.as_str(), record.spec.conflicting_op.as_str()),
        ("assign", "delete")
    );
    assert_eq!(record.spec.site, "main.assigner main.go:38");
    assert_eq!(
        record.spec.conflicting_site.as_deref(),
        Some("main.deleter main.go:26")
    );
    assert_eq!(record.spec.stack, text(&v.stack));
    assert_eq!(record.spec.conflicting_stack, text(&v.conflicting_stack));
    let status = record.status.expect("the record has a status");
    assert_eq!(status.count, 1);
    assert_eq!(
        (status.pod.as_str(), status.pod_uid.as_str()),
        ("cart-1", pod.uid.as_str())
    );
    assert_eq!(status.container.as_deref(), Some("app"));
    assert_eq!(status.go_version.as_deref(), Some("go1.24.4"));
    assert_eq!(
        (status.action.as_str(), status.detected_by.as_str()),
        ("killed", "writing_flag")
    );
    assert_eq!(
        (status.node.as_str(), status.binary.as_str()),
        (NODE, "/app/cart")
    );
    assert_eq!(
        status.first_seen.0.to_string(),
        // metav1.Time keeps whole seconds.
        "2026-11-24T21:20:16Z"
    );
    assert_eq!(status.first_seen, status.last_seen);
}

fn kubectl_get_prints_the_columns(env: &TestEnv) {
    let Some(mut kubectl) = env.kubectl() else {
        eprintln!("kubectl not installed: the printer-column check is left out");
        return;
    };
    // The short name, as users type it.
    let output = kubectl
        .args(["get", "mv", "-n", "shop"])
        .output()
        .expect("run kubectl");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("a header line")
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "KIND",
            "ACTION",
            "POD",
            "COUNT",
            "LAST SEEN",
            "CALL SITE",
            "AGE"
        ],
        "{text}"
    );
    let row = lines.next().expect("one record row");
    for cell in [
        "concurrent-write-",
        "concurrent_write",
        "killed",
        "cart-1",
        " 1 ",
        "main.assigner main.go:38",
    ] {
        assert!(row.contains(cell), "{cell:?} missing from the row: {text}");
    }
    let wide = env
        .kubectl()
        .expect("kubectl")
        .args(["get", "mapviolations", "-n", "shop", "-o", "wide"])
        .output()
        .expect("run kubectl");
    let wide = String::from_utf8_lossy(&wide.stdout);
    assert!(
        wide.contains("CONFLICTING SITE")
            && wide.contains("main.deleter main.go:26")
            && wide.contains(NODE),
        "{wide}"
    );
}

async fn repeats_update_the_count_of_one_record(client: &Client, writer: &RecordWriter) {
    let pod = create_pod(client, "shop", "cart-2").await;
    let v = violation(
        Kind::ConcurrentWrite,
        Op::Assign,
        Op::Delete,
        "main.assigner /src/cart/main.go:38",
        Some("main.deleter /src/cart/main.go:26"),
        "2026-11-24T21:25:00Z",
    );
    // One at a time: each repeat is its own write (and its own Event).
    for _ in 0..3 {
        let admission = writer.submit(&v, origin(&pod));
        assert_ne!(admission, Admission::Dropped);
        flush(writer).await;
    }
    let records = Api::<MapViolation>::namespaced(client.clone(), "shop")
        .list(&ListParams::default())
        .await
        .expect("list records");
    assert_eq!(records.items.len(), 1, "repeats must not create objects");
    let status = records.items[0].status.clone().expect("status");
    assert_eq!(status.count, 4);
    assert_eq!(status.pod, "cart-2", "the last Pod");
    assert_eq!(
        status.first_seen.0.to_string(),
        // metav1.Time keeps whole seconds.
        "2026-11-24T21:20:16Z"
    );
    assert_eq!(status.last_seen.0.to_string(), "2026-11-24T21:25:00Z");
}

async fn two_agents_count_one_record_without_losing_updates(client: &Client) {
    // A Deployment's replicas on two nodes race at the same call sites.
    let (mut registry_a, mut registry_b) = (Registry::default(), Registry::default());
    let a = RecordWriter::spawn(client.clone(), config(8), &mut registry_a);
    let b = RecordWriter::spawn(
        client.clone(),
        RecordsConfig {
            node: "node-b".to_owned(),
            ..config(8)
        },
        &mut registry_b,
    );
    let pod_a = create_pod(client, "shared", "web-a").await;
    let pod_b = create_pod(client, "shared", "web-b").await;
    let v = violation(
        Kind::ConcurrentWrite,
        Op::Assign,
        Op::Assign,
        "main.store /src/web/cache.go:17",
        Some("main.store /src/web/cache.go:17"),
        "2026-11-24T21:40:00Z",
    );
    // Each agent writes each repeat as it comes, at the same time as the other.
    tokio::join!(agent(&a, &pod_a, &v), agent(&b, &pod_b, &v));
    let record = Api::<MapViolation>::namespaced(client.clone(), "shared")
        .get(&v.pair.object_name())
        .await
        .expect("the shared record");
    assert_eq!(record.status.expect("status").count, 10, "no update lost");
    let created = r#"mapguard_violation_record_writes_total{operation="created"}"#;
    assert_eq!(
        metric(&registry_a, created) + metric(&registry_b, created),
        1.0
    );
}

/// One agent writing five repeats of `v` from `pod`, each as it comes.
async fn agent(writer: &RecordWriter, pod: &PodRef, v: &ViolationRecord) {
    for _ in 0..5 {
        writer.submit(v, origin(pod));
        flush(writer).await;
    }
}

async fn events_appear_on_the_pod_and_repeats_aggregate(
    env: &TestEnv,
    client: &Client,
    writer: &RecordWriter,
    registry: &Registry,
) {
    let events = pod_events(client, "shop", "cart-1").await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let first = &events[0];
    assert_eq!(first.type_.as_deref(), Some("Warning"));
    assert_eq!(first.reason.as_deref(), Some(EVENT_REASON));
    assert_eq!(first.action.as_deref(), Some("Kill"));
    let note = first.note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with(
            "concurrent_write in container app: assign at main.assigner main.go:38 while delete \
             at main.deleter main.go:26; process killed"
        ),
        "{note}"
    );
    let regarding = first.regarding.as_ref().expect("regarding");
    assert_eq!(
        regarding.field_path.as_deref(),
        Some("spec.containers{app}")
    );
    let related = first
        .related
        .as_ref()
        .expect("the record is the related object");
    assert_eq!(related.kind.as_deref(), Some("MapViolation"));

    // cart-2 saw the same race three times: one Event, a series of three.
    let events = pod_events(client, "shop", "cart-2").await;
    assert_eq!(events.len(), 1, "repeats must aggregate: {events:#?}");
    let series = events[0].series.as_ref().expect("a series");
    assert_eq!(series.count, 3);

    // Another race in the same Pod is its own Event, with its own message.
    let pod = PodRef {
        namespace: "shop".to_owned(),
        name: "cart-1".to_owned(),
        uid: first
            .regarding
            .as_ref()
            .and_then(|r| r.uid.clone())
            .expect("uid"),
    };
    let other = violation(
        Kind::DeleteDuringIteration,
        Op::Delete,
        Op::IterNext,
        "main.evict /src/cart/cache.go:71",
        Some("main.snapshot /src/cart/cache.go:90"),
        "2026-11-24T21:30:00Z",
    );
    writer.submit(&other, origin(&pod));
    flush(writer).await;
    let events = pod_events(client, "shop", "cart-1").await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.note.as_deref().is_some_and(|n| n.contains(
                "delete at main.evict cache.go:71 while iterate at main.snapshot cache.go:90"
            ))),
        "{events:#?}"
    );
    assert_eq!(metric(registry, "mapguard_violation_events_total"), 5.0);

    if let Some(mut kubectl) = env.kubectl() {
        let output = kubectl
            .args(["describe", "pod", "-n", "shop", "cart-2"])
            .output()
            .expect("run kubectl");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find(|l| l.contains(EVENT_REASON))
            .unwrap_or_else(|| panic!("no {EVENT_REASON} Event in kubectl describe:\n{text}"));
        assert!(
            line.contains("Warning") && line.contains("(x3 over"),
            "{line}"
        );
    }
}

async fn the_namespace_bound_drops_and_counts(
    client: &Client,
    writer: &RecordWriter,
    registry: &Registry,
) {
    let pod = create_pod(client, "flood", "crashloop").await;
    let sites: Vec<String> = (0..BOUND + 2)
        .map(|i| format!("main.handler{i} /src/flood/main.go:{}", 10 + i))
        .collect();
    let v = |site: &str| {
        violation(
            Kind::ConcurrentWrite,
            Op::Assign,
            Op::Assign,
            site,
            Some("main.other /src/flood/main.go:5"),
            "2026-11-24T22:00:00Z",
        )
    };
    for site in &sites {
        writer.submit(&v(site), origin(&pod));
    }
    flush(writer).await;
    let mvs: Api<MapViolation> = Api::namespaced(client.clone(), "flood");
    let stored = mvs.list(&ListParams::default()).await.expect("list");
    assert_eq!(stored.items.len(), BOUND, "the bound holds");
    let dropped = r#"mapguard_violations_dropped_total{target="record",reason="namespace_bound"}"#;
    assert_eq!(metric(registry, dropped), 2.0);

    // A repeat of a recorded pair still counts; a new pair is still dropped.
    writer.submit(&v(&sites[0]), origin(&pod));
    writer.submit(&v(&sites[BOUND + 1]), origin(&pod));
    flush(writer).await;
    let first = mvs
        .get(&v(&sites[0]).pair.object_name())
        .await
        .expect("the first pair was recorded");
    assert_eq!(first.status.expect("status").count, 2);
    assert_eq!(
        mvs.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        BOUND
    );
    assert_eq!(metric(registry, dropped), 3.0);
    // The Pod's Event says so for a dropped pair, and names the record of
    // a recorded one.
    let notes: Vec<String> = pod_events(client, "flood", "crashloop")
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(notes.len(), BOUND + 2, "one Event per pair: {notes:#?}");
    let unrecorded = notes
        .iter()
        .filter(|n| {
            n.ends_with("(not recorded: the namespace holds its bound of MapViolation records)")
        })
        .count();
    assert_eq!(unrecorded, 2, "{notes:#?}");
    // Other namespaces have bounds of their own.
    assert_eq!(
        Api::<MapViolation>::namespaced(client.clone(), "shop")
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
}

async fn a_record_edited_into_another_pair_is_repaired(
    client: &Client,
    writer: &RecordWriter,
    registry: &Registry,
    logs: &Logs,
) {
    let pod = create_pod(client, "edits", "api-1").await;
    let v = violation(
        Kind::ConcurrentWrite,
        Op::Clear,
        Op::Assign,
        "main.reset /src/api/state.go:12",
        Some("main.put /src/api/state.go:30"),
        "2026-11-24T23:00:00Z",
    );
    writer.submit(&v, origin(&pod));
    flush(writer).await;
    let name = v.pair.object_name();
    let mvs: Api<MapViolation> = Api::namespaced(client.clone(), "edits");
    mvs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"site": "hand.edited x.go:1", "kind": "made_up"}})),
    )
    .await
    .expect("edit the record by hand");

    writer.submit(&v, origin(&pod));
    flush(writer).await;
    let record = mvs.get(&name).await.expect("the record");
    assert_eq!(record.spec.site, "main.reset state.go:12");
    assert_eq!(record.spec.kind, "concurrent_write");
    assert_eq!(
        record.status.expect("status").count,
        2,
        "the count survives the repair"
    );
    assert_eq!(
        metric(
            registry,
            r#"mapguard_violation_record_writes_total{operation="repaired"}"#
        ),
        1.0
    );
    logs.expect(&format!(
        "MapViolation edits/{name} does not hold the call-site pair its name stands for"
    ));
}

async fn a_record_of_an_invalid_shape_is_replaced(
    client: &Client,
    writer: &RecordWriter,
    registry: &Registry,
    logs: &Logs,
) {
    let pod = create_pod(client, "edits", "api-2").await;
    let v = violation(
        Kind::DeleteDuringRead,
        Op::Delete,
        Op::Read,
        "main.drop /src/api/state.go:50",
        Some("main.get /src/api/state.go:60"),
        "2026-11-24T23:10:00Z",
    );
    writer.submit(&v, origin(&pod));
    flush(writer).await;
    let name = v.pair.object_name();

    // As if another release's CRD (or a hand-edited one) had been in place:
    // lift the schema, store a record no mapguard type reads, put ours back.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let lax = json!({"spec": {"versions": [{
        "name": "v1alpha1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
        "subresources": {"status": {}},
    }]}});
    crds.patch(
        "mapviolations.mapguard.io",
        &PatchParams::default(),
        &Patch::Merge(lax),
    )
    .await
    .expect("lift the CRD's schema");
    let mvs: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "edits",
        &kube::api::ApiResource::erase::<MapViolation>(&()),
    );
    let broken = json!({"spec": {"stack": "not a list"}, "status": {"count": "many"}});
    wait_until("the lax schema takes a broken record", || async {
        mvs.patch(&name, &PatchParams::default(), &Patch::Merge(&broken))
            .await
            .is_ok()
            && mvs
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&broken))
                .await
                .is_ok_and(|o| o.data["status"]["count"] == "many")
    })
    .await;
    let crd: CustomResourceDefinition = yaml_serde::from_str(
        &std::fs::read_to_string(CRD_MANIFEST).expect("read the CRD manifest"),
    )
    .expect("the CRD manifest parses");
    let mut current = crds
        .get("mapviolations.mapguard.io")
        .await
        .expect("GET the CRD");
    current.spec = crd.spec;
    crds.replace(
        "mapviolations.mapguard.io",
        &PostParams::default(),
        &current,
    )
    .await
    .expect("put the CRD's schema back");
    // The API server validates with the restored schema again: a spec of
    // the wrong type is refused.
    let probe = json!({"apiVersion": "mapguard.io/v1alpha1", "kind": "MapViolation",
        "metadata": {"name": "probe"}, "spec": {"kind": 5}});
    let probe: kube::api::DynamicObject = serde_json::from_value(probe).expect("probe");
    wait_until("the schema is enforced again", || async {
        mvs.create(
            &PostParams {
                dry_run: true,
                field_manager: None,
            },
            &probe,
        )
        .await
        .is_err()
    })
    .await;
    assert!(
        Api::<MapViolation>::namespaced(client.clone(), "edits")
            .get(&name)
            .await
            .is_err(),
        "the stored record no longer parses as a MapViolation"
    );

    writer.submit(&v, origin(&pod));
    flush(writer).await;
    let record = Api::<MapViolation>::namespaced(client.clone(), "edits")
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("the record {name} parses again: {e}"));
    assert_eq!(record.spec.stack, text(&v.stack));
    let status = record.status.expect("status");
    assert_eq!((status.count, status.pod.as_str()), (1, "api-2"));
    assert_eq!(
        metric(
            registry,
            r#"mapguard_violation_record_writes_total{operation="repaired"}"#
        ),
        2.0
    );
    logs.expect(&format!("MapViolation edits/{name} has an invalid shape"));
}

async fn a_deleted_record_is_recreated(client: &Client, writer: &RecordWriter) {
    let pod = create_pod(client, "edits", "api-3").await;
    let v = violation(
        Kind::ConcurrentWrite,
        Op::Assign,
        Op::Delete,
        "main.a /src/api/x.go:1",
        Some("main.b /src/api/x.go:2"),
        "2026-11-24T23:20:00Z",
    );
    let mvs: Api<MapViolation> = Api::namespaced(client.clone(), "edits");
    let name = v.pair.object_name();
    writer.submit(&v, origin(&pod));
    flush(writer).await;
    mvs.delete(&name, &DeleteParams::default())
        .await
        .expect("delete the record");
    writer.submit(&v, origin(&pod));
    flush(writer).await;
    let record = mvs.get(&name).await.expect("recreated");
    assert_eq!(record.status.expect("status").count, 1);
}

async fn rbac_forbidding_create_is_a_clear_counted_failure(
    env: &TestEnv,
    client: &Client,
    logs: &Logs,
) {
    // The agent's rules without `create` on mapviolations.
    let mut role: ClusterRole = first_of_kind(RBAC_MANIFEST, "ClusterRole");
    role.metadata.name = Some("records-without-create".to_owned());
    for rule in role.rules.iter_mut().flatten() {
        if rule
            .resources
            .as_ref()
            .is_some_and(|r| r.iter().any(|r| r == "mapviolations"))
        {
            rule.verbs.retain(|v| v != "create");
        }
    }
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("create the ClusterRole");
    let limited = service_account_client(env, client, "limited", "records-without-create").await;

    let mut registry = Registry::default();
    let writer = RecordWriter::spawn(limited, config(8), &mut registry);
    let pod = create_pod(client, "rbac", "denied-1").await;
    let v = violation(
        Kind::ConcurrentWrite,
        Op::Assign,
        Op::Delete,
        "main.w /src/r/main.go:3",
        Some("main.d /src/r/main.go:4"),
        "2026-11-25T00:00:00Z",
    );
    writer.submit(&v, origin(&pod));
    flush(&writer).await;
    let name = v.pair.object_name();
    assert!(
        Api::<MapViolation>::namespaced(client.clone(), "rbac")
            .get(&name)
            .await
            .is_err(),
        "nothing may be created without the verb"
    );
    assert_eq!(
        metric(
            &registry,
            r#"mapguard_violation_write_failures_total{target="record",reason="forbidden"}"#
        ),
        1.0
    );
    logs.expect(&format!(
        "cannot create MapViolation rbac/{name}: forbidden by RBAC"
    ));
    logs.expect("the node agent needs the rules in manifests/enforcer/rbac-records.yaml");
    // The writer lives on: the Event is still published, and a second
    // violation fails the same way.
    assert_eq!(metric(&registry, "mapguard_violation_events_total"), 1.0);
    writer.submit(&v, origin(&pod));
    flush(&writer).await;
    assert_eq!(
        metric(
            &registry,
            r#"mapguard_violation_write_failures_total{target="record",reason="forbidden"}"#
        ),
        2.0
    );
}

async fn the_agents_rbac_manifest_is_enough(env: &TestEnv, client: &Client) {
    let role: ClusterRole = first_of_kind(RBAC_MANIFEST, "ClusterRole");
    let role_name = role.metadata.name.clone().expect("role name");
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("create the manifest's ClusterRole");
    let agent = service_account_client(env, client, "mapguard-enforcer", &role_name).await;
    let mut registry = Registry::default();
    let writer = RecordWriter::spawn(agent, config(8), &mut registry);
    let pod = create_pod(client, "rbac", "allowed-1").await;
    let v = violation(
        Kind::ConcurrentWrite,
        Op::Assign,
        Op::Delete,
        "main.w /src/r/ok.go:3",
        Some("main.d /src/r/ok.go:4"),
        "2026-11-25T00:10:00Z",
    );
    let name = v.pair.object_name();
    let mvs: Api<MapViolation> = Api::namespaced(client.clone(), "rbac");
    // create, update, repair after an edit (update), repair after a delete.
    writer.submit(&v, origin(&pod));
    flush(&writer).await;
    writer.submit(&v, origin(&pod));
    flush(&writer).await;
    mvs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"site": "edited"}})),
    )
    .await
    .expect("edit");
    writer.submit(&v, origin(&pod));
    flush(&writer).await;
    let record = mvs.get(&name).await.expect("the record");
    assert_eq!(record.status.expect("status").count, 3);
    assert_eq!(record.spec.site, "main.w ok.go:3");
    let text = encode(&registry);
    assert!(
        !text.contains("mapguard_violation_write_failures_total{"),
        "{text}"
    );
    assert_eq!(
        metric(&registry, "mapguard_violation_events_total"),
        3.0,
        "{text}"
    );
}

async fn a_hung_api_server_costs_a_timeout_and_a_retry(env: &TestEnv, client: &Client) {
    let mut registry = Registry::default();
    let config = RecordsConfig {
        write_timeout: Duration::from_secs(1),
        ..config(8)
    };
    let writer = RecordWriter::spawn(client.clone(), config, &mut registry);
    let pod = create_pod(client, "hang", "svc-1").await;
    let v = violation(
        Kind::ConcurrentWrite,
        Op::Assign,
        Op::Delete,
        "main.w /src/h/main.go:1",
        Some("main.d /src/h/main.go:2"),
        "2026-11-25T00:30:00Z",
    );
    // Stopped, the API server still accepts connections (the kernel does)
    // but answers nothing.
    let apiserver = Pid::from_raw(i32::try_from(env.pids().0).expect("a pid"));
    kill(apiserver, Signal::SIGSTOP).expect("SIGSTOP the API server");
    writer.submit(&v, origin(&pod));
    let unavailable =
        r#"mapguard_violation_write_failures_total{target="record",reason="unavailable"}"#;
    let waited = Instant::now();
    let timed_out = async {
        while metric(&registry, unavailable) < 1.0 && waited.elapsed() < PATIENCE {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    timed_out.await;
    kill(apiserver, Signal::SIGCONT).expect("SIGCONT the API server");
    assert!(
        metric(&registry, unavailable) >= 1.0,
        "a write to a hung API server must time out"
    );
    flush(&writer).await;
    let record = Api::<MapViolation>::namespaced(client.clone(), "hang")
        .get(&v.pair.object_name())
        .await
        .expect("the record is written once the API server answers");
    assert_eq!(record.status.expect("status").count, 1);
}

async fn an_outage_is_ridden_out_by_the_queue(env: &mut TestEnv, client: &Client, logs: &Logs) {
    let capacity = 4;
    let mut registry = Registry::default();
    let config = RecordsConfig {
        max_records_per_namespace: 100,
        ..config(capacity)
    };
    let writer = RecordWriter::spawn(client.clone(), config, &mut registry);
    let pod = create_pod(client, "outage", "svc-1").await;
    let v = |i: usize| {
        violation(
            Kind::ConcurrentWrite,
            Op::Assign,
            Op::Delete,
            &format!("main.w{i} /src/o/main.go:{i}"),
            Some("main.d /src/o/main.go:99"),
            "2026-11-25T01:00:00Z",
        )
    };

    env.stop_apiserver();
    // Three repeats of one pair and three more pairs fill the queue (four
    // records); two pairs more are dropped. Nothing here waits.
    let submitting = Instant::now();
    let mut admissions = Vec::new();
    for i in [0, 0, 0, 1, 2, 3, 4, 5] {
        admissions.push(writer.submit(&v(i), origin(&pod)));
    }
    assert!(
        submitting.elapsed() < Duration::from_millis(100),
        "submit waited: {:?}",
        submitting.elapsed()
    );
    use Admission::{Dropped, Merged, Queued};
    assert_eq!(
        admissions,
        [
            Queued, Merged, Merged, Queued, Queued, Queued, Dropped, Dropped
        ]
    );
    assert_eq!(writer.pending(), capacity);
    let unavailable =
        r#"mapguard_violation_write_failures_total{target="record",reason="unavailable"}"#;
    wait_until("the writer finds the API server away", || async {
        metric(&registry, unavailable) >= 2.0
    })
    .await;
    assert_eq!(
        metric(&registry, "mapguard_violation_record_queue_length"),
        capacity as f64
    );
    logs.expect("violation records queued, retrying with backoff");

    env.restart_apiserver()
        .await
        .unwrap_or_else(|e| panic!("restart the API server: {e}"));
    flush(&writer).await;
    logs.expect("API server reachable again");
    let mvs: Api<MapViolation> = Api::namespaced(client.clone(), "outage");
    for (i, count) in [(0, 3), (1, 1), (2, 1), (3, 1)] {
        let name = v(i).pair.object_name();
        let record = mvs
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("queued record {i} ({name}) written after the outage: {e}"));
        assert_eq!(record.status.expect("status").count, count, "record {i}");
    }
    assert_eq!(
        mvs.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        capacity
    );
    assert_eq!(
        metric(
            &registry,
            r#"mapguard_violations_dropped_total{target="record",reason="queue_full"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &registry,
            r#"mapguard_violation_record_writes_total{operation="created"}"#
        ),
        4.0
    );
    assert_eq!(metric(&registry, "mapguard_violation_events_total"), 4.0);
    assert_eq!(
        metric(&registry, "mapguard_violation_record_queue_length"),
        0.0
    );
}
