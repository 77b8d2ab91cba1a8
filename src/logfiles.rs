//! Replica log files as `logs` (and a foreground `up`, for the replicas it
//! adopted) reads them: `<state_dir>/logs/<svc>.<N>.log`
//! plus rotated `….log.1` (newest) … `….log.K` (oldest), one record per
//! line: `<RFC 3339 UTC, microseconds> <out|err> <text>`.
//!
//! The timestamps have a fixed width, so comparing them as strings
//! compares the times; merging replicas needs nothing more.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::state_dir;

/// One output line of a replica (the `logs --json` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// As written: RFC 3339 UTC with microseconds.
    pub at: String,
    pub replica: String,
    /// `out` or `err`.
    pub stream: String,
    pub text: String,
}

impl Entry {
    /// Parses `<at> <stream> <text>`. A line in another shape (torn,
    /// edited by hand) is kept whole, at the time of the line before it.
    fn parse(replica: &str, line: &str, previous_at: &str) -> Entry {
        let mut parts = line.splitn(3, ' ');
        let (at, stream, text) = (parts.next(), parts.next(), parts.next());
        match (at, stream) {
            (Some(at), Some(stream @ ("out" | "err")))
                if at.len() >= 20 && at.as_bytes()[4] == b'-' && at.ends_with('Z') =>
            {
                Entry {
                    at: at.to_string(),
                    replica: replica.to_string(),
                    stream: stream.to_string(),
                    text: text.unwrap_or_default().to_string(),
                }
            }
            _ => Entry {
                at: previous_at.to_string(),
                replica: replica.to_string(),
                stream: "out".to_string(),
                text: line.to_string(),
            },
        }
    }
}

/// Splits `bytes` into entries; an incomplete last line is left in `partial`.
fn entries(replica: &str, bytes: &[u8], partial: &mut Vec<u8>, last_at: &mut String) -> Vec<Entry> {
    partial.extend_from_slice(bytes);
    let Some(end) = partial.iter().rposition(|&b| b == b'\n') else {
        return Vec::new();
    };
    let complete: Vec<u8> = partial.drain(..=end).collect();
    String::from_utf8_lossy(&complete)
        .lines()
        .map(|line| {
            let entry = Entry::parse(replica, line, last_at);
            last_at.clone_from(&entry.at);
            entry
        })
        .collect()
}

/// The log files of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLogs {
    /// `api.1`.
    pub name: String,
    pub service: String,
    pub index: u32,
    pub live: PathBuf,
    /// Rotated files, newest (`.log.1`) first.
    pub rotated: Vec<PathBuf>,
}

/// Every replica that has log files in `dir`, by name.
pub fn discover(dir: &Path) -> BTreeMap<String, ReplicaLogs> {
    // Replica name → its rotated files, with their numbers.
    let mut found: BTreeMap<String, Vec<(u32, PathBuf)>> = BTreeMap::new();
    let Ok(read) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    for entry in read.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Some(replica) = name.strip_suffix(".log") {
            found.entry(replica.to_string()).or_default();
        } else if let Some((replica, n)) = name.rsplit_once(".log.")
            && let Ok(n) = n.parse::<u32>()
        {
            found
                .entry(replica.to_string())
                .or_default()
                .push((n, entry.path()));
        }
    }
    found
        .into_iter()
        .filter_map(|(name, mut rotated)| {
            let (service, index) = name.rsplit_once('.')?;
            let index = index.parse().ok()?;
            let service = service.to_string();
            rotated.sort();
            Some((
                name.clone(),
                ReplicaLogs {
                    live: dir.join(format!("{name}.log")),
                    rotated: rotated.into_iter().map(|(_, p)| p).collect(),
                    name,
                    service,
                    index,
                },
            ))
        })
        .collect()
}

/// Which lines of the history to show.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window<'a> {
    /// Only lines at or after this time (RFC 3339, microseconds).
    pub since: Option<&'a str>,
    /// Only the last this many.
    pub last: Option<usize>,
}

impl ReplicaLogs {
    /// The lines of the history in `window` (reading rotated files only as
    /// far back as needed), and a [`Tail`] that goes on from where the live
    /// file ended.
    pub fn history(&self, window: Window) -> (Vec<Entry>, Tail) {
        let mut tail = Tail::new(self.name.clone(), self.live.clone());
        let mut lines = tail.poll();
        for path in &self.rotated {
            let enough = window.last.is_some_and(|n| lines.len() >= n)
                || window
                    .since
                    .zip(lines.first())
                    .is_some_and(|(since, first)| first.at.as_str() < since);
            if enough {
                break;
            }
            let mut older = read_all(&self.name, path);
            older.append(&mut lines);
            lines = older;
        }
        if let Some(since) = window.since {
            lines.retain(|e| e.at.as_str() >= since);
        }
        if let Some(n) = window.last {
            lines.drain(..lines.len().saturating_sub(n));
        }
        (lines, tail)
    }
}

