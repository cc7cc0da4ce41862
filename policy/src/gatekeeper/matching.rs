//! Which objects a constraint applies to: `spec.match` as Gatekeeper reads
//! it. Every field left out matches everything; every field given must
//! match.
//!
//! * `kinds` — any entry whose `apiGroups` and `kinds` (empty or `*`: any)
//!   name the object's group and kind.
//! * `namespaces`, `excludedNamespaces` — names with an optional `*` at the
//!   start or end (`kube-*`, `*-system`); a Namespace object is judged by its
//!   own name; cluster-scoped objects are never excluded or left out by them.
//! * `labelSelector` — the object's labels; `namespaceSelector` — its
//!   namespace's labels (a Namespace's own labels; cluster-scoped objects
//!   match).
//! * `scope` — `Cluster`, `Namespaced` or `*`.
//! * `name` — the object's name (or `generateName`), `*` allowed at either
//!   end.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_core::{Selector, SelectorExt};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::NamespaceData;

/// One entry of `spec.match.kinds`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KindsEntry {
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// `spec.match` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MatchSpec {
    #[serde(default)]
    pub kinds: Vec<KindsEntry>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub excluded_namespaces: Vec<String>,
    pub label_selector: Option<LabelSelector>,
    pub namespace_selector: Option<LabelSelector>,
    pub scope: Option<String>,
    pub name: Option<String>,
    /// `All`, `Original` or `Generated` (Gatekeeper's expansion); mapguard
    /// judges what it is sent, which is `Original`.
    pub source: Option<String>,
}

/// `spec.match`, checked and ready to match.
#[derive(Debug, Clone)]
pub(crate) struct Match {
    kinds: Vec<KindsEntry>,
    namespaces: Vec<String>,
    excluded_namespaces: Vec<String>,
    label_selector: Option<Selector>,
    namespace_selector: Option<Selector>,
    scope: Scope,
    name: Option<String>,
    generated_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Any,
    Cluster,
    Namespaced,
}

/// What a match is checked against.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    /// The object (or, for a DELETE, the old object).
    pub object: &'a Json,
    /// The request's namespace, else the object's.
    pub namespace: &'a str,
}

impl Target<'_> {
    fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.kind == "Namespace"
    }

    fn metadata(&self, field: &str) -> &str {
        self.object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Json::as_str)
            .unwrap_or("")
    }

    fn labels(&self) -> BTreeMap<String, String> {
        labels_of(self.object)
    }

    /// The namespace the namespace fields judge: a Namespace's own name,
    /// else the object's; `None` for other cluster-scoped objects.
    fn judged_namespace(&self) -> Option<&str> {
        if self.is_namespace() {
            Some(self.metadata("name"))
        } else if !self.namespace.is_empty() {
            Some(self.namespace)
        } else {
            None
        }
    }
}

fn labels_of(object: &Json) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Json::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Why `spec.match` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MatchError {
    #[error("{field}: {message}")]
    Selector {
        field: &'static str,
        message: String,
    },
    #[error("scope must be \"Cluster\", \"Namespaced\" or \"*\", found {0:?}")]
    Scope(String),
    #[error("source must be \"All\", \"Original\" or \"Generated\", found {0:?}")]
    Source(String),
    #[error(
        "namespaceSelector needs the labels of namespace {0:?}, which is not known (pass --namespaces, or the webhook has not loaded it yet)"
    )]
    UnknownNamespace(String),
}

