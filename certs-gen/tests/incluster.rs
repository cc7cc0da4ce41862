//! `mapguard-certs-gen --in-cluster` against a real kube-apiserver
//! (mapguard-testenv), run as the Job runs it: the real binary, as the
//! ServiceAccount `mapguard-certs-gen` with the RBAC of
//! `manifests/certs-gen/rbac.yaml`, on the webhook configurations of
//! `manifests/webhook/`. Then the API server calls the webhook (started in
//! this process with the Secret's certificate) through the caBundle
//! certs-gen set, across a rotation.
//!
//! One API server serves every step (a start costs seconds), so they run in
//! order in one test; each step is a function named after what it shows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mapguard_certs_gen::CertRequest;
use mapguard_certs_gen::check::check;
use mapguard_testenv::TestEnv;
use mapguard_webhook::startup::{Running, Webhook};
use serde_json::json;

const NS: &str = "mapguard-system";
const SECRET: &str = "mapguard-webhook-tls";
const CONFIGURATION: &str = "mapguard";
/// `shop` carries no `mapguard.io/mode` label: its requests go to the
/// webhook that fails open (manifests/webhook/), which names itself so.
const VALIDATE_DENIED: &str =
    r#"admission webhook "best-effort.validate.mapguard.io" denied the request"#;
/// How long the API server may take to use a changed configuration.
const PROPAGATION: Duration = Duration::from_secs(20);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_gen_keeps_the_api_server_trusting_the_webhook() {
    let test = "certs_gen_keeps_the_api_server_trusting_the_webhook";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    let dir = env.dir().join("certs-gen-test");
    std::fs::create_dir_all(&dir).expect("create the test folder");
    install_namespace_rbac_and_configurations(&env).await;
    let kubeconfig = env
        .service_account_kubeconfig(NS, "mapguard-certs-gen")
        .await
        .expect("a kubeconfig of the certs-gen ServiceAccount");

    first_run_creates_the_secret_and_sets_both_ca_bundles(&client, &kubeconfig).await;
    second_run_writes_nothing(&client, &kubeconfig).await;
    let webhook = start_webhook_with_the_secrets_certificate(&env, &client, &dir).await;
    let old_bundle = read_secret(&client).await.ca;
    rotation_keeps_the_webhook_trusted_before_and_after_it_reloads(
        &client,
        &kubeconfig,
        &webhook,
        &dir,
        &old_bundle,
    )
    .await;
    a_missing_name_makes_a_new_certificate(&client, &kubeconfig).await;
    rbac_refusals_name_the_verb_and_the_resource(&env, &client).await;

    webhook.shutdown().await;
    drop(env);
}

