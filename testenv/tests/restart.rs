//! Stopping and restarting the API server on its port, etcd kept: what
//! tests of clients riding out an outage rely on.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use mapguard_testenv::TestEnv;
use serde_json::json;

#[tokio::test]
async fn a_restarted_api_server_serves_the_same_data_on_the_same_port() {
    let test = "a_restarted_api_server_serves_the_same_data_on_the_same_port";
    let Some(mut env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "kept"},
        "data": {"k": "v"},
    }))
    .expect("a ConfigMap literal deserializes");
    maps.create(&PostParams::default(), &map)
        .await
        .expect("create a ConfigMap");
    let (old_pid, etcd_pid) = env.pids();
    let url = env.url().to_owned();

    env.stop_apiserver();
    let refused = maps.get("kept").await;
    assert!(
        matches!(
            refused,
            Err(kube::Error::HyperError(_) | kube::Error::Service(_))
        ),
        "a stopped API server must not answer: {refused:?}"
    );

    env.restart_apiserver()
        .await
        .unwrap_or_else(|e| panic!("restart the API server: {e}"));
    let (new_pid, same_etcd) = env.pids();
    assert_ne!(new_pid, old_pid, "a new kube-apiserver process");
    assert_eq!(same_etcd, etcd_pid, "etcd kept running");
    assert_eq!(env.url(), url, "same port");
    // The client made before the outage reconnects, and etcd kept the data.
    let kept = maps.get("kept").await.expect("GET after the restart");
    assert_eq!(
        kept.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("v")
    );
}
