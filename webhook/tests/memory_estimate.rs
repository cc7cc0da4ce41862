//! The memory estimate that admits a request (`Shape::memory_estimate`) is
//! an upper bound on what parsing and judging it really allocates, for the
//! shapes that cost the most per byte, in a Pod and in a controller's
//! template (which the engine unpacks into a second tree), created and
//! updated. Measured by counting every allocation of this test binary.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use mapguard_policy::{EngineConfig, Inventory, PolicySet, Review};
use mapguard_webhook::admission::review::parse;
use mapguard_webhook::admission::scan::{ShapeLimits, scan};
use serde_json::Value;
use support::*;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `n` copies of `item` as a JSON array.
fn array_of(item: &str, n: usize) -> String {
    format!("[{}]", vec![item; n].join(","))
}

/// The shapes: name and the JSON put into the reviewed object.
fn shapes() -> Vec<(&'static str, String)> {
    let members = |n: usize| {
        (0..n)
            .map(|k| format!("\"k{k}\":0"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let nested = format!("{}0{}", "{\"a\":".repeat(50), "}".repeat(50));
    vec![
        ("empty objects", array_of("{}", 40_000)),
        ("empty arrays", array_of("[]", 40_000)),
        ("zeros", array_of("0", 40_000)),
        ("empty strings", array_of("\"\"", 40_000)),
        ("objects of one member", array_of("{\"a\":0}", 20_000)),
        ("arrays of one element", array_of("[0]", 20_000)),
        (
            "objects of five members",
            array_of(&format!("{{{}}}", members(5)), 6_000),
        ),
        (
            "objects of twelve members",
            array_of(&format!("{{{}}}", members(12)), 3_000),
        ),
        (
            "one object of many members",
            format!("{{{}}}", members(40_000)),
        ),
        ("nested objects of one member", array_of(&nested, 400)),
        (
            "long strings",
            array_of(&format!("\"{}\"", "x".repeat(1000)), 1_000),
        ),
    ]
}

/// A review of `fixture` with `shape` at `pointer` of its object (and of
/// its old object when it has one).
fn review_with(fixture_name: &str, pointer: &str, shape: &str) -> Vec<u8> {
    const MARK: &str = "@shape@";
    let mut review = fixture_json(fixture_name);
    for object in ["object", "oldObject"] {
        if let Some(slot) = review["request"][object].pointer_mut(pointer) {
            slot["x"] = Value::from(MARK);
        }
    }
    serde_json::to_string(&review)
        .expect("serialize")
        .replace(&format!("\"{MARK}\""), shape)
        .into_bytes()
}

#[test]
fn the_estimate_bounds_what_parsing_and_judging_allocate() {
    let config = EngineConfig {
        eval_timeout: Some(Duration::from_secs(600)),
        ..EngineConfig::default()
    };
    let set = PolicySet::embedded(&config);
    let namespaces = namespace_data();
    let inventory = Inventory::default();
    let limits = ShapeLimits {
        max_values: usize::MAX,
        max_depth: 100,
    };
    let subjects = [
        ("Pod", "pod-plain-create", "/spec"),
        ("Pod update", "pod-update", "/spec"),
        (
            "Deployment",
            "deployment-kill-namespace-create",
            "/spec/template/spec",
        ),
        (
            "DaemonSet update",
            "daemonset-tamper-update",
            "/spec/template/spec",
        ),
    ];
    // Warm the engine of this thread, so that its one-time set-up is not
    // counted against the first shape.
    let warm = Review::new(fixture_json("pod-plain-create")).expect("a review");
    set.evaluate_with(&warm, &namespaces, &inventory, config.eval_timeout)
        .expect("warm-up evaluates");

    let mut report = Vec::new();
    for (subject, fixture_name, pointer) in subjects {
        for (name, shape) in shapes() {
            let body = review_with(fixture_name, pointer, &shape);
            let estimate = scan(&body, limits).expect("scans").memory_estimate();
            let before = LIVE.load(Relaxed);
            PEAK.store(before, Relaxed);
            let review = parse(&body, "uid").expect("parses");
            let decision = set.evaluate_with(&review, &namespaces, &inventory, config.eval_timeout);
            drop(review);
            let peak = PEAK.load(Relaxed) - before;
            if let Err(e) = decision {
                panic!("{subject} with {name}: evaluation failed: {e}");
            }
            report.push(format!(
                "{subject:16} {name:30} body {:>8} B  peak {:>10} B  estimate {:>10} B  ({:.2}x)",
                body.len(),
                peak,
                estimate,
                estimate as f64 / peak as f64
            ));
            assert!(
                peak <= estimate,
                "{subject} with {name}: {peak} bytes allocated, estimate {estimate}\n{}",
                report.join("\n")
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}
