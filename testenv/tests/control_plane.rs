//! The test environment itself: one start, then what later tests rely on
//! (admin identity, kubectl through the kubeconfig, Nodes and bound Pods),
//! then that dropping it stops exactly its processes and removes its folder.

use std::process::Output;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use mapguard_testenv::{ADMIN_GROUP, ADMIN_USER, BoundPod, TestEnv, kube_version};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::json;

#[tokio::test]
async fn a_control_plane_serves_the_admin_and_leaves_nothing_behind() {
    let test = "a_control_plane_serves_the_admin_and_leaves_nothing_behind";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    assert!(env.url().starts_with("https://127.0.0.1:"), "{}", env.url());

    // The version is the one the Go module pins.
    let info = client.apiserver_version().await.expect("GET /version");
    assert_eq!(info.git_version, format!("v{}", kube_version()));

    // The client certificate authenticates the admin in system:masters.
    let review: SelfSubjectReview =
        serde_json::from_value(json!({"metadata": {}})).expect("an empty review deserializes");
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("create a SelfSubjectReview");
    let user = review
        .status
        .and_then(|s| s.user_info)
        .expect("the review names the user");
    assert_eq!(user.username.as_deref(), Some(ADMIN_USER));
    assert!(
        user.groups
            .unwrap_or_default()
            .iter()
            .any(|g| g == ADMIN_GROUP),
        "admin must be in {ADMIN_GROUP}"
    );

    // kubectl reaches the same API server through the kubeconfig file.
    if let Some(mut kubectl) = env.kubectl() {
        let output = kubectl
            .args(["get", "namespace", "default", "-o", "name"])
            .output()
            .expect("run kubectl");
        assert_eq!(
            stdout(&output),
            "namespace/default\n",
            "{}",
            stderr(&output)
        );
    } else {
        eprintln!("kubectl not installed: kubectl check left out");
    }

    // A Pod bound to a Node of ours is stored and stays Pending (no kubelet).
    env.create_node("node-a").await.expect("create a Node");
    BoundPod::new("default", "bound", "node-a")
        .create(&client)
        .await
        .expect("create a Pod without a ServiceAccount token");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let stored = pods.get("bound").await.expect("GET the Pod");
    let spec = stored.spec.expect("Pod spec");
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    assert!(
        spec.containers[0].volume_mounts.is_none(),
        "no ServiceAccount token is injected (the plugin is off)"
    );

    // Dropping stops both processes and removes the folder.
    let (apiserver, etcd) = env.pids();
    let dir = env.dir().to_owned();
    assert!(dir.join("kube-apiserver.log").is_file());
    drop(client);
    drop(env);
    for (name, pid) in [("kube-apiserver", apiserver), ("etcd", etcd)] {
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_err(),
            "{name} (pid {pid}) still exists after drop"
        );
    }
    assert!(!dir.exists(), "{} not removed", dir.display());
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