/// `<path>.<n>`: the `n`th newest rotated file of log `path`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    p.into()
}

/// Rotates log `path` (replicas' and the supervisor's alike): `x.log`
/// becomes `x.log.1`, `x.log.1` becomes `x.log.2`, …; the oldest beyond
/// `keep` goes. The caller opens a new `x.log`.
pub fn rotate(path: &Path, keep: u32) {
    if keep == 0 {
        let _ = std::fs::remove_file(path);
        return;
    }
    let _ = std::fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(rotated(path, n), rotated(path, n + 1));
    }
    let _ = std::fs::rename(path, rotated(path, 1));
}

fn read_all(replica: &str, path: &Path) -> Vec<Entry> {
    let mut bytes = Vec::new();
    if let Ok(mut f) = state_dir::options().read(true).open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    entries(replica, &bytes, &mut Vec::new(), &mut String::new())
}

/// Follows a replica's live log file across rotation and truncation.
pub struct Tail {
    replica: String,
    path: PathBuf,
    /// The file being read, with its inode; `None` until it exists.
    file: Option<(File, u64)>,
    /// Bytes read from `file`.
    read: u64,
    partial: Vec<u8>,
    last_at: String,
}

impl Tail {
    /// A tail from the start of `path` (which may not exist yet).
    pub fn new(replica: String, path: PathBuf) -> Tail {
        Tail {
            replica,
            path,
            file: None,
            read: 0,
            partial: Vec::new(),
            last_at: String::new(),
        }
    }

    /// A tail of what is appended to `path` from now on.
    pub fn from_end(replica: String, path: PathBuf) -> Tail {
        let mut tail = Tail::new(replica, path);
        if let Ok(mut file) = state_dir::options().read(true).open(&tail.path)
            && let Ok(meta) = file.metadata()
            && file.seek(SeekFrom::End(0)).is_ok()
        {
            tail.read = meta.len();
            tail.file = Some((file, meta.ino()));
        }
        tail
    }

