//! `mapguard policy test`: the Rego test runner, and Gatekeeper's
//! `gator verify` suites.

use std::io::Write;

use mapguard_policy::gatekeeper::suite::{self, Outcome};
use mapguard_policy::{EngineConfig, PolicySet};

use crate::config::TestArgs;
use crate::{CliError, ExitStatus};

/// Runs every `test_` rule of the `*.rego` files under `args.dir` and every
/// `Suite` (`suite.yaml`) found there; prints `PASS`/`FAIL`/`SKIP` lines and
/// `N passed, N failed[, N skipped]`; exit 1 on any failure or when there
/// is nothing to run.
pub fn run(args: &TestArgs, out: &mut dyn Write) -> Result<ExitStatus, CliError> {
    let mut passed = 0;
    let mut failed = 0;
    let mut skipped = 0;
    let mut print = |out: &mut dyn Write,
                     name: &str,
                     at: &str,
                     ms: f64,
                     failure: Option<&str>|
     -> std::io::Result<()> {
        let timing = if args.verbose {
            format!(" {ms:.1} ms")
        } else {
            String::new()
        };
        match failure {
            None => {
                passed += 1;
                writeln!(out, "PASS {name} ({at}){timing}")
            }
            Some(why) => {
                failed += 1;
                writeln!(out, "FAIL {name} ({at}): {why}")
            }
        }
    };

    if let Some(set) = PolicySet::load_rego_dir(&args.dir, &EngineConfig::default())? {
        let report = set.run_tests();
        for r in &report.results {
            let ms = r.duration.as_secs_f64() * 1e3;
            print(out, &r.name, &r.path, ms, r.failure.as_deref())?;
        }
    }
    let suites = suite::find_suites(&args.dir).map_err(|e| CliError::Suite(e.to_string()))?;
    for path in &suites {
        let at = path.display().to_string();
        match suite::run_suite(path) {
            Err(e) => print(out, &at, &at, 0.0, Some(&e.to_string()))?,
            Ok(results) => {
                for r in results {
                    let ms = r.duration.as_secs_f64() * 1e3;
                    match &r.outcome {
                        Outcome::Pass => print(out, &r.name, &at, ms, None)?,
                        Outcome::Fail(why) => print(out, &r.name, &at, ms, Some(why))?,
                        Outcome::Skip(why) => {
                            skipped += 1;
                            writeln!(out, "SKIP {} ({at}): {why}", r.name)?;
                        }
                    }
                }
            }
        }
    }
    if skipped > 0 {
        writeln!(out, "{passed} passed, {failed} failed, {skipped} skipped")?;
    } else {
        writeln!(out, "{passed} passed, {failed} failed")?;
    }
    if passed + failed == 0 {
        tracing::error!(dir = %args.dir.display(), "no test_ rules or Gatekeeper suites found");
        return Ok(ExitStatus::Failed);
    }
    Ok(if failed == 0 {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
}
