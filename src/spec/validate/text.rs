//! Wording helpers for diagnostics: quoting user values safely, listing
//! names, and finding the name a typo was meant to be.

/// The candidate nearest to `word`, when close enough to be a typo of it.
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    // Long garbage never resembles a key, and comparing it would only cost time.
    if word.len() > 64 {
        return None;
    }
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance over characters where swapping two neighbours counts as one
/// edit (optimal string alignment), since "bd" for "db" is a typical typo.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            current[j] = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                current[j] = current[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

/// A user's value for a message: in double quotes, escaped, and cut short so
/// that even a huge or multi-line value keeps the message on one line.
pub(super) fn quote(text: &str) -> String {
    format!("\"{}\"", clip(text))
}

/// At most 40 characters of `text`, with quotes, backslashes and control characters escaped.
pub(super) fn clip(text: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::new();
    for c in text.chars().take(MAX) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// Names for a hint, quoted and comma-separated, cut after a dozen.
pub(super) fn list(names: &[&str]) -> String {
    let mut shown: Vec<String> = names.iter().take(12).map(|n| quote(n)).collect();
    if names.len() > 12 {
        shown.push("…".into());
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("stop_sigal", "stop_signal"), 1);
        assert_eq!(edit_distance("bd", "db"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("né", "ne"), 1);
    }

    #[test]
    fn closest_only_suggests_likely_typos() {
        let keys = ["command", "replicas", "depends_on", "port"];
        assert_eq!(closest("replica", keys.into_iter()), Some("replicas"));
        assert_eq!(closest("depends", keys.into_iter()), Some("depends_on"));
        assert_eq!(closest("prot", keys.into_iter()), Some("port"));
        assert_eq!(closest("cmd", keys.into_iter()), None);
        assert_eq!(closest(&"x".repeat(1000), keys.into_iter()), None);
    }

    #[test]
    fn quote_escapes_and_clips() {
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("line\nbreak"), "\"line\\nbreak\"");
        let long = quote(&"é".repeat(100));
        assert_eq!(long.chars().count(), 40 + 3);
        assert!(long.ends_with("…\""));
    }

    #[test]
    fn lists_are_cut_after_a_dozen() {
        assert_eq!(list(&["a", "b"]), "\"a\", \"b\"");
        let many: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(list(&many).ends_with("\"11\", …"));
    }
}
