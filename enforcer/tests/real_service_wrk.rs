//! The real-service benchmark's reading of wrk reports and its pacing
//! (`benches/real_service/wrk.rs`), checked where `make test` runs them:
//! the benchmark itself needs wrk and the services (`make bench-deps`).

#[path = "../benches/real_service/wrk.rs"]
#[allow(dead_code)]
mod wrk;

use wrk::{pace_interval_ms, parse};

/// A report of Debian's wrk 4.1.0 under `tests/bench/get.lua`.
const REPORT: &str = "Running 2s test @ http://127.0.0.1:18777/
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.40ms    8.12ms  61.69ms   88.05%
    Req/Sec   187.25     49.86   282.00     80.00%
  Latency Distribution
     50%    2.26ms
     75%    5.11ms
     90%   14.77ms
     99%   39.28ms
  753 requests in 2.02s, 8.30MB read
Requests/sec:    372.98
Transfer/sec:      4.11MB
";

#[test]
fn a_report_gives_requests_throughput_and_latencies() {
    let r = parse(REPORT).expect("parses");
    assert_eq!(r.requests, 753);
    assert!((r.requests_per_sec - 372.98).abs() < 1e-9);
    assert!((r.p99_ms - 39.28).abs() < 1e-9);
    assert!((r.mean_ms - 5.40).abs() < 1e-9);
    let micro = REPORT.replace("5.40ms", "812.00us");
    assert!((parse(&micro).expect("parses").mean_ms - 0.812).abs() < 1e-9);
}

#[test]
fn a_report_with_errors_is_refused() {
    let errors = REPORT.replace(
        "Requests/sec:",
        "  Non-2xx or 3xx responses: 3\nRequests/sec:",
    );
    assert!(parse(&errors).is_err());
    let no_latency = REPORT.replace("    Latency     5.40ms", "    Latncy     5.40ms");
    assert!(parse(&no_latency).is_err());
}

#[test]
fn the_pace_allows_for_the_latency() {
    // 16 connections at 1,000 req/s: one request per 16 ms each, of
    // which 2.5 ms are spent waiting for the answer.
    assert!((pace_interval_ms(1000.0, 16, 2.5) - 13.5).abs() < 1e-9);
    assert!((pace_interval_ms(1000.0, 16, 0.0) - 16.0).abs() < 1e-9);
    // A latency longer than the period: no wait at all.
    assert_eq!(pace_interval_ms(1000.0, 4, 9.0), 0.0);
}
