//! What each [`Coverage`] (`mapguard_api::mode`) probes in a process, and the
//! settings of `sampled`. Coverage is a property of each enforced process
//! (the node agent takes it from the Pod's `mapguard.io/coverage`),
//! independent of the action taken (`audit|stop|kill`).
//!
//! - `full`: every map operation, all the time.
//! - `writes`: the map writes (assign, delete, clear, grow), all the time:
//!   most real services read maps far more often than they write them.
//! - `sampled`: every map operation during on-windows, nothing in between;
//!   the off time is chosen per process so that the probes' estimated cost
//!   stays within a budget ([`crate::bpf::sampler`]).
//! - `light`: only the runtime's crash paths, which a healthy process never
//!   reaches: zero cost, and a race the runtime itself notices is still
//!   reported, with the goroutine and call site that saw it, and stopped or
//!   killed before the runtime prints.

use std::time::Duration;

use mapguard_api::mode::Coverage;

use crate::bpf::loader::Probes;

/// Which map functions `coverage` probes (all or part of the time), if any.
pub fn map_probes(coverage: Coverage) -> Option<Probes> {
    match coverage {
        Coverage::Full | Coverage::Sampled => Some(Probes::MapOps),
        Coverage::Writes => Some(Probes::Writes),
        Coverage::Light => None,
    }
}

/// How `sampled` coverage picks its windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleSettings {
    /// Length of each on-window.
    pub on: Duration,
    /// What the probes may cost, as a fraction of the process's CPU time.
    pub budget: f64,
    /// A fixed period instead of one derived from the budget.
    pub period: Option<Duration>,
    /// Estimated cost of one probe hit (trap plus BPF program).
    pub hit_cost: Duration,
}

impl Default for SampleSettings {
    fn default() -> SampleSettings {
        SampleSettings {
            on: Duration::from_secs(1),
            budget: 0.02,
            period: None,
            hit_cost: Duration::from_nanos(DEFAULT_HIT_COST_NS),
        }
    }
}

/// Cost of one probe hit under mapguard, as `make bench-enforcer` measures
/// it on this project's 2-core machine kind: about 0.7 µs for the kernel's
/// trap and 0.35 µs for mapguard's program. `--hit-cost` sets another.
pub const DEFAULT_HIT_COST_NS: u64 = 1_000;

/// Parses `2%`, `2` (percent) or `0.02` (a fraction, when below 1 and
/// written with a point) into a fraction of 1.
pub fn parse_budget(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, percent) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (t, false),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a budget such as 2% or 0.02"))?;
    let fraction = if percent || v >= 1.0 { v / 100.0 } else { v };
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(format!(
            "{text:?}: a budget is between 0% (exclusive) and 100%"
        ));
    }
    Ok(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!(parse_budget("2%"), Ok(0.02));
        assert_eq!(parse_budget("5"), Ok(0.05));
        assert_eq!(parse_budget("0.02"), Ok(0.02));
        assert!(parse_budget("0%").is_err());
        assert!(parse_budget("150%").is_err());
        assert!(parse_budget("two").is_err());
    }

    #[test]
    fn each_coverage_probes_its_map_functions() {
        assert_eq!(
            Coverage::ALL.map(map_probes),
            [
                Some(Probes::MapOps),
                Some(Probes::Writes),
                Some(Probes::MapOps),
                None
            ]
        );
    }
}
