//! The test folder and what is written into it before the processes start:
//! the credentials the API server reads and the admin's kubeconfig.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::TestEnvError;
use crate::certs::{ADMIN_USER, ControlPlaneCerts};

/// A fresh folder `$TMPDIR/mapguard-testenv-PID-N`, mode 0700 (it holds
/// the admin's key).
pub(crate) fn make_dir() -> Result<PathBuf, TestEnvError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mapguard-testenv-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(TestEnvError::Io {
                    what: "create the test folder",
                    path: dir,
                    source,
                });
            }
        }
    }
}

/// The credential files the API server reads.
pub(crate) struct CertFiles {
    pub(crate) dir: PathBuf,
    pub(crate) ca_cert: PathBuf,
    pub(crate) serving_cert: PathBuf,
    pub(crate) serving_key: PathBuf,
    pub(crate) service_account_key: PathBuf,
    pub(crate) service_account_public_key: PathBuf,
}

impl CertFiles {
    /// Writes `certs` into `dir/pki`.
    pub(crate) fn write(dir: &Path, certs: &ControlPlaneCerts) -> Result<Self, TestEnvError> {
        let dir = dir.join("pki");
        let files = Self {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_key: dir.join("sa.key"),
            service_account_public_key: dir.join("sa.pub"),
            dir,
        };
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TestEnvError::Io {
                what: "write a credential file",
                path,
                source,
            }
        };
        std::fs::create_dir(&files.dir).map_err(io(&files.dir))?;
        for (path, text) in [
            (&files.ca_cert, &certs.ca_cert),
            (&files.serving_cert, &certs.serving_cert),
            (&files.serving_key, &certs.serving_key),
            (&files.service_account_key, &certs.service_account_key),
            (
                &files.service_account_public_key,
                &certs.service_account_public_key,
            ),
        ] {
            std::fs::write(path, text).map_err(io(path))?;
        }
        Ok(files)
    }
}

/// Base64 of a PEM text, as kubeconfigs hold certificates.
pub(crate) fn base64(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// Writes a kubeconfig for the admin at `path` (certificates inline) and
/// loads it back the way kubectl users' files are loaded.
pub(crate) async fn write_kubeconfig(
    path: &Path,
    url: &str,
    certs: &ControlPlaneCerts,
) -> Result<kube::Config, TestEnvError> {
    let b64 = base64;
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": url,
            "certificate-authority-data": b64(&certs.ca_cert),
        }}],
        "users": [{"name": ADMIN_USER, "user": {
            "client-certificate-data": b64(&certs.admin_cert),
            "client-key-data": b64(&certs.admin_key),
        }}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": ADMIN_USER}}],
        "current-context": "testenv",
    });
    let text = yaml_serde::to_string(&doc).expect("a JSON value serializes to YAML");
    std::fs::write(path, &text).map_err(|source| TestEnvError::Io {
        what: "write the kubeconfig",
        path: path.to_owned(),
        source,
    })?;
    load_kubeconfig(path).await
}

/// The client configuration of the kubeconfig file at `path`.
pub(crate) async fn load_kubeconfig(path: &Path) -> Result<kube::Config, TestEnvError> {
    let kubeconfig_err = |source| TestEnvError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_err)
}
