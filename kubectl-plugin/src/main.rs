//! `kubectl-mapguard`: the kubectl plugin of mapguard.
//!
//! Install by copying the binary onto PATH; kubectl then runs it as
//! `kubectl mapguard`. Run with:
//!
//! ```text
//! kubectl mapguard trace -A                                  # races as they happen
//! kubectl mapguard watch -n shop -o wide                     # records as they change
//! kubectl mapguard audit --context east,west -A              # records, by last seen
//! kubectl mapguard delete-audit --older-than 30d --dry-run   # what would be deleted
//! kubectl mapguard check -f deploy/                          # mapguard check
//! ```
//!
//! `RUST_LOG` sets the log filter (default `warn`, logs go to stderr).

use clap::Parser;

use kubectl_mapguard::{Config, run};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    mapguard_kube::telemetry::Telemetry::new("warn").init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(run(
        config,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    ));
    std::process::exit(status as i32);
}
