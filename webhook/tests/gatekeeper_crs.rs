//! Gatekeeper's objects applied to a real kube-apiserver (`kubectl apply`),
//! served by the webhook with `--gatekeeper-crs`: it creates the
//! constraint CRD of each template, compiles templates and constraints in
//! as they change, keeps the last good set when a template breaks, and the
//! API server's own admission of a Pod carries the constraint's denial.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use mapguard_certs_gen::{CertRequest, generate, write_dir};
use mapguard_testenv::TestEnv;
use rustls::version::TLS13;
use support::*;

const PROPAGATION: Duration = Duration::from_secs(20);

const CONSTRAINT: &str = r#"apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sReservedNames
metadata:
  name: reserved
spec:
  match:
    kinds: [{apiGroups: [""], kinds: ["Pod"]}]
  parameters:
    names: [shop-api]
"#;

const DENIAL: &str = "[K8sReservedNames reserved] the name shop-api is reserved";

async fn kubectl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = env.kubectl().expect("kubectl is installed");
    command.args(args);
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::Stdio;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run kubectl");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    })
    .await
    .expect("kubectl task")
}

async fn kubectl_ok(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(env, args, stdin).await;
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it holds, or fails with `what`.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + PROPAGATION;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PROPAGATION:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_and_constraints_applied_to_the_cluster_are_served() {
    let test = "templates_and_constraints_applied_to_the_cluster_are_served";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    install_template_crd(&env).await;

    let base = temp_dir("gatekeeper-crs");
    let certs = generate(&CertRequest::new("mapguard-webhook", "mapguard-system")).expect("certs");
    write_dir(&certs, &base.join("certs"), false).expect("write certs");
    let webhook = start_webhook(
        &base.join("certs"),
        &[
            format!("--kubeconfig={}", env.kubeconfig().display()),
            "--gatekeeper-crs".to_owned(),
        ],
    )
    .await;
    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let mut client = http1(tls_connect(&connector, webhook.addr).await).await;
    let mut judge = async || {
        send(&mut client, "/validate", fixture("pod-plain-create"))
            .await
            .1
    };
    assert!(allowed(&judge().await), "nothing applied yet");

    // The template: the webhook creates its constraint CRD.
    kubectl_ok(&env, &["apply", "-f", "-"], Some(RESERVED_NAMES_TEMPLATE)).await;
    eventually("the constraint CRD is created", async || {
        kubectl(
            &env,
            &["get", "crd", "k8sreservednames.constraints.gatekeeper.sh"],
            None,
        )
        .await
        .status
        .success()
    })
    .await;
    kubectl_ok(
        &env,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/k8sreservednames.constraints.gatekeeper.sh",
        ],
        None,
    )
    .await;

    // The constraint: served.
    kubectl_ok(&env, &["apply", "-f", "-"], Some(CONSTRAINT)).await;
    eventually("the constraint denies", async || !allowed(&judge().await)).await;
    let review = judge().await;
    assert_eq!(
        message(&review),
        format!("mapguard denied Pod default/shop-api: {DENIAL}")
    );
    let listed = kubectl_ok(&env, &["get", "constraints", "-o", "name"], None).await;
    assert_eq!(
        listed.trim(),
        "k8sreservednames.constraints.gatekeeper.sh/reserved"
    );

    // Through the API server's own admission.
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook");
    let validating: ValidatingWebhookConfiguration = yaml_serde::from_str(
        &std::fs::read_to_string(manifests.join("validatingwebhookconfiguration.yaml"))
            .expect("read"),
    )
    .expect("a ValidatingWebhookConfiguration");
    env.register_validating_webhook(
        &validating,
        &format!("https://{}", webhook.addr),
        &certs.ca_cert_pem,
    )
    .await
    .expect("register");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shop-api\n  namespace: default\nspec:\n  containers:\n    - {name: app, image: shop:1}\n";
    let mut stderr = String::new();
    eventually("the API server denies through the webhook", async || {
        let out = kubectl(&env, &["create", "--dry-run=server", "-f", "-"], Some(pod)).await;
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        !out.status.success() && stderr.contains(DENIAL)
    })
    .await;

    // A template that no longer compiles: rejected, its last good version
    // keeps serving.
    let broken = RESERVED_NAMES_TEMPLATE
        .replace("name == input.parameters.names[_]", "name == undefined_var");
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&broken)).await;
    eventually("the broken template is counted as rejected", async || {
        ops_get(webhook.metrics_addr, "/metrics")
            .await
            .1
            .contains(r#"mapguard_gatekeeper_rejected_objects{kind="ConstraintTemplate"} 1"#)
    })
    .await;
    assert!(
        !allowed(&judge().await),
        "the last good version keeps denying"
    );

    // Fixed again, then the constraint deleted: allowed.
    kubectl_ok(&env, &["apply", "-f", "-"], Some(RESERVED_NAMES_TEMPLATE)).await;
    eventually("the fixed template is no longer rejected", async || {
        ops_get(webhook.metrics_addr, "/metrics")
            .await
            .1
            .contains(r#"mapguard_gatekeeper_rejected_objects{kind="ConstraintTemplate"} 0"#)
    })
    .await;
    kubectl_ok(
        &env,
        &[
            "delete",
            "k8sreservednames.constraints.gatekeeper.sh",
            "reserved",
        ],
        None,
    )
    .await;
    eventually("the deleted constraint stops denying", async || {
        allowed(&judge().await)
    })
    .await;

    webhook.shutdown().await;
    drop(env);
    std::fs::remove_dir_all(&base).expect("cleanup");
}

/// An Ingress in `namespace` serving `host`, as the API server would send
/// it for a CREATE.
fn ingress_review(namespace: &str, name: &str, host: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "1", "operation": "CREATE", "namespace": namespace, "name": name,
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
            "userInfo": {"username": "admin"},
            "object": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"rules": [{"host": host}]}}
        }
    }))
    .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referential_templates_see_the_inventory_the_webhook_watches() {
    let test = "referential_templates_see_the_inventory_the_webhook_watches";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let base = temp_dir("inventory");
    let policies = base.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/fixtures/gator/unique-host");
    for file in ["template.yaml", "constraint.yaml"] {
        std::fs::copy(fixtures.join(file), policies.join(file)).expect("copy");
    }
    let certs = generate(&CertRequest::new("mapguard-webhook", "mapguard-system")).expect("certs");
    write_dir(&certs, &base.join("certs"), false).expect("write certs");
    let webhook = start_webhook(
        &base.join("certs"),
        &[
            format!("--kubeconfig={}", env.kubeconfig().display()),
            format!("--policies={}", policies.display()),
            "--inventory=networking.k8s.io/v1/Ingress,v1/Service".to_owned(),
        ],
    )
    .await;
    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let mut client = http1(tls_connect(&connector, webhook.addr).await).await;
    let mut judge = async || {
        send(
            &mut client,
            "/validate",
            ingress_review("shop", "web-a", "a.example.com"),
        )
        .await
        .1
    };
    assert!(allowed(&judge().await), "no Ingress in the cluster yet");

    kubectl_ok(&env, &["create", "namespace", "other"], None).await;
    let existing = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: existing\n  namespace: other\nspec:\n  rules:\n    - host: a.example.com\n";
    kubectl_ok(&env, &["apply", "-f", "-"], Some(existing)).await;
    eventually("the webhook's inventory holds the Ingress", async || {
        !allowed(&judge().await)
    })
    .await;
    let review = judge().await;
    assert_eq!(
        message(&review),
        "mapguard denied Ingress shop/web-a: [K8sUniqueIngressHostDemo unique-hosts] host a.example.com is already served by other/existing"
    );
    let metrics = ops_get(webhook.metrics_addr, "/metrics").await.1;
    // The Ingress, and the API server's own `kubernetes` Service.
    assert!(
        metrics.contains("mapguard_inventory_objects 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mapguard_inventory_dropped_total 0\n"),
        "{metrics}"
    );

    kubectl_ok(
        &env,
        &["delete", "ingress", "-n", "other", "existing"],
        None,
    )
    .await;
    eventually("a deleted Ingress leaves the inventory", async || {
        allowed(&judge().await)
    })
    .await;

    webhook.shutdown().await;
    drop(env);
    std::fs::remove_dir_all(&base).expect("cleanup");
}

