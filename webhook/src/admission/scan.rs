//! A look at a request body before anything is built from it: how many JSON
//! values it holds and how deep they nest, counted without allocating, and
//! the fields that name the review (`apiVersion`, `kind`, `request.uid`,
//! `request.namespace`), read without copying the rest.
//!
//! Both passes run before the body is parsed into a tree, so a body of a
//! few megabytes that would expand into hundreds of megabytes of tree (an
//! array of a million empty objects) is refused for the price of reading it.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Visitor methods that read the JSON values they are given (and skip
/// whatever those contain) as `$value`: the fields of [`Head`] ignore
/// values of the wrong type instead of failing.
macro_rules! read_as {
    ($value:expr; $($kind:ident),*) => { $(read_as!(@ $value; $kind);)* };
    (@ $value:expr; bool) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($value) }
    };
    (@ $value:expr; i64) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($value) }
    };
    (@ $value:expr; u64) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($value) }
    };
    (@ $value:expr; f64) => {
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($value) }
    };
    (@ $value:expr; str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($value) }
    };
    (@ $value:expr; unit) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok($value) }
    };
    (@ $value:expr; seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
    (@ $value:expr; map) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

/// Upper bounds on what one body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// JSON values of every kind (objects, arrays, strings, numbers,
    /// booleans, nulls), the outermost object included.
    pub max_values: usize,
    /// Nesting depth: the outermost object is at depth 1.
    pub max_depth: usize,
}

/// What a body holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// JSON values counted.
    pub values: usize,
    /// Deepest nesting seen.
    pub depth: usize,
    /// Members of all objects.
    pub members: usize,
    /// Objects with at least one member.
    pub filled_objects: usize,
    /// Arrays with at least one element.
    pub filled_arrays: usize,
    /// Length of the body in bytes (bounds every string in it).
    pub bytes: usize,
}

/// Heap bytes per part of a parsed body, measured on serde_json 1.0 (its
/// `Value`, objects as B-trees) and regorus 0.14 (the engine's `Value`),
/// rounded up; `tests/memory_estimate.rs` checks [`Shape::memory_estimate`]
/// against an allocator's count for the worst shapes.
mod cost {
    /// serde_json: a value's 32-byte slot, twice for a vector's spare room.
    pub const TREE_VALUE: usize = 64;
    /// serde_json: one B-tree node (11 members) per 5 members and a first
    /// one; an object without members allocates none.
    pub const TREE_NODE: usize = 640;
    /// Members per B-tree node, counted low (a split node holds 5).
    pub const MEMBERS_PER_NODE: usize = 5;
    /// serde_json: the first allocation of an array's vector (4 slots).
    pub const TREE_ARRAY: usize = 128;
    /// regorus: a value and its reference-counted box.
    pub const ENGINE_VALUE: usize = 96;
    /// regorus: a member's key and its share of the map's nodes.
    pub const ENGINE_MEMBER: usize = 64;
    /// serde_json's trees of one request: the review, and the Pod that a
    /// controller's template is unpacked into.
    pub const TREES: usize = 2;
    /// regorus trees of one request: the policies' input, Gatekeeper's
    /// input, and room for the values the evaluation builds.
    pub const ENGINE_TREES: usize = 3;
}

impl Shape {
    /// An upper bound on the heap bytes that judging a body of this shape
    /// takes: the trees built from it and the evaluation's own values.
    /// Strings are bounded by the body's length.
    pub fn memory_estimate(&self) -> usize {
        let tree = self
            .values
            .saturating_mul(cost::TREE_VALUE)
            .saturating_add(
                (self.filled_objects + self.members / cost::MEMBERS_PER_NODE)
                    .saturating_mul(cost::TREE_NODE),
            )
            .saturating_add(self.filled_arrays.saturating_mul(cost::TREE_ARRAY))
            .saturating_add(self.bytes);
        let engine = self
            .values
            .saturating_mul(cost::ENGINE_VALUE)
            .saturating_add(self.members.saturating_mul(cost::ENGINE_MEMBER))
            .saturating_add(self.bytes);
        tree.saturating_mul(cost::TREES)
            .saturating_add(engine.saturating_mul(cost::ENGINE_TREES))
    }
}

