//! The documentation stands on its own: nothing in the repository points
//! outside it, every relative link of README.md and docs/*.md leads to a
//! file (and heading) that exists, and every `docs/<file>.md §N` cited in
//! the code names a section that exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file of the repository: what git tracks or would track (not the
/// build output, the benchmark's installed peers, or anything else
/// `.gitignore` names), or, outside a git checkout, every file but
/// git's own directory, the build output and a local run's state.
fn repository_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let skipped = name == ".git"
                || name == ".supervise"
                || (name == "target" && path.parent() == Some(root()));
            if skipped {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let listed = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root())
        .output()
        .ok()
        .filter(|out| out.status.success());
    let mut files = match listed {
        Some(out) => out
            .stdout
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| root().join(String::from_utf8_lossy(name).as_ref()))
            // Deleted in the work tree, not yet in the index.
            .filter(|path| path.is_file())
            .collect(),
        None => {
            let mut files = Vec::new();
            walk(root(), &mut files);
            files
        }
    };
    files.sort();
    files.dedup();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

/// README.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    docs
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces
/// as hyphens; a repeated heading gets `-1`, `-2`, ….
fn anchors(markdown: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for heading in headings(markdown) {
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_default();
        out.push(match *n {
            0 => slug.clone(),
            k => format!("{slug}-{k}"),
        });
        *n += 1;
    }
    out
}

/// The text of every heading outside fenced code blocks.
fn headings(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(line.trim_start_matches('#').trim());
        }
    }
    out
}

/// The targets of the inline links `[text](target)` outside fenced code.
fn link_targets(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(&after[..end]);
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn nothing_in_the_repository_points_at_the_contract_outside_it() {
    // Spelled in pieces, so this file does not match itself.
    let outside = [concat!("SPEC", ".md"), concat!("..", "/shared")];
    let mut found = Vec::new();
    for path in repository_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        for (n, line) in text.lines().enumerate() {
            if let Some(needle) = outside.iter().find(|needle| line.contains(*needle)) {
                found.push(format!("{}:{}: {needle}", relative(&path), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "cite docs/ instead (docs/spec-file.md, commands.md, design.md, export.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_relative_link_of_the_docs_leads_to_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            // A file outside the repository is missing from every clone of it.
            let inside = linked
                .canonicalize()
                .is_ok_and(|p| p.starts_with(root().canonicalize().unwrap()));
            if !inside {
                broken.push(format!(
                    "{}: {target}: no such file in the repository",
                    relative(&doc)
                ));
                continue;
            }
            if !anchor.is_empty() {
                let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                if !anchors(&linked_text).iter().any(|a| a == anchor) {
                    broken.push(format!("{}: {target}: no such heading", relative(&doc)));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_docs_section_cited_in_the_code_exists() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for path in repository_files() {
        if path.starts_with(root().join("docs")) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut rest = text.as_str();
        while let Some(at) = rest.find("docs/") {
            rest = &rest[at + "docs/".len()..];
            let Some(name_end) = rest.find(".md") else {
                break;
            };
            let name = &rest[..name_end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                continue;
            }
            rest = &rest[name_end + ".md".len()..];
            checked += 1;
            let doc = root().join("docs").join(format!("{name}.md"));
            let Ok(doc_text) = std::fs::read_to_string(&doc) else {
                broken.push(format!(
                    "{}: docs/{name}.md does not exist",
                    relative(&path)
                ));
                continue;
            };
            let Some(section) = rest.strip_prefix(" §") else {
                continue;
            };
            let number: String = section
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.');
            let exists = headings(&doc_text).iter().any(|h| {
                h.split_whitespace()
                    .next()
                    .is_some_and(|first| first.trim_end_matches('.') == number)
            });
            if !exists {
                broken.push(format!(
                    "{}: docs/{name}.md §{number}: no such section",
                    relative(&path)
                ));
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} citations found: is the parser broken?"
    );
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_readme_stays_an_introduction() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines: move reference material into docs/"
    );
}
