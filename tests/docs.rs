//! The documents and every pointer into them: a file that names `docs/FILE.md#anchor`
//! (code, messages, tests, deployment files, the documents themselves) names a file and
//! a heading that exist, and a Markdown link to another document or a section resolves.
//! Pointers are written as paths with anchors, so that this test can follow them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file of the repository that may point into the documents: what `git`
/// would track, less build output, vendored data and binary files.
fn text_files() -> Vec<PathBuf> {
    const SKIPPED_DIRS: &[&str] = &[
        "target",
        ".git",
        "iglu",
        "corpus",
        "artifacts",
        "node_modules",
        "proptest-regressions",
        "crd",
    ];
    const TEXT: &[&str] = &[
        "rs", "md", "toml", "lua", "sh", "py", "yaml", "yml", "json", "service", "html", "js",
        "run",
    ];
    let mut found = Vec::new();
    let mut dirs = vec![root()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !SKIPPED_DIRS.contains(&name.as_str()) {
                    dirs.push(path);
                }
            } else if name == "Dockerfile"
                || path
                    .extension()
                    .is_some_and(|e| TEXT.contains(&e.to_string_lossy().as_ref()))
            {
                found.push(path);
            }
        }
    }
    found
}

/// The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped
/// (but `-` and `_`), spaces as `-`, a repeated one numbered.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(if *count == 0 {
            slug
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// Checks one pointer: `target` (a path relative to `base`, possibly with `#anchor`).
fn check(from: &Path, base: &Path, target: &str, problems: &mut Vec<String>) {
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        base.join(path)
    };
    let shown = from
        .strip_prefix(root())
        .unwrap_or(from)
        .display()
        .to_string();
    if !file.exists() {
        problems.push(format!("{shown}: {target}: no such file"));
        return;
    }
    if let Some(anchor) = anchor {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if !anchors(&text).contains(anchor) {
            problems.push(format!("{shown}: {target}: no such section"));
        }
    }
}

#[test]
fn every_pointer_into_the_documents_names_a_file_and_section_that_exist() {
    let mut problems = Vec::new();
    let mut pointers = 0;
    for file in text_files() {
        // This file names the patterns it looks for.
        if file.ends_with("tests/docs.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        // `docs/FILE.md`, `docs/FILE.md#anchor` and `README.md#anchor`, from the root.
        for target in docs_pointers(&text) {
            pointers += 1;
            check(&file, &root(), &target, &mut problems);
        }
        // Markdown links to files and sections, relative to the document.
        if file.extension().is_some_and(|e| e == "md") {
            for target in markdown_links(&text) {
                pointers += 1;
                check(&file, file.parent().unwrap(), &target, &mut problems);
            }
        }
        // The old way of pointing ("README: Redis permissions", "(README, Performance)")
        // names a section this test cannot follow.
        for old in ["README: ", "(README, ", "README's "] {
            if text.contains(old) {
                problems.push(format!(
                    "{}: points with \"{old}…\"; write docs/FILE.md#anchor",
                    file.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        pointers > 50,
        "only {pointers} pointers found: is the walk right?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_readme_is_read_in_ten_minutes_and_the_documents_exist() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.len() <= 12 * 1024,
        "README.md is {} bytes",
        readme.len()
    );
    for name in [
        "operations",
        "design",
        "performance",
        "collector",
        "producing",
        "development",
    ] {
        let path = root().join(format!("docs/{name}.md"));
        assert!(path.exists(), "{} is missing", path.display());
        assert!(
            readme.contains(&format!("(docs/{name}.md)")),
            "the README points to docs/{name}.md"
        );
    }
}

#[test]
fn the_anchor_rule_is_githubs() {
    let text = "# Design\n## What happens to an event\n### A `full` Redis (7.0+)\n## Design\n```\n# not a heading\n```\n";
    let found = anchors(text);
    for anchor in [
        "design",
        "what-happens-to-an-event",
        "a-full-redis-70",
        "design-1",
    ] {
        assert!(found.contains(anchor), "{anchor} in {found:?}");
    }
    assert!(!found.contains("not-a-heading"));
}

/// `docs/NAME.md` and `README.md` (with `#anchor` when given) wherever they appear.
fn docs_pointers(text: &str) -> Vec<String> {
    let mut found = pointers_to(text, "docs/");
    found.extend(
        pointers_to(text, "README.md#")
            .into_iter()
            .filter(|target| target.contains('#')),
    );
    found
}

/// Every `start…` path in `text` that names a Markdown file from the repository's root.
fn pointers_to(text: &str, start: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(start) {
        // Only a pointer from the root: not `../docs/` or `x/docs/`.
        let before = &rest[..at];
        let after = &rest[at..];
        rest = &rest[at + start.len()..];
        if before.ends_with('/') || before.ends_with(|c: char| c.is_alphanumeric()) {
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_alphanumeric() || "/._-#".contains(c)))
            .unwrap_or(after.len());
        let target = after[..end].trim_end_matches(['.', '#']);
        if target.contains(".md") {
            found.push(target.to_owned());
        }
    }
    found
}

/// The targets of `[text](target)` links that are neither web addresses nor images.
fn markdown_links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = &after[..end];
            rest = &after[end..];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            found.push(target.to_owned());
        }
    }
    found
}

/// The configuration reference in docs/operations.md is what the declaration of every
/// key generates (`SNOWPLOW_RELAY_REGENERATE=1` rewrites it).
#[test]
fn the_configuration_reference_is_generated_from_the_declaration() {
    const BEGIN: &str = "<!-- generated from src/config/keys.rs; regenerate: \
                         SNOWPLOW_RELAY_REGENERATE=1 cargo test --test tests docs:: -->\n";
    const END: &str = "<!-- end of the generated reference -->";
    let path = root().join("docs/operations.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find(BEGIN).expect("the reference's opening marker") + BEGIN.len();
    let end = start
        + text[start..]
            .find(END)
            .expect("the reference's closing marker");
    let generated = snowplow_relay::config::keys::reference();
    if text[start..end] != generated && std::env::var_os("SNOWPLOW_RELAY_REGENERATE").is_some() {
        let rewritten = format!("{}{generated}{}", &text[..start], &text[end..]);
        std::fs::write(&path, rewritten).unwrap();
        return;
    }
    assert!(
        text[start..end] == generated,
        "docs/operations.md's configuration reference differs from src/config/keys.rs; \
         regenerate it: SNOWPLOW_RELAY_REGENERATE=1 cargo test --test tests docs::"
    );
}