/// Why a body was refused by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// More values than the limit.
    #[error("request body holds more than {limit} JSON values (--max-json-values)")]
    TooManyValues {
        /// The limit.
        limit: usize,
    },
    /// Nested deeper than the limit.
    #[error("request body nests JSON deeper than {limit} levels (--max-json-depth)")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Not one well-formed JSON value.
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
}

/// Counts the values of `body` and checks it is one well-formed JSON value,
/// stopping at the first limit crossed. Allocates nothing but serde_json's
/// scratch buffer for strings with escapes.
pub fn scan(body: &[u8], limits: ShapeLimits) -> Result<Shape, ShapeError> {
    let state = Counting {
        limits,
        shape: Cell::new(Shape {
            bytes: body.len(),
            ..Shape::default()
        }),
        crossed: Cell::new(None),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = Counter {
        state: &state,
        depth: 1,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (result, state.crossed.take()) {
        (_, Some(crossed)) => Err(crossed),
        (Ok(()), None) => Ok(state.shape.get()),
        (Err(e), None) => Err(ShapeError::NotJson(e.to_string())),
    }
}

struct Counting {
    limits: ShapeLimits,
    shape: Cell<Shape>,
    crossed: Cell<Option<ShapeError>>,
}

impl Counting {
    fn update(&self, f: impl FnOnce(&mut Shape)) {
        let mut shape = self.shape.get();
        f(&mut shape);
        self.shape.set(shape);
    }
}

/// Counts one value at `depth` and everything inside it.
#[derive(Clone, Copy)]
struct Counter<'s> {
    state: &'s Counting,
    depth: usize,
}

impl Counter<'_> {
    fn count<E: de::Error>(self) -> Result<(), E> {
        let state = self.state;
        state.update(|shape| {
            shape.values += 1;
            shape.depth = shape.depth.max(self.depth);
        });
        let crossed = if state.shape.get().values > state.limits.max_values {
            ShapeError::TooManyValues {
                limit: state.limits.max_values,
            }
        } else if self.depth > state.limits.max_depth {
            ShapeError::TooDeep {
                limit: state.limits.max_depth,
            }
        } else {
            return Ok(());
        };
        let message = crossed.to_string();
        state.crossed.set(Some(crossed));
        Err(E::custom(message))
    }

    fn inner(self) -> Self {
        Counter {
            state: self.state,
            depth: self.depth + 1,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.count()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.count()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.count()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.count()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.count()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.count()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.count()?;
        let mut filled = false;
        while seq.next_element_seed(self.inner())?.is_some() {
            filled = true;
        }
        if filled {
            self.state.update(|shape| shape.filled_arrays += 1);
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.count()?;
        let mut members = 0;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(self.inner())?;
            members += 1;
        }
        if members > 0 {
            self.state.update(|shape| {
                shape.members += members;
                shape.filled_objects += 1;
            });
        }
        Ok(())
    }
}

/// The fields that name a review, borrowed from the body where they hold
/// no escapes. Absent, or not strings, they read as `None`.
#[derive(Debug, Default, Deserialize)]
pub struct Head<'a> {
    /// `apiVersion`.
    #[serde(rename = "apiVersion", default, borrow)]
    pub api_version: Text<'a>,
    /// `kind`.
    #[serde(default, borrow)]
    pub kind: Text<'a>,
    /// `request`, when it is an object.
    #[serde(default, borrow)]
    pub request: Lenient<RequestHead<'a>>,
}

/// `request.uid`, `request.namespace` and `request.dryRun`.
#[derive(Debug, Default, Deserialize)]
pub struct RequestHead<'a> {
    /// `request.uid`.
    #[serde(default, borrow)]
    pub uid: Text<'a>,
    /// `request.namespace`.
    #[serde(default, borrow)]
    pub namespace: Text<'a>,
    /// `request.dryRun`.
    #[serde(rename = "dryRun", default)]
    pub dry_run: Flag,
}

