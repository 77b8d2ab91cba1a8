//! Spec validation: the TOML text of a spec file to a [`Spec`], or every
//! problem found in it.
//!
//! The file is parsed with toml's span-keeping `DeTable` and then walked by
//! hand, table by table and key by key. Serde-derived structs would stop at the
//! first problem of each table and word errors their own way ("invalid type:
//! ..., expected ..."); walking the tree checks every key on its own, so one
//! `supervise check` lists every problem, each pointing at the exact value and
//! carrying a hint of our wording.
//!
//! A value with a problem is reported and replaced by its default, so the
//! checks that span services (dependencies, cycles, ports) still run; any
//! problem at all makes [`load`] fail. Syntax errors are the exception: a file
//! that does not parse is reported alone, because toml's error recovery leaves
//! a tree that would produce misleading follow-up errors.
//!
//! The walk of the document is here. The generic readers of values and
//! tables are in `read`; each section of the spec is read in a module of its
//! own (`supervisor`, `service`, `restart`, `health`, `failover`, `alerts`),
//! and the checks that need every service at once are in `ports` and
//! `dependencies`. Each of them adds methods to the one [`Checker`], so a
//! section reads like its table in docs/spec-file.md. `values`, `text`,
//! `env_file` and `graph` are pure functions under them, tested on their own.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

mod alerts;
mod dependencies;
mod env_file;
mod failover;
mod graph;
mod health;
mod limits;
mod ports;
mod read;
mod restart;
mod service;
mod supervisor;
mod text;
mod values;

use dependencies::start_order;
use read::Table;
use text::{clip, quote};

use super::Spec;
use super::diagnostic::{Diagnostic, Diagnostics};

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;
type Key<'i> = Spanned<DeString<'i>>;

const ROOT_KEYS: &[&str] = &["supervisor", "services", "alerts"];

pub(super) fn load(path: &Path) -> Result<Spec, Diagnostics> {
    let bytes = std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "create it, or name another spec file with -f PATH"
        } else {
            "check that the path names a readable file"
        };
        Diagnostic::new(path, format!("cannot read the spec file: {e}"), hint)
    })?;
    let src = String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
        Diagnostic::at(
            path,
            &lossy,
            bad..bad + 1,
            "the spec file is not valid UTF-8",
            "save the file as UTF-8 text",
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent.canonicalize().map_err(|e| {
        Diagnostic::new(
            path,
            format!("cannot resolve the spec's directory: {e}"),
            "check that the directory exists and is accessible",
        )
    })?;
    Checker::new(path, dir, &src).check()
}

/// The state of one validation, shared by the readers and the sections:
/// the source that spans point into, and the problems found so far.
struct Checker<'s> {
    /// The spec file as the user named it.
    path: &'s Path,
    dir: PathBuf,
    src: &'s str,
    /// Each problem with the offset in the spec it belongs to, for file order.
    found: Vec<(usize, Diagnostic)>,
    /// `{port}` placeholders seen in the service being read, checked against its
    /// `port` once all its keys are read (`port` may come after its uses).
    port_uses: Vec<Span>,
    /// `[supervisor.cluster]` is there (read before the services).
    has_cluster: bool,
}

impl<'s> Checker<'s> {
    fn new(path: &'s Path, dir: PathBuf, src: &'s str) -> Self {
        Checker {
            path,
            dir,
            src,
            found: Vec::new(),
            port_uses: Vec::new(),
            has_cluster: false,
        }
    }

    fn check(mut self) -> Result<Spec, Diagnostics> {
        let (root, syntax) = DeTable::parse_recoverable(self.src);
        if !syntax.is_empty() {
            self.syntax_errors(&syntax);
            return Err(self.into_diagnostics());
        }
        let root = Table::new("the top level".into(), 0..0, root.get_ref());
        self.unknown_keys(&root, ROOT_KEYS);
        let supervisor = self.supervisor(&root);
        let mut drafts = self.services(&root);
        let alerts = self.alerts(&root);
        self.check_ports(&drafts);
        drafts.sort_by(|a, b| a.service.name.cmp(&b.service.name));
        self.check_dependencies(&drafts);
        if !self.found.is_empty() {
            return Err(self.into_diagnostics());
        }
        Ok(Spec {
            path: self.path.to_path_buf(),
            dir: self.dir,
            supervisor,
            services: start_order(drafts),
            alerts,
        })
    }

