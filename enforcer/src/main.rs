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
//! ```

use clap::Parser as _;
use mapguard_enforcer::{
    binary::target,
    config::{Command, Config},
    exec, watch,
};

fn main() {
    let config = Config::parse();
    // Colours only on a terminal: a container's log (`kubectl logs`) or a
    // file would otherwise carry the escape sequences.
    mapguard_kube::telemetry::Telemetry::new(&config.log).init();
    let result: anyhow::Result<i32> = match &config.command {
        Command::Exec(args) => exec::run(args).map_err(Into::into),
        Command::Watch(args) => watch::run(args).map_err(Into::into),
        Command::Scan(args) => {
            target::scan(&args.binary, args.json, args.read.limits()).map_err(Into::into)
        }
    };
    match result {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("mapguard-enforcer: error: {e:#}");
            std::process::exit(2);
        }
    }
}
