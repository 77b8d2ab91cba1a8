//! Finding a running supervisor from its spec without validating the spec:
//! the commands that only talk to one (`status`, `stop`, `events`, …) need
//! two settings of `[supervisor]`, and must keep working while the file is
//! being edited and momentarily invalid. `check`, `up` and `reload` validate
//! in full (see `validate`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_parser::decoder::{Encoding, ScalarKind};
use toml_parser::parser::EventReceiver;
use toml_parser::{ErrorSink, ParseError, Raw, Source, Span};

use super::SupervisorSettings;
use super::validate::normalize;

/// What locating a supervisor reads of a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// As the full validation resolves it (relative to the spec's directory).
    pub state_dir: PathBuf,
    /// None when absent or not a duration (the supervisor's own applies).
    pub shutdown_timeout: Option<Duration>,
    /// Why the file did not read cleanly as TOML, when it did not: what
    /// could be read is used all the same.
    pub problem: Option<String>,
}

impl Located {
    /// What a validated spec says, for a command that validated it anyway.
    pub fn of(spec: &super::Spec) -> Located {
        Located {
            state_dir: spec.supervisor.state_dir.clone(),
            shutdown_timeout: Some(spec.supervisor.shutdown_timeout),
            problem: None,
        }
    }
}

/// Reads `[supervisor] state_dir` and `shutdown_timeout` of the spec at
/// `path`; `Err` when the file cannot be read at all.
pub fn locate(path: &Path) -> Result<Located, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent
        .canonicalize()
        .map_err(|e| format!("cannot resolve the directory of {}: {e}", path.display()))?;
    let found = Settings::read(&text);
    let state_dir = match found.state_dir.filter(|d| !d.is_empty()) {
        Some(d) => normalize(&dir.join(d)),
        None => SupervisorSettings::with_defaults(&dir).state_dir,
    };
    Ok(Located {
        state_dir,
        shutdown_timeout: found
            .shutdown_timeout
            .and_then(|d| humantime::parse_duration(&d).ok()),
        problem: found.problem,
    })
}

/// The two settings, read from the parser's events without building the
/// document: a `status` reads its spec on every call, and the services'
/// tables, most of the file, are only skimmed.
#[derive(Default)]
struct Settings<'i> {
    source: Option<Source<'i>>,
    state_dir: Option<String>,
    shutdown_timeout: Option<String>,
    problem: Option<String>,
    /// The key of the `[table]` the lines are in.
    table: Vec<Cow<'i, str>>,
    /// The key being read: a `[header]` or the left side of a `key =`.
    key: Vec<Cow<'i, str>>,
    /// Reading a `[header]`.
    header: bool,
    /// The full key of the value that comes next, if it is one of ours to
    /// look at (not an array element).
    value: Option<Vec<Cow<'i, str>>>,
    /// Open inline tables (their full key) and arrays (None).
    nested: Vec<Option<Vec<Cow<'i, str>>>>,
}

impl<'i> Settings<'i> {
    fn read(text: &'i str) -> Settings<'i> {
        let source = Source::new(text);
        let tokens = source.lex().into_vec();
        let mut settings = Settings {
            source: Some(source),
            ..Settings::default()
        };
        let mut errors = Vec::<ParseError>::new();
        toml_parser::parser::parse_document(&tokens, &mut settings, &mut errors);
        if settings.problem.is_none() {
            settings.problem = errors.first().map(|e| e.description().to_string());
        }
        settings
    }

    fn raw(&self, span: Span, encoding: Option<Encoding>) -> Option<Raw<'i>> {
        let source = self.source?;
        Some(Raw::new_unchecked(
            source.get(span)?.as_str(),
            encoding,
            span,
        ))
    }

    fn note(&mut self, error: ParseError) {
        self.problem
            .get_or_insert_with(|| error.description().to_string());
    }
}