/// What `kubectl apply -k manifests/` would create that certs-gen relies on:
/// the namespace, certs-gen's ServiceAccount and RBAC, and both webhook
/// configurations (turned into the URL form, with no CA yet: nothing can
/// call the webhook until certs-gen gives them one).
async fn install_namespace_rbac_and_configurations(env: &TestEnv) {
    let mut kubectl = env
        .kubectl()
        .expect("kubectl (installed with the API server)");
    let output = kubectl
        .args(["apply", "-f"])
        .arg(repo("manifests/namespace.yaml"))
        .arg("-f")
        .arg(repo("manifests/certs-gen/rbac.yaml"))
        .output()
        .expect("run kubectl apply");
    assert!(
        output.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read = |name: &str| {
        let path = repo("manifests/webhook").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    let validating: ValidatingWebhookConfiguration =
        yaml_serde::from_str(&read("validatingwebhookconfiguration.yaml"))
            .expect("a ValidatingWebhookConfiguration");
    let mutating: MutatingWebhookConfiguration =
        yaml_serde::from_str(&read("mutatingwebhookconfiguration.yaml"))
            .expect("a MutatingWebhookConfiguration");
    // Nothing listens there yet; start_webhook_with_the_secrets_certificate
    // points them at the webhook once it runs.
    let nowhere = "https://127.0.0.1:9";
    env.register_validating_webhook(&validating, nowhere, "")
        .await
        .expect("register the validating webhook");
    env.register_mutating_webhook(&mutating, nowhere, "")
        .await
        .expect("register the mutating webhook");
    let client = env.client();
    for name in ["shop"] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("a Namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }
}

/// Runs the real binary with `kubeconfig` and `args`: success and its log.
async fn certs_gen(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mapguard-certs-gen"));
    command
        .arg("--in-cluster")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--wait=5s")
        .args(args)
        .env("RUST_LOG", "info");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the task runs")
        .expect("run mapguard-certs-gen");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("mapguard-certs-gen {args:?}:\n{log}");
    (output.status.success(), log)
}

/// The Secret's PEM texts and version.
struct Stored {
    ca: String,
    cert: String,
    key: String,
    version: String,
}

async fn read_secret(client: &Client) -> Stored {
    let secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get(SECRET)
        .await
        .expect("GET the Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.expect("the Secret has data");
    let text = |key: &str| {
        String::from_utf8(
            data.get(key)
                .unwrap_or_else(|| panic!("no {key}"))
                .0
                .clone(),
        )
        .expect("PEM is text")
    };
    Stored {
        ca: text("ca.crt"),
        cert: text("tls.crt"),
        key: text("tls.key"),
        version: secret.metadata.resource_version.expect("a resourceVersion"),
    }
}

/// The caBundles of every webhook of both configurations (PEM) and their
/// configuration's version.
async fn bundles(client: &Client) -> Vec<(String, String)> {
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(CONFIGURATION)
        .await
        .expect("GET the ValidatingWebhookConfiguration");
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(CONFIGURATION)
        .await
        .expect("GET the MutatingWebhookConfiguration");
    let pem = |bundle: Option<&k8s_openapi::ByteString>| {
        String::from_utf8(bundle.map(|b| b.0.clone()).unwrap_or_default()).expect("PEM")
    };
    let version = |v: Option<String>| v.expect("a resourceVersion");
    let mut out = Vec::new();
    for hook in validating.webhooks.iter().flatten() {
        let bundle = pem(hook.client_config.ca_bundle.as_ref());
        out.push((
            bundle,
            version(validating.metadata.resource_version.clone()),
        ));
    }
    for hook in mutating.webhooks.iter().flatten() {
        let bundle = pem(hook.client_config.ca_bundle.as_ref());
        out.push((bundle, version(mutating.metadata.resource_version.clone())));
    }
    assert_eq!(
        out.len(),
        7,
        "every webhook of both configurations (manifests/webhook/: Pods, Namespace updates and labelled Namespace creation; opted-in namespaces fail closed, the others open)"
    );
    out
}

fn request() -> CertRequest {
    CertRequest::new("mapguard-webhook", NS)
}

async fn first_run_creates_the_secret_and_sets_both_ca_bundles(client: &Client, kubeconfig: &Path) {
    let (ok, log) = certs_gen(kubeconfig, &[]).await;
    assert!(
        ok,
        "the first run must succeed with the manifests' RBAC:\n{log}"
    );
    assert!(log.contains("created the Secret"), "{log}");
    assert!(
        log.contains(r#"set the caBundle of ValidatingWebhookConfiguration "mapguard""#)
            && log.contains(r#"set the caBundle of MutatingWebhookConfiguration "mapguard""#),
        "{log}"
    );
    let stored = read_secret(client).await;
    let valid = check(
        &stored.ca,
        &stored.cert,
        &stored.key,
        &request(),
        SystemTime::now(),
        Duration::from_secs(30 * 86_400),
    )
    .unwrap_or_else(|e| panic!("the stored pair must serve: {e}"));
    let left = valid.not_after - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::days(360),
        "a year's certificate: {left}"
    );
    for (bundle, _) in bundles(client).await {
        assert_eq!(bundle, stored.ca, "each caBundle is the Secret's ca.crt");
    }
}

async fn second_run_writes_nothing(client: &Client, kubeconfig: &Path) {
    let secret_before = read_secret(client).await.version;
    let configurations_before = bundles(client).await;
    let (ok, log) = certs_gen(kubeconfig, &[]).await;
    assert!(ok, "{log}");
    assert!(log.contains("kept the Secret"), "{log}");
    assert_eq!(log.matches("was already current").count(), 2, "{log}");
    assert_eq!(
        read_secret(client).await.version,
        secret_before,
        "Secret rewritten"
    );
    assert_eq!(
        bundles(client).await,
        configurations_before,
        "configurations rewritten"
    );
}

/// Writes the Secret's pair where the webhook reads it (as the kubelet's
/// mount of the Secret would).
fn write_pair(dir: &Path, stored: &Stored) {
    for (name, text) in [("tls.crt", &stored.cert), ("tls.key", &stored.key)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).expect("write the pair");
        std::fs::rename(&tmp, dir.join(name)).expect("move the pair in place");
    }
}

/// Starts the webhook with the Secret's certificate, points both
/// configurations at it (their URL only: the caBundle stays certs-gen's)
/// and waits until the API server calls it.
async fn start_webhook_with_the_secrets_certificate(
    env: &TestEnv,
    client: &Client,
    dir: &Path,
) -> Running {
    write_pair(dir, &read_secret(client).await);
    let args = [
        "mapguard-webhook".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        "--metrics-listen=127.0.0.1:0".to_owned(),
        format!("--tls-cert={}", dir.join("tls.crt").display()),
        format!("--tls-key={}", dir.join("tls.key").display()),
        format!("--kubeconfig={}", env.kubeconfig().display()),
        "--reload-interval=200ms".to_owned(),
    ];
    let config = mapguard_webhook::Config::try_parse_from(args).expect("webhook flags");
    let webhook = Webhook::build(&config)
        .await
        .expect("webhook builds")
        .start(&config)
        .await
        .expect("webhook starts");
    let params = PatchParams::default();
    for (path, endpoint) in [
        ("validatingwebhookconfigurations", "validate"),
        ("mutatingwebhookconfigurations", "mutate"),
    ] {
        // Both webhooks of each configuration (opted-in namespaces and the
        // others), the same URL.
        let url = format!("https://{}/{endpoint}", webhook.addr);
        let patch = json!([
            {"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": url},
            {"op": "replace", "path": "/webhooks/1/clientConfig/url", "value": url},
        ]);
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("a JSON patch");
        let result = match path {
            "validatingwebhookconfigurations" => {
                Api::<ValidatingWebhookConfiguration>::all(client.clone())
                    .patch(CONFIGURATION, &params, &Patch::<()>::Json(patch))
                    .await
                    .map(|_| ())
            }
            _ => Api::<MutatingWebhookConfiguration>::all(client.clone())
                .patch(CONFIGURATION, &params, &Patch::<()>::Json(patch))
                .await
                .map(|_| ()),
        };
        result.unwrap_or_else(|e| panic!("point {path} at the webhook: {e}"));
    }
    wait_until_ready(webhook.metrics_addr).await;
    the_api_server_calls_the_webhook(client, "the first certificate").await;
    webhook
}

async fn ops_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the ops port");
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.expect("read");
    text
}

async fn wait_until_ready(addr: SocketAddr) {
    let deadline = Instant::now() + PROPAGATION;
    while !ops_get(addr, "/readyz").await.starts_with("HTTP/1.0 200") {
        assert!(Instant::now() < deadline, "the webhook never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A dry-run privileged Pod is denied *by the webhook's policy*: the API
/// server reached it over TLS, trusting its certificate through the
/// caBundle. Until then the API server reports a TLS or connection failure.
async fn the_api_server_calls_the_webhook(client: &Client, when: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
            "securityContext": {"privileged": true}}]},
    }))
    .expect("a Pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let message = match pods.create(&params, &pod).await {
            Ok(_) => "admitted".to_owned(),
            Err(kube::Error::Api(status)) => status.message,
            Err(e) => panic!("{when}: {e}"),
        };
        if message.contains(VALIDATE_DENIED) && message.contains("[mapguard.privileged]") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: the API server did not get the webhook's answer within {PROPAGATION:?}: {message}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pem_count(bundle: &str) -> usize {
    bundle.matches("-----BEGIN CERTIFICATE-----").count()
}

