//! `kubectl apply -k manifests/` against a real API server: the
//! kustomization renders every component, the API server accepts every
//! object (`--dry-run=server`, strict field validation, Pod Security
//! admission of the namespace), a real apply and a second one (an upgrade)
//! keep the `caBundle` certs-gen set, with no webhook answering only the
//! namespaces that opted in to enforcement refuse Pods, and each
//! ServiceAccount may do what its component does and nothing more
//! (`kubectl auth can-i`, impersonating the account).
//!
//! One API server serves every step (a start costs seconds), so they run in
//! order in one test; each step is a function named after what it shows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use mapguard_testenv::TestEnv;
use serde_json::{Value, json};

const NS: &str = "mapguard-system";
const CONFIGURATION: &str = "mapguard";

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_k_installs_every_component_with_least_privilege() {
    let test = "kubectl_apply_k_installs_every_component_with_least_privilege";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let documents = the_kustomization_renders_every_component(&env).await;
    the_daemonset_gets_only_what_bpf_needs(&documents);
    every_image_is_built_by_a_containerfile_here(&documents);
    the_api_server_accepts_every_object_in_a_dry_run(&env, documents.len()).await;
    an_upgrade_keeps_the_ca_bundle_certs_gen_set(&env).await;
    without_a_webhook_only_opted_in_namespaces_refuse_pods(&env, FailClosed::OptedIn).await;
    each_service_account_can_do_its_job(&env).await;
    each_service_account_can_do_nothing_more(&env).await;
    the_documented_uninstall_removes_everything(&env).await;
    drop(env);
}

/// Runs kubectl with `args`; its output.
async fn kubectl(env: &TestEnv, args: &[&str]) -> Output {
    let mut command = env
        .kubectl()
        .expect("kubectl (installed with the API server)");
    command.args(args);
    let shown = format!("kubectl {}", args.join(" "));
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the kubectl task runs")
        .unwrap_or_else(|e| panic!("run {shown}: {e}"))
}

