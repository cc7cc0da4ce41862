//! `mapguard check`: judge manifests with the same engine as the webhook.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mapguard_policy::{
    Decision, EngineConfig, Finding, Inventory, NamespaceData, PolicySet, Review, Subject,
};
use serde::Serialize;
use serde_json::Value as Json;

use crate::config::{CheckArgs, Output};
use crate::manifests::{self, Manifest};
use crate::review::create_review;
use crate::{CliError, ExitStatus};

/// The verdict on one object of one file.
#[derive(Debug, Serialize)]
pub struct ObjectResult {
    pub file: PathBuf,
    pub document: usize,
    pub subject: Subject,
    pub allowed: bool,
    pub exempt: bool,
    pub denials: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub dry_run: Vec<Finding>,
    pub patch: Vec<Json>,
}

/// Counts over all objects.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub objects: usize,
    pub denied: usize,
    pub warnings: usize,
    pub patched: usize,
    pub dry_run: usize,
    pub exempt: usize,
}

/// What `check -o json` prints.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub results: Vec<ObjectResult>,
    pub summary: Summary,
}

/// Default time limit per object in CI: the webhook's tight default (the
/// API server is waiting) would make a check on a loaded runner flaky.
const CI_EVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine configuration: the file's (or the defaults), then the flags.
pub fn engine_config(args: &CheckArgs) -> Result<EngineConfig, CliError> {
    let mut config = EngineConfig {
        eval_timeout: Some(CI_EVAL_TIMEOUT),
        ..EngineConfig::default()
    };
    if let Some(path) = &args.engine_config {
        config = config.with_file(path)?;
    }
    if let Some(ms) = args.eval_timeout_ms {
        config.eval_timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if !args.exempt_namespaces.is_empty() {
        config.exempt_namespaces = args.exempt_namespaces.clone();
    }
    config
        .enforcement_overrides
        .extend(args.enforcement.iter().cloned());
    Ok(config)
}

/// Compiles the policies of `dir`, or the embedded defaults.
pub fn load_policies(dir: Option<&Path>, config: &EngineConfig) -> Result<PolicySet, CliError> {
    Ok(match dir {
        Some(dir) => PolicySet::load_dir(dir, config)?,
        None => PolicySet::embedded(config),
    })
}

/// Judges every object of `args.files`.
pub fn check(args: &CheckArgs) -> Result<CheckReport, CliError> {
    let set = load_policies(args.policies.as_deref(), &engine_config(args)?)?;
    let mut manifests: Vec<Manifest> = Vec::new();
    for file in manifests::expand(&args.files)? {
        manifests.extend(manifests::read_file(&file)?);
    }
    let mut namespaces = match &args.namespaces {
        Some(path) => NamespaceData::from_file(path)?,
        None => NamespaceData::new(),
    };
    // Namespaces applied together with the workloads count too.
    for manifest in &manifests {
        if manifest.object.get("kind").and_then(Json::as_str) == Some("Namespace") {
            namespaces.upsert(&manifest.object).map_err(|e| {
                CliError::Manifest(manifests::ManifestError::NotAnObject {
                    path: manifest.file.clone(),
                    document: manifest.document,
                    reason: e.to_string(),
                })
            })?;
        }
    }
    tracing::debug!(
        objects = manifests.len(),
        namespaces = namespaces.len(),
        "checking"
    );

    let reviews: Vec<Review> = manifests
        .iter()
        .enumerate()
        .map(|(index, manifest)| {
            let json = create_review(
                &manifest.object,
                &args.namespace,
                &format!("mapguard-ci-{index}"),
            );
            Review::new(json).map_err(|e| CliError::Eval {
                file: manifest.file.clone(),
                document: manifest.document,
                source: e.into(),
            })
        })
        .collect::<Result<_, _>>()?;
    // Referential Gatekeeper templates see the manifests being checked (and
    // the namespaces of --namespaces) as the cluster's objects
    // (`data.inventory`), namespaces filled in.
    let namespace_objects = namespaces.objects();
    let inventory = Inventory::from_objects(
        namespace_objects
            .iter()
            .chain(reviews.iter().filter_map(Review::object)),
    );

    let mut results = Vec::with_capacity(manifests.len());
    let mut summary = Summary::default();
    for (manifest, review) in manifests.into_iter().zip(&reviews) {
        let decision: Decision = set
            .evaluate_with(review, &namespaces, &inventory, set.config().eval_timeout)
            .map_err(|source| CliError::Eval {
                file: manifest.file.clone(),
                document: manifest.document,
                source,
            })?;
        summary.objects += 1;
        summary.denied += usize::from(!decision.allowed);
        summary.warnings += decision.warnings.len();
        summary.patched += usize::from(!decision.patch.is_empty());
        summary.dry_run += decision.dry_run.len();
        summary.exempt += usize::from(decision.exempt);
        results.push(ObjectResult {
            file: manifest.file,
            document: manifest.document,
            subject: decision.subject,
            allowed: decision.allowed,
            exempt: decision.exempt,
            denials: decision.denials,
            warnings: decision.warnings,
            dry_run: decision.dry_run,
            patch: decision.patch,
        });
    }
    Ok(CheckReport { results, summary })
}

/// Runs `check` and prints its report; exit 1 on any deny.
pub fn run(args: &CheckArgs, out: &mut dyn Write) -> Result<ExitStatus, CliError> {
    let report = check(args)?;
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::other)?;
            writeln!(out)?;
        }
        Output::Text => print_text(&report, out)?,
    }
    Ok(if report.summary.denied > 0 {
        ExitStatus::Failed
    } else {
        ExitStatus::Ok
    })
}

