//! Records as `kubectl get` prints them: upper-case headers, columns
//! padded to their widest cell with three spaces between, a CONTEXT column
//! when several contexts are read and a NAMESPACE column with `-A`. Both
//! call sites are always shown (a race has two sides).
//!
//! A [`Table`] keeps its column widths, so that `watch` can print rows one
//! at a time: widths come from the first batch and only grow.

use std::io::Write;

use k8s_openapi::jiff::Timestamp;

use crate::age::since;
use mapguard_api::resource::MapViolationStatus;

use crate::records::Record;

/// Shown where the other goroutine's call site is not on record (a race
/// the Go runtime itself detected).
pub const NOT_ON_RECORD: &str = "<not on record>";

/// Which columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub context: bool,
    pub namespace: bool,
    pub wide: bool,
    /// A leading EVENT column (`watch --output-watch-events`).
    pub event: bool,
}

impl Layout {
    pub fn headers(&self) -> Vec<&'static str> {
        let mut h = Vec::new();
        if self.event {
            h.push("EVENT");
        }
        if self.context {
            h.push("CONTEXT");
        }
        if self.namespace {
            h.push("NAMESPACE");
        }
        h.extend([
            "NAME",
            "KIND",
            "ACTION",
            "POD",
            "COUNT",
            "LAST SEEN",
            "CALL SITE",
            "CONFLICTING SITE",
        ]);
        if self.wide {
            h.extend(["OP", "CONFLICTING OP", "CONTAINER", "NODE", "GO", "AGE"]);
        }
        h
    }

    /// The cells of `record` at `now`; `event` fills the EVENT column.
    pub fn row(&self, record: &Record, event: &str, now: Timestamp) -> Vec<String> {
        let dash = || "-".to_owned();
        let status = record.status.as_ref();
        let text = |f: fn(&MapViolationStatus) -> &str| {
            status
                .map(f)
                .filter(|s| !s.is_empty())
                .map_or_else(dash, str::to_owned)
        };
        let mut r = Vec::new();
        if self.event {
            r.push(event.to_owned());
        }
        if self.context {
            r.push(record.context.clone());
        }
        if self.namespace {
            r.push(record.namespace().to_owned());
        }
        r.extend([
            record.name().to_owned(),
            or_dash(&record.spec.kind),
            text(|s| &s.action),
            text(|s| &s.pod),
            record.count().to_string(),
            status.map_or_else(dash, |s| since(s.last_seen.0, now)),
            or_dash(&record.spec.site),
            record
                .spec
                .conflicting_site
                .clone()
                .unwrap_or_else(|| NOT_ON_RECORD.to_owned()),
        ]);
        if self.wide {
            r.extend([
                or_dash(&record.spec.op),
                or_dash(&record.spec.conflicting_op),
                status
                    .and_then(|s| s.container.clone())
                    .unwrap_or_else(dash),
                text(|s| &s.node),
                status
                    .and_then(|s| s.go_version.clone())
                    .unwrap_or_else(dash),
                record.created().map_or_else(dash, |t| since(t, now)),
            ]);
        }
        r
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// Column widths that only grow, and whether the header is out.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    widths: Vec<usize>,
    header_printed: bool,
}

impl Table {
    pub fn new(layout: &Layout) -> Self {
        let headers = layout.headers();
        let widths = headers.iter().map(|h| h.chars().count()).collect();
        Table {
            headers,
            widths,
            header_printed: false,
        }
    }

    /// Prints `rows` (the header first, once), widening the columns to fit
    /// them.
    pub fn print(&mut self, out: &mut dyn Write, rows: &[Vec<String>]) -> std::io::Result<()> {
        for row in rows {
            for (w, cell) in self.widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        if !self.header_printed {
            let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
            self.line(out, &header)?;
            self.header_printed = true;
        }
        for row in rows {
            self.line(out, row)?;
        }
        out.flush()
    }

    fn line(&self, out: &mut dyn Write, cells: &[String]) -> std::io::Result<()> {
        let mut line = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, (cell, width)) in cells.iter().zip(&self.widths).enumerate() {
            line.push_str(cell);
            if i < last {
                let pad = width.saturating_sub(cell.chars().count()) + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(context: &str, conflicting: Option<&str>) -> Record {
        Record::new(
            context,
            crate::records::sample(json!({
                "metadata": {"name": "concurrent-write-1", "namespace": "shop",
                             "creationTimestamp": "2026-11-20T10:00:00Z"},
                "spec": {"kind": "concurrent_write", "op": "assign", "conflictingOp": "delete",
                         "site": "main.assigner main.go:38", "conflictingSite": conflicting},
                "status": {"count": 4, "lastSeen": "2026-11-25T09:55:00Z", "action": "killed",
                           "pod": "cart-1", "node": "node-a", "container": "app"},
            })),
        )
    }

    #[test]
    fn columns_align_and_name_both_sites() {
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().expect("a time");
        let layout = Layout {
            context: true,
            namespace: true,
            wide: false,
            event: false,
        };
        let mut table = Table::new(&layout);
        let mut out = Vec::new();
        let rows = [
            layout.row(&record("east", Some("main.deleter main.go:26")), "", now),
            layout.row(&record("west-long", None), "", now),
        ];
        table.print(&mut out, &rows).expect("print");
        let text = String::from_utf8(out).expect("UTF-8");
        assert_eq!(
            text,
            "\
CONTEXT     NAMESPACE   NAME                 KIND               ACTION   POD      COUNT   LAST SEEN   CALL SITE                  CONFLICTING SITE
east        shop        concurrent-write-1   concurrent_write   killed   cart-1   4       5m          main.assigner main.go:38   main.deleter main.go:26
west-long   shop        concurrent-write-1   concurrent_write   killed   cart-1   4       5m          main.assigner main.go:38   <not on record>
"
        );
        // A later, wider row widens its column; the header is not repeated.
        let mut out = Vec::new();
        let mut wider = record("a-much-longer-context", None);
        wider.status = None;
        table
            .print(&mut out, &[layout.row(&wider, "", now)])
            .expect("print");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            text.starts_with("a-much-longer-context   shop   "),
            "{text}"
        );
        let cells: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            cells[4..8],
            ["-", "-", "0", "-"],
            "no status: dashes, count 0: {text}"
        );
    }

    #[test]
    fn wide_adds_operations_container_node_and_age() {
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().expect("a time");
        let layout = Layout {
            context: false,
            namespace: false,
            wide: true,
            event: true,
        };
        let row = layout.row(&record("east", Some("x y.go:1")), "MODIFIED", now);
        assert_eq!(layout.headers().len(), row.len());
        assert_eq!(row[0], "MODIFIED");
        assert_eq!(
            &row[row.len() - 6..],
            ["assign", "delete", "app", "node-a", "-", "5d"]
        );
    }
}
