//! The identity of a violation: its call-site pair (its kind, both
//! operations and the first user frame of each stack), and the name of the
//! `MapViolation` record derived from it.
//!
//! Two violations are the same record when they have the same pair in the
//! same namespace, whichever Pod, process or goroutines they came from: a
//! crash-looping Pod or a Deployment's replicas add to one record's count.
//! The reporter's audit-mode deduplication, the records, the Pod Events and
//! the metrics all read the one pair each violation carries.

use crate::resource::MapViolationSpec;
use crate::vocab::{Kind, Op};

/// Kind, operations and user call sites of a violation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallSitePair {
    pub kind: Kind,
    pub op: Op,
    pub conflicting_op: Op,
    /// First frame outside the Go runtime of the reporting goroutine's
    /// stack (`function /path/file.go:line`).
    pub frame: String,
    /// The same for the other goroutine; `None` when the other side is
    /// not on record (a crash-path report).
    pub conflicting_frame: Option<String>,
}

impl CallSitePair {
    /// The pair of a violation: its kind, both operations and both
    /// symbolized stacks (`function /path/file.go:line` frames, innermost
    /// first). The reporter computes it once per violation.
    pub fn new(
        kind: Kind,
        op: Op,
        conflicting_op: Op,
        stack: &[String],
        conflicting_stack: &[String],
    ) -> CallSitePair {
        CallSitePair {
            kind,
            op,
            conflicting_op,
            frame: user_frame(stack).unwrap_or("?").to_owned(),
            conflicting_frame: user_frame(conflicting_stack).map(str::to_owned),
        }
    }

    /// The record's object name: the kind and a stable 64-bit hash of the
    /// pair, e.g. `concurrent-write-5be1c0f2a3d4e697` (a DNS label, the
    /// same on every node and across restarts).
    pub fn object_name(&self) -> String {
        let mut hash = Fnv1a::new();
        for part in [
            self.kind.as_str(),
            self.op.as_str(),
            self.conflicting_op.as_str(),
            &self.frame,
            self.conflicting_frame.as_deref().unwrap_or(""),
        ] {
            hash.write(part.as_bytes());
            // A separator no frame contains, so ("ab","c") ≠ ("a","bc").
            hash.write(&[0]);
        }
        format!(
            "{}-{:016x}",
            self.kind.as_str().replace('_', "-"),
            hash.finish()
        )
    }

    /// `function file.go:line` of the reporting side (for columns and
    /// messages).
    pub fn site(&self) -> String {
        short_frame(&self.frame)
    }

    /// The same for the other side, if on record.
    pub fn conflicting_site(&self) -> Option<String> {
        self.conflicting_frame.as_deref().map(short_frame)
    }

    /// The spec a record of this pair has, with the stacks of one occurrence.
    pub fn spec(&self, stack: Vec<String>, conflicting_stack: Vec<String>) -> MapViolationSpec {
        MapViolationSpec {
            kind: self.kind.as_str().to_owned(),
            op: self.op.as_str().to_owned(),
            conflicting_op: self.conflicting_op.as_str().to_owned(),
            site: self.site(),
            conflicting_site: self.conflicting_site(),
            stack,
            conflicting_stack,
        }
    }

    /// Whether `spec` stands for this pair (what the object's name says):
    /// the words and both user frames. A record edited by hand fails this.
    pub fn is_pair_of(&self, spec: &MapViolationSpec) -> bool {
        spec.kind == self.kind.as_str()
            && spec.op == self.op.as_str()
            && spec.conflicting_op == self.conflicting_op.as_str()
            && spec.site == self.site()
            && spec.conflicting_site == self.conflicting_site()
            && user_frame(&spec.stack).unwrap_or("?") == self.frame
            && user_frame(&spec.conflicting_stack) == self.conflicting_frame.as_deref()
    }
}

/// First frame of a symbolized stack outside the Go runtime (the user's
/// call site), or the innermost one; `None` for an empty stack.
pub fn user_frame(stack: &[String]) -> Option<&str> {
    stack
        .iter()
        .find(|f| !f.starts_with("runtime.") && !f.starts_with("internal/"))
        .or(stack.first())
        .map(String::as_str)
}

/// `function /abs/path/file.go:12` → `function file.go:12`.
pub fn short_frame(frame: &str) -> String {
    match frame.rsplit_once(' ') {
        Some((function, location)) => {
            let file = location.rsplit('/').next().unwrap_or(location);
            format!("{function} {file}")
        }
        None => frame.to_owned(),
    }
}

