//! The plugin against a real kube-apiserver (mapguard-testenv), with
//! records written by the node agent's own `RecordWriter`: each command's
//! output, `-o json|yaml` parsed back into the agent's type, two contexts
//! in one command, kubectl finding the plugin on PATH, `watch` and `trace`
//! seeing what happens after they start, `delete-audit` deleting exactly
//! the old records (and nothing in a dry run), RBAC refusals of a real
//! ServiceAccount, and a cluster without the CRD.
//!
//! One API server serves every check (a start costs seconds), so they run
//! in order in one test, each a function named after what it shows.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use mapguard_agent::records::{PodRef, RecordWriter, RecordsConfig};
use mapguard_api::resource::{MapViolation, crd};
use mapguard_api::vocab::{Action, Kind, Op};
use mapguard_testenv::TestEnv;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use support::{
    NODE, PATIENCE, Pipe, Race, Running, create_namespace, create_pod, happen,
    kubeconfig_with_contexts, rows, run, run_ok, service_account_kubeconfig, texts,
};

const DAY: Duration = Duration::from_secs(86_400);

/// Old (40 days), in shop.
const CART_WRITE: Race = Race {
    kind: Kind::ConcurrentWrite,
    op: Op::Assign,
    conflicting_op: Op::Delete,
    site: "main.assigner /src/cart/main.go:38",
    conflicting_site: Some("main.deleter /src/cart/main.go:26"),
    action: Action::Killed,
};
/// Recent (an hour), in shop.
const CART_RANGE: Race = Race {
    kind: Kind::DeleteDuringIteration,
    op: Op::Delete,
    conflicting_op: Op::IterNext,
    site: "main.pruner /src/cart/prune.go:12",
    conflicting_site: Some("main.lister /src/cart/list.go:40"),
    action: Action::Audit,
};
/// Old (35 days), in pay; the other side not on record.
const PAY_CRASH: Race = Race {
    kind: Kind::ConcurrentWrite,
    op: Op::Assign,
    conflicting_op: Op::Assign,
    site: "main.settle /src/pay/settle.go:77",
    conflicting_site: None,
    action: Action::Stopped,
};