fn print_text(report: &CheckReport, out: &mut dyn Write) -> std::io::Result<()> {
    for result in &report.results {
        let at = format!("{}[{}]", result.file.display(), result.document);
        let subject = result.subject.display();
        // Findings on controllers start with the subject; it is printed once.
        let strip = |m: &str| {
            m.strip_prefix(&format!("{subject}: "))
                .unwrap_or(m)
                .to_string()
        };
        if result.exempt {
            writeln!(out, "SKIP   {at} {subject}: namespace exempt")?;
            continue;
        }
        for (label, findings) in [
            ("DENY  ", &result.denials),
            ("WARN  ", &result.warnings),
            ("DRYRUN", &result.dry_run),
        ] {
            for f in findings {
                writeln!(
                    out,
                    "{label} {at} {subject} ({}): {}",
                    f.policy,
                    strip(&f.message)
                )?;
            }
        }
        for op in &result.patch {
            let verb = op["op"].as_str().unwrap_or("?");
            let path = op["path"].as_str().unwrap_or("?");
            match op.get("value") {
                Some(value) => writeln!(out, "PATCH  {at} {subject}: {verb} {path} {value}")?,
                None => writeln!(out, "PATCH  {at} {subject}: {verb} {path}")?,
            }
        }
        if result.allowed
            && result.denials.is_empty()
            && result.warnings.is_empty()
            && result.dry_run.is_empty()
            && result.patch.is_empty()
        {
            writeln!(out, "OK     {at} {subject}")?;
        }
    }
    let s = &report.summary;
    writeln!(
        out,
        "{} object{}: {} denied, {} warnings, {} patched, {} dry-run findings, {} exempt",
        s.objects,
        if s.objects == 1 { "" } else { "s" },
        s.denied,
        s.warnings,
        s.patched,
        s.dry_run,
        s.exempt
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Command, Config};

    fn engine_config_of(flags: &[&str]) -> EngineConfig {
        let argv = ["mapguard", "check", "-f", "a.yaml"].iter().chain(flags);
        let config = Config::try_parse_from(argv).expect("valid flags");
        let Command::Check(args) = config.command else {
            panic!("check subcommand expected");
        };
        engine_config(&args).expect("engine config builds")
    }

    /// Issue 22: an `--engine-config` file that did not name `evalTimeoutMs`
    /// got the engine's own 250 ms instead of the documented 10 s.
    #[test]
    fn an_engine_config_file_keeps_the_ci_time_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("engine.yaml");
        std::fs::write(&file, "exemptNamespaces: [tools]\n").expect("write engine config");
        let path = file.to_str().expect("UTF-8 path");
        let config = engine_config_of(&["--engine-config", path]);
        assert_eq!(config.eval_timeout, Some(CI_EVAL_TIMEOUT));
        assert_eq!(config.exempt_namespaces, ["tools"]);
        assert_eq!(engine_config_of(&[]).eval_timeout, Some(CI_EVAL_TIMEOUT));
        let config = engine_config_of(&["--engine-config", path, "--eval-timeout-ms", "0"]);
        assert_eq!(config.eval_timeout, None, "0: no limit");
    }
}
