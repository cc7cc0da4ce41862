//! A client for the API server, configured the one way every binary takes
//! it: the file of `--kubeconfig` (its current context), else kube's
//! inference (`KUBECONFIG` or `~/.kube/config`, then the in-cluster service
//! account).

use std::path::{Path, PathBuf};

use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Why no client could be configured.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The `--kubeconfig` file is unusable.
    #[error("cannot use kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// kube's error.
        #[source]
        source: KubeconfigError,
    },
    /// No kubeconfig and no in-cluster service account.
    #[error("{0}")]
    Infer(#[source] InferConfigError),
    /// The configuration does not make a client (TLS set-up, proxy).
    #[error("cannot build a client: {0}")]
    Client(#[source] kube::Error),
}

impl ClientError {
    /// Whether the `--kubeconfig` file itself is at fault (rather than the
    /// absence of any API server configuration).
    pub fn is_kubeconfig(&self) -> bool {
        matches!(self, ClientError::Kubeconfig { .. })
    }
}

/// The kubeconfig at `path`, else the default ones (`$KUBECONFIG`, its files
/// merged, or `~/.kube/config`).
pub fn kubeconfig(path: Option<&Path>) -> Result<Kubeconfig, KubeconfigError> {
    match path {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
}

/// The configuration of `kubeconfig` for `options` (a context, cluster or
/// user other than the current ones).
pub async fn config_of(
    kubeconfig: Kubeconfig,
    options: &KubeConfigOptions,
) -> Result<kube::Config, KubeconfigError> {
    kube::Config::from_custom_kubeconfig(kubeconfig, options).await
}

/// The configuration from `kubeconfig` (its current context), else kube's
/// inference.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    let Some(path) = kubeconfig else {
        return kube::Config::infer().await.map_err(ClientError::Infer);
    };
    let err = |source| ClientError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let file = Kubeconfig::read_from(path).map_err(err)?;
    config_of(file, &KubeConfigOptions::default())
        .await
        .map_err(err)
}

/// A client as [`config`] configures it. Call it inside a tokio runtime (the
/// client's buffer task runs there).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = config(kubeconfig).await?;
    kube::Client::try_from(config).map_err(ClientError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_kubeconfig_is_named_in_the_error() {
        let path = std::env::temp_dir().join(format!("mapguard-kube-{}", std::process::id()));
        std::fs::write(&path, "not: [a kubeconfig").expect("write");
        let Err(error) = client(Some(&path)).await else {
            panic!("an unparsable kubeconfig made a client");
        };
        std::fs::remove_file(&path).ok();
        assert!(error.is_kubeconfig(), "{error}");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("cannot use kubeconfig {}: ", path.display())),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_current_context_of_the_file_is_used() {
        let path = std::env::temp_dir().join(format!("mapguard-kube-ok-{}", std::process::id()));
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- {name: c, cluster: {server: 'https://127.0.0.1:1'}}\n\
             users:\n- {name: u, user: {token: t}}\ncontexts:\n- {name: x, context: {cluster: c, user: u, namespace: shop}}\n\
             current-context: x\n",
        )
        .expect("write");
        let config = config(Some(&path)).await.expect("a config");
        std::fs::remove_file(&path).ok();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:1/");
        assert_eq!(config.default_namespace, "shop");
    }
}
