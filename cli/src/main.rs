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
use tracing_subscriber::EnvFilter;

use mapguard_cli::{Config, run};

fn main() {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let status = run(
        &config,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(status as i32);
}
