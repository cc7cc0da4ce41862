//! `--client-ca` and `--client-name`: only a client presenting a certificate
//! from that CA, carrying one of the names, gets an answer on the admission
//! port; the operations port stays plain HTTP for everyone. Real
//! certificates (rcgen), the real server, a real rustls client.

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
/// `Err` with what failed when it refused the client.
async fn review_as(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> Result<StatusCode, String> {
    use axum::body::Body;
    use axum::http::{Request, header};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::post("/validate")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(fixture("pod-plain-create")))
        .expect("request builds");
    // TLS 1.3: the server checks the client's certificate after the
    // client's side of the handshake is done; its refusal arrives here.
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    Ok(response.status())
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