/// A K8sReservedNames constraint `name` reserving `names` (YAML).
fn reserved(name: &str, names: &str) -> String {
    format!(
        "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sReservedNames\nmetadata:\n  name: {name}\nspec:\n  match:\n    kinds: [{{apiGroups: [\"\"], kinds: [\"Pod\"]}}]\n  parameters:\n    names: {names}\n"
    )
}

/// The fixture Pod CREATE, with the Pod named `name`.
fn pod_named(name: &str) -> Vec<u8> {
    let mut review = fixture_json("pod-plain-create");
    review["request"]["name"] = serde_json::json!(name);
    review["request"]["object"]["metadata"]["name"] = serde_json::json!(name);
    serde_json::to_vec(&review).expect("JSON")
}

/// The `Rejected` Events of the object `name`, as `(kind, note)`.
async fn rejected_events(env: &TestEnv, name: &str) -> Vec<(String, String)> {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client(), "default");
    let list = events.list(&Default::default()).await.expect("list Events");
    list.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Rejected"))
        .filter_map(|e| {
            let regarding = e.regarding?;
            (regarding.name.as_deref() == Some(name)).then(|| {
                (
                    regarding.kind.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_template_or_constraint_is_rejected_alone_and_the_good_ones_survive_a_restart() {
    let test = "a_bad_template_or_constraint_is_rejected_alone_and_the_good_ones_survive_a_restart";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    install_template_crd(&env).await;
    let base = temp_dir("gatekeeper-rejected");
    let certs = generate(&CertRequest::new("mapguard-webhook", "mapguard-system")).expect("certs");
    write_dir(&certs, &base.join("certs"), false).expect("write certs");
    let flags = [
        format!("--kubeconfig={}", env.kubeconfig().display()),
        "--gatekeeper-crs".to_owned(),
    ];
    let webhook = start_webhook(&base.join("certs"), &flags).await;

    kubectl_ok(&env, &["apply", "-f", "-"], Some(RESERVED_NAMES_TEMPLATE)).await;
    eventually("the constraint CRD is created", async || {
        kubectl(
            &env,
            &["get", "crd", "k8sreservednames.constraints.gatekeeper.sh"],
            None,
        )
        .await
        .status
        .success()
    })
    .await;
    kubectl_ok(
        &env,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/k8sreservednames.constraints.gatekeeper.sh",
        ],
        None,
    )
    .await;
    // Two good constraints, one whose parameters do not fit the schema, and
    // a second template whose Rego does not compile.
    let objects = [
        reserved("reserved-a", "[shop-api]"),
        reserved("reserved-bad", "shop-api"),
        reserved("reserved-b", "[web-b]"),
        RESERVED_NAMES_TEMPLATE
            .replace("k8sreservednames", "k8sbroken")
            .replace("K8sReservedNames", "K8sBroken")
            .replace("name == input.parameters.names[_]", "name == undefined_var"),
    ]
    .join("---\n");
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&objects)).await;

    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let judge = async |addr, name: &str| {
        let mut client = http1(tls_connect(&connector, addr).await).await;
        send(&mut client, "/validate", pod_named(name)).await.1
    };
    eventually("both good constraints deny", async || {
        !allowed(&judge(webhook.addr, "shop-api").await)
            && !allowed(&judge(webhook.addr, "web-b").await)
    })
    .await;
    assert_eq!(
        message(&judge(webhook.addr, "web-b").await),
        "mapguard denied Pod default/web-b: [K8sReservedNames reserved-b] the name web-b is reserved"
    );
    assert!(allowed(&judge(webhook.addr, "web-c").await));
    let rejected_counted = async |addr| {
        let metrics = ops_get(addr, "/metrics").await.1;
        metrics.contains(r#"mapguard_gatekeeper_rejected_objects{kind="ConstraintTemplate"} 1"#)
            && metrics.contains(r#"mapguard_gatekeeper_rejected_objects{kind="Constraint"} 1"#)
    };
    eventually(
        "one template and one constraint counted as rejected",
        async || rejected_counted(webhook.metrics_addr).await,
    )
    .await;
    let mut found = Vec::new();
    eventually("each bad object has its Event", async || {
        found = rejected_events(&env, "reserved-bad").await;
        found.extend(rejected_events(&env, "k8sbroken").await);
        found.len() == 2
    })
    .await;
    found.sort();
    assert_eq!(found[0].0, "ConstraintTemplate", "{found:?}");
    assert!(
        found[0]
            .1
            .starts_with("mapguard: ConstraintTemplate k8sbroken: its Rego does not compile:")
            && found[0].1.ends_with("; not served"),
        "{found:?}"
    );
    assert_eq!(found[1].0, "K8sReservedNames", "{found:?}");
    assert_eq!(
        found[1].1,
        "mapguard: K8sReservedNames reserved-bad: spec.parameters do not match the template's schema: /names: \"shop-api\" is not of type \"array\"; not served",
        "{found:?}"
    );
    webhook.shutdown().await;

    // A restart: not ready until the cluster's objects are compiled in, then
    // the good ones deny at once.
    let webhook = start_webhook(&base.join("certs"), &flags).await;
    let (status, body) = ops_get(webhook.metrics_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("Gatekeeper templates and constraints not synced yet"),
        "{body}"
    );
    eventually("ready after the first sync", async || {
        ops_get(webhook.metrics_addr, "/readyz").await.0 == 200
    })
    .await;
    for name in ["shop-api", "web-b"] {
        let review = judge(webhook.addr, name).await;
        assert!(!allowed(&review), "{name} once ready: {review}");
    }
    eventually("the bad ones counted again", async || {
        rejected_counted(webhook.metrics_addr).await
    })
    .await;

    webhook.shutdown().await;
    drop(env);
    std::fs::remove_dir_all(&base).expect("cleanup");
}

/// Applies the ConstraintTemplate CRD of `manifests/gatekeeper/` and waits
/// until it is established.
async fn install_template_crd(env: &TestEnv) {
    let crd = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/gatekeeper/constrainttemplates-crd.yaml");
    kubectl_ok(env, &["apply", "-f", crd.to_str().expect("utf-8")], None).await;
    kubectl_ok(
        env,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/constrainttemplates.templates.gatekeeper.sh",
        ],
        None,
    )
    .await;
}