/// Runs kubectl with `args`, which must succeed; its stdout.
async fn kubectl_ok(env: &TestEnv, args: &[&str]) -> String {
    let output = kubectl(env, args).await;
    assert!(
        output.status.success(),
        "kubectl {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

fn manifests_arg() -> String {
    manifests().display().to_string()
}

/// `kubectl kustomize manifests/`: the objects of every component, and no
/// placeholder left to edit by hand.
async fn the_kustomization_renders_every_component(env: &TestEnv) -> Vec<Value> {
    let rendered = kubectl_ok(env, &["kustomize", &manifests_arg()]).await;
    let documents: Vec<Value> = yaml_serde::Deserializer::from_str(&rendered)
        .map(|doc| {
            serde::Deserialize::deserialize(doc).expect("kubectl kustomize prints YAML documents")
        })
        .filter(|doc: &Value| !doc.is_null())
        .collect();
    let found: BTreeSet<String> = documents
        .iter()
        .map(|doc| {
            let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("");
            format!(
                "{} {namespace}/{}",
                doc["kind"].as_str().unwrap_or("?"),
                doc["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(found.len(), documents.len(), "an object rendered twice");
    let expected: BTreeSet<String> = [
        "Namespace /mapguard-system",
        "CustomResourceDefinition /mapviolations.mapguard.io",
        // admission webhook
        "ServiceAccount mapguard-system/mapguard-webhook",
        "ClusterRole /mapguard-webhook",
        "ClusterRoleBinding /mapguard-webhook",
        "ConfigMap mapguard-system/mapguard-policies",
        "Deployment mapguard-system/mapguard-webhook",
        "PodDisruptionBudget mapguard-system/mapguard-webhook",
        "Service mapguard-system/mapguard-webhook",
        "ValidatingWebhookConfiguration /mapguard",
        "MutatingWebhookConfiguration /mapguard",
        // certificates
        "ServiceAccount mapguard-system/mapguard-certs-gen",
        "Role mapguard-system/mapguard-certs-gen",
        "RoleBinding mapguard-system/mapguard-certs-gen",
        "ClusterRole /mapguard-certs-gen",
        "ClusterRoleBinding /mapguard-certs-gen",
        "Job mapguard-system/mapguard-certs-gen",
        "CronJob mapguard-system/mapguard-certs-gen",
        // node agent
        "ServiceAccount mapguard-system/mapguard-enforcer",
        "ClusterRole /mapguard-enforcer-pods",
        "ClusterRoleBinding /mapguard-enforcer-pods",
        "ClusterRole /mapguard-enforcer-records",
        "ClusterRoleBinding /mapguard-enforcer-records",
        "DaemonSet mapguard-system/mapguard-enforcer",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(
        found,
        expected,
        "objects rendered by kubectl kustomize (missing: {:?}, unexpected: {:?})",
        expected.difference(&found).collect::<Vec<_>>(),
        found.difference(&expected).collect::<Vec<_>>()
    );
    assert!(
        !rendered.contains("CA_BUNDLE") && !rendered.contains("caBundle"),
        "the caBundle is certs-gen's to set, not a placeholder:\n{rendered}"
    );
    documents
}

/// The node agent's DaemonSet: host PID namespace, no capability beyond
/// those BPF and reading other processes need, every host path read-only,
/// and a Pod on every node whatever its taints.
fn the_daemonset_gets_only_what_bpf_needs(documents: &[Value]) {
    let daemonset = documents
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "{pod}");
    assert_eq!(
        pod["tolerations"],
        json!([{"operator": "Exists"}]),
        "tolerates every taint"
    );
    assert_eq!(pod["serviceAccountName"], "mapguard-enforcer");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], Value::Null, "not privileged");
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let added: BTreeSet<&str> = security["capabilities"]["add"]
        .as_array()
        .expect("added capabilities")
        .iter()
        .map(|c| c.as_str().expect("a capability name"))
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "KILL"]),
        "no SYS_ADMIN or NET_ADMIN; KILL only to resume (SIGCONT) the processes it held at exec (its actions' signals come from the kernel, bpf_send_signal)"
    );
    let host_paths: BTreeSet<(&str, &str)> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    assert_eq!(
        host_paths.iter().map(|(_, p)| *p).collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "/sys/kernel/btf",
            "/sys/fs/bpf",
            "/proc",
            "/sys/fs/cgroup",
            "/run/mapguard"
        ])
    );
    for mount in container["volumeMounts"].as_array().expect("mounts") {
        // Writable: the BPF filesystem (the table of processes held at
        // exec is pinned there) and the events socket's folder.
        if mount["mountPath"] == "/sys/fs/bpf" || mount["mountPath"] == "/run/mapguard" {
            assert_eq!(mount["readOnly"], Value::Null, "{mount}");
            continue;
        }
        if host_paths.iter().any(|(name, _)| mount["name"] == *name) {
            assert_eq!(
                mount["readOnly"], true,
                "host path mounted writable: {mount}"
            );
        }
    }
    let args = container["args"].as_array().expect("args");
    assert!(
        args.contains(&json!("--proc-root=/host/proc")),
        "the agent reads the host's /proc where it is mounted: {args:?}"
    );
}

