//! Rewrites applied to a template's Rego when it is loaded, where regorus
//! reads Rego differently from OPA (which Gatekeeper runs). Each keeps the
//! meaning OPA gives the text:
//!
//! 1. **Several bodies** — `p { A } { B }` means `p { A }` or `p { B }`;
//!    regorus refuses it for set rules and answers wrongly for functions.
//!    Rewritten as one head per body.
//! 2. **A reference, a line break, then `(`** — OPA ends the expression at
//!    the line break; regorus reads a call. A `;` is put at the end of the
//!    line.
//! 3. **`not f(..., a.b)` with `a.b` undefined** — OPA hoists the argument
//!    out of the negation, so the body fails; in regorus the `not` holds.
//!    Each argument that is a reference with a field or index gets its own
//!    `_ = a.b;` before the `not`.
//!
//! 4. **`sprintf` with fewer arguments than verbs** — OPA (Go's fmt)
//!    prints `%!v(MISSING)` for each verb left over; regorus fails the
//!    call. Where the format is a string literal and the arguments an array
//!    literal, each verb left over is rewritten to the literal text
//!    `%!v(MISSING)` (as `%%!v(MISSING)`).

/// Which bytes of `src` are code (not in a string or comment).
fn code_mask(src: &str) -> Vec<bool> {
    let bytes = src.as_bytes();
    let mut mask = vec![true; bytes.len()];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    mask[i] = false;
                    i += 1;
                }
                continue;
            }
            b'"' => {
                mask[i] = false;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        mask[i] = false;
                        i += 1;
                    }
                    mask[i] = false;
                    i += 1;
                }
                if i < bytes.len() {
                    mask[i] = false;
                }
            }
            b'`' => {
                mask[i] = false;
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    mask[i] = false;
                    i += 1;
                }
                if i < bytes.len() {
                    mask[i] = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    mask
}