/// FNV-1a, 64 bits: stable across Rust releases and platforms (std's
/// hashers promise neither), which object names must be.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> String {
        text.to_owned()
    }

    fn pair(frame: &str, other: Option<&str>) -> CallSitePair {
        CallSitePair {
            kind: Kind::ConcurrentWrite,
            op: Op::Assign,
            conflicting_op: Op::Delete,
            frame: frame.to_owned(),
            conflicting_frame: other.map(str::to_owned),
        }
    }

    #[test]
    fn the_name_is_stable_and_depends_on_every_part() {
        let a = pair(
            "main.assigner /src/app/main.go:38",
            Some("main.deleter /src/app/main.go:26"),
        );
        // Pinned: a name that changed between releases would split records.
        assert_eq!(a.object_name(), "concurrent-write-b3476c441219d046");
        assert_eq!(a.object_name(), a.clone().object_name());
        let names = [
            a.object_name(),
            pair(
                "main.assigner /src/app/main.go:39",
                Some("main.deleter /src/app/main.go:26"),
            )
            .object_name(),
            pair("main.assigner /src/app/main.go:38", None).object_name(),
            CallSitePair {
                op: Op::Clear,
                ..a.clone()
            }
            .object_name(),
        ];
        for (i, x) in names.iter().enumerate() {
            assert!(
                x.len() <= 63
                    && x.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{x}"
            );
            for y in &names[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // Moving a separator between parts changes the name.
        assert_ne!(
            pair("ab", Some("c")).object_name(),
            pair("a", Some("bc")).object_name()
        );
    }

    #[test]
    fn names_of_reported_stacks_are_pinned() {
        // Computed from the string frames before frames were typed: the
        // names of existing records must not change.
        let stack = [
            "runtime.mapdelete_fast64 /usr/lib/go/src/runtime/map_fast64.go:301",
            "main.deleter /src/app/main.go:26",
            "main.main /src/app/main.go:50",
        ];
        let conflicting_stack = [
            "internal/runtime/maps.fatal /usr/lib/go/src/internal/runtime/maps/x.go:1",
            "main.assigner /src/app/main.go:38",
        ];
        let named = |stack: &[&str], conflicting_stack: &[&str]| {
            let stack: Vec<_> = stack.iter().map(|f| frame(f)).collect();
            let conflicting_stack: Vec<_> = conflicting_stack.iter().map(|f| frame(f)).collect();
            let pair = CallSitePair::new(
                Kind::ConcurrentWrite,
                Op::Delete,
                Op::Assign,
                &stack,
                &conflicting_stack,
            );
            (pair.object_name(), pair.site(), pair.conflicting_site())
        };
        assert_eq!(
            named(&stack, &conflicting_stack),
            (
                "concurrent-write-cd9d35eac08d7b70".to_owned(),
                "main.deleter main.go:26".to_owned(),
                Some("main.assigner main.go:38".to_owned())
            )
        );
        // One side only (a crash-path report).
        assert_eq!(
            named(&stack, &[]),
            (
                "concurrent-write-ab392a39a1bda025".to_owned(),
                "main.deleter main.go:26".to_owned(),
                None
            )
        );
        // Nothing symbolized, and no stack at all.
        assert_eq!(
            named(&["0x4a1b2c", "0x4a0000"], &[]),
            (
                "concurrent-write-1a6f1a2b79dbe29f".to_owned(),
                "0x4a1b2c".to_owned(),
                None
            )
        );
        assert_eq!(
            named(&[], &["0x4a1b2c"]),
            (
                "concurrent-write-c90c760483b6e558".to_owned(),
                "?".to_owned(),
                Some("0x4a1b2c".to_owned())
            )
        );
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        for (input, expected) in [
            ("", 0xcbf2_9ce4_8422_2325_u64),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut h = Fnv1a::new();
            h.write(input.as_bytes());
            assert_eq!(h.finish(), expected, "{input:?}");
        }
    }

    #[test]
    fn the_site_is_the_first_user_frame_shortened() {
        let stack = vec![
            "runtime.mapassign_fast64 /usr/lib/go/src/runtime/map_fast64.go:93".to_owned(),
            "internal/runtime/maps.fatal /usr/lib/go/src/internal/runtime/maps/x.go:1".to_owned(),
            "main.assigner /src/app/main.go:38".to_owned(),
            "main.main /src/app/main.go:50".to_owned(),
        ];
        assert_eq!(
            user_frame(&stack),
            Some("main.assigner /src/app/main.go:38")
        );
        assert_eq!(
            short_frame("main.assigner /src/app/main.go:38"),
            "main.assigner main.go:38"
        );
        assert_eq!(user_frame(&stack[..1]), Some(stack[0].as_str()));
        assert_eq!(user_frame(&[]), None);
        assert_eq!(short_frame("0x4a1b2c"), "0x4a1b2c");
    }
}
