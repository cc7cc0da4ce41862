//! Policy hot reload through the real server, with a ConfigMap-style
//! directory (`..data` symlink swapped atomically).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use mapguard_certs_gen::{CertRequest, generate, write_dir};
use mapguard_webhook::config::Config;
use mapguard_webhook::startup::Webhook;
use rustls::version::TLS13;
use support::*;

const DENY_SHOP_API: &str = r#"package mapguard.names

deny contains msg if {
	input.request.object.metadata.name == "shop-api"
	msg := "the name shop-api is reserved"
}
"#;

const DENY_NOTHING: &str = r#"package mapguard.names

deny contains msg if {
	input.request.object.metadata.name == "no-such-pod"
	msg := "never"
}
"#;

const BROKEN: &str = r#"package mapguard.names

deny contains msg if {
	input.request.object.metadata.name ==
"#;

/// Publishes `rego` as the policy folder's only file, as a ConfigMap
/// volume update does.
fn publish(dir: &Path, version: u32, rego: &str) {
    publish_configmap(dir, version, &[("names.rego", rego)]);
}

async fn judge(
    client: &mut hyper::client::conn::http1::SendRequest<axum::body::Body>,
) -> serde_json::Value {
    send(client, "/validate", fixture("pod-plain-create"))
        .await
        .1
}

#[tokio::test]
async fn changed_policy_is_served_and_broken_policy_keeps_last_good() {
    let base = temp_dir("reload");
    let certs_dir = base.join("certs");
    let policies = base.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir policies");
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &certs_dir, false).expect("write certs");
    publish(&policies, 1, DENY_SHOP_API);

    let server = start_webhook(
        &certs_dir,
        &[
            format!("--policies={}", policies.display()),
            "--reload-interval=100ms".to_owned(),
        ],
    )
    .await;
    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let mut client = http1(tls_connect(&connector, server.addr).await).await;

    let review = judge(&mut client).await;
    assert!(!allowed(&review), "v1 denies shop-api: {review}");
    assert!(message(&review).contains("reserved"), "{review}");

    publish(&policies, 2, DENY_NOTHING);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !allowed(&judge(&mut client).await) {
        assert!(
            Instant::now() < deadline,
            "changed policy not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    publish(&policies, 3, BROKEN);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = ops_get(server.metrics_addr, "/metrics").await;
        if metrics.contains(r#"mapguard_policy_reloads_total{result="failure"} 1"#) {
            assert!(
                metrics.contains(r#"mapguard_policy_reloads_total{result="success"} 1"#),
                "{metrics}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broken policy reload not counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let review = judge(&mut client).await;
    assert!(
        allowed(&review),
        "last good policy (v2) keeps serving: {review}"
    );

    // Fixing the file is picked up again.
    publish(&policies, 4, DENY_SHOP_API);
    let deadline = Instant::now() + Duration::from_secs(10);
    while allowed(&judge(&mut client).await) {
        assert!(
            Instant::now() < deadline,
            "fixed policy not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server.shutdown().await;
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[tokio::test]
async fn broken_policy_directory_fails_start_up_with_the_file_name() {
    let base = temp_dir("reload-broken");
    let certs_dir = base.join("certs");
    let policies = base.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    write_dir(
        &generate(&CertRequest::new("wh", "ns")).expect("certs"),
        &certs_dir,
        false,
    )
    .expect("write certs");
    std::fs::write(policies.join("broken.rego"), BROKEN).expect("write");
    let config = Config::try_parse_from([
        "mapguard-webhook".to_owned(),
        format!("--tls-cert={}", certs_dir.join("tls.crt").display()),
        format!("--tls-key={}", certs_dir.join("tls.key").display()),
        format!("--namespaces-file={}", namespaces_file().display()),
        format!("--policies={}", policies.display()),
    ])
    .expect("config parses");
    let error = Webhook::build(&config)
        .await
        .expect_err("broken policies must not start");
    assert!(error.to_string().contains("broken.rego"), "{error}");
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[tokio::test]
async fn changed_namespaces_file_changes_the_patch() {
    let base = temp_dir("reload-ns");
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &base, false).expect("write certs");
    let ns_file = base.join("namespaces.yaml");
    let unlabelled = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n";
    std::fs::write(&ns_file, unlabelled).expect("write namespaces");
    let server = start_webhook(
        &base,
        &[
            format!("--namespaces-file={}", ns_file.display()),
            "--reload-interval=100ms".to_owned(),
        ],
    )
    .await;
    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let mut client = http1(tls_connect(&connector, server.addr).await).await;
    let (_, review) = send(&mut client, "/mutate", fixture("pod-plain-create")).await;
    assert_eq!(patch(&review), None, "unlabelled namespace: no patch");

    std::fs::write(
        &ns_file,
        format!("{unlabelled}  labels:\n    mapguard.io/mode: stop\n"),
    )
    .expect("label namespace");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, review) = send(&mut client, "/mutate", fixture("pod-plain-create")).await;
        if let Some(ops) = patch(&review) {
            assert!(ops.to_string().contains("\"stop\""), "{ops}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "namespace label change not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&ns_file, "{ not yaml: [").expect("break namespaces file");
    wait_for_metric(
        server.metrics_addr,
        r#"mapguard_namespace_reloads_total{result="failure"} 1"#,
        "failed namespaces reload not counted",
    )
    .await;
    let (_, review) = send(&mut client, "/mutate", fixture("pod-plain-create")).await;
    assert!(
        patch(&review).is_some(),
        "last good namespace data stays: {review}"
    );
    server.shutdown().await;
    std::fs::remove_dir_all(&base).expect("cleanup");
}