    fn into_diagnostics(mut self) -> Diagnostics {
        self.found.sort_by_key(|(offset, _)| *offset);
        Diagnostics(self.found.into_iter().map(|(_, d)| d).collect())
    }

    fn error(&mut self, span: Span, message: impl Into<String>, hint: impl Into<String>) {
        let diagnostic = Diagnostic::at(self.path, self.src, span.clone(), message, hint);
        self.found.push((span.start, diagnostic));
    }

    /// One error per line: toml's recovery tends to report a broken line several times.
    fn syntax_errors(&mut self, errors: &[toml::de::Error]) {
        let mut lines = BTreeSet::new();
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let (line, _) = super::diagnostic::line_col(self.src, span.start);
            if !lines.insert(line) {
                continue;
            }
            let message = if e.message() == "duplicate key" {
                self.duplicate_key_message(&span)
            } else {
                format!("invalid TOML: {}", e.message().replace('\n', " "))
            };
            self.error(
                span,
                message,
                "fix the TOML syntax here; the rest of the spec is checked once the file parses",
            );
        }
    }

    fn duplicate_key_message(&self, span: &Span) -> String {
        let key = self.src.get(span.clone()).unwrap_or_default();
        let before = self.src.get(..span.start).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = self.src[line_start..].lines().next().unwrap_or_default();
        if line.trim_start().starts_with('[') {
            format!("table {} is defined twice", quote(line.trim()))
        } else {
            format!("duplicate key `{}`", clip(key))
        }
    }
}

/// Drops `.` components, so `./.supervise` and `cwd = "."` read naturally in
/// messages and plans. `..` stays: it may cross a symlink.
pub(super) fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn check(src: &str) -> Result<Spec, Diagnostics> {
        Checker::new(Path::new("spec.toml"), PathBuf::from("/srv"), src).check()
    }

    pub(super) fn spec(src: &str) -> Spec {
        check(src).unwrap_or_else(|d| panic!("rejected:\n{d}"))
    }

    /// (line, message) of every problem.
    pub(super) fn problems(src: &str) -> Vec<(usize, String)> {
        match check(src) {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(all) => all
                .0
                .into_iter()
                .map(|d| (d.location.map_or(0, |(l, _)| l), d.message))
                .collect(),
        }
    }

    pub(super) fn one_problem(src: &str) -> (usize, String) {
        let mut all = problems(src);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    #[test]
    fn every_problem_in_one_service_is_reported() {
        let found = problems(
            "[services.api]\n\
             command = \"\"\n\
             stop_signal = \"SIGNOPE\"\n\
             stop_timeout = \"1 fortnight\"\n\
             colour = \"blue\"\n",
        );
        let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3, 4, 5], "{found:?}");
    }

    #[test]
    fn syntax_errors_come_alone_one_per_line() {
        let found = problems("a = [1,\nb = = 2\n[services.x]\nreplicas = \"x\"\n");
        assert!(
            found.iter().all(|(_, m)| m.starts_with("invalid TOML")),
            "{found:?}"
        );
        let mut lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        lines.dedup();
        assert_eq!(lines.len(), found.len(), "{found:?}");
    }

    #[test]
    fn a_table_defined_twice_is_named() {
        let (line, message) = one_problem("[services.a]\ncommand = [\"a\"]\n[services.a]\n");
        assert_eq!(line, 3);
        assert_eq!(message, "table \"[services.a]\" is defined twice");
    }

    #[test]
    fn wrong_shapes_are_type_errors_not_panics() {
        for src in [
            "services = 1",
            "services = []",
            "[services]\na = 1",
            "alerts = [1]\n[services.a]\ncommand = [\"a\"]",
            "supervisor = \"x\"\n[services.a]\ncommand = [\"a\"]",
            "[services.a]\ncommand = [1, true]",
            "[services.a]\ncommand = [\"a\"]\nenv = [\"A=1\"]",
            "[services.a]\ncommand = [\"a\"]\ndepends_on = \"b\"",
            "[services.a]\ncommand = [\"a\"]\nhealth = true",
            "[services.a]\ncommand = [\"a\"]\nrestart = { exit_codes = 0 }",
            "[services.a]\ncommand = [\"a\"]\nreplicas = 1979-05-27",
            "[services.a]\ncommand = [\"a\"]\nport = 99999999999999999999",
        ] {
            let all = check(src).expect_err(src);
            assert!(!all.is_empty());
        }
    }
}
