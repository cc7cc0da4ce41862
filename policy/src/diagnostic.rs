//! regorus reports errors as multi-line snippets:
//!
//! ```text
//! --> policies/broken.rego:4:7
//!   |
//! 4 |   msg :=
//!   |       ^
//! error: expecting `}` while parsing set
//! ```
//!
//! Logs, admission responses and CI output want one line:
//! `policies/broken.rego:4:7: expecting `}` while parsing set`.

/// Location and text of a regorus error, on one line.
pub(crate) fn one_line(raw: &str) -> String {
    let mut location = None;
    let mut messages = Vec::new();
    for line in raw.lines().map(str::trim) {
        if let Some(loc) = line.strip_prefix("-->") {
            location.get_or_insert_with(|| loc.trim().to_string());
        } else if let Some(text) = line.strip_prefix("error:") {
            messages.push(text.trim().to_string());
        } else if !line.is_empty()
            && !line.starts_with('|')
            && !line
                .split_once('|')
                .is_some_and(|(n, _)| n.trim().chars().all(|c| c.is_ascii_digit()))
        {
            messages.push(line.to_string());
        }
    }
    let message = if messages.is_empty() {
        raw.trim().to_string()
    } else {
        messages.join(": ")
    };
    match location {
        Some(loc) => format!("{loc}: {message}"),
        None => message,
    }
}

/// The line number in a `path:line:col: …` diagnostic.
pub(crate) fn line_of(diagnostic: &str, path: &str) -> Option<u32> {
    diagnostic
        .strip_prefix(path)?
        .strip_prefix(':')?
        .split(':')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_becomes_one_line_with_location() {
        let raw = "\n--> policies/broken.rego:4:7\n  |\n4 |   msg := \n  |       ^\nerror: expecting `}` while parsing set";
        let line = one_line(raw);
        assert_eq!(
            line,
            "policies/broken.rego:4:7: expecting `}` while parsing set"
        );
        assert_eq!(line_of(&line, "policies/broken.rego"), Some(4));
    }

    #[test]
    fn plain_messages_pass_through() {
        assert_eq!(one_line("rule not found"), "rule not found");
        assert_eq!(line_of("x", "p.rego"), None);
    }
}
