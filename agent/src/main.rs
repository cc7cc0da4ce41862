//! mapguard-agent: the node agent of the DaemonSet, and the responder.
//!
//! Run with (as root, for the node agent):
//!
//! ```text
//! mapguard-agent daemon --node "$NODE_NAME" --ops-listen 0.0.0.0:9091
//! mapguard-agent respond --action evict --dry-run
//! ```

use clap::Parser as _;
use mapguard_agent::{
    config::{Command, Config},
    daemon, responder,
};

fn main() {
    let config = Config::parse();
    // Colours only on a terminal: a container's log (`kubectl logs`) or a
    // file would otherwise carry the escape sequences.
    mapguard_kube::telemetry::Telemetry::new(&config.log).init();
    let result: anyhow::Result<i32> = match &config.command {
        Command::Daemon(args) => daemon::run(args).map_err(Into::into),
        Command::Respond(args) => responder::run(args).map_err(Into::into),
    };
    match result {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("mapguard-agent: error: {e:#}");
            std::process::exit(2);
        }
    }
}
