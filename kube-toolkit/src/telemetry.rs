//! The `tracing` subscriber of every binary: logs on stderr, `RUST_LOG`
//! overriding the binary's default filter, text (coloured only when stderr
//! is a terminal: a container log or a file gets plain text) or JSON lines.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, its fields at the top level.
    Json,
}

/// What a binary sets up.
#[derive(Debug, Clone, Copy)]
pub struct Telemetry<'a> {
    /// The filter when `RUST_LOG` is unset or invalid (`info`, `warn`, ...).
    pub default_filter: &'a str,
    /// Text or JSON.
    pub format: Format,
    /// Directives added unless `RUST_LOG` names their target
    /// (`rustls=error`: a server's per-handshake warnings).
    pub quiet: &'a [&'a str],
}

impl<'a> Telemetry<'a> {
    /// Text lines filtered by `default_filter`.
    pub fn new(default_filter: &'a str) -> Self {
        Telemetry {
            default_filter,
            format: Format::Text,
            quiet: &[],
        }
    }

    /// Installs the global subscriber; later calls are ignored.
    pub fn init(self) {
        let mut filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(self.default_filter));
        for directive in self.quiet {
            let target = directive.split('=').next().unwrap_or(directive);
            if filter.to_string().contains(target) {
                continue;
            }
            match directive.parse() {
                Ok(directive) => filter = filter.add_directive(directive),
                Err(error) => eprintln!("ignoring log directive {directive:?}: {error}"),
            }
        }
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match self.format {
            Format::Text => builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init(),
            Format::Json => builder.json().flatten_event(true).try_init(),
        };
    }
}

/// `error` and its causes on one line (`a: b: c`), leaving out a cause
/// whose text the line already holds (kube's and hyper's errors often
/// repeat their source in their own message).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
