//! `data.inventory`: the cluster's objects, for referential templates
//! (a unique Ingress host, a Service selector that selects something), in
//! Gatekeeper's layout:
//!
//! * namespaced: `data.inventory.namespace[<ns>][<apiVersion>][<kind>][<name>]`
//! * cluster-scoped: `data.inventory.cluster[<apiVersion>][<kind>][<name>]`

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value as Json, json};

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// A snapshot of objects for `data.inventory`; cheap to compare by version.
#[derive(Debug, Clone)]
pub struct Inventory {
    version: u64,
    objects: usize,
    data: Json,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            version: 0,
            objects: 0,
            data: json!({"namespace": {}, "cluster": {}}),
        }
    }
}

impl Inventory {
    /// The inventory of `objects` (Kubernetes objects as JSON; those without
    /// `apiVersion`, `kind` or a name are left out). A Namespace is
    /// cluster-scoped; every other object with a namespace is namespaced.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Json>) -> Inventory {
        let mut namespaced = Map::new();
        let mut cluster = Map::new();
        let mut count = 0;
        for object in objects {
            let field = |p: &str| {
                object
                    .pointer(p)
                    .and_then(Json::as_str)
                    .filter(|s| !s.is_empty())
            };
            let (Some(api_version), Some(kind), Some(name)) = (
                field("/apiVersion"),
                field("/kind"),
                field("/metadata/name"),
            ) else {
                continue;
            };
            let root = match field("/metadata/namespace") {
                Some(ns) if kind != "Namespace" => namespaced
                    .entry(ns)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("an object"),
                _ => &mut cluster,
            };
            let by_kind = root
                .entry(api_version)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("an object")
                .entry(kind)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("an object");
            by_kind.insert(name.to_string(), object.clone());
            count += 1;
        }
        Inventory {
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            objects: count,
            data: json!({"namespace": namespaced, "cluster": cluster}),
        }
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.objects
    }

    pub fn is_empty(&self) -> bool {
        self.objects == 0
    }

    /// Changes whenever the contents may have (0: the empty inventory).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `{"inventory": ...}`, for an engine's data.
    pub(crate) fn to_data(&self) -> Json {
        json!({"inventory": self.data})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_land_where_gatekeeper_puts_them() {
        let objects = [
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "web", "namespace": "shop"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "namespace": "x"}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
            json!({"kind": "Broken", "metadata": {"name": "b"}}),
        ];
        let inventory = Inventory::from_objects(&objects);
        assert_eq!(inventory.len(), 3);
        let data = inventory.to_data();
        assert_eq!(
            data["inventory"]["namespace"]["shop"]["networking.k8s.io/v1"]["Ingress"]["web"],
            objects[0]
        );
        assert_eq!(
            data["inventory"]["cluster"]["v1"]["Namespace"]["shop"],
            objects[1]
        );
        assert_eq!(data["inventory"]["cluster"]["v1"]["Node"]["n1"], objects[2]);
        assert_ne!(inventory.version(), Inventory::default().version());
        assert!(Inventory::default().is_empty());
    }
}
