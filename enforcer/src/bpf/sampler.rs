//! Sampled coverage: a process's map-function probes are attached for an
//! on-window, then detached for an off time chosen so that their estimated
//! cost stays within a budget.
//!
//! The probes count their own hits (`MG_HITS`); the cost of a hit is known
//! (`SampleSettings::hit_cost`, measured by `make bench-enforcer`). At the
//! end of each on-window of length `L`, the share of the process's CPU time
//! the probes took while on is estimated:
//!
//! ```text
//! f = hits × hit_cost / (CPU time the process used during the window)
//! ```
//!
//! A service saturating its CPUs loses about that share of its throughput
//! while the probes are on. The duty cycle is `d = min(1, budget / f)`, so
//! the average cost is `d × f ≤ budget`, and the period is `P = L / d`
//! (off time `P − L`). A race that happens at least once in any `L` is
//! therefore caught within `P = L × f / budget`: with `f` = 30% (etcd under
//! full load), a 2% budget and 1 s windows, within 15 s. A process that
//! makes no map calls costs nothing and stays probed. A fixed period
//! (`--sample-period`) overrides the budget.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bpf::coverage::SampleSettings;

/// Off time is never longer than this, whatever the estimate (a sampled
/// process is looked at at least every ten minutes).
pub const MAX_OFF: Duration = Duration::from_secs(600);

/// What a sampled probe set offers the sampler.
pub trait Sampled {
    type Error;
    /// Attaches (`true`) or detaches the probes.
    fn set_enabled(&mut self, on: bool) -> Result<(), Self::Error>;
    /// Hits so far (monotonic while the set exists).
    fn hits(&self) -> u64;
    /// CPU time the probed process(es) used so far, if readable.
    fn cpu_time(&self) -> Option<Duration>;
}

/// The sampler's reading at the end of an on-window, and what it chose.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// Probe hits per second of the window.
    pub hits_per_second: f64,
    /// Estimated share of the process's CPU time the probes took while on.
    pub cost_while_on: f64,
    /// Share of the time the probes are on from now.
    pub duty_cycle: f64,
    /// On-window length.
    #[serde(serialize_with = "as_secs")]
    pub on: Duration,
    /// Window start to the next window start.
    #[serde(serialize_with = "as_secs")]
    pub period: Duration,
    /// `duty_cycle × cost_while_on`: the estimated average cost.
    pub estimated_cost: f64,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

enum State {
    On {
        since: Instant,
        hits: u64,
        cpu: Option<Duration>,
    },
    Off {
        until: Instant,
    },
}

/// The duty-cycle controller of one sampled probe set.
pub struct Sampler {
    settings: SampleSettings,
    state: State,
    last: Option<Estimate>,
    windows: u64,
    on_time: Duration,
    started: Instant,
}

impl Sampler {
    /// Starts with an on-window (the set was just attached, switched on).
    pub fn new(settings: SampleSettings, now: Instant, target: &impl Sampled) -> Sampler {
        Sampler {
            settings,
            state: State::On {
                since: now,
                hits: target.hits(),
                cpu: target.cpu_time(),
            },
            last: None,
            windows: 0,
            on_time: Duration::ZERO,
            started: now,
        }
    }