impl Match {
    pub(crate) fn new(spec: MatchSpec) -> Result<Match, MatchError> {
        let selector = |field: &'static str, s: Option<LabelSelector>| {
            s.map(Selector::try_from)
                .transpose()
                .map_err(|e| MatchError::Selector {
                    field,
                    message: e.to_string(),
                })
        };
        let scope = match spec.scope.as_deref() {
            None | Some("*") | Some("") => Scope::Any,
            Some("Cluster") => Scope::Cluster,
            Some("Namespaced") => Scope::Namespaced,
            Some(other) => return Err(MatchError::Scope(other.to_string())),
        };
        let generated_only = match spec.source.as_deref() {
            None | Some("") | Some("All") | Some("Original") => false,
            Some("Generated") => true,
            Some(other) => return Err(MatchError::Source(other.to_string())),
        };
        Ok(Match {
            kinds: spec.kinds,
            namespaces: spec.namespaces,
            excluded_namespaces: spec.excluded_namespaces,
            label_selector: selector("labelSelector", spec.label_selector)?,
            namespace_selector: selector("namespaceSelector", spec.namespace_selector)?,
            scope,
            name: spec.name.filter(|n| !n.is_empty()),
            generated_only,
        })
    }

    /// Whether the constraint applies to `target`.
    pub(crate) fn matches(&self, target: &Target, ns: &NamespaceData) -> Result<bool, MatchError> {
        Ok(!self.generated_only
            && self.kinds_match(target)
            && self.scope_matches(target)
            && self.namespaces_match(target)
            && self.label_selector_matches(target)
            && self.namespace_selector_matches(target, ns)?
            && self.name_matches(target))
    }

    fn kinds_match(&self, t: &Target) -> bool {
        let any = |list: &[String], value: &str| {
            list.is_empty() || list.iter().any(|v| v == "*" || v == value)
        };
        self.kinds.is_empty()
            || self
                .kinds
                .iter()
                .any(|e| any(&e.kinds, t.kind) && any(&e.api_groups, t.group))
    }

    fn scope_matches(&self, t: &Target) -> bool {
        let namespaced = !t.is_namespace() && !t.namespace.is_empty();
        match self.scope {
            Scope::Any => true,
            Scope::Cluster => !namespaced,
            Scope::Namespaced => namespaced,
        }
    }

    fn namespaces_match(&self, t: &Target) -> bool {
        let Some(namespace) = t.judged_namespace() else {
            return true;
        };
        let listed = |patterns: &[String]| patterns.iter().any(|p| wildcard(p, namespace));
        (self.namespaces.is_empty() || listed(&self.namespaces))
            && !listed(&self.excluded_namespaces)
    }

    fn label_selector_matches(&self, t: &Target) -> bool {
        self.label_selector
            .as_ref()
            .is_none_or(|s| s.matches(&t.labels()))
    }

    fn namespace_selector_matches(
        &self,
        t: &Target,
        ns: &NamespaceData,
    ) -> Result<bool, MatchError> {
        let Some(selector) = &self.namespace_selector else {
            return Ok(true);
        };
        if t.is_namespace() {
            return Ok(selector.matches(&t.labels()));
        }
        if t.namespace.is_empty() {
            return Ok(true);
        }
        match ns.get(t.namespace) {
            Some(meta) => Ok(selector.matches(&meta.labels)),
            None => Err(MatchError::UnknownNamespace(t.namespace.to_string())),
        }
    }

    fn name_matches(&self, t: &Target) -> bool {
        let Some(pattern) = &self.name else {
            return true;
        };
        let name = t.metadata("name");
        let generate = t.metadata("generateName");
        (!name.is_empty() && wildcard(pattern, name))
            // `generateName: web-` matches `web-*` (the generated suffix is unknown).
            || (!generate.is_empty()
                && pattern
                    .strip_suffix('*')
                    .is_some_and(|prefix| generate.starts_with(prefix)))
    }
}