    /// The lines in the last `bytes` of `path` (less the first, which the
    /// cut may have split), and a tail that goes on from there: a view of
    /// the recent output that costs the same however large the file is.
    pub fn from_last(replica: String, path: PathBuf, bytes: u64) -> (Vec<Entry>, Tail) {
        let mut tail = Tail::from_end(replica, path);
        let start = tail.read.saturating_sub(bytes);
        let Some((file, _)) = tail.file.as_mut() else {
            return (Vec::new(), tail);
        };
        let mut text = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut text).is_err() {
            return (Vec::new(), tail);
        }
        tail.read = start + text.len() as u64;
        let whole = if start == 0 {
            0
        } else {
            text.iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |i| i + 1)
        };
        let lines = entries(
            &tail.replica,
            &text[whole..],
            &mut tail.partial,
            &mut tail.last_at,
        );
        (lines, tail)
    }

    /// The complete lines written since the last call.
    pub fn poll(&mut self) -> Vec<Entry> {
        let mut out = self.drain();
        let current = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        let ours = self.file.as_ref().map(|(_, ino)| *ino);
        if current.is_some() && current != ours {
            // Rotated (or first seen): the old file was drained above and is
            // never written again; what is left of a torn last line goes too.
            if !self.partial.is_empty() {
                out.extend(entries(
                    &self.replica,
                    b"\n",
                    &mut self.partial,
                    &mut self.last_at,
                ));
            }
            self.file = state_dir::options()
                .read(true)
                .open(&self.path)
                .ok()
                .and_then(|f| Some((f.metadata().ok()?.ino(), f)))
                .map(|(ino, f)| (f, ino));
            self.read = 0;
            out.extend(self.drain());
        }
        out
    }

    /// Reads what was appended to the current file.
    fn drain(&mut self) -> Vec<Entry> {
        let Some((file, _)) = self.file.as_mut() else {
            return Vec::new();
        };
        // Truncated in place (`: > x.log`): start over.
        if file.metadata().is_ok_and(|m| m.len() < self.read)
            && file.seek(SeekFrom::Start(0)).is_ok()
        {
            self.read = 0;
            self.partial.clear();
        }
        let mut bytes = Vec::new();
        if let Ok(n) = file.read_to_end(&mut bytes) {
            self.read += n as u64;
        }
        entries(&self.replica, &bytes, &mut self.partial, &mut self.last_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const T0: &str = "2026-11-23T12:00:00.000001Z";
    const T1: &str = "2026-11-23T12:00:01.000001Z";
    const T2: &str = "2026-11-23T12:00:02.000001Z";

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn texts(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.text.as_str()).collect()
    }

    #[test]
    fn records_parse_and_odd_lines_survive() {
        let e = Entry::parse("api.0", &format!("{T0} err boom: x y"), "");
        assert_eq!(
            (e.at.as_str(), e.stream.as_str(), e.text.as_str()),
            (T0, "err", "boom: x y")
        );
        let e = Entry::parse("api.0", &format!("{T0} out "), "");
        assert_eq!(e.text, "");
        let e = Entry::parse("api.0", "garbage here", T1);
        assert_eq!((e.at.as_str(), e.text.as_str()), (T1, "garbage here"));
    }

    #[test]
    fn a_tail_from_the_last_bytes_drops_the_cut_line_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.0.log");
        append(&path, &format!("{T0} out first line\n{T1} out second\n"));
        let whole = Tail::from_last("a.0".into(), path.clone(), 1 << 20).0;
        assert_eq!(texts(&whole), ["first line", "second"]);
        // Ten bytes from the end cut into the second line: nothing whole.
        let (lines, mut tail) = Tail::from_last("a.0".into(), path.clone(), 10);
        assert!(lines.is_empty(), "{lines:?}");
        let (lines, _) = Tail::from_last("a.0".into(), path.clone(), 40);
        assert_eq!(texts(&lines), ["second"]);
        append(&path, &format!("{T2} out third\n"));
        assert_eq!(texts(&tail.poll()), ["third"]);
        let (lines, _) = Tail::from_last("a.0".into(), dir.path().join("none.log"), 10);
        assert!(lines.is_empty());
    }

    #[test]
    fn a_tail_from_the_end_sees_only_what_comes_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.0.log");
        append(&path, &format!("{T0} out before\n"));
        let mut tail = Tail::from_end("a.0".into(), path.clone());
        assert!(tail.poll().is_empty());
        append(&path, &format!("{T1} out after\n"));
        assert_eq!(texts(&tail.poll()), ["after"]);
    }

    #[test]
    fn discover_finds_live_and_rotated_files_per_replica() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "api.0.log",
            "api.0.log.2",
            "api.0.log.1",
            "db.0.log.1",
            "junk.txt",
            "x.log",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found = discover(dir.path());
        assert_eq!(found.keys().collect::<Vec<_>>(), ["api.0", "db.0"]);
        let api = &found["api.0"];
        assert_eq!((api.service.as_str(), api.index), ("api", 0));
        assert_eq!(
            api.rotated,
            [
                dir.path().join("api.0.log.1"),
                dir.path().join("api.0.log.2")
            ]
        );
    }

    #[test]
    fn history_reaches_into_rotated_files_only_as_far_as_needed() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.0.log.2"), &format!("{T0} out one\n"));
        append(&dir.path().join("a.0.log.1"), &format!("{T1} out two\n"));
        append(
            &dir.path().join("a.0.log"),
            &format!("{T2} out three\n{T2} err four\n"),
        );
        let logs = &discover(dir.path())["a.0"];
        let (all, _) = logs.history(Window::default());
        assert_eq!(texts(&all), ["one", "two", "three", "four"]);
        let (last3, _) = logs.history(Window {
            since: None,
            last: Some(3),
        });
        assert_eq!(texts(&last3), ["two", "three", "four"]);
        let (recent, _) = logs.history(Window {
            since: Some(T1),
            last: None,
        });
        assert_eq!(texts(&recent), ["two", "three", "four"]);
    }

    #[test]
    fn a_tail_follows_appends_partial_lines_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.0.log");
        let mut tail = Tail::new("a.0".into(), path.clone());
        assert!(tail.poll().is_empty(), "no file yet");
        append(&path, &format!("{T0} out one\n{T0} out tw"));
        assert_eq!(texts(&tail.poll()), ["one"]);
        append(&path, "o\n");
        assert_eq!(texts(&tail.poll()), ["two"]);
        // Rotation: the rest of the old file, then the new one.
        append(&path, &format!("{T1} out three\n"));
        std::fs::rename(&path, dir.path().join("a.0.log.1")).unwrap();
        append(&path, &format!("{T2} out four\n"));
        assert_eq!(texts(&tail.poll()), ["three", "four"]);
        // Truncation in place.
        std::fs::write(&path, format!("{T2} out 5\n")).unwrap();
        assert_eq!(texts(&tail.poll()), ["5"]);
        assert!(tail.poll().is_empty());
    }
}
