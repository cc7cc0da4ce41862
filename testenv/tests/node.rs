//! The one-node cluster (`scripts/cluster.sh`, held by `NodeCluster`): the
//! node is Ready, a Pod from an image built here runs to completion, gets a
//! Pod IP, reaches the API server through the `kubernetes` Service with its
//! service-account token, and its log is readable; a hostPID Pod sees the
//! host's kubelet; `kubectl exec` works; then dropping the cluster leaves no
//! network namespace, state folder or kubepods cgroup behind.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, LogParams, PostParams};
use mapguard_testenv::{NODE_NAME, NODE_NETNS, NodeCluster};
use serde_json::json;

const HELLO_IMAGE: &str = "localhost/mapguard/hello:test";

#[tokio::test]
async fn a_node_runs_a_pod_that_reaches_the_api_server_and_leaves_nothing_behind() {
    let test = "a_node_runs_a_pod_that_reaches_the_api_server_and_leaves_nothing_behind";
    let Some(cluster) = NodeCluster::up_or_skip(test).await else {
        return;
    };
    let client = cluster.client();

    let node = Api::<Node>::all(client.clone())
        .get(NODE_NAME)
        .await
        .expect("GET the node");
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready.as_deref(), Some("True"), "node {NODE_NAME} not Ready");

    // A static Go program in an image from scratch, into the node's containerd.
    let archive = std::env::temp_dir().join(format!("mapguard-hello-{}.tar", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster/node/hello-image.sh");
    let built = Command::new("bash")
        .arg(&script)
        .arg(&archive)
        .output()
        .expect("run hello-image.sh");
    assert!(
        built.status.success(),
        "hello-image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    cluster
        .import_image(&archive)
        .expect("import the hello image");
    let _ = std::fs::remove_file(&archive);

    // Three Pods at once: one asks the API server who it is, one lists the
    // processes it sees with hostPID, one stays up to exec into.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let id = std::process::id();
    let hello = format!("hello-{id}");
    let ps = format!("hostpid-{id}");
    let sleeper = format!("sleeper-{id}");
    for (name, args, host_pid, restart) in [
        (&hello, vec![], false, "Never"),
        (&ps, vec!["ps"], true, "Never"),
        (&sleeper, vec!["sleep"], false, "Always"),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": restart,
                "hostPID": host_pid,
                "containers": [{
                    "name": "hello",
                    "image": HELLO_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": args,
                }],
            },
        }))
        .expect("a Pod deserializes");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create a Pod");
    }

    let pod = wait_for_phase(&pods, &hello, &["Succeeded", "Failed"]).await;
    let log = pods
        .logs(&hello, &LogParams::default())
        .await
        .expect("read the Pod's log");
    let status = pod.status.expect("a finished Pod has a status");
    assert_eq!(
        status.phase.as_deref(),
        Some("Succeeded"),
        "log:\n{log}\nstatus: {status:?}"
    );
    let pod_ip = status.pod_ip.expect("the Pod got an IP");
    assert!(
        pod_ip.starts_with("10.244."),
        "Pod IP {pod_ip} outside the CNI range"
    );
    assert!(
        log.contains(&format!("pod IPs {pod_ip}")),
        "the Pod saw other addresses than {pod_ip}:\n{log}"
    );
    assert!(
        log.contains("at 10.96.0.1:443 knows me as system:serviceaccount:default:default"),
        "the Pod did not reach the API server through the kubernetes Service:\n{log}"
    );

    // hostPID: the Pod sees the host's kubelet under its host pid.
    wait_for_phase(&pods, &ps, &["Succeeded"]).await;
    let log = pods
        .logs(&ps, &LogParams::default())
        .await
        .expect("read the hostPID Pod's log");
    let kubelet = host_pids_named("kubelet");
    assert!(
        kubelet
            .iter()
            .any(|pid| log.contains(&format!("kubelet [{pid}]"))),
        "the hostPID Pod did not see the kubelet (host pids {kubelet:?}):\n{log}"
    );

    // kubectl exec through the host's forwarder, the API server and the kubelet.
    wait_for_phase(&pods, &sleeper, &["Running"]).await;
    let exec = cluster
        .kubectl()
        .args(["exec", &sleeper, "--", "/hello", "whoami"])
        .output()
        .expect("run kubectl exec");
    let out = String::from_utf8_lossy(&exec.stdout);
    assert!(
        exec.status.success() && out.contains(&format!("hostname {sleeper}")),
        "kubectl exec: {out}{}",
        String::from_utf8_lossy(&exec.stderr)
    );

    for name in [&hello, &ps, &sleeper] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete a Pod");
    }

    let state = cluster.state_dir().to_owned();
    let started_here = cluster.started_here();
    drop(cluster);
    if started_here {
        assert!(!state.exists(), "{} left behind", state.display());
        let netns = Path::new("/run/netns").join(NODE_NETNS);
        assert!(!netns.exists(), "{} left behind", netns.display());
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").expect("read /sys/fs/cgroup") {
            let kubepods = hierarchy
                .expect("a cgroup hierarchy")
                .path()
                .join("kubepods");
            assert!(!kubepods.exists(), "{} left behind", kubepods.display());
        }
    }
}

/// Polls the Pod until its phase is one of `phases` (bounded).
async fn wait_for_phase(pods: &Api<Pod>, name: &str, phases: &[&str]) -> Pod {
    let started = Instant::now();
    loop {
        let pod = pods.get(name).await.expect("GET the Pod");
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref().is_some_and(|p| phases.contains(&p)) {
            return pod;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "Pod {name} still {phase:?} after 120 s: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Pids of the host's processes whose `comm` is `name`.
fn host_pids_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}
