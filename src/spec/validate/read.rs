//! The generic readers: a TOML value (string, integer, duration, size,
//! signal, choice, command line, template, list) or table to its typed form.
//! Each reports its own problem at the value's span, with a hint of our
//! wording, and returns `None`, so a section module reads a key in one line
//! and goes on to the next; what a value *means* is left to the sections.
//! The pure parsing of single values is in `values`, the wording in `text`.

use std::ops::RangeInclusive;
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::de::{DeTable, DeValue};

use super::text::{clip, closest, list, quote};
use super::values::{is_shell_operator, parse_signal, parse_size, signal_name};
use super::{Checker, Key, Span, Value};
use crate::spec::template::{self, Piece};

pub(super) const STRING_HINT: &str = "put the value in double quotes";
const DURATION_HINT: &str =
    "write a number with a unit in quotes, e.g. \"150ms\", \"2s\" or \"5m\"";
pub(super) const SIZE_HINT: &str = "write a whole number of bytes, or one with a unit in quotes, e.g. \"512KiB\", \"10MiB\" or \"1GiB\"";
const SIGNAL_HINT: &str = "use a signal name such as \"SIGTERM\", \"SIGINT\" or \"SIGQUIT\"";
pub(super) const ARGV_HINT: &str =
    "write the program and its arguments, e.g. [\"./server\", \"--port\", \"{port}\"]";
const TABLE_HINT: &str = "write a [section] of its own, or an inline table { key = value }";

/// A TOML table being read, with its entries in file order.
pub(super) struct Table<'v, 'i> {
    /// How messages name the table, e.g. `[services.api.health]`.
    pub(super) label: String,
    /// Where problems with the table as a whole point: its header or key.
    pub(super) at: Span,
    pub(super) entries: Vec<(&'v Key<'i>, &'v Value<'i>)>,
}

impl<'v, 'i> Table<'v, 'i> {
    pub(super) fn new(label: String, at: Span, table: &'v DeTable<'i>) -> Self {
        let mut entries: Vec<_> = table.iter().collect();
        // toml keeps keys sorted; file order keeps `env` and `depends_on` as written.
        entries.sort_by_key(|(k, _)| k.span().start);
        Table { label, at, entries }
    }

    pub(super) fn entry(&self, key: &str) -> Option<(&'v Key<'i>, &'v Value<'i>)> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .copied()
    }

    pub(super) fn get(&self, key: &str) -> Option<&'v Value<'i>> {
        self.entry(key).map(|(_, v)| v)
    }
}

/// Which placeholders a string may use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Placeholders {
    /// `{service}`, `{replica}`, `{port}`.
    Replica,
    /// Hooks also get the `{pid}` of the replica they are about, and the
    /// fencing `{token}` of a cluster-scope promotion.
    Hook,
}

impl Placeholders {
    fn hint(self) -> &'static str {
        match self {
            Placeholders::Replica => {
                "available placeholders are {service}, {replica} and {port}; write {{ or }} for a literal brace"
            }
            Placeholders::Hook => {
                "available placeholders are {service}, {replica}, {port}, {pid} and {token}; write {{ or }} for a literal brace"
            }
        }
    }
}

impl Checker<'_> {
    pub(super) fn wrong_type<T>(
        &mut self,
        key: &str,
        v: &Value,
        expected: &str,
        hint: &str,
    ) -> Option<T> {
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

    pub(super) fn string<'v>(&mut self, key: &str, v: &'v Value, hint: &str) -> Option<&'v str> {
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
    pub(super) fn bounded<T: TryFrom<i64>>(
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

    /// A count of `min` or more, up to `u32::MAX`: only its lower bound is
    /// a rule worth naming in a message.
    pub(super) fn count(&mut self, key: &str, v: &Value, min: u32, hint: &str) -> Option<u32> {
        self.bounded(key, v, i64::from(min)..=u32::MAX.into(), hint)
    }

    pub(super) fn boolean(&mut self, key: &str, v: &Value) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => self.wrong_type(key, v, "a boolean", "write true or false without quotes"),
        }
    }

    pub(super) fn duration(&mut self, key: &str, v: &Value) -> Option<Duration> {
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
    pub(super) fn nonzero_duration(&mut self, key: &str, v: &Value) -> Option<Duration> {
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

    pub(super) fn size(&mut self, key: &str, v: &Value) -> Option<u64> {
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
    pub(super) fn signal(
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
    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &str,
        v: &Value,
        options: &[(&str, T)],
    ) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let text = self.string(key, v, &format!("use one of {}", list(&names)))?;
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        self.not_one_of(key, v.span(), text, &names);
        None
    }

    /// Reports `text`, the value of `key` at `at`, as none of `names`.
    pub(super) fn not_one_of(&mut self, key: &str, at: Span, text: &str, names: &[&str]) {
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
                "pid" | "token" if allowed == Placeholders::Hook => {}
                "pid" | "token" => {
                    ok = false;
                    self.error(
                        at,
                        format!("`{{{name}}}` is not available in `{key}`"),
                        "only `promote` hooks get {pid}, the process id of the promoted replica, and {token}",
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

    pub(super) fn templated_string(
        &mut self,
        key: &str,
        v: &Value,
        allowed: Placeholders,
    ) -> Option<String> {
        let text = self.string(key, v, STRING_HINT)?;
        self.template(key, &v.span(), text, allowed)
            .then(|| text.to_string())
    }

    /// A command line: an array of strings, or a string split like a shell
    /// would (quotes, backslashes) although no shell ever runs it.
    pub(super) fn argv(
        &mut self,
        key: &str,
        v: &Value,
        allowed: Placeholders,
    ) -> Option<Vec<String>> {
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
    pub(super) fn string_list<'v>(
        &mut self,
        key: &str,
        v: &'v Value,
    ) -> Option<Vec<(&'v str, Span)>> {
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

    /// An `http://` or `https://` URL, a template when `placeholders` is given.
    pub(super) fn http_url(
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

    /// The table at `v`, after reporting its unknown keys.
    pub(super) fn table<'v, 'i>(
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
    pub(super) fn sub_table<'v, 'i>(
        &mut self,
        parent: &Table<'v, 'i>,
        label: String,
        key: &str,
        known: &[&str],
    ) -> Option<Table<'v, 'i>> {
        let (k, v) = parent.entry(key)?;
        self.table(label, key, k.span(), v, known)
    }

    /// Reads `key` of `t` with `read`, when present.
    pub(super) fn field<'v, 'i, T>(
        &mut self,
        t: &Table<'v, 'i>,
        key: &str,
        read: impl FnOnce(&mut Self, &str, &'v Value<'i>) -> Option<T>,
    ) -> Option<T> {
        let v = t.get(key)?;
        read(self, key, v)
    }

    /// Reads `key` of `t` into `slot`, when present and valid; otherwise
    /// `slot` keeps the default it holds.
    pub(super) fn field_into<'v, 'i, T>(
        &mut self,
        t: &Table<'v, 'i>,
        key: &str,
        slot: &mut T,
        read: impl FnOnce(&mut Self, &str, &'v Value<'i>) -> Option<T>,
    ) {
        if let Some(value) = self.field(t, key, read) {
            *slot = value;
        }
    }

    pub(super) fn unknown_keys(&mut self, table: &Table, known: &[&str]) {
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

    pub(super) fn missing(&mut self, table: &Table, key: &str, hint: &str) {
        self.error(
            table.at.clone(),
            format!("{} has no `{key}`", table.label),
            hint,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, one_problem, spec};

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
}
