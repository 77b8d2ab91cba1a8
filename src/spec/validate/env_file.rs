//! Env files (`env_file = ".env"`): `KEY=VALUE` lines as docker compose and
//! systemd's `EnvironmentFile=` read them, minus variable interpolation.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::Span;
use super::text::quote;

/// An env file larger than this is refused: it is a few settings, and a
/// path like /dev/zero must not be read until memory runs out.
const MAX_SIZE: u64 = 1024 * 1024;

/// Reads an env file, which must be a regular file of at most [`MAX_SIZE`];
/// `Err` says why not, to follow the file's quoted name.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, String> {
    // Non-blocking, so that opening a FIFO with no writer cannot hang.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "not found".to_string(),
            _ => format!("cannot be read: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_SIZE {
        return Err(format!("is larger than {} KiB", MAX_SIZE / 1024));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    Ok(bytes)
}

/// A problem in an env file, located in that file.
pub(super) struct EnvFileError {
    pub(super) span: Span,
    pub(super) message: String,
    pub(super) hint: &'static str,
}

/// Parses an env file: `KEY=VALUE` lines, blank lines, `#` comments, an
/// optional `export ` prefix, and values optionally in single quotes (taken
/// literally) or double quotes (where `\"`, `\\`, `\n` and `\t` are escapes).
/// An unquoted value ends at ` #`. Later lines override earlier ones.
pub(super) fn parse_env_file(text: &str) -> (Vec<(String, String)>, Vec<EnvFileError>) {
    const LINE_HINT: &str = "write one KEY=VALUE per line; `#` starts a comment";
    let mut vars = Vec::new();
    let mut errors = Vec::new();
    let mut offset = 0;
    for raw_line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += raw_line.len();
        let line = raw_line.trim_end_matches(['\n', '\r']);
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let body = body
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map_or(body, str::trim_start);
        // Every slice below is a suffix of `line`, so its offset follows from the lengths.
        let at = |s: &str| line_start + line.len() - s.len();
        let Some((key, value)) = body.split_once('=') else {
            errors.push(EnvFileError {
                span: at(body)..at(body) + body.len(),
                message: "expected KEY=VALUE".into(),
                hint: LINE_HINT,
            });
            continue;
        };
        let key = key.trim_end();
        if !is_env_name(key) {
            errors.push(EnvFileError {
                span: at(body)..at(body) + key.len().max(1),
                message: format!("invalid variable name {}", quote(key)),
                hint: "use letters, digits and `_`, not starting with a digit",
            });
            continue;
        }
        let value = value.trim();
        match parse_env_value(value) {
            Ok(v) => set_env(&mut vars, key.to_string(), v),
            Err((rel, message, hint)) => errors.push(EnvFileError {
                span: at(value) + rel..at(value) + value.len().max(rel + 1),
                message,
                hint,
            }),
        }
    }
    (vars, errors)
}

/// The value after `=`, trimmed; `Err` has the byte offset of the problem in
/// it, a message and a hint.
fn parse_env_value(raw: &str) -> Result<String, (usize, String, &'static str)> {
    let Some(quote_char) = raw.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        let end = raw.find(" #").or_else(|| raw.find("\t#"));
        return Ok(end.map_or(raw, |e| &raw[..e]).trim_end().to_string());
    };
    let mut value = String::new();
    let mut chars = raw.char_indices().skip(1);
    let mut closed_at = None;
    while let Some((i, c)) = chars.next() {
        if c == quote_char {
            closed_at = Some(i + 1);
            break;
        }
        if c == '\\' && quote_char == '"' {
            match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 't')) => value.push('\t'),
                Some((_, e @ ('"' | '\\'))) => value.push(e),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            }
            continue;
        }
        value.push(c);
    }
    let Some(end) = closed_at else {
        return Err((
            0,
            format!("unterminated {quote_char} quote"),
            "close the quote on the same line; values cannot span lines",
        ));
    };
    let after = &raw[end..];
    let rest = after.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        let at = end + after.len() - rest.len();
        return Err((
            at,
            "unexpected text after the closing quote".into(),
            "put the whole value inside the quotes; `#` may start a comment",
        ));
    }
    Ok(value)
}

/// Sets `key`, keeping the position of an earlier entry so the order stays as first written.
pub(super) fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    }
}

pub(super) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        let (vars, errors) = parse_env_file(text);
        assert!(errors.is_empty(), "unexpected errors in {text:?}");
        vars
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_the_usual_forms() {
        let text = "\
# comment
  
A=1
export B = two words 
C=\"quoted # not a comment\"
D='single $literal \\n'
E=\"esc \\\"q\\\" \\\\ \\n\"
F=value # trailing comment
G=
H=a=b\r
A=override
";
        assert_eq!(
            vars(text),
            pairs(&[
                ("A", "override"),
                ("B", "two words"),
                ("C", "quoted # not a comment"),
                ("D", "single $literal \\n"),
                ("E", "esc \"q\" \\ \n"),
                ("F", "value"),
                ("G", ""),
                ("H", "a=b"),
            ])
        );
    }

    #[test]
    fn export_alone_is_a_key() {
        assert_eq!(vars("exported=1\n"), pairs(&[("exported", "1")]));
    }

    #[test]
    fn errors_point_into_the_file() {
        let text = "OK=1\nno equals\n1BAD=x\nQ=\"open\nR='x' tail\n";
        let (vars, errors) = parse_env_file(text);
        assert_eq!(vars, pairs(&[("OK", "1")]));
        let found: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (&text[e.span.clone()], e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("no equals", "expected KEY=VALUE"),
                ("1BAD", "invalid variable name \"1BAD\""),
                ("\"open", "unterminated \" quote"),
                ("tail", "unexpected text after the closing quote"),
            ]
        );
    }
}