struct Cluster {
    env: TestEnv,
    client: Client,
    writer: RecordWriter,
    /// Contexts `east` (namespace shop, current) and `west` (namespace
    /// pay), both the admin on the test API server.
    kubeconfig: std::path::PathBuf,
    cart: PodRef,
    pay: PodRef,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_against_a_real_api_server() {
    let test = "the_plugin_against_a_real_api_server";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let started = Instant::now();
    let client = env.client();
    env.create_node(NODE).await.expect("create a Node");
    install_crd(&client).await;
    let mut registry = Registry::default();
    let writer = RecordWriter::spawn(client.clone(), RecordsConfig::new(NODE), &mut registry);
    let cart = create_pod(&client, "shop", "cart-1").await;
    let pay = create_pod(&client, "pay", "pay-1").await;
    let kubeconfig =
        kubeconfig_with_contexts(&env, "kubeconfig-two", &[("east", "shop"), ("west", "pay")]);
    let c = Cluster {
        env,
        client,
        writer,
        kubeconfig,
        cart,
        pay,
    };
    happen(&c.writer, &c.cart, &CART_WRITE, 40 * DAY).await;
    happen(&c.writer, &c.pay, &PAY_CRASH, 35 * DAY).await;
    happen(&c.writer, &c.cart, &CART_RANGE, Duration::from_secs(3600)).await;

    audit_lists_records_least_recently_seen_first(&c).await;
    audit_of_the_current_context_reads_its_namespace(&c).await;
    json_and_yaml_parse_back_into_the_agents_records(&c).await;
    wide_adds_operations_container_node_and_release(&c).await;
    a_label_selector_picks_records(&c).await;
    two_contexts_in_one_command_label_their_rows(&c).await;
    kubectl_runs_the_plugin_from_path(&c).await;
    bad_contexts_and_kubeconfigs_are_bad_input(&c).await;
    delete_audit_dry_run_deletes_nothing(&c).await;
    delete_audit_deletes_exactly_the_old_records(&c).await;
    rbac_refuses_deletes_clearly_and_nothing_is_deleted(&c).await;
    a_user_who_may_not_list_gets_a_clear_refusal(&c).await;
    watch_prints_records_then_their_changes(&c).await;
    trace_prints_races_that_happen_after_it_started(&c).await;
    without_the_crd_the_plugin_says_to_install_it(&c).await;
    eprintln!("{test}: checks took {:.1?}", started.elapsed());
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd())
        .await
        .expect("the API server accepts the CRD");
    let records: Api<MapViolation> = Api::all(client.clone());
    let deadline = Instant::now() + PATIENCE;
    while records.list(&ListParams::default()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "mapviolations never became served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exists(c: &Cluster, namespace: &str, name: &str) -> bool {
    Api::<MapViolation>::namespaced(c.client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("GET a record")
        .is_some()
}

async fn audit_lists_records_least_recently_seen_first(c: &Cluster) {
    let out = run_ok(&c.kubeconfig, &["audit", "-A"], 0).await;
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("a header")
        .split("   ")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "KIND",
            "ACTION",
            "POD",
            "COUNT",
            "LAST SEEN",
            "CALL SITE",
            "CONFLICTING SITE"
        ],
        "{out}"
    );
    let rows = rows(&out);
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(
        rows[0],
        [
            "shop",
            &CART_WRITE.record(),
            "concurrent_write",
            "killed",
            "cart-1",
            "1",
            "40d",
            "main.assigner main.go:38",
            "main.deleter main.go:26"
        ],
        "{out}"
    );
    assert_eq!(
        rows[1],
        [
            "pay",
            &PAY_CRASH.record(),
            "concurrent_write",
            "stopped",
            "pay-1",
            "1",
            "35d",
            "main.settle settle.go:77",
            "<not on record>"
        ],
        "{out}"
    );
    assert_eq!(
        rows[2][1],
        CART_RANGE.record(),
        "the recent one last: {out}"
    );
    assert_eq!(rows[2][3], "audit");
    assert_eq!(rows[2][8], "main.lister list.go:40");
}

async fn audit_of_the_current_context_reads_its_namespace(c: &Cluster) {
    // KUBECONFIG's current context is east, whose namespace is shop.
    let out = run_ok(&c.kubeconfig, &["audit"], 0).await;
    assert!(
        out.starts_with("NAME   "),
        "no NAMESPACE column without -A: {out}"
    );
    let names: Vec<String> = rows(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(names, [CART_WRITE.record(), CART_RANGE.record()], "{out}");
    let pay = run_ok(&c.kubeconfig, &["audit", "-n", "pay"], 0).await;
    assert_eq!(rows(&pay).len(), 1, "{pay}");
    let empty = run(&c.kubeconfig, &["audit", "-n", "default"]).await;
    let (stdout, stderr) = texts(&empty);
    assert_eq!(empty.status.code(), Some(0));
    assert_eq!(stdout, "", "nothing on stdout for no records");
    assert_eq!(
        stderr,
        "No MapViolation records found in namespace default.\n"
    );
}

async fn json_and_yaml_parse_back_into_the_agents_records(c: &Cluster) {
    let json_text = run_ok(&c.kubeconfig, &["audit", "-A", "-o", "json"], 0).await;
    let list: Value = serde_json::from_str(&json_text).expect("-o json is JSON");
    assert_eq!(
        (list["apiVersion"].as_str(), list["kind"].as_str()),
        (Some("v1"), Some("List"))
    );
    let items: Vec<MapViolation> = serde_json::from_value(list["items"].clone())
        .unwrap_or_else(|e| panic!("the items are the agent's MapViolations: {e}\n{json_text}"));
    let names: Vec<String> = items
        .iter()
        .map(|r| r.metadata.name.clone().expect("a name"))
        .collect();
    assert_eq!(
        names,
        [CART_WRITE.record(), PAY_CRASH.record(), CART_RANGE.record()]
    );
    let first = &items[0];
    assert_eq!(
        first.spec.conflicting_site.as_deref(),
        Some("main.deleter main.go:26")
    );
    assert_eq!(
        first.spec.stack[1], CART_WRITE.site,
        "stacks are printed whole"
    );
    let status = first.status.as_ref().expect("a status");
    assert_eq!((status.count, status.pod.as_str()), (1, "cart-1"));
    assert_eq!(
        first
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("mapguard.io/context"))
            .map(String::as_str),
        Some("east")
    );

    let yaml_text = run_ok(&c.kubeconfig, &["audit", "-A", "-o", "yaml"], 0).await;
    let list: Value = yaml_serde::from_str(&yaml_text).expect("-o yaml is YAML");
    let items: Vec<MapViolation> = serde_json::from_value(list["items"].clone())
        .unwrap_or_else(|e| panic!("the YAML items are MapViolations: {e}\n{yaml_text}"));
    let yaml_names: Vec<String> = items
        .iter()
        .map(|r| r.metadata.name.clone().expect("a name"))
        .collect();
    assert_eq!(yaml_names, names);
    assert_eq!(
        items[1].status.as_ref().map(|s| s.action.as_str()),
        Some("stopped")
    );
}

