//! Engine configuration shared by the webhook and the CI command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Action;

/// Namespaces exempted when no configuration says otherwise: the webhook's
/// own namespace and the control plane's.
pub const DEFAULT_EXEMPT_NAMESPACES: [&str; 2] = ["mapguard-system", "kube-system"];

/// How a [`crate::PolicySet`] judges requests.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Requests in these namespaces are allowed without evaluating anything
    /// (`Decision::exempt` is set). Default: [`DEFAULT_EXEMPT_NAMESPACES`].
    pub exempt_namespaces: Vec<String>,
    /// Package name (`mapguard.privileged`, without `data.`) → action; wins
    /// over the `enforcement` rule in the package.
    pub enforcement_overrides: BTreeMap<String, Action>,
    /// Wall-clock budget of one evaluation, enforced inside regorus by its
    /// execution timer (and by the webhook's evaluation pool around it).
    /// `None`: unbounded, the default: each front end sets its own limit
    /// once (the webhook's `--eval-timeout`, the CI command's 10 s).
    pub eval_timeout: Option<Duration>,
    /// Who may change the `mapguard.io/` labels of a Namespace (policy
    /// `mapguard.namespace_labels`): requesters in one of these groups...
    /// Default: [`DEFAULT_LABEL_ADMIN_GROUPS`].
    pub label_admin_groups: Vec<String>,
    /// ... or with one of these user names. Default: none.
    pub label_admin_users: Vec<String>,
}

/// Groups that may change the `mapguard.io/` labels of a Namespace when no
/// configuration says otherwise: the cluster's administrators.
pub const DEFAULT_LABEL_ADMIN_GROUPS: [&str; 1] = ["system:masters"];

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            exempt_namespaces: DEFAULT_EXEMPT_NAMESPACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            enforcement_overrides: BTreeMap::new(),
            eval_timeout: None,
            label_admin_groups: DEFAULT_LABEL_ADMIN_GROUPS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            label_admin_users: Vec::new(),
        }
    }
}

impl EngineConfig {
    /// The data document of the settings policies read:
    /// `{"mapguard_config": {"namespace_label_admins": {"groups": [...], "users": [...]}}}`.
    pub fn to_data_json(&self) -> serde_json::Value {
        serde_json::json!({"mapguard_config": {"namespace_label_admins": {
            "groups": self.label_admin_groups,
            "users": self.label_admin_users,
        }}})
    }

    /// Whether requests in `namespace` skip evaluation.
    pub fn is_exempt(&self, namespace: &str) -> bool {
        self.exempt_namespaces.iter().any(|n| n == namespace)
    }

    /// Reads a YAML (or JSON) configuration file:
    ///
    /// ```yaml
    /// exemptNamespaces: [mapguard-system, kube-system]
    /// enforcement:
    ///   mapguard.gotraceback: dry-run
    /// evalTimeoutMs: 250
    /// labelAdminGroups: [system:masters]
    /// labelAdminUsers: []
    /// ```
    ///
    /// Keys left out keep their value in `self` (the front end's defaults).
    pub fn with_file(self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.with_yaml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses the format of [`EngineConfig::with_file`] over `self`.
    pub fn with_yaml(self, text: &str) -> Result<Self, yaml_serde::Error> {
        let file: ConfigFile = yaml_serde::from_str(text)?;
        let mut config = self;
        if let Some(exempt) = file.exempt_namespaces {
            config.exempt_namespaces = exempt;
        }
        config.enforcement_overrides.extend(file.enforcement);
        if let Some(ms) = file.eval_timeout_ms {
            config.eval_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(groups) = file.label_admin_groups {
            config.label_admin_groups = groups;
        }
        if let Some(users) = file.label_admin_users {
            config.label_admin_users = users;
        }
        Ok(config)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    exempt_namespaces: Option<Vec<String>>,
    #[serde(default)]
    enforcement: BTreeMap<String, Action>,
    eval_timeout_ms: Option<u64>,
    label_admin_groups: Option<Vec<String>>,
    label_admin_users: Option<Vec<String>>,
}

/// An engine configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read engine config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid engine config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: yaml_serde::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_exempt_own_and_system_namespaces() {
        let config = EngineConfig::default();
        assert!(config.is_exempt("mapguard-system"));
        assert!(config.is_exempt("kube-system"));
        assert!(!config.is_exempt("default"));
    }

    #[test]
    fn file_overrides_only_what_it_names() {
        let config = EngineConfig::default()
            .with_yaml("enforcement:\n  mapguard.gotraceback: dry-run\nevalTimeoutMs: 0\n")
            .expect("valid config must parse");
        assert!(config.is_exempt("kube-system"));
        assert_eq!(
            config.enforcement_overrides.get("mapguard.gotraceback"),
            Some(&Action::DryRun)
        );
        assert_eq!(config.eval_timeout, None);
        assert_eq!(config.label_admin_groups, ["system:masters"]);
        let bounded = EngineConfig {
            eval_timeout: Some(Duration::from_secs(10)),
            ..EngineConfig::default()
        };
        let config = bounded
            .with_yaml("labelAdminUsers: [alice]\n")
            .expect("parses");
        assert_eq!(
            config.eval_timeout,
            Some(Duration::from_secs(10)),
            "a key left out keeps the front end's value"
        );
        assert_eq!(
            config.to_data_json()["mapguard_config"]["namespace_label_admins"],
            serde_json::json!({"groups": ["system:masters"], "users": ["alice"]})
        );
    }

    #[test]
    fn unknown_action_and_keys_are_errors() {
        assert!(
            EngineConfig::default()
                .with_yaml("enforcement:\n  a: block\n")
                .is_err()
        );
        assert!(
            EngineConfig::default()
                .with_yaml("exemptNamespace: [x]\n")
                .is_err()
        );
    }
}