    /// Advances the schedule: closes an on-window whose time is up (returns
    /// the estimate it led to) or opens the next one.
    pub fn tick<T: Sampled>(
        &mut self,
        now: Instant,
        target: &mut T,
    ) -> Result<Option<Estimate>, T::Error> {
        match self.state {
            State::On { since, hits, cpu } if now.duration_since(since) >= self.settings.on => {
                let window = now.duration_since(since);
                let hits = target.hits().saturating_sub(hits);
                let cpu = match (cpu, target.cpu_time()) {
                    (Some(a), Some(b)) => b.checked_sub(a),
                    _ => None,
                };
                let estimate = self.estimate(window, hits, cpu);
                self.windows += 1;
                self.on_time += window;
                let off = estimate.period.saturating_sub(estimate.on);
                if !off.is_zero() {
                    target.set_enabled(false)?;
                    self.state = State::Off { until: now + off };
                } else {
                    self.state = State::On {
                        since: now,
                        hits: target.hits(),
                        cpu: target.cpu_time(),
                    };
                }
                self.last = Some(estimate);
                Ok(Some(estimate))
            }
            State::Off { until } if now >= until => {
                target.set_enabled(true)?;
                self.state = State::On {
                    since: now,
                    hits: target.hits(),
                    cpu: target.cpu_time(),
                };
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// The duty cycle for a window of `window` with `hits` probe hits while
    /// the process used `cpu` of CPU time.
    fn estimate(&self, window: Duration, hits: u64, cpu: Option<Duration>) -> Estimate {
        let s = &self.settings;
        let probe_time = hits as f64 * s.hit_cost.as_secs_f64();
        // Below a few clock ticks the CPU reading says little: relate the
        // probes' time to the window (one CPU) instead.
        let denominator = match cpu {
            Some(c) if c >= Duration::from_millis(30) => c.as_secs_f64(),
            _ => window.as_secs_f64(),
        };
        let cost_while_on = (probe_time / denominator).clamp(0.0, 1.0);
        let on = s.on;
        let period = match s.period {
            Some(p) => p.max(on),
            None if cost_while_on <= s.budget => on,
            None => on.mul_f64(cost_while_on / s.budget),
        }
        .min(on + MAX_OFF);
        let duty_cycle = on.as_secs_f64() / period.as_secs_f64();
        Estimate {
            hits_per_second: hits as f64 / window.as_secs_f64(),
            cost_while_on,
            duty_cycle,
            on,
            period,
            estimated_cost: duty_cycle * cost_while_on,
        }
    }

    /// The latest estimate.
    pub fn last(&self) -> Option<Estimate> {
        self.last
    }

    /// Whether the probes are on now.
    pub fn is_on(&self) -> bool {
        matches!(self.state, State::On { .. })
    }

    /// Closed on-windows so far.
    pub fn windows(&self) -> u64 {
        self.windows
    }

    /// Share of the time since the start the probes were on, the open
    /// window included: the fraction of a steady process's map operations
    /// that sampled coverage observes (what the node agent scales the
    /// observed operations by).
    pub fn observed_fraction(&self, now: Instant) -> f64 {
        let open = match self.state {
            State::On { since, .. } => now.saturating_duration_since(since),
            State::Off { .. } => Duration::ZERO,
        };
        let total = now.saturating_duration_since(self.started).as_secs_f64();
        if total <= 0.0 {
            1.0
        } else {
            ((self.on_time + open).as_secs_f64() / total).min(1.0)
        }
    }

    /// Share of the time since the start the probes were on (closed
    /// windows only).
    pub fn measured_duty(&self, now: Instant) -> f64 {
        let total = now.duration_since(self.started).as_secs_f64();
        if total == 0.0 {
            1.0
        } else {
            (self.on_time.as_secs_f64() / total).min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe set whose hits and CPU time grow at fixed rates while on.
    struct Fake {
        on: bool,
        hits: u64,
        cpu: Duration,
        toggles: u32,
    }

    impl Sampled for Fake {
        type Error = ();
        fn set_enabled(&mut self, on: bool) -> Result<(), ()> {
            self.on = on;
            self.toggles += 1;
            Ok(())
        }
        fn hits(&self) -> u64 {
            self.hits
        }
        fn cpu_time(&self) -> Option<Duration> {
            Some(self.cpu)
        }
    }

    /// Runs `secs` of simulated time in 10 ms steps: the process uses two
    /// CPUs and, while probed, makes `rate` probe hits per second.
    fn run(settings: SampleSettings, rate: u64, secs: u64) -> (Sampler, Fake, Instant) {
        let mut t = Instant::now();
        let mut fake = Fake {
            on: true,
            hits: 0,
            cpu: Duration::ZERO,
            toggles: 0,
        };
        let mut sampler = Sampler::new(settings, t, &fake);
        for _ in 0..secs * 100 {
            t += Duration::from_millis(10);
            fake.cpu += Duration::from_millis(20);
            if fake.on {
                fake.hits += rate / 100;
            }
            sampler.tick(t, &mut fake).expect("tick");
        }
        (sampler, fake, t)
    }

    #[test]
    fn the_duty_cycle_keeps_the_estimated_cost_within_the_budget() {
        // 600k hits/s × 1 µs = 0.6 CPU-s/s of 2 CPUs: 30% while on.
        let settings = SampleSettings::default();
        let (sampler, fake, end) = run(settings, 600_000, 120);
        let e = sampler.last().expect("an estimate");
        assert!((e.cost_while_on - 0.30).abs() < 0.01, "{e:?}");
        assert!((e.duty_cycle - 0.02 / 0.30).abs() < 0.005, "{e:?}");
        assert!((e.period.as_secs_f64() - 15.0).abs() < 0.2, "{e:?}");
        assert!(e.estimated_cost <= 0.0201, "{e:?}");
        // Measured over the run, the probes were on about that share.
        let duty = sampler.measured_duty(end);
        assert!((0.05..0.09).contains(&duty), "measured duty {duty}");
        assert!(fake.toggles >= 14, "switched off and on every period");
    }

    #[test]
    fn the_observed_fraction_scales_the_hits_back_to_every_operation() {
        // A fixed 10% duty cycle: the hits seen, divided by the fraction
        // observed, give the operations of the whole run (counting the
        // window still open, which measured_duty leaves out).
        let settings = SampleSettings {
            on: Duration::from_millis(200),
            period: Some(Duration::from_secs(2)),
            ..SampleSettings::default()
        };
        let (sampler, fake, end) = run(settings, 100_000, 11);
        let fraction = sampler.observed_fraction(end);
        assert!(
            (fraction - 0.1).abs() < 0.02,
            "observed fraction {fraction}"
        );
        let estimated = fake.hits as f64 / fraction;
        let actual = 100_000.0 * 11.0;
        assert!(
            (estimated / actual - 1.0).abs() < 0.05,
            "{estimated} estimated for {actual} operations"
        );
        assert!(fraction >= sampler.measured_duty(end));
    }

    #[test]
    fn a_cheap_process_stays_probed() {
        // 10k hits/s × 1 µs = 0.5% of its CPU: under the budget.
        let (sampler, fake, end) = run(SampleSettings::default(), 10_000, 10);
        let e = sampler.last().expect("an estimate");
        assert_eq!(e.duty_cycle, 1.0, "{e:?}");
        assert_eq!(fake.toggles, 0, "never switched off");
        assert!(sampler.measured_duty(end) > 0.85);
    }

    #[test]
    fn a_fixed_period_overrides_the_budget() {
        let settings = SampleSettings {
            on: Duration::from_millis(200),
            period: Some(Duration::from_secs(2)),
            ..SampleSettings::default()
        };
        let (sampler, _, _) = run(settings, 600_000, 10);
        let e = sampler.last().expect("an estimate");
        assert_eq!(e.period, Duration::from_secs(2));
        assert!((e.duty_cycle - 0.1).abs() < 1e-9);
    }

    #[test]
    fn the_off_time_is_bounded() {
        let settings = SampleSettings {
            budget: 0.0001,
            ..SampleSettings::default()
        };
        let (sampler, _, _) = run(settings, 2_000_000, 5);
        let e = sampler.last().expect("an estimate");
        assert_eq!(e.period, settings.on + MAX_OFF);
    }
}