async fn wide_adds_operations_container_node_and_release(c: &Cluster) {
    let out = run_ok(&c.kubeconfig, &["audit", "-o", "wide"], 0).await;
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("a header")
        .split("   ")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        header[7..],
        [
            "CONFLICTING SITE",
            "OP",
            "CONFLICTING OP",
            "CONTAINER",
            "NODE",
            "GO",
            "AGE"
        ],
        "{out}"
    );
    let row = &rows(&out)[0];
    assert_eq!(row[0], CART_WRITE.record());
    assert_eq!(
        row[8..13],
        ["assign", "delete", "app", NODE, "go1.26.11"],
        "{out}"
    );
}

async fn a_label_selector_picks_records(c: &Cluster) {
    let out = run_ok(
        &c.kubeconfig,
        &[
            "audit",
            "-A",
            "-l",
            "mapguard.io/kind=delete_during_iteration",
        ],
        0,
    )
    .await;
    let rows = rows(&out);
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0][1], CART_RANGE.record());
}

async fn two_contexts_in_one_command_label_their_rows(c: &Cluster) {
    // Each context reads its own namespace: east shop, west pay.
    let out = run_ok(&c.kubeconfig, &["audit", "--context", "east,west"], 0).await;
    assert!(out.starts_with("CONTEXT   NAME   "), "{out}");
    let seen: Vec<(String, String)> = rows(&out)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("east".to_owned(), CART_WRITE.record()),
            ("west".to_owned(), PAY_CRASH.record()),
            ("east".to_owned(), CART_RANGE.record()),
        ],
        "{out}"
    );
    // Every context, every namespace: each record once per context.
    let all = run_ok(
        &c.kubeconfig,
        &["audit", "--all-contexts", "-A", "-o", "json"],
        0,
    )
    .await;
    let list: Value = serde_json::from_str(&all).expect("JSON");
    let mut labelled: Vec<(String, String)> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["metadata"]["annotations"]["mapguard.io/context"]
                    .as_str()
                    .expect("a context")
                    .to_owned(),
                i["metadata"]["name"].as_str().expect("a name").to_owned(),
            )
        })
        .collect();
    labelled.sort();
    let mut expected: Vec<(String, String)> = ["east", "west"]
        .iter()
        .flat_map(|ctx| {
            [&CART_WRITE, &PAY_CRASH, &CART_RANGE].map(|r| ((*ctx).to_owned(), r.record()))
        })
        .collect();
    expected.sort();
    assert_eq!(labelled, expected, "{all}");
}

