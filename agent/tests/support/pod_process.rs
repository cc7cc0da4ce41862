//! Pods' processes for the node agent's tests against the real API server:
//! a Pod given a running container (as a kubelet would report it) with a
//! kubelet-shaped cgroup, a Go program started in it, and a bounded wait.
//!
//! Include it with `#[path = "support/pod_process.rs"] mod pod_process;`
//! next to `kube_cgroup`.

#![allow(dead_code)]

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use mapguard_testenv::BoundPod;
use serde_json::json;

use crate::kube_cgroup::{Driver, KubeCgroup, Name, Qos, Spec};

/// Gives the Pod a running container (as the kubelet would report it) and
/// creates its kubelet-shaped cgroup.
pub async fn container_of(client: &Client, pod: &Pod) -> KubeCgroup {
    let uid = pod.metadata.uid.clone().expect("uid");
    let cgroup = KubeCgroup::create(
        Spec::new(Driver::Systemd, Qos::Burstable, Name::Containerd).pod_uid(&uid),
    );
    let id = cgroup.spec().container_id.clone();
    let pods: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().expect("namespace"),
    );
    let status = json!({"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "app", "image": "registry.example/app:1", "imageID": "",
            "ready": true, "restartCount": 0,
            "containerID": format!("containerd://{id}"),
            "state": {"running": {}},
        }],
    }});
    pods.patch_status(
        pod.metadata.name.as_deref().expect("name"),
        &PatchParams::default(),
        &Patch::Merge(status),
    )
    .await
    .expect("report the Pod's container");
    cgroup
}

pub fn start_in(cgroup: &KubeCgroup, program: &Path, args: &[&str]) -> Child {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    cgroup
        .command(&mut cmd)
        .spawn()
        .expect("start the Go program")
}

/// Waits for a child (bounded): its exit code (`None`: a signal ended it)
/// and stderr.
pub fn wait(child: &mut Child, timeout: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the Go program did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (status.code(), stderr)
}

/// Creates Pod `default/NAME` bound to `node`, with `annotations` and one
/// container `app` (the name [`container_of`] reports running).
pub async fn create_pod(
    client: &Client,
    node: &str,
    name: &str,
    annotations: &[(&str, &str)],
) -> Pod {
    BoundPod::new("default", name, node)
        .annotations(annotations)
        .create(client)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
