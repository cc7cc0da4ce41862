//! The README and the pages under `docs/` link to files that exist and, for
//! `#anchor` links, to headings that exist, and the README links to every
//! page (GitHub's anchor rule: the
//! heading lowercased, punctuation dropped, spaces turned into `-`, a
//! repeated heading suffixed `-1`, `-2`, ...). Links to other sites are not
//! followed; links inside code (fenced blocks, `inline code`) are not links.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testenv/ is inside the workspace")
        .to_path_buf()
}

/// README.md and every `docs/*.md`.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    let docs = std::fs::read_dir(root.join("docs"))
        .unwrap_or_else(|e| panic!("read {}: {e}", root.join("docs").display()));
    let mut found: Vec<PathBuf> = docs
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    found.sort();
    pages.extend(found);
    pages
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().filter(move |(_, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// A line with its `inline code` spans blanked out.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// GitHub's anchor of a heading's text.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a Markdown text.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = anchor(heading);
        let mut name = base.clone();
        let mut n = 0;
        while seen.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        seen.insert(name);
    }
    seen
}

/// Every link target of a Markdown text, with its line number (from 1).
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (index, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else {
                break;
            };
            out.push((index + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// What is wrong with the relative links of one page, one line each.
fn broken_links(page: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(page).unwrap_or_else(|e| panic!("read {}: {e}", page.display()));
    let dir = page.parent().expect("a page is in a folder");
    let mut broken = Vec::new();
    for (line, target) in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, fragment) = match target.split_once('#') {
            Some((path, fragment)) => (path, Some(fragment)),
            None => (target.as_str(), None),
        };
        let file = if path.is_empty() {
            page.to_path_buf()
        } else {
            dir.join(path)
        };
        let at = format!("{}:{line}: ({target})", page.display());
        if !file.exists() {
            broken.push(format!("{at}: no file {}", file.display()));
            continue;
        }
        if let Some(fragment) = fragment {
            let target_text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            if !anchors(&target_text).contains(fragment) {
                broken.push(format!(
                    "{at}: no heading #{fragment} in {}",
                    file.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_of_the_docs_points_at_a_file_and_heading_that_exist() {
    let root = workspace();
    let pages = pages(&root);
    assert!(
        pages.len() > 1,
        "docs/ holds the pages the README links to: {pages:?}"
    );
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("read a page");
        let fences = text
            .lines()
            .filter(|line| line.trim_start().starts_with("```"))
            .count();
        assert!(
            fences % 2 == 0,
            "{}: a code block is not closed",
            page.display()
        );
    }
    let broken: Vec<String> = pages.iter().flat_map(|page| broken_links(page)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    // Every page is reachable from the README.
    let readme = std::fs::read_to_string(&pages[0]).expect("read README.md");
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|(_, target)| target.split('#').next().unwrap_or_default().to_string())
        .collect();
    for page in &pages[1..] {
        let name = format!(
            "docs/{}",
            page.file_name().expect("a file name").to_string_lossy()
        );
        assert!(
            linked.contains(&name),
            "README.md does not link to {name}: {linked:?}"
        );
    }
}

#[test]
fn the_link_check_finds_a_missing_file_and_a_missing_heading() {
    let dir = std::env::temp_dir().join(format!("mapguard-docs-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    let page = dir.join("page.md");
    std::fs::write(
        dir.join("other.md"),
        "# Other page\n\n## Coverage: what is probed, what it costs\n\n## Node agent (`daemon`)\n",
    )
    .expect("write other.md");
    std::fs::write(
        &page,
        "# Page\n\n## Twice\n\n## Twice\n\n\
         [ok](other.md) [ok](other.md#coverage-what-is-probed-what-it-costs) \
         [ok](other.md#node-agent-daemon) [ok](#twice-1) [ok](https://example.org/x)\n\
         [bad](missing.md) [bad](other.md#no-such-heading) [bad](#twice-2)\n\
         `[code](missing-in-code.md)`\n\n```\n[fenced](missing-in-fence.md)\n```\n",
    )
    .expect("write page.md");
    let broken = broken_links(&page);
    std::fs::remove_dir_all(&dir).expect("remove the scratch folder");
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].contains("(missing.md): no file"), "{broken:#?}");
    assert!(
        broken[1].contains("no heading #no-such-heading"),
        "{broken:#?}"
    );
    assert!(broken[2].contains("no heading #twice-2"), "{broken:#?}");
}
