//! Giving back what start-up took, for the long-lived processes (the
//! supervisor and each shim): a hundred idle replicas must cost little.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::sys::mman::{MmapAdvise, madvise};

/// Returns free heap memory to the system, and unmaps this binary's code
/// and read-only data from the process: what start-up ran (argument
/// parsing, the spec's validation, a shim's setup) otherwise stays mapped
/// and counted against the process for as long as it lives. The pages stay
/// in the page cache, shared by every process of the binary; what runs
/// again is mapped again on a minor fault.
///
/// Only mappings of the executable that are not writable and start at
/// offset 0 or are executable are dropped: they hold no page of the
/// process's own (the binary is not position-independent, so nothing in
/// them is relocated; the relocated read-only part, RELRO, is neither at
/// offset 0 nor executable).
pub fn release_startup_pages() {
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { nix::libc::malloc_trim(0) };
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for (start, len) in maps.lines().filter_map(|line| code_mapping(line, &exe)) {
        let (Some(addr), Some(len)) = (NonNull::new(start as *mut c_void), NonZeroUsize::new(len))
        else {
            continue;
        };
        // SAFETY: the range is a read-only file mapping without private
        // pages: dropping its pages loses nothing, they are read again
        // from the file when touched.
        let _ = unsafe { madvise(addr, len.get(), MmapAdvise::MADV_DONTNEED) };
    }
}

/// The address range of a line of /proc/self/maps, when it maps `exe`
/// read-only, executable or from offset 0.
fn code_mapping(line: &str, exe: &std::path::Path) -> Option<(usize, usize)> {
    let mut fields = line.split_ascii_whitespace();
    let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.nth(2)?;
    if std::path::Path::new(path) != exe || perms.contains('w') {
        return None;
    }
    if !perms.contains('x') && usize::from_str_radix(offset, 16).ok()? != 0 {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some((start, end.checked_sub(start)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_the_read_only_unrelocated_mappings_of_the_binary_are_dropped() {
        let exe = Path::new("/opt/supervise");
        let line = |s: &str| code_mapping(s, exe);
        assert_eq!(
            line("00200000-00473000 r--p 00000000 fe:00 79 /opt/supervise"),
            Some((0x200000, 0x273000))
        );
        assert_eq!(
            line("00473000-00a3d000 r-xp 00272000 fe:00 79 /opt/supervise"),
            Some((0x473000, 0x5ca000))
        );
        // RELRO (relocated, then made read-only), data, other files, heap.
        assert_eq!(
            line("00a3d000-00a42000 r--p 0083b000 fe:00 79 /opt/supervise"),
            None
        );
        assert_eq!(
            line("00a42000-00a44000 rw-p 0083f000 fe:00 79 /opt/supervise"),
            None
        );
        assert_eq!(
            line("7f00-7f10 r-xp 00000000 fe:00 12 /usr/lib/libc.so.6"),
            None
        );
        assert_eq!(line("1f593000-1f599000 rw-p 00000000 00:00 0 [heap]"), None);
        assert_eq!(
            line("7fad74ca7000-7fad74ca9000 rw-p 00000000 00:00 0"),
            None
        );
    }

    #[test]
    fn the_binary_still_runs_after_its_pages_are_dropped() {
        release_startup_pages();
        // Code and constants come back from the file as they are used.
        assert_eq!(format!("{:?}", Some(3)), "Some(3)");
        assert!(code_mapping("x", Path::new("/")).is_none());
    }
}
