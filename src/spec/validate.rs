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

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Group, Uid, User};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

mod env_file;
mod graph;
mod text;
mod values;

use env_file::{is_env_name, parse_env_file, set_env};
use graph::{find_cycles, topological_order};
use text::{clip, closest, list, quote};
use values::{
    is_host_port, is_service_name, is_shell_operator, parse_signal, parse_size, regex_reason,
    signal_name,
};

use super::diagnostic::{Diagnostic, Diagnostics};
use super::template::{self, Piece};
use super::{
    Alert, AlertTarget, Condition, Dependency, Failover, GroupSpec, Health, HealthAction, Policy,
    Probe, Promote, RestartPolicy, Service, Spec, SupervisorSettings, UserSpec,
};

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;
type Key<'i> = Spanned<DeString<'i>>;

/// More replicas than this is taken for a typo rather than a plan.
const MAX_REPLICAS: i64 = 10_000;
const MAX_NAME_LEN: usize = 63;

const ROOT_KEYS: &[&str] = &["supervisor", "services", "alerts"];
const SUPERVISOR_KEYS: &[&str] = &[
    "state_dir",
    "shutdown_timeout",
    "log_max_size",
    "log_keep",
    "metrics",
];
const SERVICE_KEYS: &[&str] = &[
    "command",
    "replicas",
    "cwd",
    "env",
    "env_file",
    "port",
    "user",
    "group",
    "stop_signal",
    "stop_timeout",
    "health",
    "restart",
    "depends_on",
    "failover",
    "image",
];
const RESTART_KEYS: &[&str] = &[
    "policy",
    "exit_codes",
    "delay",
    "max_delay",
    "reset_after",
    "limit",
    "window",
];
const PROBE_KEYS: &[&str] = &["exec", "http", "tcp", "notify", "log"];
const HEALTH_KEYS: &[&str] = &[
    "exec",
    "http",
    "tcp",
    "notify",
    "log",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "action",
    "watchdog",
];
const FAILOVER_KEYS: &[&str] = &["mode", "promote", "promote_signal"];
const ALERT_KEYS: &[&str] = &["events", "command", "webhook"];
/// The event names alerts may name (docs/commands.md §4).
const EVENTS: &[&str] = &[
    "spawned",
    "exited",
    "restarted",
    "unhealthy",
    "healthy",
    "promoted",
    "failed",
    "scaled",
    "reloaded",
];

const STRING_HINT: &str = "put the value in double quotes";
const DURATION_HINT: &str =
    "write a number with a unit in quotes, e.g. \"150ms\", \"2s\" or \"5m\"";
const SIZE_HINT: &str = "write a whole number of bytes, or one with a unit in quotes, e.g. \"512KiB\", \"10MiB\" or \"1GiB\"";
const SIGNAL_HINT: &str = "use a signal name such as \"SIGTERM\", \"SIGINT\" or \"SIGQUIT\"";
const ARGV_HINT: &str =
    "write the program and its arguments, e.g. [\"./server\", \"--port\", \"{port}\"]";
const TABLE_HINT: &str = "write a [section] of its own, or an inline table { key = value }";

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

/// A TOML table being read, with its entries in file order.
struct Table<'v, 'i> {
    /// How messages name the table, e.g. `[services.api.health]`.
    label: String,
    /// Where problems with the table as a whole point: its header or key.
    at: Span,
    entries: Vec<(&'v Key<'i>, &'v Value<'i>)>,
}

impl<'v, 'i> Table<'v, 'i> {
    fn new(label: String, at: Span, table: &'v DeTable<'i>) -> Self {
        let mut entries: Vec<_> = table.iter().collect();
        // toml keeps keys sorted; file order keeps `env` and `depends_on` as written.
        entries.sort_by_key(|(k, _)| k.span().start);
        Table { label, at, entries }
    }

    fn entry(&self, key: &str) -> Option<(&'v Key<'i>, &'v Value<'i>)> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .copied()
    }

    fn get(&self, key: &str) -> Option<&'v Value<'i>> {
        self.entry(key).map(|(_, v)| v)
    }
}

/// Which placeholders a string may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placeholders {
    /// `{service}`, `{replica}`, `{port}`.
    Replica,
    /// Hooks also get the `{pid}` of the replica they are about.
    Hook,
}

impl Placeholders {
    fn hint(self) -> &'static str {
        match self {
            Placeholders::Replica => {
                "available placeholders are {service}, {replica} and {port}; write {{ or }} for a literal brace"
            }
            Placeholders::Hook => {
                "available placeholders are {service}, {replica}, {port} and {pid}; write {{ or }} for a literal brace"
            }
        }
    }
}

/// A user id or group id given by name or by number.
enum Account<'v> {
    Name(&'v str),
    Id(u32),
}

/// A service as far as it could be read, plus the spans the cross-service checks point at.
struct Draft {
    service: Service,
    /// The service's name in its header or key.
    at: Span,
    port_at: Option<Span>,
    /// Parallel to `service.depends_on`.
    dependency_at: Vec<Span>,
    /// `None` when `restart.policy` was invalid, so no check relies on a guess.
    policy: Option<Policy>,
}

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
}

impl<'s> Checker<'s> {
    fn new(path: &'s Path, dir: PathBuf, src: &'s str) -> Self {
        Checker {
            path,
            dir,
            src,
            found: Vec::new(),
            port_uses: Vec::new(),
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

    // ---- values -------------------------------------------------------

    fn wrong_type<T>(&mut self, key: &str, v: &Value, expected: &str, hint: &str) -> Option<T> {
        let found = v.get_ref().type_str();
        let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        self.error(
            v.span(),
            format!("expected {expected} for `{key}`, found {article} {found}"),
            hint,
        );
        None
    }

    fn string<'v>(&mut self, key: &str, v: &'v Value, hint: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => self.wrong_type(key, v, "a string", hint),
        }
    }