/// `pattern` with an optional `*` at its start and/or end.
pub(crate) fn wildcard(pattern: &str, value: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(rest), Some(_)) if !rest.is_empty() => {
            value.contains(rest.strip_suffix('*').unwrap_or(rest))
        }
        (Some(suffix), _) => value.ends_with(suffix),
        (None, Some(prefix)) => value.starts_with(prefix),
        (None, None) => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::NamespaceMeta;

    fn matcher(spec: Json) -> Match {
        Match::new(serde_json::from_value(spec).expect("a match spec")).expect("valid")
    }

    fn pod(namespace: &str, labels: Json) -> Json {
        json!({"metadata": {"name": "web-1", "namespace": namespace, "labels": labels}})
    }

    fn target<'a>(group: &'a str, kind: &'a str, object: &'a Json, ns: &'a str) -> Target<'a> {
        Target {
            group,
            kind,
            object,
            namespace: ns,
        }
    }

    fn namespaces() -> NamespaceData {
        let mut data = NamespaceData::new();
        data.insert(
            "shop".into(),
            NamespaceMeta {
                labels: [("tier".to_string(), "prod".to_string())].into(),
                annotations: BTreeMap::new(),
            },
        );
        data
    }

    #[test]
    fn wildcards_at_either_end() {
        assert!(wildcard("kube-*", "kube-system"));
        assert!(!wildcard("kube-*", "shop"));
        assert!(wildcard("*-system", "kube-system"));
        assert!(!wildcard("*-system", "system-x"));
        assert!(wildcard("*ub*", "kube"));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("shop", "shop"));
        assert!(!wildcard("shop", "shops"));
    }

    #[test]
    fn kinds_need_group_and_kind_of_one_entry() {
        let m = matcher(json!({"kinds": [
            {"apiGroups": [""], "kinds": ["Pod"]},
            {"apiGroups": ["apps"], "kinds": ["*"]}]}));
        let o = pod("shop", json!({}));
        let ns = namespaces();
        assert!(m.matches(&target("", "Pod", &o, "shop"), &ns).unwrap());
        assert!(
            m.matches(&target("apps", "Deployment", &o, "shop"), &ns)
                .unwrap()
        );
        assert!(!m.matches(&target("", "Service", &o, "shop"), &ns).unwrap());
        assert!(!m.matches(&target("batch", "Pod", &o, "shop"), &ns).unwrap());
        let any = matcher(json!({"kinds": [{"kinds": ["Pod"]}]}));
        assert!(
            any.matches(&target("x.io", "Pod", &o, "shop"), &ns)
                .unwrap()
        );
    }

    #[test]
    fn namespaces_and_exclusions_judge_namespaces_by_their_own_name() {
        let m =
            matcher(json!({"namespaces": ["shop", "pay-*"], "excludedNamespaces": ["pay-test"]}));
        let ns = namespaces();
        let o = pod("x", json!({}));
        assert!(m.matches(&target("", "Pod", &o, "shop"), &ns).unwrap());
        assert!(m.matches(&target("", "Pod", &o, "pay-eu"), &ns).unwrap());
        assert!(!m.matches(&target("", "Pod", &o, "pay-test"), &ns).unwrap());
        assert!(!m.matches(&target("", "Pod", &o, "default"), &ns).unwrap());
        let namespace = json!({"metadata": {"name": "pay-test"}});
        assert!(
            !m.matches(&target("", "Namespace", &namespace, ""), &ns)
                .unwrap()
        );
        let namespace = json!({"metadata": {"name": "shop"}});
        assert!(
            m.matches(&target("", "Namespace", &namespace, ""), &ns)
                .unwrap()
        );
        // Cluster-scoped objects are not left out by namespace fields.
        let node = json!({"metadata": {"name": "n1"}});
        assert!(m.matches(&target("", "Node", &node, ""), &ns).unwrap());
    }

    #[test]
    fn selectors_read_the_objects_and_the_namespaces_labels() {
        let ns = namespaces();
        let m = matcher(json!({
            "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
            "namespaceSelector": {"matchLabels": {"tier": "prod"}}}));
        let web = pod("shop", json!({"app": "web"}));
        let db = pod("shop", json!({"app": "db"}));
        assert!(m.matches(&target("", "Pod", &web, "shop"), &ns).unwrap());
        assert!(!m.matches(&target("", "Pod", &db, "shop"), &ns).unwrap());
        let err = m
            .matches(&target("", "Pod", &web, "nowhere"), &ns)
            .unwrap_err();
        assert_eq!(err, MatchError::UnknownNamespace("nowhere".into()));
        let namespace =
            json!({"metadata": {"name": "x", "labels": {"tier": "prod", "app": "web"}}});
        assert!(
            m.matches(&target("", "Namespace", &namespace, ""), &ns)
                .unwrap()
        );
        let node = json!({"metadata": {"name": "n1", "labels": {"app": "web"}}});
        assert!(m.matches(&target("", "Node", &node, ""), &ns).unwrap());
    }

    #[test]
    fn scope_and_name() {
        let ns = namespaces();
        let o = pod("shop", json!({}));
        let node = json!({"metadata": {"name": "n1"}});
        let namespace = json!({"metadata": {"name": "shop"}});
        let cluster = matcher(json!({"scope": "Cluster"}));
        assert!(
            !cluster
                .matches(&target("", "Pod", &o, "shop"), &ns)
                .unwrap()
        );
        assert!(
            cluster
                .matches(&target("", "Node", &node, ""), &ns)
                .unwrap()
        );
        assert!(
            cluster
                .matches(&target("", "Namespace", &namespace, ""), &ns)
                .unwrap()
        );
        let namespaced = matcher(json!({"scope": "Namespaced"}));
        assert!(
            namespaced
                .matches(&target("", "Pod", &o, "shop"), &ns)
                .unwrap()
        );
        assert!(
            !namespaced
                .matches(&target("", "Namespace", &namespace, ""), &ns)
                .unwrap()
        );
        let named = matcher(json!({"name": "web-*"}));
        assert!(named.matches(&target("", "Pod", &o, "shop"), &ns).unwrap());
        assert!(!named.matches(&target("", "Node", &node, ""), &ns).unwrap());
        let generated = json!({"metadata": {"generateName": "web-"}});
        assert!(
            named
                .matches(&target("", "Pod", &generated, "shop"), &ns)
                .unwrap()
        );
        let bad = MatchSpec {
            scope: Some("cluster".into()),
            ..MatchSpec::default()
        };
        assert_eq!(
            Match::new(bad).unwrap_err(),
            MatchError::Scope("cluster".into())
        );
    }
}