/// Each image the manifests run is `ghcr.io/mapguard/NAME:VERSION` (the
/// workspace's version), built by `DIR/Containerfile` (NAME without
/// `mapguard-`) with NAME as its entry point and the Pod's user as its own.
fn every_image_is_built_by_a_containerfile_here(documents: &[Value]) {
    let mut images = BTreeSet::new();
    for doc in documents {
        let pod = match doc["kind"].as_str() {
            Some("Deployment" | "DaemonSet" | "Job") => &doc["spec"]["template"]["spec"],
            Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        for container in pod["containers"].as_array().expect("containers") {
            let image = container["image"].as_str().expect("an image");
            let (name, version) = image
                .strip_prefix("ghcr.io/mapguard/")
                .and_then(|rest| rest.split_once(':'))
                .unwrap_or_else(|| panic!("{image}: not ghcr.io/mapguard/NAME:VERSION"));
            assert_eq!(version, env!("CARGO_PKG_VERSION"), "{image}");
            let dir = name.strip_prefix("mapguard-").expect("mapguard-NAME");
            let path = manifests().join("..").join(dir).join("Containerfile");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{image}: read {}: {e}", path.display()));
            assert!(
                text.contains(&format!(r#"ENTRYPOINT ["/usr/local/bin/{name}"]"#))
                    && text.contains(&format!("--bin {name} ")),
                "{}: builds and runs {name}",
                path.display()
            );
            let user = container["securityContext"]["runAsUser"]
                .as_u64()
                .or_else(|| pod["securityContext"]["runAsUser"].as_u64())
                .unwrap_or_else(|| panic!("{image}: no runAsUser"));
            assert!(
                text.contains(&format!("\nUSER {user}:{user}\n")),
                "{}: the image's user is the Pod's ({user})",
                path.display()
            );
            images.insert(name.to_owned());
        }
    }
    assert_eq!(
        images,
        BTreeSet::from(
            ["mapguard-webhook", "mapguard-agent", "mapguard-certs-gen"].map(str::to_owned)
        )
    );
}

/// Every object passes the API server's validation, defaulting and
/// admission (`--dry-run=server`); only the namespace is created for real
/// (namespaced objects cannot be dry-run into a namespace that does not
/// exist).
async fn the_api_server_accepts_every_object_in_a_dry_run(env: &TestEnv, objects: usize) {
    let namespace = manifests().join("namespace.yaml").display().to_string();
    kubectl_ok(env, &["apply", "-f", &namespace]).await;
    let out = kubectl_ok(
        env,
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-k",
            &manifests_arg(),
        ],
    )
    .await;
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count(),
        objects,
        "one accepted line per object:\n{out}"
    );
    // Nothing but the namespace exists yet.
    let found = kubectl_ok(
        env,
        &["get", "deployments,daemonsets,jobs", "-n", NS, "-o", "name"],
    )
    .await;
    assert_eq!(found.trim(), "", "a dry run created objects: {found}");
}

/// `kubectl apply -k` for real, certs-gen's patch of both caBundles (as
/// `mapguard-certs-gen --in-cluster` sends it), then the same apply again,
/// as an upgrade would: the caBundle stays, nothing else changes.
async fn an_upgrade_keeps_the_ca_bundle_certs_gen_set(env: &TestEnv) {
    let first = kubectl_ok(env, &["apply", "-k", &manifests_arg()]).await;
    assert!(
        first.contains(
            "validatingwebhookconfiguration.admissionregistration.k8s.io/mapguard created"
        ),
        "{first}"
    );
    let client = env.client();
    let bundle = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==";
    let params = PatchParams {
        field_manager: Some("mapguard-certs-gen".to_owned()),
        ..PatchParams::default()
    };
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let patch = |name: &str| {
        Patch::Strategic(
            json!({"webhooks": [{"name": name, "clientConfig": {"caBundle": bundle}}]}),
        )
    };
    // Every webhook of both configurations, as certs-gen patches them.
    let validating_names: Vec<String> = validating
        .get(CONFIGURATION)
        .await
        .expect("GET validating")
        .webhooks
        .into_iter()
        .flatten()
        .map(|h| h.name)
        .collect();
    let mutating_names: Vec<String> = mutating
        .get(CONFIGURATION)
        .await
        .expect("GET mutating")
        .webhooks
        .into_iter()
        .flatten()
        .map(|h| h.name)
        .collect();
    for name in &validating_names {
        validating
            .patch(CONFIGURATION, &params, &patch(name))
            .await
            .unwrap_or_else(|e| panic!("set the caBundle of {name}: {e}"));
    }
    for name in &mutating_names {
        mutating
            .patch(CONFIGURATION, &params, &patch(name))
            .await
            .unwrap_or_else(|e| panic!("set the caBundle of {name}: {e}"));
    }

    let before = versions(env).await;
    kubectl_ok(env, &["apply", "-k", &manifests_arg()]).await;
    assert_eq!(
        versions(env).await,
        before,
        "a second apply changed objects (kubectl may say \"configured\" of the PodDisruptionBudget: \
         its selector's patch strategy is replace, so kubectl's patch is never empty, but it changes nothing)"
    );
    let stored = |config: Option<Vec<Option<Vec<u8>>>>| config.expect("webhooks");
    let v = validating.get(CONFIGURATION).await.expect("GET validating");
    let m = mutating.get(CONFIGURATION).await.expect("GET mutating");
    let expected = base64_decode(bundle);
    for (kind, count, bundles) in [
        (
            "validating",
            validating_names.len(),
            stored(v.webhooks.map(|w| {
                w.into_iter()
                    .map(|h| h.client_config.ca_bundle.map(|b| b.0))
                    .collect()
            })),
        ),
        (
            "mutating",
            mutating_names.len(),
            stored(m.webhooks.map(|w| {
                w.into_iter()
                    .map(|h| h.client_config.ca_bundle.map(|b| b.0))
                    .collect()
            })),
        ),
    ] {
        assert_eq!(
            bundles,
            vec![Some(expected.clone()); count],
            "the {kind} caBundles after the upgrade"
        );
    }
}

/// Where the install fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailClosed {
    /// The default: only namespaces labelled `mapguard.io/mode` audit,
    /// stop or kill.
    OptedIn,
    /// With the `fail-closed` Component: every namespace but mapguard's
    /// own and the control plane's.
    Everywhere,
}