async fn kubectl_runs_the_plugin_from_path(c: &Cluster) {
    let Some(kubectl) = mapguard_testenv::Binaries::find()
        .ok()
        .and_then(|b| b.kubectl)
    else {
        eprintln!("kubectl not installed: the plugin-discovery check is left out");
        return;
    };
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-mapguard"))
        .parent()
        .expect("a folder");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let list = tokio::process::Command::new(&kubectl)
        .args(["plugin", "list", "--name-only"])
        .env("PATH", &path)
        .output()
        .await
        .expect("run kubectl plugin list");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.lines().any(|l| l.trim() == "kubectl-mapguard"),
        "kubectl plugin list: {listed}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let out = tokio::process::Command::new(&kubectl)
        .args(["mapguard", "audit", "--context", "west"])
        .env("PATH", &path)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .await
        .expect("run kubectl mapguard");
    let (stdout, stderr) = texts(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "kubectl mapguard audit: {stdout}{stderr}"
    );
    let names: Vec<String> = rows(&stdout).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(names, [PAY_CRASH.record()], "{stdout}");
}

async fn bad_contexts_and_kubeconfigs_are_bad_input(c: &Cluster) {
    let out = run(&c.kubeconfig, &["audit", "--context", "east,north"]).await;
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "error: no context \"north\" in the kubeconfig (its contexts: east, west)\n"
    );
    assert_eq!(stdout, "");
    let out = run(
        &c.kubeconfig,
        &["audit", "--kubeconfig", "/nonexistent/kubeconfig"],
    )
    .await;
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot load the kubeconfig /nonexistent/kubeconfig: "),
        "{stderr}"
    );
}

async fn delete_audit_dry_run_deletes_nothing(c: &Cluster) {
    let out = run_ok(
        &c.kubeconfig,
        &["delete-audit", "-A", "--older-than", "30d", "--dry-run"],
        0,
    )
    .await;
    assert_eq!(
        out,
        format!(
            "mapviolation.mapguard.io/{} in namespace shop deleted (server dry run) (last seen 40d ago)\n\
             mapviolation.mapguard.io/{} in namespace pay deleted (server dry run) (last seen 35d ago)\n",
            CART_WRITE.record(),
            PAY_CRASH.record()
        )
    );
    for (ns, race) in [
        ("shop", &CART_WRITE),
        ("pay", &PAY_CRASH),
        ("shop", &CART_RANGE),
    ] {
        assert!(
            exists(c, ns, &race.record()).await,
            "the dry run deleted {ns}/{}",
            race.record()
        );
    }
}

async fn delete_audit_deletes_exactly_the_old_records(c: &Cluster) {
    // 36 days: only the 40-day-old record, in both contexts' namespaces.
    let out = run_ok(
        &c.kubeconfig,
        &[
            "delete-audit",
            "--context",
            "east,west",
            "--older-than",
            "36d",
        ],
        0,
    )
    .await;
    assert_eq!(
        out,
        format!(
            "context east: mapviolation.mapguard.io/{} in namespace shop deleted (last seen 40d ago)\n",
            CART_WRITE.record()
        )
    );
    assert!(
        !exists(c, "shop", &CART_WRITE.record()).await,
        "the old record is gone"
    );
    assert!(
        exists(c, "pay", &PAY_CRASH.record()).await,
        "35 days is not older than 36"
    );
    let out = run_ok(
        &c.kubeconfig,
        &["delete-audit", "-A", "--older-than", "4w2d"],
        0,
    )
    .await;
    assert!(out.contains(&PAY_CRASH.record()), "{out}");
    assert!(
        !exists(c, "pay", &PAY_CRASH.record()).await,
        "the 35-day-old record is gone"
    );
    assert!(
        exists(c, "shop", &CART_RANGE.record()).await,
        "the recent record stays"
    );
    let again = run(
        &c.kubeconfig,
        &["delete-audit", "-A", "--older-than", "30d"],
    )
    .await;
    let (stdout, stderr) = texts(&again);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "No MapViolation records last seen more than 30d ago in all namespaces.\n"
    );
}

