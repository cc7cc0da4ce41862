//! Policy evaluation latency per Pod: the default policies against an
//! allow-all policy set measured in the same run (target: p50 < 100 µs).
//!
//! Run with `cargo bench -p mapguard-policy --bench eval` (env
//! `MAPGUARD_BENCH_ITERS` changes the iteration count, default 20000).
//!
//! Gatekeeper: the ConstraintTemplates of the tests' fixtures are always
//! measured; `MAPGUARD_BENCH_GATEKEEPER_LIBRARY=DIR` (the `library/` folder
//! of a checkout of the public Gatekeeper library, which is not part of this
//! repository) adds the whole library: every template with its first sample
//! constraint, alone and next to the default policies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mapguard_policy::{EngineConfig, NamespaceData, PolicySet, Review};
use serde_json::{Value, json};

fn review(kind: &str, object: Value) -> Review {
    let json = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": if kind == "Pod" { "" } else { "apps" }, "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop", "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": object, "dryRun": false,
    }});
    Review::new(json).expect("a review")
}

fn pod_spec() -> Value {
    json!({
        "containers": [
            {"name": "app", "image": "registry.example/shop:1.4.2",
             "ports": [{"containerPort": 8080}],
             "env": [{"name": "GOMAXPROCS", "value": "2"}, {"name": "GODEBUG", "value": "http2client=0"}],
             "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
             "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}},
            {"name": "sidecar", "image": "registry.example/proxy:2",
             "securityContext": {"runAsNonRoot": true}}
        ],
        "initContainers": [{"name": "migrate", "image": "registry.example/shop:1.4.2"}],
        "volumes": [{"name": "tmp", "emptyDir": {}}]
    })
}

fn measure(
    set: &PolicySet,
    review: &Review,
    ns: &NamespaceData,
    iters: usize,
) -> (Duration, Duration) {
    for _ in 0..iters / 10 {
        set.evaluate(review, ns).expect("warm-up evaluation");
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        let decision = set.evaluate(review, ns).expect("evaluation");
        samples.push(start.elapsed());
        std::hint::black_box(decision);
    }
    samples.sort();
    (samples[iters / 2], samples[iters * 99 / 100])
}

/// Every `template.yaml` under `library` with the first (by path)
/// `samples/*/constraint.yaml` beside it, as Gatekeeper documents.
fn library_documents(library: &Path) -> Vec<(String, Value)> {
    fn walk(dir: &Path, templates: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths {
            if path.is_dir() {
                walk(&path, templates);
            } else if path.file_name().is_some_and(|n| n == "template.yaml") {
                templates.push(path);
            }
        }
    }
    let read = |path: &Path| -> Value {
        let text = std::fs::read_to_string(path).expect("readable");
        yaml_serde::from_str(&text).expect("YAML")
    };
    let mut templates = Vec::new();
    walk(library, &mut templates);
    let mut documents = Vec::new();
    for template in templates {
        let dir = template.parent().expect("a folder");
        let mut constraints: Vec<PathBuf> = std::fs::read_dir(dir.join("samples"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path().join("constraint.yaml")))
            .filter(|p| p.exists())
            .collect();
        constraints.sort();
        let Some(constraint) = constraints.first() else {
            continue;
        };
        documents.push((template.display().to_string(), read(&template)));
        documents.push((constraint.display().to_string(), read(constraint)));
    }
    documents
}

/// The Gatekeeper documents of the tests' fixtures.
fn fixture_documents() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gatekeeper");
    let mut documents = Vec::new();
    for file in ["allowed-registries.yaml", "required-annotations.yaml"] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).expect("fixture");
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc).expect("YAML");
            documents.push((path.display().to_string(), value));
        }
    }
    documents
}