/// The webhook's Deployment never runs here (no node): the state of a
/// cluster right after an install, or after losing every webhook Pod. The
/// API server's calls fail, and each namespace gets what the install
/// promises: Pods refused where enforcement was asked for, created
/// everywhere else; `kube-system` and `mapguard-system` are never judged.
/// The API server's own count of calls that failed open shows the
/// best-effort webhooks were called, not skipped.
async fn without_a_webhook_only_opted_in_namespaces_refuse_pods(
    env: &TestEnv,
    fail_closed: FailClosed,
) {
    let suffix = match fail_closed {
        FailClosed::OptedIn => "default",
        FailClosed::Everywhere => "closed",
    };
    let enforced = format!("enforced-{suffix}");
    let plain = format!("plain-{suffix}");
    let off = format!("off-{suffix}");
    for (namespace, label) in [
        (&enforced, Some("kill")),
        (&plain, None),
        (&off, Some("off")),
    ] {
        // Created with its label: a Namespace's creation is not judged,
        // a change of its mapguard.io/ labels is, by a webhook that is
        // missing here (and fails closed for enforced namespaces).
        let labels = label.map(|mode| json!({"mapguard.io/mode": mode}));
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"name": namespace, "labels": labels},
        }))
        .expect("a Namespace");
        Api::<Namespace>::all(env.client())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {:?}: {e}", namespace.metadata.name));
    }
    let client = env.client();
    let create = |namespace: &str, name: &str| {
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
        }))
        .expect("a Pod literal deserializes");
        async move { pods.create(&PostParams::default(), &pod).await }
    };
    // The API server loads webhook configurations from its own watch:
    // wait until the opted-in namespace's Pods are refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        match create(&enforced, "probe").await {
            Err(kube::Error::Api(status)) => break status.message,
            Err(other) => panic!("create a Pod in {enforced}: {other}"),
            Ok(_) => {
                kubectl_ok(env, &["delete", "pod", "probe", "-n", &enforced]).await;
                assert!(
                    Instant::now() < deadline,
                    "a Pod in {enforced} (mapguard.io/mode=kill) was still admitted 30 s after the install"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(
        refusal.contains("failed calling webhook \"mutate.mapguard.io\""),
        "refused for another reason: {refusal}"
    );
    let mut admitted = vec!["kube-system", NS];
    let mut refused = vec![enforced.as_str()];
    match fail_closed {
        FailClosed::OptedIn => admitted.extend([plain.as_str(), off.as_str()]),
        FailClosed::Everywhere => refused.extend([plain.as_str(), off.as_str()]),
    }
    for namespace in &admitted {
        create(namespace, "app").await.unwrap_or_else(|e| {
            panic!("a Pod in {namespace} must be admitted without a webhook: {e}")
        });
    }
    for namespace in &refused {
        let refusal = create(namespace, "app")
            .await
            .expect_err("a Pod must be refused without a webhook");
        assert!(
            refusal.to_string().contains("failed calling webhook"),
            "{namespace}: {refusal}"
        );
    }
    let metrics = kubectl_ok(env, &["get", "--raw", "/metrics"]).await;
    let failed_open = |webhook: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("apiserver_admission_webhook_fail_open_count{")
                    && l.contains(&format!("name=\"{webhook}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let expected_open = match fail_closed {
        FailClosed::OptedIn => 2.0, // the Pods of `plain` and `off`
        FailClosed::Everywhere => 0.0,
    };
    for webhook in [
        "best-effort.mutate.mapguard.io",
        "best-effort.validate.mapguard.io",
    ] {
        assert_eq!(
            failed_open(webhook),
            expected_open,
            "calls of {webhook} that failed open ({fail_closed:?})"
        );
    }
}

/// The resourceVersion of every object of the kustomization: one changes
/// exactly when the object is written.
async fn versions(env: &TestEnv) -> Vec<(String, String)> {
    let out = kubectl_ok(env, &["get", "-k", &manifests_arg(), "-o", "json"]).await;
    let list: Value = serde_json::from_str(&out).expect("kubectl get -o json prints JSON");
    let items = list["items"].as_array().expect("a List");
    assert!(items.len() > 20, "every object is there: {}", items.len());
    items
        .iter()
        .map(|item| {
            let meta = &item["metadata"];
            (
                format!("{} {}/{}", item["kind"], meta["namespace"], meta["name"]),
                meta["resourceVersion"]
                    .as_str()
                    .expect("a resourceVersion")
                    .to_owned(),
            )
        })
        .collect()
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// `kubectl auth can-i VERB RESOURCE` as `account`: whether it may.
async fn can_i(env: &TestEnv, account: &str, check: &str) -> bool {
    let who = format!("--as=system:serviceaccount:{NS}:{account}");
    let mut args: Vec<&str> = vec!["auth", "can-i"];
    args.extend(check.split_whitespace());
    args.push(&who);
    let output = kubectl(env, &args).await;
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match (output.status.code(), answer.as_str()) {
        (Some(0), "yes") => true,
        (Some(1), "no") => false,
        _ => panic!(
            "kubectl {}: {} {answer:?} {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// What each component does, as the API server's authorizer answers for
/// its ServiceAccount.
async fn each_service_account_can_do_its_job(env: &TestEnv) {
    let jobs: &[(&str, &[&str])] = &[
        ("mapguard-webhook", &["list namespaces", "watch namespaces"]),
        (
            "mapguard-enforcer",
            &[
                "list pods --all-namespaces",
                "watch pods --all-namespaces",
                "get mapviolations.mapguard.io -n shop",
                "list mapviolations.mapguard.io -n shop",
                "create mapviolations.mapguard.io -n shop",
                "update mapviolations.mapguard.io -n shop",
                "delete mapviolations.mapguard.io -n shop",
                "update mapviolations.mapguard.io --subresource=status -n shop",
                "create events.events.k8s.io -n shop",
                "patch events.events.k8s.io -n shop",
            ],
        ),
        (
            "mapguard-certs-gen",
            &[
                "create secrets -n mapguard-system",
                "get secrets/mapguard-webhook-tls -n mapguard-system",
                "update secrets/mapguard-webhook-tls -n mapguard-system",
                "get validatingwebhookconfigurations/mapguard",
                "patch validatingwebhookconfigurations/mapguard",
                "get mutatingwebhookconfigurations/mapguard",
                "patch mutatingwebhookconfigurations/mapguard",
            ],
        ),
    ];
    let mut refused = Vec::new();
    for (account, checks) in jobs {
        for check in *checks {
            if !can_i(env, account, check).await {
                refused.push(format!("{account}: {check}"));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "refused what the component needs: {refused:#?}"
    );
}

/// Samples of what no component may do, then the whole list of rules
/// each account holds (`kubectl auth can-i --list`, less what a
/// ServiceAccount without bindings holds) compared with exactly its
/// component's, in mapguard's namespace and in another.
async fn each_service_account_can_do_nothing_more(env: &TestEnv) {
    let forbidden: &[(&str, &[&str])] = &[
        (
            "mapguard-webhook",
            &[
                "get namespaces",
                "patch namespaces",
                "create namespaces",
                "get secrets -n mapguard-system",
                "list pods --all-namespaces",
                "create events.events.k8s.io -n shop",
                "create events -n shop",
                "patch validatingwebhookconfigurations/mapguard",
                "create mapviolations.mapguard.io -n shop",
            ],
        ),
        (
            "mapguard-enforcer",
            &[
                "delete pods -n shop",
                "create pods --subresource=eviction -n shop",
                "patch pods -n shop",
                "get pods -n shop",
                "get secrets -n shop",
                "list secrets --all-namespaces",
                "get secrets/mapguard-webhook-tls -n mapguard-system",
                "patch mapviolations.mapguard.io -n shop",
                "deletecollection mapviolations.mapguard.io -n shop",
                "create events -n shop",
                "delete events.events.k8s.io -n shop",
                "patch nodes",
            ],
        ),
        (
            "mapguard-certs-gen",
            &[
                "list secrets -n mapguard-system",
                "watch secrets -n mapguard-system",
                "get secrets/other -n mapguard-system",
                "delete secrets/mapguard-webhook-tls -n mapguard-system",
                "patch secrets/mapguard-webhook-tls -n mapguard-system",
                "create secrets -n default",
                "get secrets/mapguard-webhook-tls -n default",
                "patch validatingwebhookconfigurations/other",
                "update validatingwebhookconfigurations/mapguard",
                "delete validatingwebhookconfigurations/mapguard",
                "create validatingwebhookconfigurations",
                "list mutatingwebhookconfigurations",
                "patch mutatingwebhookconfigurations/other",
                "list pods -n mapguard-system",
            ],
        ),
    ];
    let mut allowed = Vec::new();
    for (account, checks) in forbidden {
        for check in *checks {
            if can_i(env, account, check).await {
                allowed.push(format!("{account}: {check}"));
            }
        }
    }
    assert!(
        allowed.is_empty(),
        "allowed more than the component needs: {allowed:#?}"
    );

    let webhook = ["namespaces [] [] [list watch]"];
    let enforcer = [
        "pods [] [] [list watch]",
        // The namespaces' minimum mode and coverage (mapguard.io/ labels).
        "namespaces [] [] [list watch]",
        "mapviolations.mapguard.io [] [] [get list create update delete]",
        "mapviolations.mapguard.io/status [] [] [update]",
        "events.events.k8s.io [] [] [create patch]",
    ];
    let certs_gen_cluster = [
        "validatingwebhookconfigurations.admissionregistration.k8s.io [] [mapguard] [get patch]",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io [] [mapguard] [get patch]",
    ];
    let certs_gen_namespace = [
        "secrets [] [] [create]",
        "secrets [] [mapguard-webhook-tls] [get update]",
    ];
    let certs_gen_home: Vec<&str> = certs_gen_cluster
        .iter()
        .chain(&certs_gen_namespace)
        .copied()
        .collect();
    // What any ServiceAccount holds without a binding of ours (self-reviews,
    // the API server's defaults such as reading ClusterTrustBundles).
    kubectl_ok(env, &["create", "serviceaccount", "baseline", "-n", NS]).await;
    for (account, namespace, expected) in [
        ("mapguard-webhook", NS, &webhook[..]),
        ("mapguard-webhook", "shop", &webhook[..]),
        ("mapguard-enforcer", NS, &enforcer[..]),
        ("mapguard-enforcer", "shop", &enforcer[..]),
        ("mapguard-certs-gen", NS, &certs_gen_home[..]),
        ("mapguard-certs-gen", "shop", &certs_gen_cluster[..]),
    ] {
        let baseline = resource_rules(env, "baseline", namespace).await;
        let rules: BTreeSet<String> = resource_rules(env, account, namespace)
            .await
            .difference(&baseline)
            .cloned()
            .collect();
        let expected: BTreeSet<String> = expected.iter().map(|r| (*r).to_owned()).collect();
        assert_eq!(
            rules, expected,
            "{account} in namespace {namespace}: the rules it holds beyond a ServiceAccount without bindings ({baseline:?})"
        );
    }
}

/// The resource rules `account` holds in `namespace`, one normalized line
/// each (`RESOURCE [NON-RESOURCE URLS] [NAMES] [VERBS]`).
async fn resource_rules(env: &TestEnv, account: &str, namespace: &str) -> BTreeSet<String> {
    let who = format!("--as=system:serviceaccount:{NS}:{account}");
    let out = kubectl_ok(
        env,
        &[
            "auth",
            "can-i",
            "--list",
            "--no-headers",
            "-n",
            namespace,
            &who,
        ],
    )
    .await;
    out.lines()
        // Lines of non-resource URLs start with blanks (no resource).
        .filter(|l| !l.starts_with(char::is_whitespace) && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The two uninstall commands of docs/install.md. Without a
/// controller-manager the namespace stays Terminating (nothing deletes its
/// contents), so only the cluster-scoped objects are checked gone, and the
/// namespace marked.
async fn the_documented_uninstall_removes_everything(env: &TestEnv) {
    kubectl_ok(
        env,
        &[
            "delete",
            "validatingwebhookconfiguration,mutatingwebhookconfiguration",
            "mapguard",
        ],
    )
    .await;
    kubectl_ok(
        env,
        &[
            "delete",
            "-k",
            &manifests_arg(),
            "--ignore-not-found",
            "--wait=false",
        ],
    )
    .await;
    let left = kubectl_ok(
        env,
        &[
            "get",
            "clusterroles,clusterrolebindings,validatingwebhookconfigurations,mutatingwebhookconfigurations",
            "-l",
            "app.kubernetes.io/part-of=mapguard",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(left.trim(), "", "left after uninstalling: {left}");
    let phase = kubectl_ok(
        env,
        &["get", "namespace", NS, "-o", "jsonpath={.status.phase}"],
    )
    .await;
    assert_eq!(phase, "Terminating");
}

/// With the responder installed: its own ServiceAccount holds exactly the
/// rights it uses (evict, cordon, read the agents' records and the Pods
/// they name, its Events, its budget ConfigMap and no other); the node
/// agents' ServiceAccount still may neither evict nor cordon.
async fn the_responder_alone_may_evict_and_cordon(env: &TestEnv) {
    for check in [
        "create pods --subresource=eviction -n shop",
        "patch nodes",
        "list mapviolations.mapguard.io -A",
        "watch mapviolations.mapguard.io -A",
        "get pods -n shop",
        "create events.events.k8s.io -n shop",
        "create configmaps -n mapguard-system",
        "update configmaps/mapguard-responder-budget -n mapguard-system",
    ] {
        assert!(
            can_i(env, "mapguard-responder", check).await,
            "the responder may {check}"
        );
    }
    for (account, check) in [
        ("mapguard-responder", "delete pods -A"),
        ("mapguard-responder", "delete nodes"),
        ("mapguard-responder", "update nodes/status"),
        ("mapguard-responder", "list events -A"),
        (
            "mapguard-responder",
            "update mapviolations.mapguard.io --subresource=status -n shop",
        ),
        (
            "mapguard-responder",
            "create mapviolations.mapguard.io -n shop",
        ),
        (
            "mapguard-responder",
            "update configmaps/other -n mapguard-system",
        ),
        ("mapguard-responder", "create configmaps -n shop"),
        (
            "mapguard-enforcer",
            "create pods --subresource=eviction -n shop",
        ),
        ("mapguard-enforcer", "create pods --subresource=eviction -A"),
        ("mapguard-enforcer", "patch nodes"),
        ("mapguard-enforcer", "get nodes"),
        ("mapguard-enforcer", "list events -A"),
        (
            "mapguard-enforcer",
            "update configmaps/mapguard-responder-budget -n mapguard-system",
        ),
    ] {
        assert!(
            !can_i(env, account, check).await,
            "{account} may not {check}"
        );
    }
    let cluster = [
        "mapviolations.mapguard.io [] [] [list watch]",
        "pods [] [] [get]",
        "pods/eviction [] [] [create]",
        "nodes [] [] [patch]",
        "events.events.k8s.io [] [] [create patch]",
    ];
    let home = [
        "configmaps [] [] [create]",
        "configmaps [] [mapguard-responder-budget] [get update]",
    ];
    let in_home: Vec<&str> = cluster.iter().chain(&home).copied().collect();
    kubectl_ok(
        env,
        &["create", "serviceaccount", "baseline-responder", "-n", NS],
    )
    .await;
    for (namespace, expected) in [(NS, &in_home[..]), ("shop", &cluster[..])] {
        let baseline = resource_rules(env, "baseline-responder", namespace).await;
        let rules: BTreeSet<String> = resource_rules(env, "mapguard-responder", namespace)
            .await
            .difference(&baseline)
            .cloned()
            .collect();
        let expected: BTreeSet<String> = expected.iter().map(|r| (*r).to_owned()).collect();
        assert_eq!(
            rules, expected,
            "mapguard-responder in namespace {namespace}: the rules it holds beyond a ServiceAccount without bindings"
        );
    }
}

/// An overlay of `manifests/` with `components` (paths under manifests/),
/// written under `dir`; kustomize wants relative paths.
fn overlay(dir: &Path, components: &[&str]) -> PathBuf {
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&overlay).expect("mkdir overlay");
    let manifests = manifests().canonicalize().expect("manifests/");
    let up = "../".repeat(overlay.components().count() - 1);
    let rel = |p: &Path| format!("{up}{}", p.display().to_string().trim_start_matches('/'));
    let mut text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n",
        rel(&manifests)
    );
    for c in components {
        text.push_str(&format!("  - {}\n", rel(&manifests.join(c))));
    }
    std::fs::write(overlay.join("kustomization.yaml"), text).expect("write overlay");
    overlay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_optional_components_install_with_their_rights() {
    let test = "the_optional_components_install_with_their_rights";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let overlay = overlay(env.dir(), &["gatekeeper", "responder", "fail-closed"]);
    let overlay = overlay.to_str().expect("utf-8").to_owned();
    let rendered = kubectl_ok(&env, &["kustomize", &overlay]).await;
    for needle in [
        "name: MAPGUARD_GATEKEEPER_CRS",
        "name: MAPGUARD_RESPOND\n",
        "name: MAPGUARD_RESPOND_DRY_RUN",
        "name: constrainttemplates.templates.gatekeeper.sh",
        "name: mapguard-webhook-gatekeeper",
        "name: mapguard-responder\n",
        "- respond\n",
    ] {
        assert!(
            rendered.contains(needle),
            "{needle} not rendered:\n{rendered}"
        );
    }
    kubectl_ok(&env, &["apply", "-k", &overlay]).await;
    without_a_webhook_only_opted_in_namespaces_refuse_pods(&env, FailClosed::Everywhere).await;
    the_responder_alone_may_evict_and_cordon(&env).await;
    // A constraint kind, as the webhook would create it for a template
    // (kubectl asks discovery for the resource).
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: k8srequiredlabels.constraints.gatekeeper.sh\nspec:\n  group: constraints.gatekeeper.sh\n  scope: Cluster\n  names: {kind: K8sRequiredLabels, plural: k8srequiredlabels, singular: k8srequiredlabels, listKind: K8sRequiredLabelsList}\n  versions:\n    - name: v1beta1\n      served: true\n      storage: true\n      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n";
    let crd_file = env.dir().join("constraint-crd.yaml");
    std::fs::write(&crd_file, crd).expect("write CRD");
    kubectl_ok(&env, &["apply", "-f", crd_file.to_str().expect("utf-8")]).await;
    kubectl_ok(
        &env,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/k8srequiredlabels.constraints.gatekeeper.sh",
        ],
    )
    .await;
    for check in [
        "list constrainttemplates.templates.gatekeeper.sh",
        "watch k8srequiredlabels.constraints.gatekeeper.sh",
        "create customresourcedefinitions.apiextensions.k8s.io",
        "patch customresourcedefinitions.apiextensions.k8s.io",
        "create events.events.k8s.io -n default",
    ] {
        assert!(
            can_i(&env, "mapguard-webhook", check).await,
            "the webhook may {check}"
        );
    }
    for check in [
        "delete customresourcedefinitions.apiextensions.k8s.io",
        "create constrainttemplates.templates.gatekeeper.sh",
        "delete k8srequiredlabels.constraints.gatekeeper.sh",
        "create events.events.k8s.io -n kube-system",
    ] {
        assert!(
            !can_i(&env, "mapguard-webhook", check).await,
            "the webhook may not {check}"
        );
    }
    drop(env);
}