    fn integer(&mut self, key: &str, v: &Value) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(
                        v.span(),
                        format!("`{key}` is far too large"),
                        "use a smaller number",
                    );
                    None
                }
            },
            _ => self.wrong_type(key, v, "an integer", "write a whole number without quotes"),
        }
    }

    /// An integer within `range`, which must fit `T`.
    fn bounded<T: TryFrom<i64>>(
        &mut self,
        key: &str,
        v: &Value,
        range: RangeInclusive<i64>,
        hint: &str,
    ) -> Option<T> {
        let n = self.integer(key, v)?;
        if range.contains(&n) {
            T::try_from(n).ok()
        } else {
            let (low, high) = range.into_inner();
            let message = if high >= i64::from(u32::MAX) {
                format!("`{key}` must be at least {low}, got {n}")
            } else {
                format!("`{key}` must be between {low} and {high}, got {n}")
            };
            self.error(v.span(), message, hint);
            None
        }
    }

    fn boolean(&mut self, key: &str, v: &Value) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => self.wrong_type(key, v, "a boolean", "write true or false without quotes"),
        }
    }

    fn duration(&mut self, key: &str, v: &Value) -> Option<Duration> {
        let text = self.string(key, v, DURATION_HINT)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                let why = match e {
                    humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                        "the unit is missing".to_string()
                    }
                    humantime::DurationError::UnknownUnit { unit, .. } => {
                        format!("unknown unit {}", quote(&unit))
                    }
                    humantime::DurationError::NumberOverflow => "it is too long".to_string(),
                    humantime::DurationError::Empty => "it is empty".to_string(),
                    _ => "expected a number followed by a unit".to_string(),
                };
                self.error(
                    v.span(),
                    format!("invalid duration {} in `{key}`: {why}", quote(text)),
                    DURATION_HINT,
                );
                None
            }
        }
    }

    /// A duration that must not be zero, for intervals that would otherwise spin.
    fn nonzero_duration(&mut self, key: &str, v: &Value) -> Option<Duration> {
        let d = self.duration(key, v)?;
        if d.is_zero() {
            self.error(
                v.span(),
                format!("`{key}` must be longer than zero"),
                DURATION_HINT,
            );
            return None;
        }
        Some(d)
    }

    fn size(&mut self, key: &str, v: &Value) -> Option<u64> {
        if let DeValue::Integer(_) = v.get_ref() {
            return self.bounded(key, v, 0..=i64::MAX, SIZE_HINT);
        }
        let text = self.string(key, v, SIZE_HINT)?;
        match parse_size(text) {
            Ok(n) => Some(n),
            Err(why) => {
                self.error(
                    v.span(),
                    format!("invalid size {} in `{key}`: {why}", quote(text)),
                    SIZE_HINT,
                );
                None
            }
        }
    }

    /// A signal name; `forbidden` are valid signals that make no sense for this key.
    fn signal(
        &mut self,
        key: &str,
        v: &Value,
        forbidden: &[Signal],
        forbidden_hint: &str,
    ) -> Option<Signal> {
        let text = self.string(key, v, SIGNAL_HINT)?;
        let Some(signal) = parse_signal(text) else {
            // Compared without "SIG", which every name shares and would make any word look close.
            let name = signal_name(text);
            let bare = Signal::iterator().map(|s| s.as_str().trim_start_matches("SIG"));
            let hint = match closest(name.trim_start_matches("SIG"), bare) {
                Some(close) => format!("did you mean \"SIG{close}\"?"),
                None => SIGNAL_HINT.to_string(),
            };
            self.error(
                v.span(),
                format!("unknown signal {} in `{key}`", quote(text)),
                hint,
            );
            return None;
        };
        if forbidden.contains(&signal) {
            self.error(
                v.span(),
                format!("{} cannot be used as `{key}`", signal.as_str()),
                forbidden_hint,
            );
            return None;
        }
        Some(signal)
    }

    /// One of a fixed set of words, e.g. a restart policy.
    fn choice<T: Copy>(&mut self, key: &str, v: &Value, options: &[(&str, T)]) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let listed = names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = self.string(key, v, &format!("use one of {listed}"))?;
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let hint = match closest(text, names.iter().copied()) {
            Some(name) => format!("did you mean \"{name}\"?"),
            None => format!("use one of {listed}"),
        };
        self.error(
            v.span(),
            format!("invalid value {} for `{key}`", quote(text)),
            hint,
        );
        None
    }

    /// Checks the placeholders of `text`, the string value at `span`. Records
    /// `{port}` uses; returns whether the template is valid.
    fn template(&mut self, key: &str, span: &Span, text: &str, allowed: Placeholders) -> bool {
        let inner = self.string_content_start(span, text);
        let locate = |offset: usize, len: usize| match inner {
            Some(start) => start + offset..start + offset + len,
            None => span.clone(),
        };
        let pieces = match template::pieces(text) {
            Ok(pieces) => pieces,
            Err(offset) => {
                let brace = if text.as_bytes().get(offset) == Some(&b'}') {
                    '}'
                } else {
                    '{'
                };
                self.error(
                    locate(offset, 1),
                    format!("unbalanced `{brace}` in `{key}`"),
                    "placeholders look like {port}; write {{ or }} for a literal brace",
                );
                return false;
            }
        };
        let mut ok = true;
        for piece in pieces {
            let Piece::Placeholder(name) = piece else {
                continue;
            };
            // `name` borrows from `text`; its address gives its offset, and `{` is one byte before.
            let offset = (name.as_ptr() as usize)
                .saturating_sub(text.as_ptr() as usize)
                .saturating_sub(1);
            let at = locate(offset, name.len() + 2);
            match name {
                "service" | "replica" => {}
                "port" => self.port_uses.push(at),
                "pid" if allowed == Placeholders::Hook => {}
                "pid" => {
                    ok = false;
                    self.error(
                        at,
                        format!("`{{pid}}` is not available in `{key}`"),
                        "only `promote` hooks get {pid}, the process id of the promoted replica",
                    );
                }
                _ => {
                    ok = false;
                    self.error(
                        at,
                        format!(
                            "unknown placeholder {} in `{key}`",
                            quote(&format!("{{{name}}}"))
                        ),
                        allowed.hint(),
                    );
                }
            }
        }
        ok
    }

    /// Where the characters of string `text` start in the source, when the value at
    /// `span` is written as a plain quoted string, so errors can point inside it.
    fn string_content_start(&self, span: &Span, text: &str) -> Option<usize> {
        let raw = self.src.get(span.clone())?;
        let quoted = ['"', '\'']
            .iter()
            .any(|&q| raw.len() == text.len() + 2 && raw.starts_with(q) && raw.ends_with(q));
        (quoted && raw.get(1..raw.len() - 1) == Some(text)).then_some(span.start + 1)
    }

    fn templated_string(&mut self, key: &str, v: &Value, allowed: Placeholders) -> Option<String> {
        let text = self.string(key, v, STRING_HINT)?;
        self.template(key, &v.span(), text, allowed)
            .then(|| text.to_string())
    }

    /// A command line: an array of strings, or a string split like a shell
    /// would (quotes, backslashes) although no shell ever runs it.
    fn argv(&mut self, key: &str, v: &Value, allowed: Placeholders) -> Option<Vec<String>> {
        let argv = match v.get_ref() {
            DeValue::String(s) => self.split_command(key, v, s, allowed)?,
            DeValue::Array(items) => {
                let mut argv = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items.iter() {
                    match self.templated_string(key, item, allowed) {
                        Some(arg) => argv.push(arg),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                argv
            }
            _ => return self.wrong_type(key, v, "an array of strings or a string", ARGV_HINT),
        };
        match argv.first() {
            None => {
                self.error(v.span(), format!("`{key}` is empty"), ARGV_HINT);
                None
            }
            Some(program) if program.trim().is_empty() => {
                self.error(
                    v.span(),
                    format!("the program name in `{key}` is empty"),
                    ARGV_HINT,
                );
                None
            }
            Some(_) => Some(argv),
        }
    }

    fn split_command(
        &mut self,
        key: &str,
        v: &Value,
        text: &str,
        allowed: Placeholders,
    ) -> Option<Vec<String>> {
        if !self.template(key, &v.span(), text, allowed) {
            return None;
        }
        let Ok(words) = shell_words::split(text) else {
            self.error(
                v.span(),
                format!("unbalanced quotes in `{key}`"),
                "close the quote, or write the command as an array of strings",
            );
            return None;
        };
        if let Some(op) = words.iter().find(|w| is_shell_operator(w)) {
            self.error(
                v.span(),
                format!(
                    "`{key}` contains the shell operator {}, but no shell runs it",
                    quote(op)
                ),
                "to use a shell, write [\"sh\", \"-c\", \"...\"]; to pass it as an argument, use an array",
            );
            return None;
        }
        Some(words)
    }

    /// A list of strings with their spans, without duplicates.
    fn string_list<'v>(&mut self, key: &str, v: &'v Value) -> Option<Vec<(&'v str, Span)>> {
        let DeValue::Array(items) = v.get_ref() else {
            return self.wrong_type(
                key,
                v,
                "an array of strings",
                "write a list, e.g. [\"a\", \"b\"]",
            );
        };
        let mut out: Vec<(&str, Span)> = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            let Some(s) = self.string(key, item, STRING_HINT) else {
                ok = false;
                continue;
            };
            if out.iter().any(|(seen, _)| *seen == s) {
                self.error(
                    item.span(),
                    format!("{} is listed twice in `{key}`", quote(s)),
                    "remove one of them",
                );
                ok = false;
                continue;
            }
            out.push((s, item.span()));
        }
        ok.then_some(out)
    }

    // ---- tables -------------------------------------------------------

    /// The table at `v`, after reporting its unknown keys.
    fn table<'v, 'i>(
        &mut self,
        label: String,
        key: &str,
        at: Span,
        v: &'v Value<'i>,
        known: &[&str],
    ) -> Option<Table<'v, 'i>> {
        let DeValue::Table(t) = v.get_ref() else {
            return self.wrong_type(key, v, "a table", TABLE_HINT);
        };
        let table = Table::new(label, at, t);
        self.unknown_keys(&table, known);
        Some(table)
    }

    /// The table under `key` of `parent`, if present.
    fn sub_table<'v, 'i>(
        &mut self,
        parent: &Table<'v, 'i>,
        label: String,
        key: &str,
        known: &[&str],
    ) -> Option<Table<'v, 'i>> {
        let (k, v) = parent.entry(key)?;
        self.table(label, key, k.span(), v, known)
    }

    fn unknown_keys(&mut self, table: &Table, known: &[&str]) {
        for (k, v) in &table.entries {
            let key = k.get_ref().as_ref();
            if known.contains(&key) {
                continue;
            }
            let what = if matches!(v.get_ref(), DeValue::Table(_)) {
                "table"
            } else {
                "key"
            };
            let hint = match closest(key, known.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("valid keys here: {}", known.join(", ")),
            };
            self.error(
                k.span(),
                format!("unknown {what} `{}` in {}", clip(key), table.label),
                hint,
            );
        }
    }

    fn missing(&mut self, table: &Table, key: &str, hint: &str) {
        self.error(
            table.at.clone(),
            format!("{} has no `{key}`", table.label),
            hint,
        );
    }

    // ---- [supervisor] -------------------------------------------------

    fn supervisor(&mut self, root: &Table) -> SupervisorSettings {
        let mut settings = SupervisorSettings::with_defaults(&self.dir);
        let Some(t) = self.sub_table(root, "[supervisor]".into(), "supervisor", SUPERVISOR_KEYS)
        else {
            return settings;
        };
        if let Some(v) = t.get("state_dir")
            && let Some(dir) = self.string("state_dir", v, STRING_HINT)
        {
            if dir.trim().is_empty() {
                self.error(
                    v.span(),
                    "`state_dir` is empty",
                    "name a directory, e.g. \".supervise\"",
                );
            } else {
                settings.state_dir = normalize(&self.dir.join(dir));
            }
        }
        if let Some(d) = t
            .get("shutdown_timeout")
            .and_then(|v| self.duration("shutdown_timeout", v))
        {
            settings.shutdown_timeout = d;
        }
        if let Some(v) = t.get("log_max_size")
            && let Some(size) = self.size("log_max_size", v)
        {
            if size == 0 {
                self.error(v.span(), "`log_max_size` must be more than zero", SIZE_HINT);
            } else {
                settings.log_max_size = size;
            }
        }
        if let Some(keep) = t.get("log_keep").and_then(|v| {
            self.bounded(
                "log_keep",
                v,
                0..=u32::MAX.into(),
                "give the number of rotated log files to keep",
            )
        }) {
            settings.log_keep = keep;
        }
        if let Some(v) = t.get("metrics")
            && let Some(text) = self.string("metrics", v, STRING_HINT)
        {
            match text.parse::<SocketAddr>() {
                Ok(addr) => settings.metrics = Some(addr),
                Err(_) => self.error(
                    v.span(),
                    format!("invalid address {} in `metrics`", quote(text)),
                    "use an IP address and a port, e.g. \"127.0.0.1:9464\"",
                ),
            }
        }
        settings
    }

    // ---- [services.*] -------------------------------------------------

    fn services(&mut self, root: &Table) -> Vec<Draft> {
        const HINT: &str = "add a service, e.g. [services.web] with command = [\"./web\"]";
        let Some((key, v)) = root.entry("services") else {
            self.error(0..0, "the spec defines no services", HINT);
            return Vec::new();
        };
        let DeValue::Table(services) = v.get_ref() else {
            self.wrong_type::<()>("services", v, "a table", HINT);
            return Vec::new();
        };
        let services = Table::new("[services]".into(), key.span(), services);
        if services.entries.is_empty() {
            self.error(key.span(), "the spec defines no services", HINT);
        }
        // A set, since every dependency of every service is looked up in it.
        let names: BTreeSet<&str> = services
            .entries
            .iter()
            .map(|(k, _)| k.get_ref().as_ref())
            .collect();
        services
            .entries
            .iter()
            .filter_map(|(k, v)| self.service(k, v, &names))
            .collect()
    }

    fn service(&mut self, key: &Key, v: &Value, names: &BTreeSet<&str>) -> Option<Draft> {
        let name = key.get_ref().as_ref();
        self.service_name(name, key.span());
        let label = format!("[services.{}]", clip(name));
        let t = self.table(label.clone(), name, key.span(), v, SERVICE_KEYS)?;
        self.port_uses.clear();

        let command = match t.get("command") {
            Some(v) => self.argv("command", v, Placeholders::Replica),
            None => {
                self.missing(&t, "command", ARGV_HINT);
                None
            }
        };
        let replicas = self.field(&t, "replicas", |c, k, v| {
            c.bounded(
                k,
                v,
                0..=MAX_REPLICAS,
                "use 0 to define a service without starting it; more than 10000 replicas is not supported",
            )
        });
        let port: Option<u16> = self.field(&t, "port", |c, k, v| {
            c.bounded(k, v, 1..=65535, "use a TCP port between 1 and 65535")
        });
        let cwd = self.field(&t, "cwd", |c, k, v| {
            c.templated_string(k, v, Placeholders::Replica)
        });
        let env = self.service_env(&t, name);
        let group = self.field(&t, "group", Self::group);
        let user = self.field(&t, "user", |c, k, v| c.user(k, v, group.as_ref()));
        let stop_signal = self.field(&t, "stop_signal", |c, k, v| {
            c.signal(
                k,
                v,
                &[Signal::SIGSTOP],
                "SIGSTOP pauses a process instead of stopping it; use SIGTERM, SIGINT or SIGQUIT",
            )
        });
        let stop_timeout = self.field(&t, "stop_timeout", Self::duration);
        let health = self.health(&t, name);
        let (restart, policy) = self.restart(&t, name);
        let (depends_on, dependency_at) = self.depends_on(&t, name, names);
        let failover = self.failover(&t, name);
        let image = self
            .field(&t, "image", |c, k, v| c.string(k, v, STRING_HINT))
            .map(str::to_string);
        let port_value = t.get("port");

        let defaults = Service::with_defaults(name, command.unwrap_or_default());
        let replicas: u32 = replicas.unwrap_or(defaults.replicas);
        self.check_port_uses(name, port_value.is_some());
        if let (Some(base), Some(v)) = (port, port_value) {
            let end = u32::from(base) + replicas;
            if end > 65536 {
                self.error(
                    v.span(),
                    format!(
                        "{} of service {} go past 65535",
                        ports(base.into(), end),
                        quote(name)
                    ),
                    "lower `port` or `replicas`; replica i listens on port + i",
                );
            }
        }

        Some(Draft {
            service: Service {
                replicas,
                cwd,
                env,
                port,
                user,
                group,
                stop_signal: stop_signal.unwrap_or(defaults.stop_signal),
                stop_timeout: stop_timeout.unwrap_or(defaults.stop_timeout),
                health,
                restart,
                depends_on,
                failover,
                image,
                ..defaults
            },
            at: key.span(),
            port_at: port_value.map(|v| v.span()),
            dependency_at,
            policy,
        })
    }

    fn service_name(&mut self, name: &str, at: Span) {
        if is_service_name(name) {
            return;
        }
        let lower: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let hint = if is_service_name(&lower) {
            format!("use lowercase letters, digits, `-` and `_`, e.g. \"{lower}\"")
        } else {
            format!(
                "use lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most {MAX_NAME_LEN} characters"
            )
        };
        self.error(at, format!("invalid service name {}", quote(name)), hint);
    }

    /// `{port}` anywhere in a service that has no `port` cannot be expanded.
    fn check_port_uses(&mut self, service: &str, has_port: bool) {
        let uses = std::mem::take(&mut self.port_uses);
        if let (false, Some(first)) = (has_port, uses.into_iter().next()) {
            self.error(
                first,
                format!(
                    "`{{port}}` is used but service {} has no `port`",
                    quote(service)
                ),
                "set `port` (replica i gets port + i) or remove the placeholder",
            );
        }
    }

    /// `env_file` entries, then `env` entries (which win), without duplicate keys.
    fn service_env(&mut self, t: &Table, service: &str) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(v) = t.get("env_file") {
            for (key, value) in self.env_file(v, service) {
                // An env file is data, not a template: its braces are literal.
                set_env(&mut env, key, value.replace('{', "{{").replace('}', "}}"));
            }
        }
        let Some(v) = t.get("env") else {
            return env;
        };
        let DeValue::Table(vars) = v.get_ref() else {
            self.wrong_type::<()>("env", v, "a table", "write env = { NAME = \"value\" }");
            return env;
        };
        for (k, value) in Table::new(String::new(), v.span(), vars).entries {
            let key = k.get_ref().as_ref();
            if !is_env_name(key) {
                self.error(
                    k.span(),
                    format!("invalid environment variable name {}", quote(key)),
                    "use letters, digits and `_`, not starting with a digit",
                );
            }
            let name = format!("env.{}", clip(key));
            if let Some(value) = self.templated_string(&name, value, Placeholders::Replica) {
                set_env(&mut env, key.to_string(), value);
            }
        }
        env
    }

    fn env_file(&mut self, v: &Value, service: &str) -> Vec<(String, String)> {
        let Some(rel) = self.string("env_file", v, STRING_HINT) else {
            return Vec::new();
        };
        let full = self.dir.join(rel);
        let shown = self.path.parent().unwrap_or(Path::new("")).join(rel);
        let text = match env_file::read(&full) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    self.error(
                        v.span(),
                        format!("env file {} is not valid UTF-8", quote(rel)),
                        "save the env file as UTF-8 text",
                    );
                    return Vec::new();
                }
            },
            Err(why) => {
                self.error(
                    v.span(),
                    format!("env file {} {why}", quote(rel)),
                    format!(
                        "the path is relative to the spec's directory {}",
                        self.dir.display()
                    ),
                );
                return Vec::new();
            }
        };
        let (vars, errors) = parse_env_file(&text);
        for e in errors {
            let hint = format!("{} (env file of service {})", e.hint, quote(service));
            let diagnostic = Diagnostic::at(&shown, &text, e.span, e.message, hint);
            // Listed where the spec names the file, so the report stays in spec order.
            self.found.push((v.span().start, diagnostic));
        }
        vars
    }

    fn account<'v>(&mut self, key: &str, v: &'v Value) -> Option<Account<'v>> {
        let hint = "give a name in quotes or a numeric id";
        if let DeValue::Integer(_) = v.get_ref() {
            return self
                .bounded(key, v, 0..=u32::MAX.into(), hint)
                .map(Account::Id);
        }
        let text = self.string(key, v, hint)?;
        Some(match text.parse::<u32>() {
            Ok(id) => Account::Id(id),
            Err(_) => Account::Name(text),
        })
    }

    fn group(&mut self, key: &str, v: &Value) -> Option<GroupSpec> {
        let account = self.account(key, v)?;
        let found = match account {
            Account::Name(name) => Group::from_name(name),
            Account::Id(gid) => Group::from_gid(Gid::from_raw(gid)),
        };
        match (found, account) {
            (Ok(Some(g)), _) => Some(GroupSpec {
                name: g.name,
                gid: g.gid.as_raw(),
            }),
            // setgid only needs the number, so a gid without an entry is usable.
            (Ok(None), Account::Id(gid)) => Some(GroupSpec {
                name: gid.to_string(),
                gid,
            }),
            (Ok(None), Account::Name(name)) => {
                self.error(
                    v.span(),
                    format!("unknown group {}", quote(name)),
                    "create the group, or give an existing group name or a numeric gid",
                );
                None
            }
            (Err(e), _) => {
                self.error(
                    v.span(),
                    format!("cannot look up the group: {e}"),
                    "check the system's group database (/etc/group, NSS)",
                );
                None
            }
        }
    }

    fn user(&mut self, key: &str, v: &Value, group: Option<&GroupSpec>) -> Option<UserSpec> {
        let account = self.account(key, v)?;
        let found = match account {
            Account::Name(name) => User::from_name(name),
            Account::Id(uid) => User::from_uid(Uid::from_raw(uid)),
        };
        match (found, account) {
            (Ok(Some(u)), _) => Some(UserSpec {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            // Without a passwd entry the primary group is unknown; an explicit `group` supplies it.
            (Ok(None), Account::Id(uid)) => match group {
                Some(g) => Some(UserSpec {
                    name: uid.to_string(),
                    uid,
                    gid: g.gid,
                }),
                None => {
                    self.error(
                        v.span(),
                        format!("uid {uid} has no entry in the user database"),
                        "set `group` as well, so the replica's group is known",
                    );
                    None
                }
            },
            (Ok(None), Account::Name(name)) => {
                self.error(
                    v.span(),
                    format!("unknown user {}", quote(name)),
                    "create the user, or give an existing user name or a numeric uid",
                );
                None
            }
            (Err(e), _) => {
                self.error(
                    v.span(),
                    format!("cannot look up the user: {e}"),
                    "check the system's user database (/etc/passwd, NSS)",
                );
                None
            }
        }
    }

    fn health(&mut self, service: &Table, name: &str) -> Option<Health> {
        let label = format!("[services.{}.health]", clip(name));
        let t = self.sub_table(service, label, "health", HEALTH_KEYS)?;
        let probes: Vec<(&Key, &Value)> = t
            .entries
            .iter()
            .filter(|(k, _)| PROBE_KEYS.contains(&k.get_ref().as_ref()))
            .copied()
            .collect();
        let parsed: Vec<Option<Probe>> = probes
            .iter()
            .map(|(k, v)| self.probe(k.get_ref(), v))
            .collect();
        if let [(first, _), rest @ ..] = probes.as_slice() {
            for (k, _) in rest {
                self.error(
                    k.span(),
                    format!(
                        "`health` has more than one probe: `{}` and `{}`",
                        first.get_ref(),
                        k.get_ref()
                    ),
                    "keep exactly one of exec, http, tcp, notify and log",
                );
            }
        } else {
            self.error(
                t.at.clone(),
                format!("{} has no probe", t.label),
                "add one of exec = [...], http = \"URL\", tcp = \"HOST:PORT\", notify = true or log = \"REGEX\"",
            );
        }
        let is_notify = matches!(parsed.first(), Some(Some(Probe::Notify)));

        let mut health = Health::with_defaults(Probe::Notify);
        set(
            &mut health.interval,
            self.field(&t, "interval", Self::nonzero_duration),
        );
        set(
            &mut health.timeout,
            self.field(&t, "timeout", Self::nonzero_duration),
        );
        set(
            &mut health.retries,
            self.field(&t, "retries", |c, k, v| {
                c.bounded(
                    k,
                    v,
                    1..=u32::MAX.into(),
                    "retries counts the consecutive failures that make a replica unhealthy; use 1 or more",
                )
            }),
        );
        set(
            &mut health.start_period,
            self.field(&t, "start_period", Self::duration),
        );
        set(
            &mut health.action,
            self.field(&t, "action", |c, k, v| {
                c.choice(
                    k,
                    v,
                    &[
                        ("restart", HealthAction::Restart),
                        ("none", HealthAction::None),
                    ],
                )
            }),
        );
        if let Some((k, v)) = t.entry("watchdog") {
            health.watchdog = self.nonzero_duration("watchdog", v);
            if !is_notify && !probes.is_empty() {
                self.error(
                    k.span(),
                    "`watchdog` needs `notify = true`",
                    "the watchdog expects WATCHDOG=1 notifications; use notify = true or remove `watchdog`",
                );
            }
        }
        health.probe = parsed.into_iter().next().flatten()?;
        Some(health)
    }

    fn probe(&mut self, key: &str, v: &Value) -> Option<Probe> {
        match key {
            "exec" => self.argv(key, v, Placeholders::Replica).map(Probe::Exec),
            "http" => self
                .http_url(key, v, Some(Placeholders::Replica))
                .map(Probe::Http),
            "tcp" => {
                let target = self.templated_string(key, v, Placeholders::Replica)?;
                if is_host_port(&target) {
                    Some(Probe::Tcp(target))
                } else {
                    self.error(
                        v.span(),
                        format!("expected \"HOST:PORT\" in `tcp`, got {}", quote(&target)),
                        "e.g. tcp = \"127.0.0.1:{port}\"",
                    );
                    None
                }
            }
            "notify" => {
                if self.boolean(key, v)? {
                    Some(Probe::Notify)
                } else {
                    self.error(
                        v.span(),
                        "`notify = false` is not a probe",
                        "set notify = true, or remove it and use another probe",
                    );
                    None
                }
            }
            _ => {
                let pattern = self.string(key, v, STRING_HINT)?;
                match regex::Regex::new(pattern) {
                    Ok(_) => Some(Probe::Log(pattern.to_string())),
                    Err(e) => {
                        self.error(
                            v.span(),
                            format!("invalid regular expression in `{key}`: {}", regex_reason(&e)),
                            "`log` is a regular expression matched against each output line; escape special characters with \\\\",
                        );
                        None
                    }
                }
            }
        }
    }

    /// An `http://` or `https://` URL, a template when `placeholders` is given.
    fn http_url(
        &mut self,
        key: &str,
        v: &Value,
        placeholders: Option<Placeholders>,
    ) -> Option<String> {
        let url = match placeholders {
            Some(allowed) => self.templated_string(key, v, allowed)?,
            None => self.string(key, v, STRING_HINT)?.to_string(),
        };
        let lower = url.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        if rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) {
            return Some(url);
        }
        self.error(
            v.span(),
            format!(
                "`{key}` must be an http:// or https:// URL, got {}",
                quote(&url)
            ),
            "e.g. \"http://127.0.0.1:8080/health\"",
        );
        None
    }

    /// The restart policy, and the `policy` itself unless it was invalid.
    fn restart(&mut self, service: &Table, name: &str) -> (RestartPolicy, Option<Policy>) {
        let mut restart = RestartPolicy::default();
        let label = format!("[services.{}.restart]", clip(name));
        let Some(t) = self.sub_table(service, label, "restart", RESTART_KEYS) else {
            let valid = service.get("restart").is_none();
            return (restart, valid.then_some(Policy::Always));
        };
        let policy = match t.get("policy") {
            Some(v) => self.choice(
                "policy",
                v,
                &[
                    ("always", Policy::Always),
                    ("on-failure", Policy::OnFailure),
                    ("never", Policy::Never),
                ],
            ),
            None => Some(Policy::Always),
        };
        set(&mut restart.policy, policy);
        set(
            &mut restart.exit_codes,
            self.field(&t, "exit_codes", Self::exit_codes),
        );
        set(&mut restart.delay, self.field(&t, "delay", Self::duration));
        set(
            &mut restart.reset_after,
            self.field(&t, "reset_after", Self::duration),
        );
        set(
            &mut restart.limit,
            self.field(&t, "limit", |c, k, v| {
                c.bounded(
                    k,
                    v,
                    0..=u32::MAX.into(),
                    "give the number of restarts allowed within `window`; 0 never gives up",
                )
            }),
        );
        set(
            &mut restart.window,
            self.field(&t, "window", Self::nonzero_duration),
        );
        match t.get("max_delay") {
            Some(v) => {
                if let Some(max) = self.duration("max_delay", v) {
                    if max < restart.delay {
                        self.error(
                            v.span(),
                            format!(
                                "`max_delay` ({}) is shorter than `delay` ({})",
                                humantime::format_duration(max),
                                humantime::format_duration(restart.delay)
                            ),
                            "the backoff grows from `delay` up to `max_delay`; raise `max_delay` or lower `delay`",
                        );
                    }
                    restart.max_delay = max;
                }
            }
            // A long `delay` alone raises the default cap rather than contradicting it.
            None => restart.max_delay = restart.max_delay.max(restart.delay),
        }
        (restart, policy)
    }

    fn exit_codes(&mut self, key: &str, v: &Value) -> Option<Vec<i32>> {
        let DeValue::Array(items) = v.get_ref() else {
            return self.wrong_type(key, v, "an array of integers", "e.g. exit_codes = [0, 2]");
        };
        let codes: Vec<Option<i32>> = items
            .iter()
            .map(|item| self.bounded(key, item, 0..=255, "exit codes are between 0 and 255"))
            .collect();
        codes.into_iter().collect()
    }

    /// The dependencies as written, with the span of each entry.
    fn depends_on(
        &mut self,
        service: &Table,
        me: &str,
        names: &BTreeSet<&str>,
    ) -> (Vec<Dependency>, Vec<Span>) {
        const CONDITIONS: &[(&str, Condition)] = &[
            ("started", Condition::Started),
            ("healthy", Condition::Healthy),
            ("completed", Condition::Completed),
        ];
        let mut out = (Vec::new(), Vec::new());
        let Some(v) = service.get("depends_on") else {
            return out;
        };
        // (service, span of its name, span of the whole entry, condition)
        let entries: Vec<(&str, Span, Span, Option<Condition>)> = match v.get_ref() {
            DeValue::Array(_) => self
                .string_list("depends_on", v)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, at)| (name, at.clone(), at, Some(Condition::Started)))
                .collect(),
            DeValue::Table(t) => Table::new(String::new(), v.span(), t)
                .entries
                .into_iter()
                .map(|(k, c)| {
                    let name = k.get_ref().as_ref();
                    let key = format!("depends_on.{}", clip(name));
                    let condition = self.choice(&key, c, CONDITIONS);
                    (name, k.span(), k.span().start..c.span().end, condition)
                })
                .collect(),
            _ => {
                self.wrong_type::<()>(
                    "depends_on",
                    v,
                    "an array of service names or a table of conditions",
                    "write depends_on = [\"db\"] or depends_on = { db = \"healthy\" }",
                );
                Vec::new()
            }
        };
        for (name, name_at, entry_at, condition) in entries {
            if name == me {
                self.error(
                    name_at,
                    format!("service {} depends on itself", quote(me)),
                    "remove it from its own `depends_on`",
                );
            } else if !names.contains(&name) {
                let hint = match closest(name, names.iter().copied()) {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None => format!(
                        "defined services: {}",
                        list(&names.iter().copied().collect::<Vec<_>>())
                    ),
                };
                self.error(
                    name_at,
                    format!("unknown service {} in `depends_on`", quote(name)),
                    hint,
                );
            } else if let Some(condition) = condition {
                out.0.push(Dependency {
                    service: name.to_string(),
                    condition,
                });
                out.1.push(entry_at);
            }
        }
        out
    }

    fn failover(&mut self, service: &Table, name: &str) -> Option<Failover> {
        let label = format!("[services.{}.failover]", clip(name));
        let t = self.sub_table(service, label, "failover", FAILOVER_KEYS)?;
        match t.get("mode") {
            Some(v) => {
                self.choice("mode", v, &[("active-standby", ())]);
            }
            None => self.missing(&t, "mode", "add mode = \"active-standby\""),
        }
        let command = self.field(&t, "promote", |c, k, v| c.argv(k, v, Placeholders::Hook));
        let signal = self.field(&t, "promote_signal", |c, k, v| {
            c.signal(
                k,
                v,
                &[Signal::SIGKILL, Signal::SIGSTOP],
                "SIGKILL and SIGSTOP cannot be caught, so the replica could not react; use e.g. SIGUSR1",
            )
        });
        if let (Some(_), Some((k, _))) = (t.get("promote"), t.entry("promote_signal")) {
            self.error(
                k.span(),
                "both `promote` and `promote_signal` are set",
                "choose one: a command to run, or a signal for the promoted replica",
            );
        }
        Some(Failover {
            promote: command
                .map(Promote::Command)
                .or(signal.map(Promote::Signal)),
        })
    }

    /// Reads `key` of `t` with `read`, when present.
    fn field<'v, 'i, T>(
        &mut self,
        t: &Table<'v, 'i>,
        key: &str,
        read: impl FnOnce(&mut Self, &str, &'v Value<'i>) -> Option<T>,
    ) -> Option<T> {
        let v = t.get(key)?;
        read(self, key, v)
    }

    // ---- [[alerts]] ---------------------------------------------------

    fn alerts(&mut self, root: &Table) -> Vec<Alert> {
        let Some(v) = root.get("alerts") else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type::<()>(
                "alerts",
                v,
                "an array of tables",
                "write each alert as an [[alerts]] section (double brackets)",
            );
            return Vec::new();
        };
        items.iter().filter_map(|item| self.alert(item)).collect()
    }

    fn alert(&mut self, v: &Value) -> Option<Alert> {
        let t = self.table("[[alerts]]".into(), "alerts", v.span(), v, ALERT_KEYS)?;
        let events = match t.get("events") {
            Some(v) => self.events(v),
            None => {
                self.missing(&t, "events", "e.g. events = [\"failed\", \"unhealthy\"]");
                None
            }
        };
        let command = self.field(&t, "command", |c, k, v| c.argv(k, v, Placeholders::Replica));
        let webhook = self.field(&t, "webhook", |c, k, v| c.http_url(k, v, None));
        match (t.entry("command"), t.entry("webhook")) {
            (None, None) => self.missing(
                &t,
                "command",
                "add command = [\"./notify.sh\"] (the event arrives as JSON on stdin) or webhook = \"http://...\"",
            ),
            (Some(_), Some((k, _))) => self.error(
                k.span(),
                "an alert has both `command` and `webhook`",
                "use one [[alerts]] section for each target",
            ),
            _ => {}
        }
        let target = command
            .map(AlertTarget::Command)
            .or(webhook.map(AlertTarget::Webhook))?;
        Some(Alert {
            events: events?,
            target,
        })
    }

    fn events(&mut self, v: &Value) -> Option<Vec<String>> {
        let events = self.string_list("events", v)?;
        if events.is_empty() {
            self.error(
                v.span(),
                "`events` is empty",
                "list the events to alert on, e.g. [\"failed\", \"unhealthy\"]",
            );
            return None;
        }
        let mut ok = true;
        for (event, at) in &events {
            if !EVENTS.contains(event) {
                ok = false;
                self.not_one_of("events", at.clone(), event, EVENTS);
            }
        }
        ok.then(|| events.iter().map(|(e, _)| e.to_string()).collect())
    }

    // ---- checks across services ---------------------------------------

    /// Port ranges, in file order, so a clash is reported at the later service.
    fn check_ports(&mut self, drafts: &[Draft]) {
        let mut taken: Vec<(&str, u32, u32)> = Vec::new();
        for d in drafts {
            let (Some(port), Some(at)) = (d.service.port, &d.port_at) else {
                continue;
            };
            // A service scaled to 0 still owns its base port: scaling it up must not collide.
            let first = u32::from(port);
            let end = first + d.service.replicas.max(1);
            if let Some((other, other_first, other_end)) = taken
                .iter()
                .find(|(_, f, e)| first < *e && *f < end)
                .copied()
            {
                self.error(
                    at.clone(),
                    format!(
                        "service {} ({}) clashes with service {} ({})",
                        quote(&d.service.name),
                        ports(first, end),
                        quote(other),
                        ports(other_first, other_end),
                    ),
                    "give each service its own port range; replica i listens on port + i",
                );
            }
            taken.push((&d.service.name, first, end));
        }
    }

    /// `drafts` are sorted by name.
    fn check_dependencies(&mut self, drafts: &[Draft]) {
        let index = |name: &str| {
            drafts
                .binary_search_by(|d| d.service.name.as_str().cmp(name))
                .ok()
        };
        for d in drafts {
            for (dep, at) in d.service.depends_on.iter().zip(&d.dependency_at) {
                let target = index(&dep.service).map(|i| &drafts[i]);
                if dep.condition == Condition::Completed
                    && target.is_some_and(|t| t.policy == Some(Policy::Always))
                {
                    self.error(
                        at.clone(),
                        format!(
                            "service {} never completes: its restart policy is \"always\"",
                            quote(&dep.service)
                        ),
                        format!(
                            "give {} restart = {{ policy = \"never\" }} or \"on-failure\", or wait for \"started\" or \"healthy\"",
                            quote(&dep.service)
                        ),
                    );
                }
            }
        }
        let graph = dependency_graph(drafts);
        for cycle in find_cycles(&graph) {
            let path: Vec<&str> = cycle
                .iter()
                .map(|&i| drafts[i].service.name.as_str())
                .collect();
            // Point at the dependency that closes the cycle.
            let (from, to) = (cycle[cycle.len() - 2], cycle[0]);
            let at = drafts[from]
                .service
                .depends_on
                .iter()
                .position(|dep| dep.service == drafts[to].service.name)
                .and_then(|i| drafts[from].dependency_at.get(i).cloned())
                .unwrap_or_else(|| drafts[from].at.clone());
            self.error(
                at,
                format!("dependency cycle: {}", path.join(" -> ")),
                "remove one of these dependencies; a service starts only after those it depends on",
            );
        }
    }

    fn not_one_of(&mut self, key: &str, at: Span, text: &str, names: &[&str]) {
        let hint = match closest(text, names.iter().copied()) {
            Some(name) => format!("did you mean \"{name}\"?"),
            None => format!("use one of {}", list(names)),
        };
        self.error(
            at,
            format!("invalid value {} for `{key}`", quote(text)),
            hint,
        );
    }
}

