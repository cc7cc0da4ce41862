//! `watch`: the records as they appear and change, like `kubectl get -w`:
//! the existing ones first (each context's, least recently seen first),
//! then one row (or object) per change, until interrupted.

use std::io::Write;

use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::audit::{layout, nothing_found};
use crate::clusters::Target;
use crate::config::{RecordOutput, WatchArgs};
use crate::error::PluginError;
use crate::follow::{Change, follow};
use crate::records::Record;
use crate::table::{Layout, Table};

/// How changes are printed.
struct Printer {
    output: Option<RecordOutput>,
    layout: Layout,
    table: Table,
    events: bool,
}

impl Printer {
    fn print(&mut self, out: &mut dyn Write, changes: &[(&str, &Record)]) -> std::io::Result<()> {
        match self.output {
            None | Some(RecordOutput::Wide) => {
                let now = Timestamp::now();
                let rows: Vec<Vec<String>> = changes
                    .iter()
                    .map(|(event, r)| self.layout.row(r, event, now))
                    .collect();
                self.table.print(out, &rows)
            }
            Some(format) => {
                for (event, record) in changes {
                    let object =
                        serde_json::to_value(record.printable()).expect("an object serializes");
                    let doc = if self.events {
                        json!({"type": event, "object": object})
                    } else {
                        object
                    };
                    if format == RecordOutput::Json {
                        serde_json::to_writer(&mut *out, &doc).map_err(std::io::Error::from)?;
                        writeln!(out)?;
                    } else {
                        let text = yaml_serde::to_string(&doc).expect("JSON serializes to YAML");
                        write!(out, "---\n{text}")?;
                    }
                }
                out.flush()
            }
        }
    }
}

/// Runs `watch` until Ctrl-C or SIGTERM.
pub async fn run(
    args: &WatchArgs,
    targets: &[Target],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<bool, PluginError> {
    let layout = Layout {
        event: args.output_watch_events,
        ..layout(targets, &args.cluster, args.output)
    };
    let mut printer = Printer {
        output: args.output,
        table: Table::new(&layout),
        layout,
        events: args.output_watch_events,
    };
    let several = targets.len() > 1;
    let print = |i: usize, change: Change, err: &mut dyn Write| -> Result<(), PluginError> {
        let shown: Vec<(&str, &Record)> = match &change {
            Change::Initial(records) => {
                if records.is_empty() && args.output.is_none_or(|o| o == RecordOutput::Wide) {
                    writeln!(err, "{}", nothing_found(&targets[i], several))?;
                }
                if args.watch_only {
                    return Ok(());
                }
                records.iter().map(|r| ("ADDED", r)).collect()
            }
            Change::Added(r) => vec![("ADDED", r)],
            Change::Modified { new, .. } => vec![("MODIFIED", new)],
            Change::Deleted(r) => vec![("DELETED", r)],
        };
        if !shown.is_empty() {
            printer.print(out, &shown)?;
        }
        Ok(())
    };
    follow(
        targets,
        args.cluster.selector.as_deref(),
        err,
        print,
        |_| Ok(()),
    )
    .await
}