impl<'i> EventReceiver for Settings<'i> {
    fn std_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.key.clear();
        self.header = true;
    }

    fn std_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.table = std::mem::take(&mut self.key);
        self.header = false;
    }

    fn array_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.key.clear();
        self.header = true;
    }

    fn array_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        // `[[supervisor]]` is not the table, whatever its name.
        self.table = vec![Cow::Borrowed("[[")];
        self.key.clear();
        self.header = false;
    }

    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        // A key that cannot be part of `supervisor.<name>` (under a
        // service's table, say) is counted, not decoded.
        let prefix: &[Cow<'i, str>] = match self.nested.last() {
            _ if self.header => &[],
            Some(Some(inline)) => inline,
            Some(None) => return,
            None => &self.table,
        };
        let depth = prefix.len() + self.key.len();
        let first = prefix.first().or(self.key.first());
        if depth >= 2 || first.is_some_and(|f| f != "supervisor") {
            self.key.push(Cow::Borrowed(""));
            return;
        }
        let Some(raw) = self.raw(span, encoding) else {
            return;
        };
        let mut key = Cow::Borrowed("");
        let mut errors = Vec::<ParseError>::new();
        raw.decode_key(&mut key, &mut errors);
        if let Some(e) = errors.into_iter().next() {
            self.note(e);
        }
        self.key.push(key);
    }

    fn key_val_sep(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        let key = std::mem::take(&mut self.key);
        let prefix = match self.nested.last() {
            Some(Some(inline)) => inline,
            Some(None) => return,
            None => &self.table,
        };
        self.value = Some(prefix.iter().cloned().chain(key).collect());
    }

    fn scalar(&mut self, span: Span, encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        let Some(key) = self.value.take() else { return };
        let (Some(raw), [table, name]) = (self.raw(span, encoding), key.as_slice()) else {
            return;
        };
        let slot = match (table.as_ref(), name.as_ref()) {
            ("supervisor", "state_dir") => &mut self.state_dir,
            ("supervisor", "shutdown_timeout") => &mut self.shutdown_timeout,
            _ => return,
        };
        let mut value = Cow::Borrowed("");
        let mut errors = Vec::<ParseError>::new();
        if raw.decode_scalar(&mut value, &mut errors) == ScalarKind::String && errors.is_empty() {
            *slot = Some(value.into_owned());
        }
    }

    fn inline_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        self.nested.push(self.value.take());
        true
    }

    fn inline_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.nested.pop();
    }

    fn array_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        self.value = None;
        self.nested.push(None);
        true
    }

    fn array_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.nested.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(text: &str) -> Located {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervise.toml");
        std::fs::write(&path, text).unwrap();
        let mut found = locate(&path).unwrap();
        let root = dir.path().canonicalize().unwrap();
        found.state_dir = found
            .state_dir
            .strip_prefix(&root)
            .unwrap_or(&found.state_dir)
            .into();
        found
    }

    #[test]
    fn reads_the_state_dir_as_validation_resolves_it() {
        let found = located("[supervisor]\nstate_dir = \"./var/run\"\nshutdown_timeout = \"5s\"\n");
        assert_eq!(found.state_dir, Path::new("var/run"));
        assert_eq!(found.shutdown_timeout, Some(Duration::from_secs(5)));
        assert_eq!(found.problem, None);
        assert_eq!(located("[services.a]\n").state_dir, Path::new(".supervise"));
        assert_eq!(
            located("[supervisor]\nstate_dir = \"/abs\"\n").state_dir,
            Path::new("/abs")
        );
    }

    #[test]
    fn the_settings_are_found_however_the_toml_spells_them() {
        for text in [
            "supervisor.state_dir = \"s\"\n[services.a]\ncommand = [\"x\"]\n",
            "supervisor = { state_dir = 's', shutdown_timeout = \"2s\" }\n",
            "[services.a]\nenv = { state_dir = \"no\" }\n[\"supervisor\"]\n\"state_dir\" = \"\"\"s\"\"\"\n",
            "[supervisor]\nlabels = [\"state_dir\", { state_dir = \"no\" }]\nstate_dir = \"s\" # here\n",
        ] {
            let found = located(text);
            assert_eq!(found.state_dir, Path::new("s"), "{text}");
            assert_eq!(found.problem, None, "{text}");
        }
        // Not the table: nested deeper, an array of tables, another table.
        for text in [
            "[supervisor.x]\nstate_dir = \"no\"\n",
            "[[supervisor]]\nstate_dir = \"no\"\n",
            "[services.supervisor]\nstate_dir = \"no\"\n",
            "[supervisor]\nstate_dir = 3\n",
        ] {
            assert_eq!(located(text).state_dir, Path::new(".supervise"), "{text}");
        }
        assert_eq!(
            located("supervisor = { shutdown_timeout = \"2s\" }\n").shutdown_timeout,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_file_being_edited_still_says_where_its_supervisor_is() {
        let found =
            located("[supervisor]\nstate_dir = \"state\"\n[services.a]\ncommand = [\"a\",\n");
        assert_eq!(found.state_dir, Path::new("state"));
        assert!(found.problem.is_some());
        // Invalid as a spec, not as TOML: nothing to say here.
        assert_eq!(located("[services.a]\nreplicas = \"x\"\n").problem, None);
    }
}
