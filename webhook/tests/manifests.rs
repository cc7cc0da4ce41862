//! The shipped manifests: the policies ConfigMap compiles and judges like
//! the embedded policies, and the webhook configurations point at the
//! endpoints this server serves.

mod support;

use std::path::Path;

use mapguard_policy::{EngineConfig, PolicySet, Review};
use serde::Deserialize;
use serde_json::Value;
use support::*;

/// The documents of `manifests/webhook/<name>`.
fn manifest(name: &str) -> Vec<Value> {
    manifest_in("webhook", name)
}

#[test]
fn policies_configmap_compiles_and_matches_embedded_decisions() {
    let cm = &manifest("policies-configmap.yaml")[0];
    let sources: Vec<(String, String)> = cm["data"]
        .as_object()
        .expect("ConfigMap data")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
        .collect();
    assert!(!sources.is_empty());
    let config = EngineConfig::default();
    let from_cm = PolicySet::from_sources(sources, &config).expect(
        "ConfigMap policies compile (regenerate with manifests/webhook/gen-policies-configmap.sh)",
    );
    let embedded = PolicySet::embedded(&config);
    let ns = namespace_data();
    for name in [
        "pod-plain-create",
        "pod-privileged-create",
        "pod-gotraceback-create",
        "deployment-kill-namespace-create",
        "daemonset-tamper-update",
    ] {
        let review = Review::new(fixture_json(name)).expect("a review");
        let a = from_cm.evaluate(&review, &ns).expect("evaluates");
        let b = embedded.evaluate(&review, &ns).expect("evaluates");
        assert_eq!(
            a, b,
            "{name}: ConfigMap policies differ from the embedded ones"
        );
    }
}

#[test]
fn webhook_configurations_call_our_paths_with_v1_reviews() {
    for (file, path) in [
        ("validatingwebhookconfiguration.yaml", "/validate"),
        ("mutatingwebhookconfiguration.yaml", "/mutate"),
    ] {
        let conf = &manifest(file)[0];
        for hook in conf["webhooks"].as_array().expect("webhooks") {
            let file = format!("{file} {}", hook["name"]);
            assert_eq!(hook["clientConfig"]["service"]["path"], path, "{file}");
            assert_eq!(
                hook["admissionReviewVersions"],
                serde_json::json!(["v1"]),
                "{file}"
            );
            assert_eq!(
                hook["sideEffects"], "None",
                "{file}: dry-run requests need sideEffects None"
            );
            let timeout = hook["timeoutSeconds"].as_u64().expect("timeoutSeconds");
            assert!(
                timeout > 2,
                "{file}: webhook timeout must exceed the 2s evaluation limit"
            );
            let resources: Vec<&str> = hook["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .flat_map(|r| {
                    r["resources"]
                        .as_array()
                        .expect("resources")
                        .iter()
                        .filter_map(Value::as_str)
                })
                .collect();
            if hook["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("namespaces.validate.mapguard.io"))
            {
                assert_eq!(resources, ["namespaces"], "{file}");
                continue;
            }
            // kubectl debug adds containers through this subresource: judged by
            // /validate; /mutate has nothing to add to a running Pod.
            assert_eq!(
                resources.contains(&"pods/ephemeralcontainers"),
                path == "/validate",
                "{file}: pods/ephemeralcontainers"
            );
            for kind in [
                "pods",
                "deployments",
                "statefulsets",
                "daemonsets",
                "replicasets",
                "jobs",
                "cronjobs",
            ] {
                assert!(resources.contains(&kind), "{file} misses {kind}");
            }
        }
    }
}

/// Each configuration has two webhooks that differ only in whom they
/// judge and how they fail: the namespaces labelled `mapguard.io/mode`
/// audit, stop or kill fail closed, every other one fails open, and the
/// two selectors are complements (a request meets exactly one), both
/// leaving out mapguard's namespace and the control plane's.
#[test]
fn only_namespaces_that_opted_in_fail_closed() {
    let enforcing = serde_json::json!(["audit", "stop", "kill"]);
    let exempt = serde_json::json!({
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["mapguard-system", "kube-system"],
    });
    for (file, verb) in [
        ("validatingwebhookconfiguration.yaml", "validate"),
        ("mutatingwebhookconfiguration.yaml", "mutate"),
    ] {
        let conf = &manifest(file)[0];
        let hooks = conf["webhooks"].as_array().expect("webhooks");
        let hooks = &hooks[..2];
        let names: Vec<&str> = hooks.iter().filter_map(|h| h["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                format!("{verb}.mapguard.io"),
                format!("best-effort.{verb}.mapguard.io")
            ],
            "{file}: the fail-closed webhook first (manifests/fail-closed/ patches the second)"
        );
        for (hook, operator, policy) in [(&hooks[0], "In", "Fail"), (&hooks[1], "NotIn", "Ignore")]
        {
            assert_eq!(hook["failurePolicy"], policy, "{file} {}", hook["name"]);
            assert_eq!(
                hook["namespaceSelector"],
                serde_json::json!({"matchExpressions": [
                    exempt,
                    {"key": "mapguard.io/mode", "operator": operator, "values": enforcing},
                ]}),
                "{file} {}",
                hook["name"]
            );
        }
        let without = |hook: &Value| {
            let mut hook = hook.clone();
            let object = hook.as_object_mut().expect("a webhook is an object");
            for field in ["name", "namespaceSelector", "failurePolicy"] {
                object.remove(field);
            }
            hook
        };
        assert_eq!(
            without(&hooks[0]),
            without(&hooks[1]),
            "{file}: the two webhooks must judge the same requests the same way"
        );
    }
}