impl<'a> Head<'a> {
    /// Reads the head of `body`: fails when it is not a JSON object or names
    /// one of these fields twice.
    pub fn read(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// `request.uid`, empty when unknown.
    pub fn uid(&self) -> &str {
        self.request.0.as_ref().map_or("", |r| r.uid.as_str())
    }

    /// `request.namespace`, empty when unknown.
    pub fn namespace(&self) -> &str {
        self.request.0.as_ref().map_or("", |r| r.namespace.as_str())
    }

    /// `request.dryRun`.
    pub fn dry_run(&self) -> bool {
        self.request.0.as_ref().is_some_and(|r| r.dry_run.0)
    }
}

/// A boolean field: `true` only when the JSON value is `true`.
#[derive(Debug, Default)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl<'de> Visitor<'de> for FlagVisitor {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Flag, E> {
                Ok(Flag(b))
            }
            read_as!(Flag(false); i64, u64, f64, str, unit, seq, map);
        }
        deserializer.deserialize_any(FlagVisitor)
    }
}

/// A string field; any other JSON value reads as absent.
#[derive(Debug, Default)]
pub struct Text<'a>(pub Option<Cow<'a, str>>);

impl Text<'_> {
    /// The string, empty when absent.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Owned(s.to_owned()))))
            }
            read_as!(Text(None); bool, i64, u64, f64, unit, seq, map);
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// A field read as `T` when it is a JSON object; any other value reads as
/// absent.
#[derive(Debug)]
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for LenientVisitor<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Lenient<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Lenient(Some(t)))
            }
            read_as!(Lenient(None); bool, i64, u64, f64, str, unit, seq);
        }
        deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ShapeLimits = ShapeLimits {
        max_values: 10,
        max_depth: 3,
    };

    #[test]
    fn counts_every_value_and_the_depth() {
        let body = br#"{"a": [1, "x", null], "b": {"c": true}, "d": {}, "e": []}"#;
        let shape = scan(body, LIMITS).expect("fits");
        assert_eq!(
            shape,
            Shape {
                values: 9,
                depth: 3,
                members: 5,
                filled_objects: 2,
                filled_arrays: 1,
                bytes: body.len(),
            }
        );
    }

    #[test]
    fn stops_at_the_limits() {
        let many = format!("[{}]", ["{}"; 10].join(","));
        assert_eq!(
            scan(many.as_bytes(), LIMITS),
            Err(ShapeError::TooManyValues { limit: 10 })
        );
        assert_eq!(
            scan(b"[[[[]]]]", LIMITS),
            Err(ShapeError::TooDeep { limit: 3 })
        );
        // Deeper than serde_json's own recursion limit: still our error.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            scan(deep.as_bytes(), LIMITS),
            Err(ShapeError::TooDeep { limit: 3 })
        );
    }

    #[test]
    fn refuses_what_is_not_one_json_value() {
        for body in [&b"{not json"[..], b"{} {}", b"", b"[1,]"] {
            assert!(
                matches!(scan(body, LIMITS), Err(ShapeError::NotJson(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn head_reads_names_and_ignores_the_rest() {
        let body = br#"{"kind": "AdmissionReview", "apiVersion": 3,
            "request": {"uid": "u-1", "namespace": "n\"s", "object": {"a": [1, 2]}}}"#;
        let head = Head::read(body).expect("head reads");
        assert_eq!(head.kind.as_str(), "AdmissionReview");
        assert_eq!(head.api_version.as_str(), "");
        assert_eq!(head.uid(), "u-1");
        assert_eq!(
            head.request.0.as_ref().map(|r| r.namespace.as_str()),
            Some("n\"s")
        );
        assert!(matches!(
            head.request.0.as_ref().map(|r| &r.uid.0),
            Some(Some(Cow::Borrowed(_)))
        ));
        assert_eq!(Head::read(br#"{"request": "x"}"#).expect("reads").uid(), "");
        // serde reads a struct from an array too: no names in it either way.
        assert_eq!(
            Head::read(b"[1]")
                .map(|h| h.uid().to_owned())
                .unwrap_or_default(),
            ""
        );
        assert!(Head::read(br#"{"kind": "a", "kind": "b"}"#).is_err());
    }
}