/// Applies every rewrite; the text is unchanged where none applies.
pub(crate) fn rewrite(src: &str) -> String {
    let once = split_bodies(src);
    let twice = end_lines_before_parens(&once);
    let thrice = hoist_negated_arguments(&twice);
    fill_missing_sprintf_arguments(&thrice)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Rewrite 1: `head { A } { B }` → `head { A }\nhead { B }`. A `{` at
/// the top level opens a body unless it follows `=`, `:=` or `,` (then it
/// is a value: `p = {"a": x} { ... }`).
fn split_bodies(src: &str) -> String {
    let bytes = src.as_bytes();
    let code = code_mask(src);
    let mut out = String::with_capacity(src.len());
    let mut depth = 0i32;
    let mut statement_start: Option<usize> = None;
    let mut head: Option<String> = None;
    // The last top-level `}` closed a body, and nothing followed it yet.
    let mut after_body = false;
    // The open top-level `{` is a body (not a value).
    let mut in_body = false;
    let mut previous = b' ';
    let mut copied = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !code[i] {
            if b == b'"' || b == b'`' {
                after_body = false;
                previous = b;
                if depth == 0 {
                    statement_start.get_or_insert(i);
                }
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            if b == b'\n' && depth == 0 {
                statement_start = None;
            }
            continue;
        }
        match b {
            b'{' if depth == 0 => {
                in_body = !matches!(previous, b'=' | b',');
                if in_body && after_body {
                    if let Some(head) = &head {
                        out.push_str(&src[copied..i]);
                        out.push('\n');
                        out.push_str(head);
                        out.push(' ');
                        copied = i;
                    }
                } else if in_body && let Some(start) = statement_start {
                    head = Some(src[start..i].trim_end().to_string());
                }
                after_body = false;
                depth += 1;
            }
            b'{' | b'[' | b'(' => {
                after_body = false;
                if depth == 0 {
                    statement_start.get_or_insert(i);
                }
                depth += 1;
            }
            b'}' | b']' | b')' => {
                depth -= 1;
                after_body = b == b'}' && depth == 0 && in_body;
            }
            _ => {
                after_body = false;
                if depth == 0 {
                    statement_start.get_or_insert(i);
                }
            }
        }
        previous = b;
    }
    out.push_str(&src[copied..]);
    out
}

const KEYWORDS: [&str; 13] = [
    "not", "in", "as", "with", "else", "default", "some", "every", "if", "contains", "import",
    "package", "null",
];

/// Rewrite 2: a line whose code ends in a name or `]`, followed by a line
/// starting with `(`, gets a `;`.
fn end_lines_before_parens(src: &str) -> String {
    let code = code_mask(src);
    let lines: Vec<(usize, &str)> = src
        .split_inclusive('\n')
        .scan(0, |at, line| {
            let start = *at;
            *at += line.len();
            Some((start, line))
        })
        .collect();
    let mut out = String::with_capacity(src.len() + 8);
    for (n, (start, line)) in lines.iter().enumerate() {
        // The end of this line's code (before a comment).
        let code_end = line
            .char_indices()
            .rev()
            .find(|(j, c)| code[start + j] && !c.is_whitespace())
            .map(|(j, c)| j + c.len_utf8());
        let next_starts_paren = lines[n + 1..]
            .iter()
            .map(|(_, l)| l.trim_start())
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .is_some_and(|l| l.starts_with('('));
        let ends_in_reference = code_end.is_some_and(|end| {
            let text = &line[..end];
            let last = text.as_bytes()[end - 1];
            let word: String = text
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            (last == b']' || is_ident(last)) && !KEYWORDS.contains(&word.as_str())
        });
        match code_end {
            Some(end) if next_starts_paren && ends_in_reference => {
                out.push_str(&line[..end]);
                out.push(';');
                out.push_str(&line[end..]);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// Whether `arg` is a reference with at least one field or constant index
/// (`a.b`, `a["b"][0]`): what rewrite 3 hoists.
fn is_selected_reference(arg: &str) -> bool {
    let b = arg.as_bytes();
    let mut i = 0;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    if i == 0 || b[0].is_ascii_digit() {
        return false;
    }
    let mut selectors = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                i = start;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                if i == start {
                    return false;
                }
            }
            b'[' => {
                let Some(close) = arg[i..].find(']') else {
                    return false;
                };
                let inner = &arg[i + 1..i + close];
                let constant = (inner.len() >= 2
                    && inner.starts_with('"')
                    && inner.ends_with('"')
                    && !inner[1..inner.len() - 1].contains('"'))
                    || (!inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit()));
                if !constant {
                    return false;
                }
                i += close + 1;
            }
            _ => return false,
        }
        selectors += 1;
    }
    selectors > 0
}

/// Rewrite 3: `not f(x, a.b)` → `_ = a.b; not f(x, a.b)`.
fn hoist_negated_arguments(src: &str) -> String {
    let code = code_mask(src);
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 4 <= bytes.len() {
        let word_start = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b'.';
        if !(code[i]
            && word_start
            && src[i..].starts_with("not")
            && bytes.get(i + 3).is_some_and(|c| *c == b' ' || *c == b'\t'))
        {
            i += 1;
            continue;
        }
        // The called name, then `(`.
        let mut j = i + 3;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        let name_start = j;
        while j < bytes.len() && (is_ident(bytes[j]) || bytes[j] == b'.') {
            j += 1;
        }
        if j == name_start || bytes.get(j) != Some(&b'(') {
            i += 1;
            continue;
        }
        // Arguments up to the matching `)`.
        let mut depth = 0;
        let mut args = Vec::new();
        let mut arg_start = j + 1;
        let mut end = None;
        for (k, &c) in bytes.iter().enumerate().skip(j) {
            if !code[k] {
                continue;
            }
            match c {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        args.push(src[arg_start..k].trim());
                        end = Some(k);
                        break;
                    }
                }
                b',' if depth == 1 => {
                    args.push(src[arg_start..k].trim());
                    arg_start = k + 1;
                }
                b'\n' => break,
                _ => {}
            }
        }
        let Some(end) = end else {
            i += 1;
            continue;
        };
        let hoisted: Vec<&str> = args
            .into_iter()
            .filter(|a| is_selected_reference(a))
            .collect();
        if !hoisted.is_empty() {
            out.push_str(&src[copied..i]);
            for arg in hoisted {
                out.push_str("_ = ");
                out.push_str(arg);
                out.push_str("; ");
            }
            copied = i;
        }
        i = end + 1;
    }
    out.push_str(&src[copied..]);
    out
}

/// The verbs of a Go format string: `(start, end, verb letter)` of each,
/// `%%` left out; `None` if it uses explicit argument indexes (`%[2]v`).
fn format_verbs(format: &str) -> Option<Vec<(usize, usize, char)>> {
    let mut verbs = Vec::new();
    let mut chars = format.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '%' {
            continue;
        }
        if chars.peek().is_some_and(|(_, n)| *n == '%') {
            chars.next();
            continue;
        }
        loop {
            match chars.next() {
                Some((_, '[')) => return None,
                Some((at, v)) if v.is_ascii_alphabetic() => {
                    verbs.push((start, at + 1, v));
                    break;
                }
                Some(_) => continue,
                None => return Some(verbs),
            }
        }
    }
    Some(verbs)
}

