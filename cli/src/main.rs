//! `mapguard`: the CI command.
//!
//! Run with:
//!
//! ```text
//! mapguard check -f deploy/ --namespaces namespaces.yaml      # exit 1 on any deny
//! mapguard check -f app.yaml --policies policies/ -o json
//! mapguard policy test policies/                              # Rego test_ rules
//! ```
//!
//! `RUST_LOG` sets the log filter (default `warn`, logs go to stderr).

use clap::Parser;

use mapguard_cli::{Config, run};

fn main() {
    let config = Config::parse();
    mapguard_kube::telemetry::Telemetry::new("warn").init();
    let status = run(
        &config,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(status as i32);
}