/// A ServiceAccount that may list and watch records everywhere and delete
/// them in pay only.
async fn rbac_refuses_deletes_clearly_and_nothing_is_deleted(c: &Cluster) {
    let old_shop = Race {
        site: "main.evict /src/cart/evict.go:5",
        ..CART_WRITE
    };
    let old_pay = Race {
        site: "main.refund /src/pay/refund.go:9",
        ..CART_WRITE
    };
    happen(&c.writer, &c.cart, &old_shop, 40 * DAY).await;
    happen(&c.writer, &c.pay, &old_pay, 40 * DAY).await;

    create_namespace(&c.client, "audit").await;
    let kubeconfig = service_account_kubeconfig(&c.env, &c.client, "audit", "auditor").await;
    let reader: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "mapviolations-reader"},
        "rules": [{"apiGroups": ["mapguard.io"], "resources": ["mapviolations"], "verbs": ["get", "list", "watch"]}],
    }))
    .expect("a ClusterRole");
    Api::<ClusterRole>::all(c.client.clone())
        .create(&PostParams::default(), &reader)
        .await
        .expect("create the ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "auditor-reads-mapviolations"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "mapviolations-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "auditor", "namespace": "audit"}],
    }))
    .expect("a ClusterRoleBinding");
    Api::<ClusterRoleBinding>::all(c.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind it");
    let janitor: Role = serde_json::from_value(json!({
        "metadata": {"name": "mapviolations-janitor", "namespace": "pay"},
        "rules": [{"apiGroups": ["mapguard.io"], "resources": ["mapviolations"], "verbs": ["delete"]}],
    }))
    .expect("a Role");
    Api::<Role>::namespaced(c.client.clone(), "pay")
        .create(&PostParams::default(), &janitor)
        .await
        .expect("create the Role");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "auditor-cleans-pay", "namespace": "pay"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mapviolations-janitor"},
        "subjects": [{"kind": "ServiceAccount", "name": "auditor", "namespace": "audit"}],
    }))
    .expect("a RoleBinding");
    Api::<RoleBinding>::namespaced(c.client.clone(), "pay")
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind it");

    let listed = run_ok(&kubeconfig, &["audit", "-A"], 0).await;
    assert!(
        listed.contains(&old_shop.record()) && listed.contains(&old_pay.record()),
        "the auditor may list: {listed}"
    );

    let refusal = "error: context \"as-auditor\": User \"system:serviceaccount:audit:auditor\" may not \
                   delete mapviolations.mapguard.io in namespace \"shop\" (RBAC: verb \"delete\" on \
                   resource \"mapviolations\" in API group \"mapguard.io\"); nothing was deleted\n";
    for dry_run in [false, true] {
        let mut args = vec!["delete-audit", "-A", "--older-than", "30d"];
        if dry_run {
            args.push("--dry-run");
        }
        let out = run(&kubeconfig, &args).await;
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert_eq!(stderr, refusal, "{args:?}");
        assert_eq!(
            stdout, "",
            "{args:?}: nothing deleted, nothing said deleted"
        );
        assert!(
            exists(c, "pay", &old_pay.record()).await,
            "{args:?}: pay's record was deleted though shop's was refused"
        );
        assert!(exists(c, "shop", &old_shop.record()).await);
    }
    // Where it may delete, it does.
    let out = run_ok(
        &kubeconfig,
        &["delete-audit", "-n", "pay", "--older-than", "30d"],
        0,
    )
    .await;
    assert!(out.contains(&old_pay.record()), "{out}");
    assert!(!exists(c, "pay", &old_pay.record()).await);
    assert!(exists(c, "shop", &old_shop.record()).await);
}

