//! Problems found in a spec file, rendered like compiler errors.
//!
//! A [`Diagnostic`] names the file, the 1-based line and column, says what is
//! wrong in one line and how to fix it in another. When the source text is
//! known it also carries the offending line, so the error can be shown with a
//! caret under the exact value:
//!
//! ```text
//! error: spec.toml:12:15: unknown signal "SIGFOO" in `stop_signal`
//!    12 | stop_signal = "SIGFOO"
//!       |               ^^^^^^^^
//!    hint: use a signal name such as "SIGTERM", "SIGINT" or "SIGQUIT"
//! ```
//!
//! Everything here accepts arbitrary offsets and arbitrary text: offsets past
//! the end or inside a multi-byte character are clamped, never a panic.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a spec (or env) file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (not canonicalized), so messages match what they typed.
    pub file: PathBuf,
    /// 1-based line and column; the column counts characters, not bytes.
    pub location: Option<(usize, usize)>,
    /// What is wrong, one line, starting lowercase.
    pub message: String,
    /// How to fix it, one line.
    pub hint: String,
    /// The source line to quote under the message, when the source is known.
    pub snippet: Option<Snippet>,
}

/// A source line and the part of it to underline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The line without its terminator.
    pub text: String,
    /// 1-based character columns to underline, end exclusive, never empty.
    pub columns: Range<usize>,
}

/// Every problem found in one spec, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostic {
    /// A problem with no position, e.g. a file that cannot be read.
    pub fn new(file: &Path, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            location: None,
            message: message.into(),
            hint: hint.into(),
            snippet: None,
        }
    }

    /// A problem at byte range `span` of `source` (the text of `file`).
    pub fn at(
        file: &Path,
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        let start = floor_char_boundary(source, span.start);
        let (line, column) = line_col(source, start);
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let text = source[line_start..line_end].trim_end_matches('\r');
        // A span that runs onto later lines is underlined to the end of its first
        // line; one that starts on the line's `\r` gets a single caret.
        let text_end = (line_start + text.len()).max(start);
        let end = floor_char_boundary(source, span.end.clamp(start, text_end));
        let width = source[start..end].chars().count().max(1);
        Diagnostic {
            file: file.to_path_buf(),
            location: Some((line, column)),
            message: message.into(),
            hint: hint.into(),
            snippet: Some(Snippet {
                text: text.to_string(),
                columns: column..column + width,
            }),
        }
    }
}

/// The 1-based line and character column of byte `offset` in `source`.
/// Offsets past the end or inside a character are moved back to a character boundary.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset);
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(source: &str, offset: usize) -> usize {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Tabs and control characters would shift or garble the caret line; each
/// becomes one space so that character columns still line up.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.location {
            Some((line, column)) => write!(f, "error: {file}:{line}:{column}: {}", self.message)?,
            None => write!(f, "error: {file}: {}", self.message)?,
        }
        if let (Some((line, _)), Some(snippet)) = (self.location, &self.snippet) {
            let number = line.to_string();
            let gutter = " ".repeat(number.len() + 3);
            let pad = " ".repeat(snippet.columns.start.saturating_sub(1));
            let carets = "^".repeat(snippet.columns.len().max(1));
            write!(f, "\n   {number} | {}", printable(&snippet.text))?;
            write!(f, "\n{gutter} | {pad}{carets}")?;
        }
        write!(f, "\n   hint: {}", self.hint)
    }
}

impl std::error::Error for Diagnostic {}

/// A whole report: the diagnostics separated by blank lines, then a count
/// when there are several. Unlike one [`Diagnostic`] it ends with a newline,
/// like [`render_plan`](super::render_plan), so it can be printed as is.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            writeln!(f, "{diagnostic}")?;
        }
        if self.0.len() > 1 {
            writeln!(f, "\n{} errors found", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostics {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Self {
        Diagnostics(vec![diagnostic])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let src = "a = 1\nnäme = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        // "ä" is two bytes but one column.
        assert_eq!(line_col(src, src.rfind('=').unwrap()), (2, 6));
    }

    #[test]
    fn line_col_survives_bad_offsets() {
        let src = "ä\nb";
        assert_eq!(line_col(src, 1), (1, 1)); // inside "ä"
        assert_eq!(line_col(src, 999), (2, 2));
        assert_eq!(line_col("", 5), (1, 1));
    }

    #[test]
    fn renders_like_a_compiler() {
        let src = "[services.a]\nstop_signal = \"SIGFOO\"\n";
        let start = src.find("\"SIGFOO\"").unwrap();
        let d = Diagnostic::at(
            Path::new("spec.toml"),
            src,
            start..start + 8,
            "unknown signal \"SIGFOO\" in `stop_signal`",
            "use a signal name such as \"SIGTERM\"",
        );
        assert_eq!(d.location, Some((2, 15)));
        assert_eq!(
            d.to_string(),
            "error: spec.toml:2:15: unknown signal \"SIGFOO\" in `stop_signal`\n   \
             2 | stop_signal = \"SIGFOO\"\n     \
             |               ^^^^^^^^\n   \
             hint: use a signal name such as \"SIGTERM\""
        );
    }

    #[test]
    fn multi_line_spans_underline_to_the_end_of_the_first_line() {
        let src = "x = [1,\n 2]\n";
        let d = Diagnostic::at(Path::new("s.toml"), src, 4..src.len(), "m", "h");
        let snippet = d.snippet.unwrap();
        assert_eq!(snippet.text, "x = [1,");
        assert_eq!(snippet.columns, 5..8);
    }

    #[test]
    fn weird_spans_never_panic() {
        let src = "é\r\n\t\u{0}ü";
        // Includes reversed and out-of-range spans, and offsets inside characters.
        for start in 0..12 {
            for end in 0..12 {
                let d = Diagnostic::at(Path::new("s"), src, start..end, "m", "h");
                let _ = d.to_string();
            }
        }
    }

    #[test]
    fn without_location_there_is_no_snippet() {
        let d = Diagnostic::new(Path::new("s.toml"), "cannot read", "check it");
        assert_eq!(
            d.to_string(),
            "error: s.toml: cannot read\n   hint: check it"
        );
    }

    #[test]
    fn several_diagnostics_end_with_a_count() {
        let d = Diagnostic::new(Path::new("s"), "m", "h");
        let all = Diagnostics(vec![d.clone(), d]);
        assert_eq!(
            all.to_string(),
            "error: s: m\n   hint: h\n\nerror: s: m\n   hint: h\n\n2 errors found\n"
        );
        let one = Diagnostics(vec![Diagnostic::new(Path::new("s"), "m", "h")]);
        assert_eq!(one.to_string(), "error: s: m\n   hint: h\n");
    }
}
