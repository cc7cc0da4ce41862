//! The webhook behind a real kube-apiserver (mapguard-testenv): registered
//! with the project's own manifests (only `clientConfig` turned into the URL
//! form), watching Namespaces through the API server, and judging what the
//! API server sends it. Every check goes through the API server as a client
//! would see it.
//!
//! One API server serves every check (a start costs seconds), so they run
//! in order in one test; each check is a function named after what it shows.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mapguard_certs_gen::{CertRequest, generate, write_dir};
use mapguard_testenv::TestEnv;
use mapguard_webhook::startup::Running;
use serde_json::json;
use support::{ops_get, start_webhook, temp_dir};

const MODE: &str = "mapguard.io/mode";
/// A denial by either validating webhook of manifests/webhook/:
/// `validate.mapguard.io` for namespaces labelled `mapguard.io/mode`,
/// `best-effort.validate.mapguard.io` for the others (`shop` until the test
/// labels it).
const VALIDATE_DENIED: &str = r#"validate.mapguard.io" denied the request"#;
const PRIVILEGED: &str = r#"[mapguard.privileged] container "app" is privileged"#;
/// How long the API server and the webhook's watch may take to see a change.
const PROPAGATION: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_enforces_the_webhooks_decisions() {
    let test = "the_api_server_enforces_the_webhooks_decisions";
    let Some(mut env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    // Present before the webhook starts: its initial list must carry them.
    create_namespace(&client, "payments", Some("kill")).await;
    create_namespace(&client, "shop", None).await;
    create_labelled_namespace(
        &client,
        "ledger",
        json!({MODE: "kill", "mapguard.io/min-coverage": "writes"}),
    )
    .await;
    create_labelled_namespace(
        &client,
        "sandbox",
        json!({MODE: "kill", "mapguard.io/allow-opt-out": "true"}),
    )
    .await;

    let base = temp_dir("apiserver");
    let certs = generate(&CertRequest::new("mapguard-webhook", "mapguard-system"))
        .expect("generate the webhook's certificates");
    write_dir(&certs, &base.join("certs"), false).expect("write the webhook's certificates");
    let webhook = start_watching_webhook(&base.join("certs"), env.kubeconfig()).await;
    register(&env, &webhook, &certs.ca_cert_pem).await;
    wait_until_the_api_server_calls_the_webhook(&client).await;

    privileged_pod_is_denied_with_the_policys_reason(&client).await;
    pod_in_a_kill_namespace_is_annotated_by_mutation(&client).await;
    deployment_with_a_privileged_template_is_denied(&client).await;
    server_side_dry_run_is_judged_and_stores_nothing(&client).await;
    kubectl_dry_run_shows_the_denial(&env).await;
    exempt_namespaces_are_not_sent_to_the_webhook(&client, &webhook).await;
    namespace_label_change_reaches_the_webhook_through_its_watch(&client).await;
    kubectl_debug_with_a_privileged_container_is_denied(&env, &client).await;
    a_pod_asking_for_less_than_its_namespace_is_denied_unless_it_may_opt_out(&client).await;
    a_tenant_cannot_change_the_mapguard_labels_of_its_namespace(&env, &client).await;
    namespace_labels_stay_while_the_api_server_is_away(&mut env, &webhook).await;

    webhook.shutdown().await;
    drop(env);
    std::fs::remove_dir_all(&base).expect("remove the test folder");
}

/// While the API server is away the namespace data last listed stays (marked
/// stale, the webhook still synced); once it is back the watch resumes and
/// the stale mark goes.
async fn namespace_labels_stay_while_the_api_server_is_away(env: &mut TestEnv, webhook: &Running) {
    let namespaces = webhook.state.namespaces().clone();
    let mode_of = |name: &str| {
        namespaces
            .snapshot()
            .get(name)
            .and_then(|n| n.labels.get(MODE).cloned())
    };
    assert_eq!(mode_of("payments").as_deref(), Some("kill"));
    env.stop_apiserver();
    let deadline = Instant::now() + PROPAGATION;
    while namespaces.stale_since().is_none() {
        assert!(
            Instant::now() < deadline,
            "the namespace watch never noticed the API server was gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(namespaces.is_synced(), "still synced: the data stays");
    assert_eq!(
        mode_of("payments").as_deref(),
        Some("kill"),
        "the labels last listed stay while the API server is away"
    );
    env.restart_apiserver()
        .await
        .expect("restart the API server");
    create_namespace(&env.client(), "after-outage", Some("audit")).await;
    let deadline = Instant::now() + PROPAGATION;
    while namespaces.stale_since().is_some() || mode_of("after-outage").is_none() {
        assert!(
            Instant::now() < deadline,
            "the namespace watch did not come back: stale since {:?}",
            namespaces.stale_since()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mode_of("payments").as_deref(), Some("kill"));
}

/// Starts the webhook without a namespaces file, watching Namespaces through
/// the API server of `kubeconfig`, and waits for its `/readyz` (which waits
/// for the watch's initial list).
async fn start_watching_webhook(cert_dir: &Path, kubeconfig: &Path) -> Running {
    let webhook = start_webhook(
        cert_dir,
        &[
            format!("--kubeconfig={}", kubeconfig.display()),
            // The namespace-label admins: system:masters (the default) and carol.
            "--label-admin-user=carol".to_owned(),
        ],
    )
    .await;
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let (status, body) = ops_get(webhook.metrics_addr, "/readyz").await;
        if status.is_success() {
            return webhook;
        }
        assert!(
            Instant::now() < deadline,
            "webhook not ready within {PROPAGATION:?} (namespace watch never synced?): {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers both webhooks from `manifests/webhook/`, with `clientConfig`
/// pointing at `webhook` and trusting `ca_pem` (in a cluster the
/// certs-gen Job sets the caBundle; certs-gen/tests/incluster.rs tests that).
async fn register(env: &TestEnv, webhook: &Running, ca_pem: &str) {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook");
    let read = |name: &str| {
        let path = manifests.join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    let validating: ValidatingWebhookConfiguration =
        yaml_serde::from_str(&read("validatingwebhookconfiguration.yaml"))
            .expect("validatingwebhookconfiguration.yaml is a ValidatingWebhookConfiguration");
    let mutating: MutatingWebhookConfiguration =
        yaml_serde::from_str(&read("mutatingwebhookconfiguration.yaml"))
            .expect("mutatingwebhookconfiguration.yaml is a MutatingWebhookConfiguration");
    let url = format!("https://{}", webhook.addr);
    let applied = env
        .register_validating_webhook(&validating, &url, ca_pem)
        .await
        .expect("register the validating webhook");
    let webhooks = applied
        .webhooks
        .expect("applied configuration has webhooks");
    assert_eq!(
        webhooks[0].client_config.url.as_deref(),
        Some(format!("{url}/validate").as_str()),
        "clientConfig is the only change"
    );
    assert_eq!(webhooks[0].failure_policy.as_deref(), Some("Fail"));
    env.register_mutating_webhook(&mutating, &url, ca_pem)
        .await
        .expect("register the mutating webhook");
}

/// The API server loads webhook configurations from its own watch: until a
/// dry-run privileged Pod is denied and a dry-run Pod in `payments` comes
/// back annotated, neither webhook is in use yet.
async fn wait_until_the_api_server_calls_the_webhook(client: &Client) {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let denied = create(client, "shop", &pod("probe", true), true)
            .await
            .is_err_and(|m| m.contains(VALIDATE_DENIED));
        let mutated = create(client, "payments", &pod("probe", false), true)
            .await
            .is_ok_and(|p| mode_annotation(&p).is_some());
        if denied && mutated {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the API server did not call both webhooks within {PROPAGATION:?} (denied: {denied}, mutated: {mutated})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn privileged_pod_is_denied_with_the_policys_reason(client: &Client) {
    let message = create(client, "shop", &pod("privileged", true), false)
        .await
        .expect_err("a privileged Pod must be denied");
    assert!(message.contains(VALIDATE_DENIED), "{message}");
    assert!(message.contains(PRIVILEGED), "{message}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    assert!(
        pods.get_opt("privileged").await.expect("GET pod").is_none(),
        "a denied Pod must not be stored"
    );
}

async fn pod_in_a_kill_namespace_is_annotated_by_mutation(client: &Client) {
    let created = create(client, "payments", &pod("api", false), false)
        .await
        .unwrap_or_else(|m| panic!("a plain Pod in payments must be admitted: {m}"));
    assert_eq!(mode_annotation(&created).as_deref(), Some("kill"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "payments");
    let stored = pods.get("api").await.expect("GET the created Pod");
    assert_eq!(
        mode_annotation(&stored).as_deref(),
        Some("kill"),
        "the annotation is stored, not only returned"
    );

    // A Pod in a namespace without the label is admitted unchanged.
    let plain = create(client, "shop", &pod("web", false), false)
        .await
        .unwrap_or_else(|m| panic!("a plain Pod in shop must be admitted: {m}"));
    assert_eq!(mode_annotation(&plain), None);
}

async fn deployment_with_a_privileged_template_is_denied(client: &Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let error = deployments
        .create(&PostParams::default(), &deployment("web", true))
        .await
        .expect_err("a Deployment with a privileged template must be denied");
    let message = api_message(error);
    assert!(message.contains(VALIDATE_DENIED), "{message}");
    assert!(
        message.contains(
            r#"mapguard denied Deployment shop/web: [mapguard.privileged] container "app" is privileged"#
        ),
        "{message}"
    );

    // The mutation is re-rooted onto a controller's Pod template.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "payments");
    let created = deployments
        .create(&PostParams::default(), &deployment("api", false))
        .await
        .unwrap_or_else(|e| panic!("a plain Deployment in payments must be admitted: {e}"));
    let annotations = created
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(
        annotations.get(MODE).map(String::as_str),
        Some("kill"),
        "{annotations:?}"
    );
}

async fn server_side_dry_run_is_judged_and_stores_nothing(client: &Client) {
    let message = create(client, "shop", &pod("dry-privileged", true), true)
        .await
        .expect_err("a dry-run privileged Pod must be denied too (sideEffects: None)");
    assert!(message.contains(PRIVILEGED), "{message}");

    let answered = create(client, "payments", &pod("dry-plain", false), true)
        .await
        .unwrap_or_else(|m| panic!("a dry-run plain Pod must be admitted: {m}"));
    assert_eq!(mode_annotation(&answered).as_deref(), Some("kill"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "payments");
    assert!(
        pods.get_opt("dry-plain").await.expect("GET pod").is_none(),
        "a dry-run create must not store the Pod"
    );
}

/// kubectl with the test environment's kubeconfig, as a user would run it.
async fn kubectl_dry_run_shows_the_denial(env: &TestEnv) {
    let Some(mut kubectl) = env.kubectl() else {
        eprintln!("kubectl not installed: kubectl check left out");
        return;
    };
    let manifest = serde_json::to_vec(&pod("kubectl-privileged", true)).expect("Pod serializes");
    let path = env.dir().join("kubectl-privileged.json");
    std::fs::write(&path, manifest).expect("write the Pod manifest");
    let output = tokio::task::spawn_blocking(move || {
        kubectl
            .args(["create", "--dry-run=server", "--namespace=shop", "-f"])
            .arg(&path)
            .output()
            .expect("run kubectl")
    })
    .await
    .expect("kubectl task");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "kubectl must fail: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains(VALIDATE_DENIED), "{stderr}");
    assert!(stderr.contains(PRIVILEGED), "{stderr}");
}

/// The manifests' namespaceSelector keeps kube-system away from the webhook:
/// admitted, and the webhook counts no request.
async fn exempt_namespaces_are_not_sent_to_the_webhook(client: &Client, webhook: &Running) {
    let before = requests_seen(webhook).await;
    let admitted = create(client, "kube-system", &pod("privileged", true), true).await;
    assert!(
        admitted.is_ok(),
        "a privileged Pod in kube-system is not judged: {admitted:?}"
    );
    assert_eq!(
        requests_seen(webhook).await,
        before,
        "kube-system reached the webhook"
    );
    create(client, "shop", &pod("counted", false), true)
        .await
        .unwrap_or_else(|m| panic!("dry-run Pod in shop: {m}"));
    assert_eq!(
        requests_seen(webhook).await,
        before + 2.0,
        "a Pod in shop goes through both webhooks"
    );
}

/// Sum of `mapguard_admission_requests_total` over all its labels.
async fn requests_seen(webhook: &Running) -> f64 {
    let (status, text) = ops_get(webhook.metrics_addr, "/metrics").await;
    assert!(status.is_success(), "/metrics: {status}");
    text.lines()
        .filter(|l| l.starts_with("mapguard_admission_requests_total{"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable metric line {l:?}"))
        })
        .sum()
}

async fn namespace_label_change_reaches_the_webhook_through_its_watch(client: &Client) {
    let probe = pod("label-probe", false);
    let before = create(client, "shop", &probe, true)
        .await
        .unwrap_or_else(|m| panic!("dry-run Pod in shop: {m}"));
    assert_eq!(mode_annotation(&before), None, "shop has no mode yet");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {MODE: "stop"}}})),
        )
        .await
        .expect("label namespace shop");
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let answered = create(client, "shop", &probe, true)
            .await
            .unwrap_or_else(|m| panic!("dry-run Pod in shop: {m}"));
        if mode_annotation(&answered).as_deref() == Some("stop") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook did not see shop's new label within {PROPAGATION:?}: {answered:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kubectl debug --profile=sysadmin` adds a privileged ephemeral container
/// to a running Pod through the `pods/ephemeralcontainers` subresource: the
/// API server must send it to the webhook, which judges it like the Pod.
async fn kubectl_debug_with_a_privileged_container_is_denied(env: &TestEnv, client: &Client) {
    let debug = |profile: &str| {
        let mut kubectl = env.kubectl().expect("kubectl is installed");
        kubectl.args([
            "debug",
            "web",
            "--namespace=shop",
            "--image=registry.example/debug:1",
            &format!("--profile={profile}"),
        ]);
        async move {
            tokio::task::spawn_blocking(move || kubectl.output().expect("run kubectl debug"))
                .await
                .expect("kubectl task")
        }
    };
    let ephemeral = || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
        let pod = pods.get("web").await.expect("GET shop/web");
        pod.spec
            .and_then(|s| s.ephemeral_containers)
            .map_or(0, |c| c.len())
    };

    let output = debug("sysadmin").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a privileged debug container must be denied: {}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains(VALIDATE_DENIED), "{stderr}");
    assert!(
        stderr.contains("Pod shop/web (ephemeral containers)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[mapguard.privileged] container \"debugger-"),
        "{stderr}"
    );
    assert_eq!(
        ephemeral().await,
        0,
        "the denied container must not be added"
    );

    let output = debug("baseline").await;
    assert!(
        output.status.success(),
        "an unprivileged debug container is admitted: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(ephemeral().await, 1, "the admitted container is added");
}

/// In `payments` (mode kill) and `ledger` (kill, min-coverage writes) a
/// Pod asking for a weaker mode or a lower coverage is refused, at CREATE
/// and when an UPDATE of a running Pod changes its annotations; in
/// `sandbox` (kill, allow-opt-out) the same requests are admitted.
async fn a_pod_asking_for_less_than_its_namespace_is_denied_unless_it_may_opt_out(client: &Client) {
    const COVERAGE: &str = "mapguard.io/coverage";
    let asking = |name: &str, annotations: serde_json::Value| {
        let mut p = pod(name, false);
        p.metadata.annotations =
            Some(serde_json::from_value(annotations).expect("annotations deserialize"));
        p
    };
    let message = create(
        client,
        "payments",
        &asking("weak", json!({MODE: "audit"})),
        false,
    )
    .await
    .expect_err("a Pod asking for audit in a kill namespace must be denied");
    assert!(message.contains(VALIDATE_DENIED), "{message}");
    assert!(
        message.contains(
            "[mapguard.mode] namespace payments demands mapguard mode kill (label mapguard.io/mode): annotation mapguard.io/mode=audit asks for less"
        ),
        "{message}"
    );
    let message = create(
        client,
        "ledger",
        &asking("light", json!({COVERAGE: "light"})),
        false,
    )
    .await
    .expect_err("a Pod asking for light coverage where writes is the minimum must be denied");
    assert!(
        message.contains("namespace ledger demands mapguard coverage writes or more"),
        "{message}"
    );
    create(
        client,
        "ledger",
        &asking("full", json!({COVERAGE: "full"})),
        false,
    )
    .await
    .unwrap_or_else(|m| panic!("more coverage than the minimum is admitted: {m}"));

    // A running Pod's annotations changed to something weaker.
    let patch = |namespace: &str, name: &str, annotations: serde_json::Value| {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let name = name.to_owned();
        async move {
            pods.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
            )
            .await
            .map_err(api_message)
        }
    };
    let message = patch("payments", "api", json!({MODE: "audit"}))
        .await
        .expect_err("an UPDATE weakening a running Pod's mode must be denied");
    assert!(
        message.contains("annotation mapguard.io/mode=audit asks for less"),
        "{message}"
    );
    let message = patch("ledger", "full", json!({COVERAGE: "sampled"}))
        .await
        .expect_err("an UPDATE lowering a running Pod's coverage must be denied");
    assert!(
        message.contains("mapguard.io/coverage=sampled asks for less"),
        "{message}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "payments");
    let stored = pods.get("api").await.expect("GET payments/api");
    assert_eq!(
        mode_annotation(&stored).as_deref(),
        Some("kill"),
        "unchanged"
    );
    patch("payments", "api", json!({"team": "a"}))
        .await
        .unwrap_or_else(|m| panic!("an UPDATE leaving the mode alone is admitted: {m}"));

    // Where the namespace allows opting out.
    let created = create(
        client,
        "sandbox",
        &asking("weak", json!({MODE: "audit", COVERAGE: "light"})),
        false,
    )
    .await
    .unwrap_or_else(|m| panic!("sandbox allows opting out: {m}"));
    assert_eq!(mode_annotation(&created).as_deref(), Some("audit"));
    let updated = patch("sandbox", "weak", json!({MODE: "off"}))
        .await
        .unwrap_or_else(|m| panic!("sandbox allows opting out on UPDATE too: {m}"));
    assert_eq!(mode_annotation(&updated).as_deref(), Some("off"));
}

/// A tenant allowed to edit its Namespace (RBAC: cluster-admin, but not in
/// `system:masters`) cannot drop `mapguard.io/mode` or add
/// `mapguard.io/allow-opt-out`; its other labels it may change, and so may
/// an admin (`system:masters`) and a user named by `--label-admin-user`
/// the mapguard ones.
async fn a_tenant_cannot_change_the_mapguard_labels_of_its_namespace(
    env: &TestEnv,
    client: &Client,
) {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "tenants-edit-everything"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "tenants"}],
    }))
    .expect("a ClusterRoleBinding literal deserializes");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind cluster-admin to group tenants");
    let member_of_tenants = |user: &'static str| async move {
        let file = kube::config::Kubeconfig::read_from(env.kubeconfig()).expect("read kubeconfig");
        let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("config from the admin's kubeconfig");
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(vec!["tenants".to_owned()]);
        Client::try_from(config).expect("an impersonating client")
    };
    let tenant = member_of_tenants("alice").await;
    let label = |client: &Client, labels: serde_json::Value| {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        async move {
            namespaces
                .patch(
                    "payments",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": labels}})),
                )
                .await
                .map_err(api_message)
        }
    };
    let message = label(&tenant, json!({MODE: null}))
        .await
        .expect_err("a tenant dropping mapguard.io/mode must be denied");
    assert!(
        message.contains(r#"namespaces.validate.mapguard.io" denied the request"#),
        "{message}"
    );
    assert!(
        message.contains(
            r#"[mapguard.namespace_labels] alice may not change label mapguard.io/mode of namespace payments ("kill" to null)"#
        ),
        "{message}"
    );
    let message = label(&tenant, json!({"mapguard.io/allow-opt-out": "true"}))
        .await
        .expect_err("a tenant adding allow-opt-out must be denied");
    assert!(
        message.contains("label mapguard.io/allow-opt-out"),
        "{message}"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels = namespaces
        .get("payments")
        .await
        .expect("GET payments")
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(
        labels.get(MODE).map(String::as_str),
        Some("kill"),
        "{labels:?}"
    );
    assert!(
        !labels.contains_key("mapguard.io/allow-opt-out"),
        "{labels:?}"
    );

    label(&tenant, json!({"team": "payments"}))
        .await
        .unwrap_or_else(|m| panic!("a tenant may change its other labels: {m}"));
    label(client, json!({"mapguard.io/min-coverage": "sampled"}))
        .await
        .unwrap_or_else(|m| panic!("an admin (system:masters) may change them: {m}"));
    let carol = member_of_tenants("carol").await;
    label(&carol, json!({"mapguard.io/min-coverage": "writes"}))
        .await
        .unwrap_or_else(|m| panic!("a user named by --label-admin-user may change them: {m}"));

    // Creating a Namespace that carries the labels is setting them: the
    // same admins only.
    let new_namespace = |client: &Client, name: &'static str, labels: serde_json::Value| {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        async move {
            let namespace: Namespace =
                serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                    .expect("a Namespace literal deserializes");
            namespaces
                .create(&PostParams::default(), &namespace)
                .await
                .map(drop)
                .map_err(api_message)
        }
    };
    let message = new_namespace(&tenant, "alice-audit", json!({MODE: "audit"}))
        .await
        .expect_err("a tenant creating a namespace with mapguard.io/mode must be denied");
    assert!(
        message.contains(r#"create.namespaces.validate.mapguard.io" denied the request"#)
            && message.contains(
                r#"[mapguard.namespace_labels] alice may not create namespace alice-audit with label mapguard.io/mode="audit""#
            ),
        "{message}"
    );
    let message = new_namespace(
        &tenant,
        "alice-opt-out",
        json!({"mapguard.io/allow-opt-out": "true"}),
    )
    .await
    .expect_err("a tenant creating a namespace with allow-opt-out must be denied");
    assert!(
        message.contains(r#"create.namespaces.validate.mapguard.io" denied the request"#)
            && message.contains("with label mapguard.io/allow-opt-out=\"true\""),
        "{message}"
    );
    new_namespace(&tenant, "alice-plain", json!({"team": "alice"}))
        .await
        .unwrap_or_else(|m| panic!("a tenant may create a namespace without them: {m}"));
    new_namespace(&carol, "carol-kill", json!({MODE: "kill"}))
        .await
        .unwrap_or_else(|m| panic!("a label admin may create one with them: {m}"));
    new_namespace(
        client,
        "admin-opt-out",
        json!({"mapguard.io/allow-opt-out": "true"}),
    )
    .await
    .unwrap_or_else(|m| panic!("an admin (system:masters) may create one with them: {m}"));
}

async fn create_namespace(client: &Client, name: &str, mode: Option<&str>) {
    let labels = mode.map(|m| json!({MODE: m})).unwrap_or_else(|| json!({}));
    create_labelled_namespace(client, name, labels).await;
}

async fn create_labelled_namespace(client: &Client, name: &str, labels: serde_json::Value) {
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .expect("a Namespace literal deserializes");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Creates `pod` in `namespace` (server-side dry run if `dry_run`): the
/// object the API server returns, or the message of its refusal.
async fn create(client: &Client, namespace: &str, pod: &Pod, dry_run: bool) -> Result<Pod, String> {
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&params, pod)
        .await
        .map_err(api_message)
}

/// The API server's message of a refused request; other errors fail the test.
fn api_message(error: kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message,
        other => panic!("expected a refusal from the API server, got {other}"),
    }
}

fn container(privileged: bool) -> serde_json::Value {
    let mut c = json!({"name": "app", "image": "registry.example/app:1"});
    if privileged {
        c["securityContext"] = json!({"privileged": true});
    }
    c
}

fn pod(name: &str, privileged: bool) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container(privileged)]},
    }))
    .expect("a Pod literal deserializes")
}

fn deployment(name: &str, privileged: bool) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container(privileged)]},
            },
        },
    }))
    .expect("a Deployment literal deserializes")
}

fn mode_annotation(pod: &Pod) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(MODE).cloned()
}
