//! mapguard-enforcer: runs Go programs under map-race enforcement, or
//! watches running ones.
//!
//! Run with (as root):
//!
//! ```text
//! mapguard-enforcer exec --mode kill -- ./server --port 8080
//! mapguard-enforcer exec --mode stop --events /var/log/mapguard.jsonl -- ./racy
//! mapguard-enforcer watch --mode audit --pid 1234,5678
//! mapguard-enforcer watch --mode kill --exe /usr/local/bin/server
//! mapguard-enforcer scan ./server
//! mapguard-enforcer daemon --node "$NODE_NAME" --ops-listen 0.0.0.0:9091
//! mapguard-enforcer respond --action evict --dry-run
//! ```

use std::io::IsTerminal as _;

use clap::Parser as _;
use mapguard_enforcer::{
    config::{Command, Config},
    daemon, exec, responder, target, watch,
};
use tracing_subscriber::EnvFilter;

fn main() {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log));
    // Colours only on a terminal: a container's log (`kubectl logs`) or a
    // file would otherwise carry the escape sequences.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result: anyhow::Result<i32> = match &config.command {
        Command::Exec(args) => exec::run(args).map_err(Into::into),
        Command::Watch(args) => watch::run(args).map_err(Into::into),
        Command::Scan(args) => {
            target::scan(&args.binary, args.json, args.read.limits()).map_err(Into::into)
        }
        Command::Daemon(args) => daemon::run(args).map_err(Into::into),
        Command::Respond(args) => responder::run(args).map_err(Into::into),
    };
    match result {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("mapguard-enforcer: error: {e:#}");
            std::process::exit(2);
        }
    }
}
