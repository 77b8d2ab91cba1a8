//! A replica's log file: one line per output line, `<RFC 3339 time> <out|err> <text>`,
//! rotated at a size limit. The timestamp is taken when the shim reads the
//! line, which is what lets `logs` merge replicas in time order.
//!
//! Writing never blocks the replica for long and never fails it: a log file
//! that cannot be written (disk full, removed directory) costs the lines,
//! which are counted and reported, while the pipe keeps being drained.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::SystemTime;

use super::protocol::LogConfig;
use crate::state_dir;

/// Output lines longer than this are split, so one runaway line cannot hold
/// the whole buffer hostage.
const MAX_LINE: usize = 64 * 1024;
/// Lines longer than this are shortened on the foreground display, because a
/// pipe write is atomic (never interleaved with another shim's) only up to
/// PIPE_BUF bytes. The log file keeps the whole line.
const TEE_MAX_LINE: usize = 4000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }
}

pub struct LogWriter<'t> {
    config: LogConfig,
    file: Option<File>,
    size: u64,
    /// Partial lines (no newline yet), per stream.
    pending: [Vec<u8>; 2],
    tee: Option<Tee<'t>>,
    pub dropped_lines: u64,
    /// Until a line matches it (then None and `ready` is set).
    ready_pattern: Option<regex::bytes::Regex>,
    pub ready: bool,
}

struct Tee<'t> {
    fd: BorrowedFd<'t>,
    prefix: String,
}

impl<'t> LogWriter<'t> {
    /// Watch the output for `pattern` (`health.log`); see `ready`.
    pub fn watch_for(&mut self, pattern: Option<regex::bytes::Regex>) {
        self.ready_pattern = pattern;
    }

    pub fn open(config: LogConfig, tee: Option<(BorrowedFd<'t>, String)>) -> LogWriter<'t> {
        let mut writer = LogWriter {
            config,
            file: None,
            size: 0,
            pending: [Vec::new(), Vec::new()],
            tee: tee.map(|(fd, prefix)| Tee { fd, prefix }),
            dropped_lines: 0,
            ready_pattern: None,
            ready: false,
        };
        writer.reopen();
        writer
    }

    fn reopen(&mut self) {
        self.file = state_dir::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.config.path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    }

    /// Takes bytes read from a replica's stream; complete lines are written.
    pub fn feed(&mut self, stream: Stream, bytes: &[u8]) {
        let slot = stream as usize;
        self.pending[slot].extend_from_slice(bytes);
        let mut buf = std::mem::take(&mut self.pending[slot]);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            // However the line arrived, its records are at most MAX_LINE.
            let mut line = &buf[start..start + nl];
            while line.len() > MAX_LINE {
                self.line(stream, &line[..MAX_LINE]);
                line = &line[MAX_LINE..];
            }
            self.line(stream, line);
            start += nl + 1;
        }
        while buf.len() - start >= MAX_LINE {
            self.line(stream, &buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        buf.drain(..start);
        self.pending[slot] = buf;
    }

    /// Writes out partial lines (at end of stream).
    pub fn flush_partial(&mut self) {
        for stream in [Stream::Out, Stream::Err] {
            let buf = std::mem::take(&mut self.pending[stream as usize]);
            if !buf.is_empty() {
                self.line(stream, &buf);
            }
        }
    }

    /// A line from the shim itself (e.g. why the command did not start).
    pub fn note(&mut self, text: &str) {
        self.line(Stream::Err, format!("supervise: {text}").as_bytes());
    }

    fn line(&mut self, stream: Stream, text: &[u8]) {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if self
            .ready_pattern
            .as_ref()
            .is_some_and(|p| p.is_match(text))
        {
            self.ready_pattern = None;
            self.ready = true;
        }
        let stamp = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let mut record = Vec::with_capacity(stamp.len() + text.len() + 6);
        record.extend_from_slice(stamp.as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.tag().as_bytes());
        record.push(b' ');
        record.extend_from_slice(text);
        record.push(b'\n');
        self.write_record(&record);
        self.tee(text);
    }

    fn write_record(&mut self, record: &[u8]) {
        if self.size > 0 && self.size + record.len() as u64 > self.config.max_size {
            self.rotate();
        }
        let written = match self.file.as_mut() {
            Some(f) => f.write_all(record).is_ok(),
            None => {
                // The file may have become writable again (space freed, directory restored).
                self.reopen();
                self.file
                    .as_mut()
                    .is_some_and(|f| f.write_all(record).is_ok())
            }
        };
        if written {
            self.size += record.len() as u64;
        } else {
            self.dropped_lines += 1;
            self.file = None;
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        crate::logfiles::rotate(&self.config.path, self.config.keep);
        self.reopen();
    }

    fn tee(&mut self, text: &[u8]) {
        let Some(tee) = &self.tee else { return };
        let shown = &text[..text.len().min(TEE_MAX_LINE)];
        let mut line = Vec::with_capacity(tee.prefix.len() + shown.len() + 1);
        line.extend_from_slice(tee.prefix.as_bytes());
        line.extend_from_slice(shown);
        line.push(b'\n');
        // The pipe is non-blocking: a display that cannot keep up loses display
        // lines, never log lines. A supervisor that is gone (EPIPE) ends the tee.
        if let Err(nix::errno::Errno::EPIPE) = nix::unistd::write(tee.fd.as_fd(), &line) {
            self.tee = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, max_size: u64, keep: u32) -> LogConfig {
        LogConfig {
            path: dir.join("a.0.log"),
            max_size,
            keep,
        }
    }

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(3, ' ').nth(2).unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn joins_partial_reads_into_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(config(dir.path(), 1 << 20, 2), None);
        w.feed(Stream::Out, b"hel");
        w.feed(Stream::Err, b"oops\n");
        w.feed(Stream::Out, b"lo\nwor");
        w.flush_partial();
        assert_eq!(lines(&dir.path().join("a.0.log")), ["oops", "hello", "wor"]);
    }

    #[test]
    fn a_line_longer_than_max_line_is_split_into_records_of_max_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(config(dir.path(), 1 << 20, 2), None);
        let long = "x".repeat(2 * MAX_LINE + 100);
        w.feed(Stream::Out, format!("{long}\nnext\n").as_bytes());
        let lengths: Vec<usize> = lines(&dir.path().join("a.0.log"))
            .iter()
            .map(String::len)
            .collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 100, 4]);
    }

    #[test]
    fn rotates_and_keeps_only_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(config(dir.path(), 100, 2), None);
        for i in 0..20 {
            w.feed(Stream::Out, format!("line {i}\n").as_bytes());
        }
        let base = dir.path().join("a.0.log");
        let newest = lines(&base);
        assert_eq!(newest.last().map(String::as_str), Some("line 19"));
        assert!(dir.path().join("a.0.log.1").exists());
        assert!(dir.path().join("a.0.log.2").exists());
        assert!(!dir.path().join("a.0.log.3").exists());
        assert!(std::fs::metadata(&base).unwrap().len() <= 100);
    }
}
