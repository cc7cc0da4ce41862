//! JSON patches from policies: validation, filling in missing parents, and
//! re-rooting onto a controller's pod template.
//!
//! Policies write RFC 6902 operations against the Pod they judge, e.g.
//! `{"op": "add", "path": "/metadata/annotations/mapguard.io~1mode", "value": "stop"}`.
//! An `add` whose parent object does not exist yet (no `annotations` at all)
//! becomes an `add` of the missing object with the value inside, because the
//! API server rejects adding a member to a missing object.

use serde_json::{Map, Value as Json};

/// Escapes one JSON-pointer token (`~` → `~0`, `/` → `~1`).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Unescapes one JSON-pointer token.
pub fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// A patch operation a policy produced that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid patch operation {operation}: {reason}")]
pub struct PatchError {
    pub operation: String,
    pub reason: String,
}

fn err(op: &Json, reason: impl Into<String>) -> PatchError {
    PatchError {
        operation: op.to_string(),
        reason: reason.into(),
    }
}

/// Checks `ops` against `doc` (a copy of the Pod, or of a controller's
/// template), applying them to it in order so later operations (and later
/// calls) see earlier ones, fills in missing parent objects for `add`, and
/// prefixes every path with `root` (`""` for a Pod, `/spec/template` for a
/// Deployment...).
pub fn prepare(ops: Vec<Json>, doc: &mut Json, root: &str) -> Result<Vec<Json>, PatchError> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let mut op = validate(op)?;
        if op["op"] == "add" {
            op = fill_missing_parents(op, doc)?;
        }
        let parsed: json_patch::PatchOperation =
            serde_json::from_value(op.clone()).map_err(|e| err(&op, e.to_string()))?;
        json_patch::patch(doc, &[parsed]).map_err(|e| err(&op, e.to_string()))?;
        out.push(reroot(op, root));
    }
    Ok(out)
}

fn validate(op: Json) -> Result<Json, PatchError> {
    let Some(fields) = op.as_object() else {
        return Err(err(&op, "not an object"));
    };
    let kind = fields.get("op").and_then(Json::as_str).unwrap_or_default();
    if !matches!(
        kind,
        "add" | "remove" | "replace" | "move" | "copy" | "test"
    ) {
        return Err(err(
            &op,
            "op must be add, remove, replace, move, copy or test",
        ));
    }
    let mut pointers = vec!["path"];
    if matches!(kind, "move" | "copy") {
        pointers.push("from");
    }
    for key in pointers {
        match fields.get(key).and_then(Json::as_str) {
            Some(p) if p.is_empty() || p.starts_with('/') => {}
            _ => return Err(err(&op, format!("{key} must be a JSON pointer"))),
        }
    }
    if matches!(kind, "add" | "replace" | "test") && !fields.contains_key("value") {
        return Err(err(&op, "value missing"));
    }
    Ok(op)
}

/// Turns `add /a/b/c` into `add /a {"b": {"c": v}}` when `/a/b` is missing
/// (and `/a` too, as far up as needed).
fn fill_missing_parents(op: Json, doc: &Json) -> Result<Json, PatchError> {
    let path = op["path"].as_str().unwrap_or_default().to_string();
    let tokens: Vec<&str> = path.split('/').skip(1).collect();
    if tokens.len() < 2 {
        return Ok(op);
    }
    // Deepest existing ancestor of the target.
    let mut existing = 0;
    let mut cursor = doc;
    for token in &tokens[..tokens.len() - 1] {
        let next = match cursor {
            Json::Object(map) => map.get(&unescape_token(token)),
            Json::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(n) => {
                cursor = n;
                existing += 1;
            }
            None => break,
        }
    }
    if existing == tokens.len() - 1 {
        return Ok(op);
    }
    if !cursor.is_object() {
        return Err(err(&op, "parent of a missing object is not an object"));
    }
    let mut value = op["value"].clone();
    for token in tokens[existing + 1..].iter().rev() {
        let mut map = Map::new();
        map.insert(unescape_token(token), value);
        value = Json::Object(map);
    }
    let parent: String = tokens[..=existing]
        .iter()
        .map(|t| format!("/{t}"))
        .collect();
    Ok(serde_json::json!({"op": "add", "path": parent, "value": value}))
}

fn reroot(mut op: Json, root: &str) -> Json {
    if root.is_empty() {
        return op;
    }
    if let Some(fields) = op.as_object_mut() {
        for key in ["path", "from"] {
            if let Some(Json::String(p)) = fields.get_mut(key) {
                *p = format!("{root}{p}");
            }
        }
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mode_op() -> Json {
        json!({"op": "add", "path": "/metadata/annotations/mapguard.io~1mode", "value": "stop"})
    }

    #[test]
    fn adds_whole_annotations_object_when_absent_and_reroots() {
        let template = json!({"metadata": {"labels": {"app": "a"}}, "spec": {}});
        let ops =
            prepare(vec![mode_op()], &mut template.clone(), "/spec/template").expect("valid op");
        assert_eq!(
            ops,
            vec![
                json!({"op": "add", "path": "/spec/template/metadata/annotations",
                        "value": {"mapguard.io/mode": "stop"}})
            ]
        );
    }

    #[test]
    fn keeps_member_add_when_annotations_exist_and_escapes_survive() {
        let pod = json!({"metadata": {"annotations": {"x": "y"}}});
        let ops = prepare(vec![mode_op()], &mut pod.clone(), "").expect("valid op");
        assert_eq!(ops, vec![mode_op()]);
        let ops = prepare(vec![mode_op()], &mut json!({}), "").expect("valid op");
        assert_eq!(
            ops[0],
            json!({"op": "add", "path": "/metadata", "value": {"annotations": {"mapguard.io/mode": "stop"}}})
        );
    }

    #[test]
    fn second_add_sees_the_first() {
        let a = json!({"op": "add", "path": "/metadata/annotations/a", "value": "1"});
        let b = json!({"op": "add", "path": "/metadata/annotations/b", "value": "2"});
        let ops = prepare(vec![a, b.clone()], &mut json!({"metadata": {}}), "").expect("valid ops");
        assert_eq!(ops[0]["path"], "/metadata/annotations");
        assert_eq!(ops[1], b);
    }

    #[test]
    fn rejects_malformed_and_inapplicable_operations() {
        assert!(prepare(vec![json!("add")], &mut json!({}), "").is_err());
        assert!(
            prepare(
                vec![json!({"op": "frob", "path": "/a"})],
                &mut json!({}),
                ""
            )
            .is_err()
        );
        assert!(
            prepare(
                vec![json!({"op": "add", "path": "a", "value": 1})],
                &mut json!({}),
                ""
            )
            .is_err()
        );
        assert!(
            prepare(
                vec![json!({"op": "remove", "path": "/nope"})],
                &mut json!({}),
                ""
            )
            .is_err()
        );
    }

    #[test]
    fn token_escaping_round_trips() {
        assert_eq!(escape_token("mapguard.io/mode"), "mapguard.io~1mode");
        assert_eq!(escape_token("a~b"), "a~0b");
        assert_eq!(unescape_token("a~0~1b"), "a~/b");
    }
}