async fn a_user_who_may_not_list_gets_a_clear_refusal(c: &Cluster) {
    let kubeconfig = service_account_kubeconfig(&c.env, &c.client, "audit", "nobody").await;
    let who = "User \"system:serviceaccount:audit:nobody\"";
    let out = run(&kubeconfig, &["audit", "-A"]).await;
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: context \"as-nobody\": {who} may not list mapviolations.mapguard.io in all namespaces \
             (RBAC: verb \"list\" on resource \"mapviolations\" in API group \"mapguard.io\"); the API server said: "
        )),
        "{stderr}"
    );
    // watch and trace stop on it too, rather than retrying forever.
    for command in ["watch", "trace"] {
        let out = run(&kubeconfig, &[command, "-n", "shop"]).await;
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "{who} may not list mapviolations.mapguard.io in namespace \"shop\""
            )),
            "{command}: {stderr}"
        );
    }
}

async fn watch_prints_records_then_their_changes(c: &Cluster) {
    let evicted = Race {
        site: "main.evict /src/cart/evict.go:5",
        ..CART_WRITE
    };
    let mut table = Running::start(&c.kubeconfig, &["watch", "-A"]);
    let mut events = Running::start(
        &c.kubeconfig,
        &[
            "watch",
            "--context",
            "east,west",
            "-o",
            "json",
            "--output-watch-events",
        ],
    );
    table
        .expect(Pipe::Out, "the header", |l| {
            l.starts_with("NAMESPACE   NAME")
        })
        .await;
    for race in [&CART_RANGE, &evicted] {
        table
            .expect(Pipe::Out, "an existing record", |l| {
                l.contains(&race.record())
            })
            .await;
        events
            .expect(Pipe::Out, "an existing record", |l| {
                l.contains("\"ADDED\"") && l.contains(&race.record())
            })
            .await;
    }
    let lister = Race {
        site: "main.cacheFill /src/cart/cache.go:9",
        kind: Kind::WriteDuringIteration,
        ..CART_RANGE
    };
    happen(&c.writer, &c.cart, &lister, Duration::ZERO).await;
    let row = table
        .expect(Pipe::Out, "the new record, counted", |l| {
            l.contains(&lister.record()) && l.contains("   1   ")
        })
        .await;
    assert!(row.starts_with("shop   "), "{row}");
    happen(&c.writer, &c.pay, &PAY_CRASH, Duration::ZERO).await;
    table
        .expect(Pipe::Out, "pay's new record", |l| {
            l.contains(&PAY_CRASH.record()) && l.contains("   1   ")
        })
        .await;
    events
        .expect(Pipe::Out, "west's new record", |l| {
            l.contains(&PAY_CRASH.record()) && l.contains("\"count\":1")
        })
        .await;
    events.drain(Duration::from_millis(500)).await;
    let mut seen = Vec::new();
    for line in events.lines_of(Pipe::Out) {
        let change: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let record: MapViolation = serde_json::from_value(change["object"].clone())
            .unwrap_or_else(|e| panic!("not a MapViolation ({e}): {line}"));
        let context =
            record.metadata.annotations.as_ref().expect("annotations")["mapguard.io/context"]
                .clone();
        let count = record.status.map_or(0, |s| s.count);
        seen.push((
            change["type"].as_str().expect("a type").to_owned(),
            context,
            record.metadata.name.expect("a name"),
            count,
        ));
    }
    let of = |name: String| {
        seen.iter()
            .filter(|s| s.2 == name)
            .map(|s| (s.0.as_str(), s.1.as_str(), s.3))
            .collect::<Vec<_>>()
    };
    assert_eq!(of(CART_RANGE.record()), [("ADDED", "east", 1)], "{seen:?}");
    // Created, then its status written: two changes.
    assert_eq!(
        of(lister.record()),
        [("ADDED", "east", 0), ("MODIFIED", "east", 1)],
        "{seen:?}"
    );
    assert_eq!(
        of(PAY_CRASH.record()),
        [("ADDED", "west", 0), ("MODIFIED", "west", 1)],
        "{seen:?}"
    );
    assert_eq!(
        table.interrupt().await,
        Some(0),
        "Ctrl-C ends watch cleanly"
    );
    assert_eq!(events.interrupt().await, Some(0));
}

