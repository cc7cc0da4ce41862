//! Gatekeeper ConstraintTemplates and Constraints in the webhook's policy
//! folder, through the real TLS server: the response names the constraint,
//! its enforcement action applies, and a broken template keeps the last
//! good set serving.

mod support;

use std::time::{Duration, Instant};

use mapguard_certs_gen::{CertRequest, generate, write_dir};
use rustls::version::TLS13;
use support::*;

fn constraint(action: &str) -> String {
    format!(
        "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sReservedNames\nmetadata:\n  name: reserved\nspec:\n  enforcementAction: {action}\n  match:\n    kinds: [{{apiGroups: [\"\"], kinds: [\"Pod\"]}}]\n  parameters:\n    names: [shop-api]\n"
    )
}

#[tokio::test]
async fn constraints_judge_through_the_webhook_and_a_broken_template_keeps_the_last_good() {
    let base = temp_dir("gatekeeper");
    let certs_dir = base.join("certs");
    let policies = base.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir policies");
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &certs_dir, false).expect("write certs");
    publish_configmap(
        &policies,
        1,
        &[
            ("template.yaml", RESERVED_NAMES_TEMPLATE),
            ("constraint.yaml", &constraint("deny")),
        ],
    );
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
    let mut judge = async || {
        send(&mut client, "/validate", fixture("pod-plain-create"))
            .await
            .1
    };

    let review = judge().await;
    assert!(!allowed(&review), "{review}");
    assert_eq!(
        message(&review),
        "mapguard denied Pod default/shop-api: [K8sReservedNames reserved] the name shop-api is reserved"
    );

    // warn: allowed, with the finding as a warning.
    publish_configmap(
        &policies,
        2,
        &[
            ("template.yaml", RESERVED_NAMES_TEMPLATE),
            ("constraint.yaml", &constraint("warn")),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let review = loop {
        let review = judge().await;
        if allowed(&review) {
            break review;
        }
        assert!(Instant::now() < deadline, "warn not served within 10s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        warnings(&review)
            .iter()
            .any(|w| w.contains("[K8sReservedNames reserved] the name shop-api is reserved")),
        "{review}"
    );

    // A template that does not compile: rejected, the warn set keeps serving.
    let broken = RESERVED_NAMES_TEMPLATE
        .replace("name == input.parameters.names[_]", "name == undefined_var");
    publish_configmap(
        &policies,
        3,
        &[
            ("template.yaml", &broken),
            ("constraint.yaml", &constraint("deny")),
        ],
    );
    wait_for_metric(
        server.metrics_addr,
        r#"mapguard_policy_reloads_total{result="failure"} 1"#,
        "broken template not counted",
    )
    .await;
    let review = judge().await;
    assert!(
        allowed(&review),
        "the last good (warn) set serves: {review}"
    );
    assert_eq!(warnings(&review).len(), 1, "{review}");

    server.shutdown().await;
    std::fs::remove_dir_all(&base).expect("cleanup");
}
