//! Why a command failed, in words that say what to do about it.

use std::path::PathBuf;

use mapguard_api::resource::{GROUP, PLURAL};
use mapguard_kube::errors::{ApiErrorClass, classify_status, forbidden_user};

/// What the plugin could not do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The kubeconfig file(s) did not load.
    #[error("cannot load the kubeconfig {}: {source}", path.as_ref().map_or_else(|| "($KUBECONFIG or ~/.kube/config)".to_owned(), |p| p.display().to_string()))]
    Kubeconfig {
        /// The file given by --kubeconfig; `None`: the default ones.
        path: Option<PathBuf>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A context named by --context is not in the kubeconfig.
    #[error("no context {context:?} in the kubeconfig (its contexts: {known})")]
    UnknownContext {
        context: String,
        /// The names it has, comma-separated.
        known: String,
    },
    /// Neither --context nor a current context.
    #[error("the kubeconfig has no current context: pass --context NAME or --all-contexts")]
    NoContext,
    /// A context's cluster or user did not load.
    #[error("context {context:?}: {source}")]
    Context {
        context: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A client could not be built (TLS set-up, proxy).
    #[error("context {context:?}: cannot build a client: {source}")]
    Client {
        context: String,
        #[source]
        source: kube::Error,
    },
    /// RBAC refused a request: which verb on which resource where, and who.
    #[error(
        "context {context:?}: {who} may not {verb} {PLURAL}.{GROUP} {where_} \
         (RBAC: verb {verb:?} on resource {PLURAL:?} in API group {GROUP:?}){detail}"
    )]
    Forbidden {
        context: String,
        /// The user, as the API server knows it, or "you".
        who: String,
        verb: &'static str,
        /// `in namespace "shop"` or `in all namespaces`.
        where_: String,
        /// What follows (e.g. "; nothing was deleted"), or the API server's
        /// own words.
        detail: String,
    },
    /// The API server does not serve MapViolation records.
    #[error(
        "context {context:?}: the API server does not serve {PLURAL}.{GROUP}: install the CRD \
         (kubectl apply -f manifests/crd/mapviolations.yaml, or deploy mapguard's node agent)"
    )]
    NoCrd { context: String },
    /// Any other failed request.
    #[error("context {context:?}: cannot {what}: {source}")]
    Api {
        context: String,
        what: String,
        #[source]
        source: kube::Error,
    },
    /// Standard output or error went away (other than a closed pipe).
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

impl PluginError {
    /// Errors in what the user gave (flags, kubeconfig) exit 2, like
    /// `mapguard check`'s bad input; failures in the clusters exit 1.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            PluginError::Kubeconfig { .. }
                | PluginError::UnknownContext { .. }
                | PluginError::NoContext
                | PluginError::Context { .. }
        )
    }

    /// `error` of a request by `verb` on records `where_` (`in namespace
    /// "x"` / `in all namespaces`), classified by [`PluginError::refusal`].
    pub fn from_api(context: &str, verb: &'static str, where_: &str, error: kube::Error) -> Self {
        if let kube::Error::Api(status) = &error
            && let Some(refusal) = PluginError::refusal(context, verb, where_, status)
        {
            return refusal;
        }
        PluginError::Api {
            context: context.to_owned(),
            what: format!("{verb} {PLURAL}.{GROUP} {where_}"),
            source: error,
        }
    }

    /// An answer that retrying cannot change: a 403 becomes
    /// [`PluginError::Forbidden`] naming the user as the API server did, a
    /// 404 of anything but a delete [`PluginError::NoCrd`].
    pub fn refusal(
        context: &str,
        verb: &'static str,
        where_: &str,
        status: &kube::core::Status,
    ) -> Option<Self> {
        match classify_status(status) {
            ApiErrorClass::Forbidden => Some(PluginError::Forbidden {
                context: context.to_owned(),
                who: forbidden_user(&status.message).unwrap_or_else(|| "you".to_owned()),
                verb,
                where_: where_.to_owned(),
                detail: format!("; the API server said: {}", status.message),
            }),
            ApiErrorClass::NotFound if verb != "delete" => Some(PluginError::NoCrd {
                context: context.to_owned(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_verb_resource_group_and_namespace() {
        let text = PluginError::Forbidden {
            context: "east".to_owned(),
            who: "User \"bob\"".to_owned(),
            verb: "delete",
            where_: "in namespace \"shop\"".to_owned(),
            detail: "; nothing was deleted".to_owned(),
        }
        .to_string();
        assert_eq!(
            text,
            "context \"east\": User \"bob\" may not delete mapviolations.mapguard.io in namespace \
             \"shop\" (RBAC: verb \"delete\" on resource \"mapviolations\" in API group \
             \"mapguard.io\"); nothing was deleted"
        );
    }
}
