//! `--client-ca` and `--client-name`: only a client presenting a certificate
//! from that CA, carrying one of the names, gets an answer on the admission
//! port; the operations port stays plain HTTP for everyone; a rotated CA
//! bundle is trusted without a restart. Real certificates (rcgen), the real
//! server, a real rustls client.

mod support;

use std::sync::Arc;

use axum::http::StatusCode;
use mapguard_certs_gen::{CertRequest, generate, write_dir};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio_rustls::TlsConnector;

/// A CA that issues client certificates.
fn client_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, name.to_owned());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A client certificate (PEM chain, PEM key) with common name `cn` and DNS
/// names `dns`, issued by `ca`.
fn client_cert(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, dns: &[&str]) -> (String, String) {
    let mut params = CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
        .expect("client names");
    params
        .distinguished_name
        .push(DnType::CommonName, cn.to_owned());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("client key");
    let cert = params.signed_by(&key, ca).expect("client certificate");
    (cert.pem(), key.serialize_pem())
}

/// A rustls client trusting `server_ca`, presenting `identity` if given.
fn connector(server_ca: &str, identity: Option<&(String, String)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server_ca.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("trust anchor");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client chain"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// POSTs a genuine review; `Ok` with the status when the server answered,
/// `Err` with what failed when it refused the client (TLS 1.3: the server
/// checks the client's certificate after the client's side of the
/// handshake is done; its refusal arrives with the request).
async fn review_as(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> Result<StatusCode, String> {
    post_once(connector, addr, fixture("pod-plain-create"))
        .await
        .map(|(status, _)| status)
}

#[tokio::test]
async fn only_clients_with_an_allowed_certificate_are_answered() {
    let dir = temp_dir("client-auth");
    let serving = generate(&CertRequest::new("wh", "ns")).expect("serving certs");
    write_dir(&serving, &dir, false).expect("write serving certs");
    let ca = client_ca("API server client CA");
    let ca_file = dir.join("client-ca.crt");
    std::fs::write(&ca_file, ca.pem()).expect("write client CA");
    let server = start_webhook(
        &dir,
        &[
            format!("--client-ca={}", ca_file.display()),
            "--client-name=kube-apiserver".to_owned(),
            "--client-name=apiserver.example".to_owned(),
        ],
    )
    .await;
    let addr = server.addr;
    let server_ca = &serving.ca_cert_pem;

    let by_cn = client_cert(&ca, "kube-apiserver", &[]);
    assert_eq!(
        review_as(&connector(server_ca, Some(&by_cn)), addr).await,
        Ok(StatusCode::OK),
        "allowed common name"
    );
    let by_dns = client_cert(&ca, "something else", &["apiserver.example"]);
    assert_eq!(
        review_as(&connector(server_ca, Some(&by_dns)), addr).await,
        Ok(StatusCode::OK),
        "allowed DNS name"
    );

    let other_name = client_cert(&ca, "tenant-pod", &["tenant.example"]);
    let other_ca = client_cert(&client_ca("another CA"), "kube-apiserver", &[]);
    for (what, identity) in [
        ("no certificate", None),
        ("a name not allowed", Some(&other_name)),
        ("a certificate of another CA", Some(&other_ca)),
    ] {
        let answer = review_as(&connector(server_ca, identity), addr).await;
        assert!(answer.is_err(), "{what}: must be refused, got {answer:?}");
    }
    let (_, metrics) = ops_get(server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("mapguard_tls_handshake_failures_total 3"),
        "each refusal is a failed handshake: {metrics}"
    );
    let (status, _) = ops_get(server.metrics_addr, "/readyz").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the operations port needs no certificate"
    );
    server.shutdown().await;

    // Without --client-ca any TLS client is answered, as before.
    let server = start_webhook(&dir, &[]).await;
    assert_eq!(
        review_as(&connector(server_ca, None), server.addr).await,
        Ok(StatusCode::OK)
    );
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Writes `text` to `path` the way a Secret volume changes: a new file
/// renamed over the old one.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn a_rotated_client_ca_is_trusted_without_a_restart() {
    let dir = temp_dir("client-ca-rotation");
    let serving = generate(&CertRequest::new("wh", "ns")).expect("serving certs");
    write_dir(&serving, &dir, false).expect("write serving certs");
    let old_ca = client_ca("old client CA");
    let new_ca = client_ca("new client CA");
    let ca_file = dir.join("client-ca.crt");
    std::fs::write(&ca_file, old_ca.pem()).expect("write client CA");
    let server = start_webhook(
        &dir,
        &[
            format!("--client-ca={}", ca_file.display()),
            "--client-name=kube-apiserver".to_owned(),
            "--reload-interval=100ms".to_owned(),
        ],
    )
    .await;
    let server_ca = &serving.ca_cert_pem;
    let old = connector(
        server_ca,
        Some(&client_cert(&old_ca, "kube-apiserver", &[])),
    );
    let new = connector(
        server_ca,
        Some(&client_cert(&new_ca, "kube-apiserver", &[])),
    );
    assert_eq!(review_as(&old, server.addr).await, Ok(StatusCode::OK));
    let answer = review_as(&new, server.addr).await;
    assert!(answer.is_err(), "the new CA is not trusted yet: {answer:?}");

    // During the rotation the bundle holds both, then only the new one.
    replace_file(&ca_file, &format!("{}{}", old_ca.pem(), new_ca.pem()));
    wait_for_metric(
        server.metrics_addr,
        r#"mapguard_client_ca_reloads_total{result="success"} 1"#,
        "the bundle with both CAs is not loaded",
    )
    .await;
    assert_eq!(review_as(&old, server.addr).await, Ok(StatusCode::OK));
    assert_eq!(review_as(&new, server.addr).await, Ok(StatusCode::OK));
    replace_file(&ca_file, &new_ca.pem());
    wait_for_metric(
        server.metrics_addr,
        r#"mapguard_client_ca_reloads_total{result="success"} 2"#,
        "the bundle with the new CA is not loaded",
    )
    .await;
    assert_eq!(review_as(&new, server.addr).await, Ok(StatusCode::OK));
    let answer = review_as(&old, server.addr).await;
    assert!(
        answer.is_err(),
        "the old CA is no longer trusted: {answer:?}"
    );

    // A broken bundle is refused; the last good one stays.
    replace_file(&ca_file, "not a certificate\n");
    wait_for_metric(
        server.metrics_addr,
        r#"mapguard_client_ca_reloads_total{result="failure"} 1"#,
        "the broken bundle is not counted",
    )
    .await;
    assert_eq!(review_as(&new, server.addr).await, Ok(StatusCode::OK));

    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