async fn trace_prints_races_that_happen_after_it_started(c: &Cluster) {
    let mut text = Running::start(&c.kubeconfig, &["trace", "-A"]);
    let mut json = Running::start(&c.kubeconfig, &["trace", "--all-contexts", "-o", "json"]);
    text.expect(Pipe::Err, "the ready line", |l| {
        l == "Tracing Go map races in all namespaces of east (from now on); Ctrl-C to stop."
    })
    .await;
    json.expect(Pipe::Err, "the ready line", |l| {
        l == "Tracing Go map races in namespace shop of east, namespace pay of west (from now on); Ctrl-C to stop."
    })
    .await;
    // A race again in another Pod, and a new one.
    let cart2 = create_pod(&c.client, "shop", "cart-2").await;
    happen(&c.writer, &cart2, &CART_RANGE, Duration::ZERO).await;
    let refund = Race {
        kind: Kind::WriteDuringRead,
        op: Op::Assign,
        conflicting_op: Op::Read,
        site: "main.refund /src/pay/refund.go:31",
        conflicting_site: Some("main.balance /src/pay/balance.go:8"),
        action: Action::Killed,
    };
    happen(&c.writer, &c.pay, &refund, Duration::ZERO).await;

    let line = text
        .expect(Pipe::Out, "the repeat in cart-2", |l| {
            l.contains("shop/cart-2")
        })
        .await;
    assert!(
        line.ends_with(&format!(
            " shop/cart-2 (app): delete_during_iteration: delete at main.pruner prune.go:12 while iterate at \
             main.lister list.go:40; process left running (audit) (record {}, node {NODE})",
            CART_RANGE.record()
        )),
        "{line}"
    );
    let line = text
        .expect(Pipe::Out, "the new race in pay", |l| {
            l.contains("pay/pay-1")
        })
        .await;
    assert!(
        line.contains(" pay/pay-1 (app): write_during_read: assign at main.refund refund.go:31 while read at main.balance balance.go:8; process killed (SIGKILL) (record "),
        "{line}"
    );
    for (context, namespace, pod, record, count) in [
        ("east", "shop", "cart-2", CART_RANGE.record(), 2),
        ("west", "pay", "pay-1", refund.record(), 1),
    ] {
        let line = json
            .expect(Pipe::Out, "an occurrence", |l| l.contains(&record))
            .await;
        let o: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(
            (
                o["context"].as_str(),
                o["namespace"].as_str(),
                o["pod"].as_str(),
                o["occurrences"].as_i64(),
                o["count"].as_i64()
            ),
            (
                Some(context),
                Some(namespace),
                Some(pod),
                Some(1),
                Some(count)
            ),
            "{line}"
        );
        assert_eq!(o["container"], "app");
    }
    // What existed before it started is not a race that happened.
    text.drain(Duration::from_millis(500)).await;
    json.drain(Duration::from_millis(500)).await;
    assert_eq!(text.lines_of(Pipe::Out).len(), 2, "{}", text.transcript());
    assert_eq!(json.lines_of(Pipe::Out).len(), 2, "{}", json.transcript());
    assert_eq!(text.interrupt().await, Some(0), "Ctrl-C ends trace cleanly");
    assert_eq!(json.interrupt().await, Some(0));
}

async fn without_the_crd_the_plugin_says_to_install_it(c: &Cluster) {
    Api::<CustomResourceDefinition>::all(c.client.clone())
        .delete("mapviolations.mapguard.io", &DeleteParams::default())
        .await
        .expect("delete the CRD");
    let records: Api<MapViolation> = Api::all(c.client.clone());
    let deadline = Instant::now() + PATIENCE;
    while records.list(&ListParams::default()).await.is_ok() {
        assert!(Instant::now() < deadline, "mapviolations still served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = run(&c.kubeconfig, &["audit", "--context", "west"]).await;
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: context \"west\": the API server does not serve mapviolations.mapguard.io: install the CRD \
         (kubectl apply -f manifests/crd/mapviolations.yaml, or deploy mapguard's node agent)\n"
    );
}