/// Rewrite 4: `sprintf("%v and %v", [a])` → `sprintf("%v and %%!v(MISSING)", [a])`.
fn fill_missing_sprintf_arguments(src: &str) -> String {
    let code = code_mask(src);
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(found) = src[i..].find("sprintf(") {
        let at = i + found;
        i = at + "sprintf(".len();
        if !code[at] || (at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'.')) {
            continue;
        }
        // A string literal: the format.
        let rest = &src[i..];
        let lead = rest.len() - rest.trim_start().len();
        let open = i + lead;
        if bytes.get(open) != Some(&b'"') {
            continue;
        }
        let mut close = open + 1;
        while close < bytes.len() && bytes[close] != b'"' {
            close += if bytes[close] == b'\\' { 2 } else { 1 };
        }
        if close >= bytes.len() {
            continue;
        }
        let format = &src[open + 1..close];
        // `, [` then the array's top-level elements up to its `]`.
        let after = src[close + 1..].trim_start();
        let Some(array) = after.strip_prefix(',').map(str::trim_start) else {
            continue;
        };
        if !array.starts_with('[') {
            continue;
        }
        let array_at = src.len() - array.len();
        let mut depth = 0;
        let mut elements = 0;
        let mut empty = true;
        let mut closed = false;
        for k in array_at..bytes.len() {
            if !code[k] {
                empty = false;
                continue;
            }
            match bytes[k] {
                b'[' | b'(' | b'{' => {
                    if depth > 0 {
                        empty = false;
                    }
                    depth += 1;
                }
                b']' | b')' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        closed = true;
                        break;
                    }
                }
                b',' if depth == 1 => elements += 1,
                c if !c.is_ascii_whitespace() => empty = false,
                _ => {}
            }
        }
        if !closed {
            continue;
        }
        let arguments = if empty { 0 } else { elements + 1 };
        let Some(verbs) = format_verbs(format) else {
            continue;
        };
        if verbs.len() <= arguments {
            continue;
        }
        out.push_str(&src[copied..open + 1]);
        let mut from = 0;
        for &(start, end, verb) in &verbs[arguments..] {
            out.push_str(&format[from..start]);
            out.push_str(&format!("%%!{verb}(MISSING)"));
            from = end;
        }
        out.push_str(&format[from..]);
        copied = close;
    }
    out.push_str(&src[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_bodies_become_one_head_each() {
        let src = "package p\n\nviolation[{\"msg\": m}] {\n  input.a\n  m := \"a\"\n} {\n  input.b # } {\n  m := \"b\"\n}\n\nf(x) = y {\n  x == 1; y := \"one\"\n}\n{\n  x == 2; y := \"two\"\n}\n";
        assert_eq!(
            split_bodies(src),
            "package p\n\nviolation[{\"msg\": m}] {\n  input.a\n  m := \"a\"\n} \nviolation[{\"msg\": m}] {\n  input.b # } {\n  m := \"b\"\n}\n\nf(x) = y {\n  x == 1; y := \"one\"\n}\n\nf(x) = y {\n  x == 2; y := \"two\"\n}\n"
        );
        let plain = "package p\np { input.x }\nq = {\"a\": 1}\nr { true } else = false { true }\ng(c) = {\"p\": x} {\n  x := c\n}\nh = {1} { true }\n";
        assert_eq!(split_bodies(plain), plain);
    }

    #[test]
    fn a_line_before_a_parenthesis_ends_with_a_semicolon() {
        let src = "f(h) {\n  input.parameters.spread\n  (h.max - h.min) >= 2\n  x := [1]\n  # note\n  (x[0]) == 1\n  some y in\n  (z)\n}\n";
        assert_eq!(
            end_lines_before_parens(src),
            "f(h) {\n  input.parameters.spread;\n  (h.max - h.min) >= 2\n  x := [1];\n  # note\n  (x[0]) == 1\n  some y in\n  (z)\n}\n"
        );
    }

    #[test]
    fn sprintf_verbs_without_arguments_print_missing() {
        let src = "m := sprintf(\"a %v b %d c %% d %v\", [x])\nn := sprintf(\"%v %v\", [f(1, 2), y])\no := sprintf(\"%v\", [])\np := sprintf(fmt, [x])\n";
        assert_eq!(
            fill_missing_sprintf_arguments(src),
            "m := sprintf(\"a %v b %%!d(MISSING) c %% d %%!v(MISSING)\", [x])\nn := sprintf(\"%v %v\", [f(1, 2), y])\no := sprintf(\"%%!v(MISSING)\", [])\np := sprintf(fmt, [x])\n"
        );
        assert_eq!(format_verbs("%[1]v"), None);
        assert_eq!(format_verbs("%-5.2f%%x").map(|v| v.len()), Some(1));
    }

    #[test]
    fn negated_calls_hoist_their_selected_arguments() {
        let src = "p {\n  not accept(rule, value, params.ranges)\n  not q(x)\n  not r(a[\"b\"], \"not f(x.y)\")\n  # not s(t.u)\n}\n";
        assert_eq!(
            hoist_negated_arguments(src),
            "p {\n  _ = params.ranges; not accept(rule, value, params.ranges)\n  not q(x)\n  _ = a[\"b\"]; not r(a[\"b\"], \"not f(x.y)\")\n  # not s(t.u)\n}\n"
        );
        assert!(is_selected_reference("input.review.object"));
        assert!(is_selected_reference("a[0].b"));
        assert!(!is_selected_reference("x"));
        assert!(!is_selected_reference("a[_]"));
        assert!(!is_selected_reference("f(x).y"));
        assert!(!is_selected_reference("\"s\""));
    }
}