/// The validating configuration's third and fourth webhooks judge changes
/// to Namespaces (their mapguard.io/ labels): the same pair of selectors on
/// the object itself, so a namespace enforced before or after the change
/// fails closed and every other one fails open, and the two differ in
/// nothing else.
#[test]
fn namespace_label_changes_fail_closed_where_a_namespace_is_enforced() {
    let conf = &manifest("validatingwebhookconfiguration.yaml")[0];
    let hooks = conf["webhooks"].as_array().expect("webhooks");
    let names: Vec<&str> = hooks.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(
        names[2..],
        [
            "namespaces.validate.mapguard.io",
            "best-effort.namespaces.validate.mapguard.io",
            "create.namespaces.validate.mapguard.io"
        ],
        "manifests/fail-closed/ patches the fourth by name"
    );
    let create = &hooks[4];
    assert_eq!(create["failurePolicy"], "Ignore");
    assert_eq!(
        create["rules"],
        serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
            "resources": ["namespaces"], "scope": "Cluster"}])
    );
    assert_eq!(create["objectSelector"], Value::Null);
    assert_eq!(create["namespaceSelector"], hooks[2]["namespaceSelector"]);
    for (hook, operator, policy) in [(&hooks[2], "In", "Fail"), (&hooks[3], "NotIn", "Ignore")] {
        let name = &hook["name"];
        assert_eq!(hook["failurePolicy"], policy, "{name}");
        assert_eq!(
            hook["rules"],
            serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                "resources": ["namespaces"], "scope": "Cluster"}]),
            "{name}"
        );
        assert_eq!(
            hook["objectSelector"],
            serde_json::json!({"matchExpressions": [
                {"key": "mapguard.io/mode", "operator": operator, "values": ["audit", "stop", "kill"]},
            ]}),
            "{name}"
        );
    }
    let without = |hook: &Value| {
        let mut hook = hook.clone();
        let object = hook.as_object_mut().expect("a webhook is an object");
        for field in ["name", "objectSelector", "failurePolicy"] {
            object.remove(field);
        }
        hook
    };
    assert_eq!(without(&hooks[2]), without(&hooks[3]));
}

/// The documents of `manifests/<dir>/<name>`.
fn manifest_in(dir: &str, name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(dir)
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| {
            yaml_serde::from_value::<Value>(yaml_serde::Value::deserialize(doc).expect("YAML"))
                .expect("JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The NetworkPolicy component: it selects the webhook's Pods, opens the
/// admission port to an address block only (the API server is no Pod) and
/// the metrics port to Prometheus Pods only, by the Deployment's port names;
/// egress stays open (the namespace watch); and it is opt-in: the default
/// kustomization leaves it out, its own Component lists it.
#[test]
fn network_policy_opens_each_port_to_its_one_client() {
    let policy = &manifest_in("network-policy", "networkpolicy.yaml")[0];
    let deployment = manifest("deployment.yaml")
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(
        policy["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .expect("podSelector.matchLabels")
    {
        assert_eq!(&pod_labels[key], value, "podSelector label {key}");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );

    let container_ports: Vec<&str> =
        deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .expect("container ports")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    let rule_for = |port: &str| {
        let matching: Vec<&Value> = rules
            .iter()
            .filter(|r| {
                r["ports"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["port"] == port))
            })
            .collect();
        assert_eq!(matching.len(), 1, "one rule for port {port}: {rules:?}");
        matching[0]
    };
    for rule in rules {
        for port in rule["ports"]
            .as_array()
            .expect("every rule names its ports")
        {
            let name = port["port"].as_str().expect("ports by name");
            assert!(
                container_ports.contains(&name),
                "{name} is no container port of the Deployment"
            );
        }
    }
    let https = rule_for("https");
    for peer in https["from"].as_array().expect("https peers") {
        let cidr = peer["ipBlock"]["cidr"]
            .as_str()
            .expect("the API server as an address block");
        assert_ne!(cidr, "0.0.0.0/0", "the admission port open to everyone");
        assert!(peer.get("podSelector").is_none() && peer.get("namespaceSelector").is_none());
    }
    let metrics = rule_for("metrics");
    for peer in metrics["from"].as_array().expect("metrics peers") {
        assert!(
            peer.get("ipBlock").is_none(),
            "metrics open to an address block: {peer}"
        );
        assert_eq!(
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "prometheus",
            "{peer}"
        );
    }

    let listed = |dir: &str| -> Vec<String> {
        let path = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        manifest_in(dir, "kustomization.yaml")[0]["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(|r| r.as_str().map(|r| format!("{path}{r}")))
            .collect()
    };
    assert!(
        !listed("").iter().any(|r| r.contains("networkpolicy")),
        "the NetworkPolicy needs the cluster's API server addresses: opt-in only"
    );
    assert_eq!(
        listed("network-policy"),
        ["network-policy/networkpolicy.yaml"]
    );
}
