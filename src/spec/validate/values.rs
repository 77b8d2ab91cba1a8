//! Parsers and predicates for single values of a spec: sizes, signals,
//! names, addresses. Pure functions; the caller turns failures into diagnostics.

use std::str::FromStr;

use nix::sys::signal::Signal;

use super::text::quote;

/// The longest service name (docs/spec-file.md §3.1).
pub(super) const MAX_NAME_LEN: usize = 63;

/// Parses a size in bytes. A number alone is bytes; units may follow after an
/// optional space and are case-insensitive: `B`; `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, `T`/`TiB` are powers of 1024 (single letters as systemd and
/// `ls -h` read them); `KB`, `MB`, `GB`, `TB` are powers of 1000, as the SI
/// prefixes say. Only whole numbers: "1.5GiB" is "1536MiB".
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(if text.starts_with('-') {
            "sizes cannot be negative".into()
        } else {
            "expected a number".into()
        });
    }
    let unit = unit.trim_start();
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ if unit.starts_with(['.', ',']) => return Err("only whole numbers are allowed".into()),
        _ => return Err(format!("unknown unit {}", quote(unit))),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| "it is too large".into())
}

pub(super) fn signal_name(text: &str) -> String {
    let upper = text.trim().to_ascii_uppercase();
    if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    }
}

/// "SIGTERM", "TERM", "sigterm" and "term" all name SIGTERM.
pub(super) fn parse_signal(text: &str) -> Option<Signal> {
    Signal::from_str(&signal_name(text)).ok()
}

pub(super) fn is_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= MAX_NAME_LEN
}

/// Words a shell would treat as operators; in a string `command` they would
/// silently become plain arguments.
pub(super) fn is_shell_operator(word: &str) -> bool {
    (!word.is_empty() && word.chars().all(|c| "|&;<>".contains(c))) || word == "2>&1"
}

/// `HOST:PORT` where PORT is a number or `{port}`; HOST may be a bracketed IPv6 address.
pub(super) fn is_host_port(target: &str) -> bool {
    let Some((host, port)) = target.rsplit_once(':') else {
        return false;
    };
    let port_ok = port == "{port}" || port.parse::<u16>().is_ok_and(|p| p > 0);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    port_ok && !host.is_empty() && !host.contains(char::is_whitespace)
}

/// The one-line reason from a regex error, whose text spans several lines.
pub(super) fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let reason = text
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("unknown error");
    reason.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        let ok = [
            ("0", 0),
            ("512", 512),
            ("10B", 10),
            ("512KiB", 512 << 10),
            ("10MiB", 10 << 20),
            ("10 MiB", 10 << 20),
            ("1GiB", 1 << 30),
            ("2tib", 2 << 40),
            ("4K", 4 << 10),
            ("4m", 4 << 20),
            ("10MB", 10_000_000),
            ("1kb", 1_000),
            (" 3G ", 3 << 30),
        ];
        for (text, bytes) in ok {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn garbage_sizes_say_why() {
        let bad = [
            ("", "expected a number"),
            ("MiB", "expected a number"),
            ("-1MiB", "negative"),
            ("1.5GiB", "whole numbers"),
            ("10XB", "unknown unit \"XB\""),
            ("10 MiB extra", "unknown unit"),
            ("99999999999999999999", "too large"),
            ("20000000TiB", "too large"),
        ];
        for (text, why) in bad {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn signals_are_names_with_or_without_sig() {
        for text in ["SIGTERM", "TERM", "sigterm", "term", " SIGTERM "] {
            assert_eq!(parse_signal(text), Some(Signal::SIGTERM), "{text}");
        }
        assert_eq!(parse_signal("SIGKILL"), Some(Signal::SIGKILL));
        for text in ["SIGFOO", "", "15", "SIG", "SIGTERM2"] {
            assert_eq!(parse_signal(text), None, "{text}");
        }
    }

    #[test]
    fn service_names() {
        for ok in ["a", "0", "api", "db-1", "a_b", &"x".repeat(63)] {
            assert!(is_service_name(ok), "{ok}");
        }
        for bad in ["", "Api", "-a", "_a", "a.b", "a b", "é", &"x".repeat(64)] {
            assert!(!is_service_name(bad), "{bad}");
        }
    }

    #[test]
    fn host_and_port_targets() {
        for ok in [
            "127.0.0.1:{port}",
            "localhost:80",
            "[::1]:8080",
            "db:{port}",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "localhost",
            ":80",
            "h:0",
            "h:70000",
            "h:{replica}",
            "a b:80",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn shell_operators() {
        for op in ["|", "||", "&&", ";", ">", ">>", "<", "&", "2>&1"] {
            assert!(is_shell_operator(op), "{op}");
        }
        for word in ["", "a|b", "--x", "->"] {
            assert!(!is_shell_operator(word), "{word}");
        }
    }
}
