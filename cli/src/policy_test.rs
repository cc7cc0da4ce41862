//! `mapguard policy test`: the Rego test runner.

use std::io::Write;

use mapguard_policy::EngineConfig;

use crate::check::load_policies;
use crate::config::TestArgs;
use crate::{CliError, ExitStatus};

/// Runs every `test_` rule under `args.dir`, prints `PASS`/`FAIL` lines and
/// `N passed, N failed`; exit 1 on any failure or when there are no tests.
pub fn run(args: &TestArgs, out: &mut dyn Write) -> Result<ExitStatus, CliError> {
    let set = load_policies(Some(&args.dir), &EngineConfig::default())?;
    let report = set.run_tests();
    for result in &report.results {
        match &result.failure {
            None if args.verbose => writeln!(
                out,
                "PASS {} ({}) {:.1} ms",
                result.name,
                result.path,
                result.duration.as_secs_f64() * 1e3
            )?,
            None => writeln!(out, "PASS {} ({})", result.name, result.path)?,
            Some(why) => writeln!(out, "FAIL {} ({}): {why}", result.name, result.path)?,
        }
    }
    writeln!(
        out,
        "{} passed, {} failed",
        report.passed(),
        report.failed()
    )?;
    if report.results.is_empty() {
        tracing::error!(dir = %args.dir.display(), "no test_ rules found");
        return Ok(ExitStatus::Failed);
    }
    Ok(if report.success() {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
}