async fn rotation_keeps_the_webhook_trusted_before_and_after_it_reloads(
    client: &Client,
    kubeconfig: &Path,
    webhook: &Running,
    dir: &Path,
    old_bundle: &str,
) {
    let old = read_secret(client).await;
    // A year's certificate is within a 400-day window: "near expiry".
    let near_expiry = ["--validity-days=1000", "--rotate-before=400d"];
    let (ok, log) = certs_gen(kubeconfig, &near_expiry).await;
    assert!(ok, "{log}");
    assert!(log.contains("rotated the Secret"), "{log}");
    assert!(log.contains("within the rotation window of 400d"), "{log}");
    let new = read_secret(client).await;
    assert_ne!(new.cert, old.cert, "a new certificate");
    assert_eq!(
        pem_count(&new.ca),
        2,
        "new CA, then the previous one: {}",
        new.ca
    );
    assert!(
        new.ca.ends_with(old_bundle),
        "the previous CA is kept while Pods may serve its certificate"
    );
    for (bundle, _) in bundles(client).await {
        assert_eq!(bundle, new.ca, "both configurations trust both CAs");
    }
    // The Pods still serve the old certificate: still trusted.
    the_api_server_calls_the_webhook(client, "after the rotation, before the reload").await;

    // The kubelet updates the mounted Secret; the webhook reloads it.
    let reloads = r#"mapguard_tls_reloads_total{result="success"}"#;
    write_pair(dir, &new);
    let deadline = Instant::now() + PROPAGATION;
    while !ops_get(webhook.metrics_addr, "/metrics")
        .await
        .lines()
        .any(|l| l.starts_with(reloads) && !l.ends_with(" 0"))
    {
        assert!(
            Instant::now() < deadline,
            "the webhook never reloaded its certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    the_api_server_calls_the_webhook(client, "after the reload").await;

    let (ok, log) = certs_gen(kubeconfig, &near_expiry).await;
    assert!(ok, "{log}");
    assert!(
        log.contains("kept the Secret"),
        "a 1000-day certificate is kept: {log}"
    );
}

async fn a_missing_name_makes_a_new_certificate(client: &Client, kubeconfig: &Path) {
    let before = read_secret(client).await;
    let args = [
        "--validity-days=1000",
        "--rotate-before=400d",
        "--san=webhook.example.org",
    ];
    let (ok, log) = certs_gen(kubeconfig, &args).await;
    assert!(ok, "{log}");
    assert!(
        log.contains("tls.crt is not valid for webhook.example.org"),
        "{log}"
    );
    assert_ne!(read_secret(client).await.cert, before.cert);
}

/// ServiceAccounts without the rights certs-gen needs: the run fails and
/// says which verb on which resource RBAC refused.
async fn rbac_refusals_name_the_verb_and_the_resource(env: &TestEnv, client: &Client) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    for name in ["nobody", "secrets-only", "no-patch"] {
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("a ServiceAccount");
        accounts
            .create(&PostParams::default(), &account)
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {name}: {e}"));
    }
    // secrets-only: the Role of manifests/certs-gen/rbac.yaml, no ClusterRole.
    bind_role(client, "secrets-only").await;
    // no-patch: also get (not patch) on the configurations.
    bind_role(client, "no-patch").await;
    let get_only: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "configurations-get-only"},
        "rules": [{"apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
            "verbs": ["get"]}],
    }))
    .expect("a ClusterRole");
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &get_only)
        .await
        .expect("create the ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "no-patch"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "configurations-get-only"},
        "subjects": [{"kind": "ServiceAccount", "name": "no-patch", "namespace": NS}],
    }))
    .expect("a ClusterRoleBinding");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("create the ClusterRoleBinding");
    // A stale caBundle, so that a patch is needed.
    let stale = json!({"webhooks": [{"name": "validate.mapguard.io",
        "clientConfig": {"caBundle": "c3RhbGU="}}]});
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            CONFIGURATION,
            &PatchParams::default(),
            &Patch::Strategic(stale),
        )
        .await
        .expect("make the caBundle stale");

    for (account, refusal) in [
        (
            "nobody",
            r#"RBAC forbids get on secrets "mapguard-webhook-tls" in namespace mapguard-system"#,
        ),
        (
            "secrets-only",
            r#"RBAC forbids get on validatingwebhookconfigurations "mapguard""#,
        ),
        (
            "no-patch",
            r#"RBAC forbids patch on validatingwebhookconfigurations "mapguard""#,
        ),
    ] {
        let kubeconfig = env
            .service_account_kubeconfig(NS, account)
            .await
            .expect("a ServiceAccount kubeconfig");
        let (ok, log) = certs_gen(
            &kubeconfig,
            &[
                "--validity-days=1000",
                "--rotate-before=400d",
                "--san=webhook.example.org",
            ],
        )
        .await;
        assert!(!ok, "{account} must fail:\n{log}");
        assert!(
            log.contains(refusal),
            "{account}: expected {refusal:?} in:\n{log}"
        );
        assert!(
            log.contains(&format!("system:serviceaccount:{NS}:{account}")),
            "the API server's message names the account: {log}"
        );
        assert!(log.contains("manifests/certs-gen/rbac.yaml"), "{log}");
    }
}

/// Binds the Role of manifests/certs-gen/rbac.yaml to `account`.
async fn bind_role(client: &Client, account: &str) {
    assert!(
        Api::<Role>::namespaced(client.clone(), NS)
            .get_opt("mapguard-certs-gen")
            .await
            .expect("GET the Role")
            .is_some(),
        "the manifests' Role is applied"
    );
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": account},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mapguard-certs-gen"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}],
    }))
    .expect("a RoleBinding");
    Api::<RoleBinding>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("bind the Role to {account}: {e}"));
}