/// Edges from each service to the services it depends on (indices into `drafts`,
/// which are sorted by name); unknown services and self-dependencies are left out.
fn dependency_graph(drafts: &[Draft]) -> Vec<Vec<usize>> {
    drafts
        .iter()
        .enumerate()
        .map(|(me, d)| {
            d.service
                .depends_on
                .iter()
                .filter_map(|dep| {
                    drafts
                        .binary_search_by(|t| t.service.name.as_str().cmp(&dep.service))
                        .ok()
                })
                .filter(|&to| to != me)
                .collect()
        })
        .collect()
}

/// Services in start order: dependencies first, ties broken by name.
fn start_order(drafts: Vec<Draft>) -> Vec<Service> {
    let graph = dependency_graph(&drafts);
    let order = topological_order(&graph);
    let mut slots: Vec<Option<Service>> = drafts.into_iter().map(|d| Some(d.service)).collect();
    order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

/// Overwrites `slot` with a value that was read successfully.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Drops `.` components, so `./.supervise` and `cwd = "."` read naturally in
/// messages and plans. `..` stays: it may cross a symlink.
pub(super) fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn ports(first: u32, end: u32) -> String {
    if end <= first + 1 {
        format!("port {first}")
    } else {
        format!("ports {first}-{}", end - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str) -> Result<Spec, Diagnostics> {
        Checker::new(Path::new("spec.toml"), PathBuf::from("/srv"), src).check()
    }

    fn spec(src: &str) -> Spec {
        check(src).unwrap_or_else(|d| panic!("rejected:\n{d}"))
    }

    /// (line, message) of every problem.
    fn problems(src: &str) -> Vec<(usize, String)> {
        match check(src) {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(all) => all
                .0
                .into_iter()
                .map(|d| (d.location.map_or(0, |(l, _)| l), d.message))
                .collect(),
        }
    }

    fn one_problem(src: &str) -> (usize, String) {
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
    fn order_as_written_is_kept_for_env_and_depends_on() {
        let s = spec(
            "[services.z]\ncommand = [\"z\"]\n\
             [services.a]\ncommand = [\"a\"]\n\
             [services.m]\ncommand = [\"m\"]\n\
             depends_on = [\"z\", \"a\"]\n\
             env.ZED = \"1\"\nenv.ALPHA = \"2\"\n",
        );
        let m = s.service("m").unwrap();
        let deps: Vec<&str> = m.depends_on.iter().map(|d| d.service.as_str()).collect();
        assert_eq!(deps, ["z", "a"]);
        let keys: Vec<&str> = m.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ZED", "ALPHA"]);
        let order: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["a", "z", "m"]);
    }

    #[test]
    fn string_commands_split_like_a_shell() {
        let s = spec(
            "[services.a]\ncommand = \"./run --msg 'hello {service}' \\\"x y\\\" {{literal}}\"\n",
        );
        assert_eq!(
            s.services[0].command,
            ["./run", "--msg", "hello {service}", "x y", "{{literal}}"]
        );
        let plan = s.services[0].replica(&s.dir, 0);
        assert_eq!(plan.argv[4], "{literal}");
    }

    #[test]
    fn a_long_delay_raises_the_default_backoff_cap() {
        let s = spec("[services.a]\ncommand = [\"a\"]\nrestart = { delay = \"1m\" }\n");
        assert_eq!(s.services[0].restart.max_delay, Duration::from_secs(60));
    }

    #[test]
    fn signals_per_key() {
        let s = spec(
            "[services.a]\ncommand = [\"a\"]\nstop_signal = \"kill\"\nreplicas = 2\n\
             failover = { mode = \"active-standby\", promote_signal = \"usr1\" }\n",
        );
        assert_eq!(s.services[0].stop_signal, Signal::SIGKILL);
        let promote = s.services[0]
            .failover
            .as_ref()
            .and_then(|f| f.promote.clone());
        assert_eq!(promote, Some(Promote::Signal(Signal::SIGUSR1)));
        let (_, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\n\
             failover = { mode = \"active-standby\", promote_signal = \"SIGKILL\" }\n",
        );
        assert_eq!(message, "SIGKILL cannot be used as `promote_signal`");
    }

    #[test]
    fn a_two_service_cycle_is_reported_once() {
        let found = problems(
            "[services.a]\ncommand = [\"a\"]\ndepends_on = [\"b\"]\n\
             [services.b]\ncommand = [\"b\"]\ndepends_on = [\"a\"]\n",
        );
        assert_eq!(found, [(6, "dependency cycle: a -> b -> a".to_string())]);
    }

    #[test]
    fn completed_is_fine_for_jobs_that_end() {
        spec(
            "[services.job]\ncommand = [\"j\"]\nrestart = { policy = \"on-failure\" }\n\
             [services.app]\ncommand = [\"a\"]\ndepends_on = { job = \"completed\" }\n",
        );
    }

    #[test]
    fn a_service_without_replicas_still_owns_its_port() {
        let (line, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\nport = 9000\nreplicas = 0\n\
             [services.b]\ncommand = [\"b\"]\nport = 9000\n",
        );
        assert_eq!(line, 7);
        assert!(message.contains("clashes with service \"a\""), "{message}");
    }

    #[test]
    fn placeholders_per_place() {
        spec(
            "[services.a]\ncommand = [\"a\", \"{port}\"]\nport = 80\ncwd = \"{service}/{replica}\"\n\
             health = { http = \"http://127.0.0.1:{port}/{service}\" }\n\
             failover = { mode = \"active-standby\", promote = \"./p {pid} {replica}\" }\n",
        );
        let (_, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\n\
             [[alerts]]\nevents = [\"failed\"]\ncommand = [\"./n\", \"{pid}\"]\n",
        );
        assert_eq!(message, "`{pid}` is not available in `command`");
        // {port} in a health check counts as a use of `port`.
        let (line, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\n[services.a.health]\ntcp = \"localhost:{port}\"\n",
        );
        assert_eq!(line, 4);
        assert!(message.contains("has no `port`"), "{message}");
    }

    #[test]
    fn notify_with_watchdog() {
        let s = spec(
            "[services.a]\ncommand = [\"a\"]\n\
             health = { notify = true, watchdog = \"10s\", action = \"none\" }\n",
        );
        let h = s.services[0].health.as_ref().unwrap();
        assert_eq!(h.probe, Probe::Notify);
        assert_eq!(h.watchdog, Some(Duration::from_secs(10)));
        assert_eq!(h.action, HealthAction::None);
    }

    #[test]
    fn supervisor_settings() {
        let s = spec(
            "[supervisor]\nstate_dir = \"./var/state\"\nlog_max_size = 4096\nlog_keep = 0\n\
             shutdown_timeout = \"2m\"\n[services.a]\ncommand = [\"a\"]\n",
        );
        assert_eq!(s.supervisor.state_dir, Path::new("/srv/var/state"));
        assert_eq!(s.supervisor.log_max_size, 4096);
        assert_eq!(s.supervisor.log_keep, 0);
        assert_eq!(s.supervisor.shutdown_timeout, Duration::from_secs(120));
        let s = spec("[supervisor]\nstate_dir = \"/run/x\"\n[services.a]\ncommand = [\"a\"]\n");
        assert_eq!(s.supervisor.state_dir, Path::new("/run/x"));
    }

    #[test]
    fn accounts_by_name_or_number() {
        let s = spec("[services.a]\ncommand = [\"a\"]\nuser = 0\ngroup = \"0\"\n");
        assert_eq!(
            s.services[0].user.as_ref().map(|u| u.name.as_str()),
            Some("root")
        );
        assert_eq!(s.services[0].group.as_ref().map(|g| g.gid), Some(0));
        // A uid without a passwd entry needs `group` for its primary group.
        let (_, message) = one_problem("[services.a]\ncommand = [\"a\"]\nuser = 3999999\n");
        assert!(
            message.contains("no entry in the user database"),
            "{message}"
        );
        let s = spec("[services.a]\ncommand = [\"a\"]\nuser = 3999999\ngroup = 3999998\n");
        let user = s.services[0].user.as_ref().unwrap();
        assert_eq!((user.uid, user.gid), (3999999, 3999998));
    }

    #[test]
    fn unknown_keys_list_the_valid_ones_when_nothing_is_close() {
        let all = check("[services.a]\ncommand = [\"a\"]\nwhatever = 1\n").unwrap_err();
        assert!(
            all.0[0]
                .hint
                .starts_with("valid keys here: command, replicas"),
            "{}",
            all.0[0].hint
        );
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
