//! certs-gen: library output, file modes, overwrite protection and the CLI.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use mapguard_certs_gen::{CertRequest, CertsError, generate, write_dir};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mapguard-certs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn generated_pem_parses_and_ca_differs_from_leaf() {
    let certs = generate(&CertRequest::new("svc", "ns")).expect("generate certs");
    let ca = CertificateDer::from_pem_slice(certs.ca_cert_pem.as_bytes()).expect("CA PEM parses");
    let leaf = CertificateDer::from_pem_slice(certs.cert_pem.as_bytes()).expect("leaf PEM parses");
    PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes()).expect("key PEM parses");
    assert_ne!(ca.as_ref(), leaf.as_ref(), "leaf must not be the CA itself");
    assert!(
        !format!("{certs:?}").contains("PRIVATE KEY"),
        "Debug must redact the key"
    );
}

#[test]
fn sans_cover_service_dns_and_loopback() {
    let mut request = CertRequest::new("mapguard-webhook", "mapguard-system");
    request.extra_sans = vec!["webhook.example.com".into(), "localhost".into()];
    let sans = request.subject_alt_names();
    for want in [
        "mapguard-webhook.mapguard-system.svc",
        "mapguard-webhook.mapguard-system.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "webhook.example.com",
    ] {
        assert!(
            sans.iter().any(|s| s == want),
            "missing SAN {want}: {sans:?}"
        );
    }
    assert_eq!(
        sans.iter().filter(|s| *s == "localhost").count(),
        1,
        "no duplicate SANs"
    );
}

#[test]
fn invalid_names_are_rejected() {
    for (svc, ns) in [
        ("Bad_Name", "ns"),
        ("svc", ""),
        ("-svc", "ns"),
        ("svc", "a.b"),
    ] {
        match generate(&CertRequest::new(svc, ns)) {
            Err(CertsError::InvalidName { .. }) => {}
            other => panic!("{svc}/{ns}: expected InvalidName, got {other:?}"),
        }
    }
}

#[test]
fn write_dir_sets_modes_and_refuses_overwrite() {
    let dir = tempdir("lib");
    let certs = generate(&CertRequest::new("svc", "ns")).expect("generate certs");
    let files = write_dir(&certs, &dir, false).expect("first write");
    assert_eq!(mode(&files.key), 0o600, "key must be 0600");
    assert_eq!(mode(&files.cert), 0o644);
    assert_eq!(mode(&files.ca_cert), 0o644);
    assert_eq!(
        std::fs::read_to_string(&files.cert).expect("read cert"),
        certs.cert_pem
    );

    let other = generate(&CertRequest::new("svc", "ns")).expect("generate certs");
    match write_dir(&other, &dir, false) {
        Err(CertsError::Exists { path }) => assert!(path.starts_with(&dir)),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&files.key).expect("read key"),
        certs.key_pem,
        "refused write must leave the old key"
    );
    write_dir(&other, &dir, true).expect("forced write");
    assert_eq!(
        std::fs::read_to_string(&files.key).expect("read key"),
        other.key_pem
    );
    assert_eq!(mode(&files.key), 0o600, "key stays 0600 after overwrite");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn cli_writes_files_and_needs_force_to_overwrite() {
    let dir = tempdir("cli");
    let bin = env!("CARGO_BIN_EXE_mapguard-certs-gen");
    let run = |force: bool| {
        let mut cmd = Command::new(bin);
        cmd.args(["--out-dir"])
            .arg(&dir)
            .args(["--service", "wh", "--namespace", "ns"]);
        if force {
            cmd.arg("--force");
        }
        cmd.output().expect("run mapguard-certs-gen")
    };
    let first = run(false);
    assert!(first.status.success(), "first run failed: {first:?}");
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let second = run(false);
    assert!(
        !second.status.success(),
        "second run without --force must fail"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("--force"),
        "error should mention --force: {stderr}"
    );
    let third = run(true);
    assert!(third.status.success(), "--force run failed: {third:?}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
