//! The clusters a command reads: one [`Target`] per kubeconfig context,
//! chosen and configured the way kubectl chooses them (`--kubeconfig`,
//! `$KUBECONFIG` merged, `--context`, `--cluster`, `--user`, `-n`, `-A`),
//! plus several contexts at once (`--context a,b`, `--all-contexts`).

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::ClusterArgs;
use crate::error::PluginError;

/// Which namespaces of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

/// One context to read.
#[derive(Clone)]
pub struct Target {
    /// The context's name, which labels its output.
    pub context: String,
    pub client: Client,
    pub scope: Scope,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("context", &self.context)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Loads the kubeconfig: the file of `--kubeconfig`, else `$KUBECONFIG`
/// (its files merged) or `~/.kube/config`.
pub fn load_kubeconfig(args: &ClusterArgs) -> Result<Kubeconfig, PluginError> {
    mapguard_kube::client::kubeconfig(args.kubeconfig.as_deref()).map_err(|source| {
        PluginError::Kubeconfig {
            path: args.kubeconfig.clone(),
            source,
        }
    })
}

/// The names of the contexts `args` select from `kubeconfig`, in the
/// order given (the kubeconfig's order for `--all-contexts`), once each.
pub fn context_names(
    args: &ClusterArgs,
    kubeconfig: &Kubeconfig,
) -> Result<Vec<String>, PluginError> {
    let known: Vec<&str> = kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let wanted: Vec<String> = if args.all_contexts {
        known.iter().map(|&n| n.to_owned()).collect()
    } else if !args.context.is_empty() {
        args.context.clone()
    } else {
        match kubeconfig.current_context.as_deref() {
            Some(current) if !current.is_empty() => vec![current.to_owned()],
            _ => return Err(PluginError::NoContext),
        }
    };
    let mut names: Vec<String> = Vec::new();
    for name in wanted {
        if !known.contains(&name.as_str()) {
            return Err(PluginError::UnknownContext {
                context: name,
                known: known.join(", "),
            });
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(PluginError::NoContext);
    }
    Ok(names)
}

/// A client and scope for every context `args` select.
pub async fn targets(args: &ClusterArgs) -> Result<Vec<Target>, PluginError> {
    let kubeconfig = load_kubeconfig(args)?;
    let mut targets = Vec::new();
    for context in context_names(args, &kubeconfig)? {
        let options = KubeConfigOptions {
            context: Some(context.clone()),
            cluster: args.cluster.clone(),
            user: args.user.clone(),
        };
        let config = mapguard_kube::client::config_of(kubeconfig.clone(), &options)
            .await
            .map_err(|source| PluginError::Context {
                context: context.clone(),
                source,
            })?;
        let scope = if args.all_namespaces {
            Scope::All
        } else {
            Scope::Namespace(
                args.namespace
                    .clone()
                    .unwrap_or_else(|| config.default_namespace.clone()),
            )
        };
        let client = Client::try_from(config).map_err(|source| PluginError::Client {
            context: context.clone(),
            source,
        })?;
        targets.push(Target {
            context,
            client,
            scope,
        });
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
- {name: c, cluster: {server: 'https://127.0.0.1:1'}}
users:
- {name: u, user: {token: t}}
contexts:
- {name: east, context: {cluster: c, user: u, namespace: shop}}
- {name: west, context: {cluster: c, user: u}}
current-context: west
";

    fn names(args: ClusterArgs) -> Result<Vec<String>, PluginError> {
        let kubeconfig = Kubeconfig::from_yaml(KUBECONFIG).expect("a kubeconfig");
        context_names(&args, &kubeconfig)
    }

    #[test]
    fn contexts_are_the_current_the_named_or_all() {
        assert_eq!(names(ClusterArgs::default()).expect("current"), ["west"]);
        let named = ClusterArgs {
            context: vec!["east".into(), "west".into(), "east".into()],
            ..ClusterArgs::default()
        };
        assert_eq!(names(named).expect("named"), ["east", "west"]);
        let all = ClusterArgs {
            all_contexts: true,
            context: vec!["west".into()],
            ..ClusterArgs::default()
        };
        assert_eq!(names(all).expect("all"), ["east", "west"]);
        let unknown = ClusterArgs {
            context: vec!["north".into()],
            ..ClusterArgs::default()
        };
        let err = names(unknown).expect_err("unknown context").to_string();
        assert_eq!(
            err,
            "no context \"north\" in the kubeconfig (its contexts: east, west)"
        );
    }

    #[tokio::test]
    async fn the_namespace_is_the_flag_the_contexts_or_all() {
        let dir =
            std::env::temp_dir().join(format!("kubectl-mapguard-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("kubeconfig");
        std::fs::write(&path, KUBECONFIG).expect("write kubeconfig");
        let base = ClusterArgs {
            kubeconfig: Some(path),
            context: vec!["east".into(), "west".into()],
            ..ClusterArgs::default()
        };
        let scopes = |targets: Vec<Target>| {
            targets
                .into_iter()
                .map(|t| (t.context, t.scope))
                .collect::<Vec<_>>()
        };
        let ns = |n: &str| Scope::Namespace(n.to_owned());
        assert_eq!(
            scopes(targets(&base).await.expect("targets")),
            [("east".into(), ns("shop")), ("west".into(), ns("default"))]
        );
        let flag = ClusterArgs {
            namespace: Some("pay".into()),
            ..base.clone()
        };
        assert_eq!(
            scopes(targets(&flag).await.expect("targets")),
            [("east".into(), ns("pay")), ("west".into(), ns("pay"))]
        );
        let all = ClusterArgs {
            all_namespaces: true,
            ..flag
        };
        assert_eq!(
            scopes(targets(&all).await.expect("targets")),
            [("east".into(), Scope::All), ("west".into(), Scope::All)]
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