fn main() {
    let iters: usize = std::env::var("MAPGUARD_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // With a time limit, as every front end evaluates (its value does not
    // change the cost of the engine's timer).
    let config = EngineConfig {
        eval_timeout: Some(Duration::from_secs(2)),
        ..EngineConfig::default()
    };
    let defaults = PolicySet::embedded(&config);
    let allow_all = PolicySet::from_sources(
        vec![(
            "allow.rego".into(),
            "package allow\n\ndeny contains msg if {\n  false\n  msg := \"\"\n}\n".into(),
        )],
        &config,
    )
    .expect("allow-all compiles");
    let ns = NamespaceData::from_objects((0..50).map(|i| {
        json!({"kind": "Namespace", "metadata": {"name": if i == 0 { "shop".to_string() } else { format!("ns-{i}") },
               "labels": {"mapguard.io/mode": "stop", "team": format!("t{i}")}}})
    }))
    .expect("namespaces");

    let pod = review(
        "Pod",
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shop-7d9c", "labels": {"app": "shop"}}, "spec": pod_spec()}),
    );
    let deployment = review(
        "Deployment",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "shop"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "shop"}},
        "template": {"metadata": {"labels": {"app": "shop"}}, "spec": pod_spec()}}}),
    );

    println!(
        "policy evaluation, {iters} iterations each, one thread (thread-local compiled engine)"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>8}",
        "case", "p50 µs", "p99 µs", "p50 ×"
    );
    let (base50, base99) = measure(&allow_all, &pod, &ns, iters);
    let row = |name: &str, (p50, p99): (Duration, Duration)| {
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>8.2}",
            name,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            p50.as_secs_f64() / base50.as_secs_f64()
        );
    };
    row("allow-all, Pod (baseline)", (base50, base99));
    let pod_defaults = measure(&defaults, &pod, &ns, iters);
    row("default policies, Pod", pod_defaults);
    row(
        "default policies, Deployment",
        measure(&defaults, &deployment, &ns, iters),
    );
    // First evaluation on a fresh thread, or after the namespace data changed:
    // the thread's engine is cloned from the compiled set and re-prepared.
    let mut cold = Vec::new();
    for _ in 0..50 {
        let (set, review, ns) = (defaults.clone(), pod.clone(), ns.clone());
        cold.push(
            std::thread::spawn(move || {
                let start = Instant::now();
                set.evaluate(&review, &ns).expect("evaluation");
                start.elapsed()
            })
            .join()
            .expect("bench thread"),
        );
    }
    cold.sort();
    println!(
        "{:<34} {:>10.1} {:>10.1}",
        "default policies, cold thread",
        cold[cold.len() / 2].as_secs_f64() * 1e6,
        cold[cold.len() * 99 / 100].as_secs_f64() * 1e6
    );

    let fixtures = PolicySet::from_parts(Vec::new(), &fixture_documents(), &config)
        .expect("the fixtures load");
    let templates = |set: &PolicySet| set.constraints().count();
    row(
        &format!(
            "Gatekeeper fixtures ({} constraints), Pod",
            templates(&fixtures)
        ),
        measure(&fixtures, &pod, &ns, iters),
    );
    match std::env::var_os("MAPGUARD_BENCH_GATEKEEPER_LIBRARY") {
        None => println!(
            "Gatekeeper library: not measured (set MAPGUARD_BENCH_GATEKEEPER_LIBRARY to its library/ folder)"
        ),
        Some(dir) => {
            let documents = library_documents(Path::new(&dir));
            let started = Instant::now();
            let library =
                PolicySet::from_parts(Vec::new(), &documents, &config).expect("the library loads");
            let compile = started.elapsed();
            let n = templates(&library);
            println!(
                "Gatekeeper library: {n} templates with a constraint each, compiled in {:.0} ms",
                compile.as_secs_f64() * 1e3
            );
            row(
                &format!("Gatekeeper library ({n}), Pod"),
                measure(&library, &pod, &ns, iters / 10),
            );
            let sources: Vec<(String, String)> = ["privileged", "mode", "gotraceback", "tamper"]
                .iter()
                .map(|p| {
                    let path =
                        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../policies/{p}.rego"));
                    let text = std::fs::read_to_string(&path).expect("default policy");
                    (path.display().to_string(), text)
                })
                .collect();
            let both = PolicySet::from_parts(sources, &documents, &config)
                .expect("the library and the defaults load");
            row(
                &format!("defaults + Gatekeeper library ({n}), Pod"),
                measure(&both, &pod, &ns, iters / 10),
            );
            row(
                &format!("defaults + Gatekeeper library ({n}), Deployment"),
                measure(&both, &deployment, &ns, iters / 10),
            );
        }
    }

    let verdict = if pod_defaults.0 < Duration::from_micros(100) {
        "met"
    } else {
        "MISSED"
    };
    println!("target p50 < 100 µs per Pod with the default policies: {verdict}");
}
