//! `audit`: the records of every context read, least recently seen first,
//! as a table or as one `List` in JSON or YAML.
//!
//! A context that cannot be read (unreachable, RBAC, no CRD) is reported on
//! stderr and fails the command (exit 1), after the other contexts' records
//! are printed.

use std::io::Write;

use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;

use crate::clusters::{Scope, Target};
use crate::config::{AuditArgs, ClusterArgs, RecordOutput};
use crate::error::PluginError;
use crate::records::{self, Record, where_};
use crate::table::{Layout, Table};

/// Page size of lists: bounded answers on clusters with many records.
const PAGE: u32 = 500;

/// Every record of `target` that `selector` matches, all pages.
pub async fn list(target: &Target, selector: Option<&str>) -> Result<Vec<Record>, PluginError> {
    let api = records::api(target);
    let mut params = ListParams::default().limit(PAGE);
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    let mut found = Vec::new();
    loop {
        let page = api.list(&params).await.map_err(|e| {
            PluginError::from_api(&target.context, "list", &where_(&target.scope), e)
        })?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        found.extend(
            page.items
                .into_iter()
                .map(|object| Record::new(&target.context, object)),
        );
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(found),
        }
    }
}

/// The columns for `targets` read with `args`.
pub fn layout(targets: &[Target], args: &ClusterArgs, output: Option<RecordOutput>) -> Layout {
    Layout {
        context: targets.len() > 1,
        namespace: args.all_namespaces,
        wide: output == Some(RecordOutput::Wide),
        event: false,
    }
}

/// Runs `audit`; returns whether every context was read.
pub async fn run(
    args: &AuditArgs,
    targets: &[Target],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<bool, PluginError> {
    let mut all = Vec::new();
    let mut complete = true;
    let lists = futures_util::future::join_all(
        targets
            .iter()
            .map(|t| list(t, args.cluster.selector.as_deref())),
    )
    .await;
    for (target, listed) in targets.iter().zip(lists) {
        match listed {
            Ok(records) => {
                if records.is_empty() && args.output.is_none_or(|o| o == RecordOutput::Wide) {
                    writeln!(err, "{}", nothing_found(target, targets.len() > 1))?;
                }
                all.extend(records);
            }
            Err(e) => {
                writeln!(err, "error: {e}")?;
                complete = false;
            }
        }
    }
    all.sort_by(Record::by_last_seen);
    print(
        &all,
        layout(targets, &args.cluster, args.output),
        args.output,
        out,
    )?;
    Ok(complete)
}

/// kubectl's "No resources found in shop namespace." for records.
pub(crate) fn nothing_found(target: &Target, name_context: bool) -> String {
    let where_ = match &target.scope {
        Scope::Namespace(ns) => format!("in namespace {ns}"),
        Scope::All => "in any namespace".to_owned(),
    };
    let context = if name_context {
        format!(" of context {}", target.context)
    } else {
        String::new()
    };
    format!("No MapViolation records found {where_}{context}.")
}

/// Prints `records` in `output`'s format.
pub fn print(
    records: &[Record],
    layout: Layout,
    output: Option<RecordOutput>,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    match output {
        None | Some(RecordOutput::Wide) => {
            if records.is_empty() {
                return Ok(());
            }
            let now = Timestamp::now();
            let rows: Vec<Vec<String>> = records.iter().map(|r| layout.row(r, "", now)).collect();
            Table::new(&layout).print(out, &rows)?;
        }
        Some(RecordOutput::Json) => {
            serde_json::to_writer_pretty(&mut *out, &list_object(records))
                .map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Some(RecordOutput::Yaml) => {
            let text = yaml_serde::to_string(&list_object(records))
                .expect("JSON values serialize to YAML");
            out.write_all(text.as_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A `v1` `List` of the printable objects, as `kubectl get -o json` prints.
fn list_object(records: &[Record]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::to_value(r.printable()).expect("an object serializes"))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": items,
    })
}
