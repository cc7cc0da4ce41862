//! Driving a service with `wrk` (Debian's package) and reading its report.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What to send: a URL, and a Lua script that builds the requests if the
/// load is not a plain GET of the URL.
pub struct Load {
    pub url: String,
    pub script: Option<PathBuf>,
    /// Arguments after `--`, passed to the script's `init`.
    pub script_args: Vec<String>,
}

/// How hard to push: `wrk -t THREADS -c CONNECTIONS`.
#[derive(Clone, Copy)]
pub struct Pressure {
    pub threads: u32,
    pub connections: u32,
}

/// The figures of one `wrk` run.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p99_ms: f64,
    /// Mean latency.
    pub mean_ms: f64,
}

/// Runs `wrk` for `secs` seconds; fails if it reports any socket error or
/// any response outside 2xx/3xx (a service that errors is not measured).
pub fn run(load: &Load, pressure: Pressure, secs: u64) -> Result<Report> {
    let mut cmd = Command::new("wrk");
    cmd.arg("-t")
        .arg(pressure.threads.to_string())
        .arg("-c")
        .arg(pressure.connections.to_string())
        .arg("-d")
        .arg(format!("{secs}s"))
        .arg("--latency");
    if let Some(script) = &load.script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(&load.url);
    if !load.script_args.is_empty() {
        cmd.arg("--").args(&load.script_args);
    }
    let out = cmd
        .output()
        .context("run wrk (install it with .ci/install-bench.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    // A script that does not load is reported on stderr, and wrk then goes
    // on with plain GETs of the URL: any message there fails the run.
    if !out.status.success() || !errors.trim().is_empty() {
        bail!(
            "wrk ended with {}: {}\n{}",
            out.status,
            errors.trim(),
            text.trim()
        );
    }
    parse(&text).with_context(|| format!("wrk's report:\n{text}"))
}

/// Reads wrk 4's `--latency` report.
pub fn parse(text: &str) -> Result<Report> {
    let mut requests = None;
    let mut requests_per_sec = None;
    let mut p99_ms = None;
    let mut mean_ms = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => requests_per_sec = Some(v.parse::<f64>()?),
            // Thread Stats: Avg, Stdev, Max, +/- Stdev.
            ["Latency", avg, _, _, _] => mean_ms = Some(duration_ms(avg)?),
            ["99%", v] => p99_ms = Some(duration_ms(v)?),
            [n, "requests", "in", ..] => requests = Some(n.parse::<u64>()?),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                bail!("{n} responses were not 2xx or 3xx")
            }
            ["Socket", "errors:", ..] => bail!("{line}"),
            _ => {}
        }
    }
    let report = Report {
        requests: requests.context("no 'N requests in' line")?,
        requests_per_sec: requests_per_sec.context("no 'Requests/sec:' line")?,
        p99_ms: p99_ms.context("no '99%' latency line (--latency)")?,
        mean_ms: mean_ms.context("no 'Latency' line of thread stats")?,
    };
    if report.requests == 0 {
        bail!("no request completed");
    }
    Ok(report)
}

/// `812.00us`, `9.48ms`, `1.23s`, `2.00m` in milliseconds.
fn duration_ms(v: &str) -> Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {v:?}"))?;
    let (number, unit) = v.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad number {v:?}"))?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => bail!("unknown unit in {v:?}"),
    };
    Ok(number * scale)
}

/// What a connection waits on average before each request so that
/// `connections` of them offer `rate` requests per second to a service
/// that answers in `latency_ms` (the scripts' INTERVAL_MS, see
/// `tests/bench/pace.lua`); 0 if the latency alone exceeds the period.
pub fn pace_interval_ms(rate: f64, connections: u32, latency_ms: f64) -> f64 {
    (f64::from(connections) * 1000.0 / rate - latency_ms).max(0.0)
}
