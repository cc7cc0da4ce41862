//! The identity of a violation: its call-site pair (its kind, both
//! operations and the first user frame of each stack), and the name of the
//! `MapViolation` record derived from it.
//!
//! Two violations are the same record when they have the same pair in the
//! same namespace, whichever Pod, process or goroutines they came from: a
//! crash-looping Pod or a Deployment's replicas add to one record's count.
//! The reporter's audit-mode deduplication, the records, the Pod Events and
//! the metrics all read the one pair each violation carries.

use crate::frame::{Frame, is_runtime_function};
use crate::resource::MapViolationSpec;
use crate::vocab::{Kind, Op};

/// Kind, operations and user call sites of a violation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallSitePair {
    pub kind: Kind,
    pub op: Op,
    pub conflicting_op: Op,
    /// First frame outside the Go runtime of the reporting goroutine's
    /// stack; `None` when that stack is empty.
    pub frame: Option<Frame>,
    /// The same for the other goroutine; `None` when the other side is
    /// not on record (a crash-path report).
    pub conflicting_frame: Option<Frame>,
}

impl CallSitePair {
    /// The pair of a violation: its kind, both operations and both
    /// symbolized stacks (innermost first). The reporter computes it once
    /// per violation.
    pub fn new(
        kind: Kind,
        op: Op,
        conflicting_op: Op,
        stack: &[Frame],
        conflicting_stack: &[Frame],
    ) -> CallSitePair {
        CallSitePair {
            kind,
            op,
            conflicting_op,
            frame: user_frame(stack, Frame::is_runtime).cloned(),
            conflicting_frame: user_frame(conflicting_stack, Frame::is_runtime).cloned(),
        }
    }

    /// The record's object name: the kind and a stable 64-bit hash of the
    /// pair, e.g. `concurrent-write-5be1c0f2a3d4e697` (a DNS label, the
    /// same on every node and across restarts). The frames enter as their
    /// text, a missing reporting frame as `?`.
    pub fn object_name(&self) -> String {
        let text = |frame: &Option<Frame>, missing: &str| {
            frame
                .as_ref()
                .map_or_else(|| missing.to_owned(), Frame::to_string)
        };
        let mut hash = Fnv1a::new();
        for part in [
            self.kind.as_str(),
            self.op.as_str(),
            self.conflicting_op.as_str(),
            &text(&self.frame, "?"),
            &text(&self.conflicting_frame, ""),
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
    /// messages), `?` when its stack is empty.
    pub fn site(&self) -> String {
        self.frame
            .as_ref()
            .map_or_else(|| "?".to_owned(), Frame::short)
    }

    /// The same for the other side, if on record.
    pub fn conflicting_site(&self) -> Option<String> {
        self.conflicting_frame.as_ref().map(Frame::short)
    }

    /// The spec a record of this pair has, with the stacks of one
    /// occurrence (written as text: the resource's contract).
    pub fn spec(&self, stack: &[Frame], conflicting_stack: &[Frame]) -> MapViolationSpec {
        let text = |stack: &[Frame]| stack.iter().map(Frame::to_string).collect();
        MapViolationSpec {
            kind: self.kind.as_str().to_owned(),
            op: self.op.as_str().to_owned(),
            conflicting_op: self.conflicting_op.as_str().to_owned(),
            site: self.site(),
            conflicting_site: self.conflicting_site(),
            stack: text(stack),
            conflicting_stack: text(conflicting_stack),
        }
    }

    /// Whether `spec` stands for this pair (what the object's name says):
    /// the words and both user frames. A record edited by hand fails this.
    pub fn is_pair_of(&self, spec: &MapViolationSpec) -> bool {
        // The record's stacks are text; a frame's text starts with its function.
        let user_text = |stack: &[String]| {
            user_frame(stack, |text: &String| is_runtime_function(text)).cloned()
        };
        let text = |frame: &Option<Frame>| frame.as_ref().map(Frame::to_string);
        spec.kind == self.kind.as_str()
            && spec.op == self.op.as_str()
            && spec.conflicting_op == self.conflicting_op.as_str()
            && spec.site == self.site()
            && spec.conflicting_site == self.conflicting_site()
            && user_text(&spec.stack) == text(&self.frame)
            && user_text(&spec.conflicting_stack) == text(&self.conflicting_frame)
    }
}

/// First frame of a stack outside the Go runtime (the user's call site),
/// or the innermost one; `None` for an empty stack.
fn user_frame<F>(stack: &[F], is_runtime: impl Fn(&F) -> bool) -> Option<&F> {
    stack.iter().find(|f| !is_runtime(f)).or(stack.first())
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

    fn frame(text: &str) -> Frame {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn pair(frame: &str, other: Option<&str>) -> CallSitePair {
        CallSitePair {
            kind: Kind::ConcurrentWrite,
            op: Op::Assign,
            conflicting_op: Op::Delete,
            frame: Some(super::tests::frame(frame)),
            conflicting_frame: other.map(super::tests::frame),
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
            pair("f /a.go:1", Some("2g /b.go:3")).object_name(),
            pair("f /a.go:12", Some("g /b.go:3")).object_name()
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
        let stack = [
            "runtime.mapassign_fast64 /usr/lib/go/src/runtime/map_fast64.go:93",
            "internal/runtime/maps.fatal /usr/lib/go/src/internal/runtime/maps/x.go:1",
            "main.assigner /src/app/main.go:38",
            "main.main /src/app/main.go:50",
        ]
        .map(frame);
        let pair = |stack: &[Frame]| {
            CallSitePair::new(Kind::ConcurrentWrite, Op::Assign, Op::Delete, stack, stack)
        };
        let user = pair(&stack);
        assert_eq!(user.frame, Some(stack[2].clone()));
        assert_eq!(user.site(), "main.assigner main.go:38");
        assert_eq!(
            user.conflicting_site().as_deref(),
            Some("main.assigner main.go:38")
        );
        // Only the runtime on the stack: its innermost frame.
        assert_eq!(pair(&stack[..1]).frame, Some(stack[0].clone()));
        assert_eq!(pair(&[]).frame, None);
        assert_eq!(pair(&[]).site(), "?");
        assert_eq!(pair(&[Frame::Address(0x4a_1b2c)]).site(), "0x4a1b2c");
    }

    #[test]
    fn a_record_of_the_pair_is_its_pair() {
        let stack = [
            "runtime.mapdelete_fast64 /usr/lib/go/src/runtime/map_fast64.go:301",
            "main.deleter /src/app/main.go:26",
        ]
        .map(frame);
        let other = [frame("main.assigner /src/app/main.go:38")];
        let pair = CallSitePair::new(
            Kind::ConcurrentWrite,
            Op::Delete,
            Op::Assign,
            &stack,
            &other,
        );
        let spec = pair.spec(&stack, &other);
        assert_eq!(spec.stack[1], "main.deleter /src/app/main.go:26");
        assert_eq!(
            spec.conflicting_stack,
            ["main.assigner /src/app/main.go:38"]
        );
        assert!(pair.is_pair_of(&spec));
        let mut edited = spec.clone();
        edited.stack[1] = "main.deleter /src/app/main.go:27".to_owned();
        assert!(!pair.is_pair_of(&edited));
        let one_sided = CallSitePair::new(Kind::ConcurrentWrite, Op::Delete, Op::Assign, &[], &[]);
        assert!(one_sided.is_pair_of(&one_sided.spec(&[], &[])));
        assert!(!one_sided.is_pair_of(&spec));
    }
}
