//! Starting the replica straight into its cgroup leaf: `clone3` with
//! `CLONE_INTO_CGROUP`, then exec.
//!
//! Why not std's `Command` with a pre-exec write to the leaf's
//! `cgroup.procs`: moving a process between cgroups takes the kernel's
//! cgroup-wide thread-group lock for writing, which waits for an RCU grace
//! period — about 10 ms per start on the development machine, against well
//! under a millisecond for a process born in its leaf (BENCHMARKS.md). Born
//! there, not one of its forks can run outside the leaf either.
//!
//! The child does only async-signal-safe calls (everything it needs is
//! prepared before the clone), as std's own fork path does: stdio, user and
//! group, directory, process group, signal mask, rlimits, exec. A failure
//! before or at exec is sent back as its errno through a close-on-exec pipe.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::fcntl::OFlag;
use nix::libc::{self, c_char};
use nix::sys::resource::Resource;

use super::protocol::ShimConfig;

/// `struct clone_args` of `linux/sched.h` (the version with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_VFORK: u64 = 0x4000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Where a program named without a `/` is looked for when no `PATH` is set.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Starts `config`'s command in the cgroup whose directory is `leaf`, with
/// `out` and `err` as its stdout and stderr; returns its pid.
pub fn spawn(
    config: &ShimConfig,
    leaf: &File,
    out: OwnedFd,
    err: OwnedFd,
    rlimits: &[(Resource, u64)],
) -> std::io::Result<u32> {
    let argv = c_strings(config.argv.iter().map(OsStr::new))?;
    let env = c_strings(environment(&config.env).iter().map(OsString::as_os_str))?;
    let programs = c_strings(
        candidates(&config.argv[0], &config.env)
            .iter()
            .map(OsStr::new),
    )?;
    let cwd = c_string(config.cwd.as_os_str())?;
    let argv_ptrs = pointers(&argv);
    let env_ptrs = pointers(&env);
    let rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)> = rlimits
        .iter()
        .map(|&(resource, value)| {
            let value = if value == u64::MAX {
                libc::RLIM_INFINITY
            } else {
                value
            };
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            (resource as libc::__rlimit_resource_t, limit)
        })
        .collect();
    let null = File::open("/dev/null")?;
    let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let child = Child {
        stdio: [null.as_raw_fd(), out.as_raw_fd(), err.as_raw_fd()],
        uid: config.uid,
        gid: config.gid,
        cwd: &cwd,
        rlimits: &rlimits,
        programs: &programs,
        argv: argv_ptrs.as_ptr(),
        env: env_ptrs.as_ptr(),
    };
    let mut args = CloneArgs {
        // The shim waits (as for vfork) until the child has exec'd or failed.
        flags: CLONE_VFORK | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: leaf.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a valid, fully initialised clone_args of the size
    // given; no CLONE_VM, so the child has its own copy of our memory.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child, which only makes async-signal-safe calls on
        // what was prepared above, and exits if exec fails.
        unsafe {
            let errno = child.exec();
            libc::write(report_w.as_raw_fd(), (&raw const errno).cast(), 4);
            libc::_exit(127);
        }
    }
    drop(report_w);
    let mut errno = [0u8; 4];
    match File::from(report_r).read(&mut errno) {
        Ok(4) => {
            // It never ran: reap it here, as no one else will look for it.
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
        }
        _ => Ok(pid as u32),
    }
}

/// What the child needs, all prepared before the clone.
struct Child<'a> {
    /// Become its stdin, stdout and stderr.
    stdio: [i32; 3],
    uid: Option<u32>,
    gid: Option<u32>,
    cwd: &'a CString,
    rlimits: &'a [(libc::__rlimit_resource_t, libc::rlimit)],
    /// The paths to try, in order (the `PATH` search is done before).
    programs: &'a [CString],
    argv: *const *const c_char,
    env: *const *const c_char,
}

impl Child<'_> {
    /// Sets the child up and execs; returns the errno if that failed.
    ///
    /// # Safety
    /// Only in the child of a clone, before anything else runs in it.
    unsafe fn exec(&self) -> i32 {
        let errno = || {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)
        };
        // SAFETY (all below): plain system calls on prepared values.
        unsafe {
            for (fd, target) in self.stdio.iter().zip(0..) {
                if libc::dup2(*fd, target) < 0 {
                    return errno();
                }
            }
            if let Some(gid) = self.gid
                && libc::setgid(gid) < 0
            {
                return errno();
            }
            if let Some(uid) = self.uid {
                // As std does: root dropping to a user drops its groups too.
                if libc::getuid() == 0 && libc::setgroups(0, std::ptr::null()) < 0 {
                    return errno();
                }
                if libc::setuid(uid) < 0 {
                    return errno();
                }
            }
            if libc::chdir(self.cwd.as_ptr()) < 0 {
                return errno();
            }
            // Its own process group (what notify messages are matched by).
            if libc::setpgid(0, 0) < 0 {
                return errno();
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // The shim ignores SIGPIPE; an ignored signal stays so across exec.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            for (resource, limit) in self.rlimits {
                if libc::setrlimit(*resource, limit) < 0 {
                    return errno();
                }
            }
            // execvp's rules: go on past a path that is not there or not
            // permitted, and say "permission denied" if that was all.
            let mut denied = false;
            for program in self.programs {
                libc::execve(program.as_ptr(), self.argv, self.env);
                match errno() {
                    libc::ENOENT | libc::ENOTDIR => {}
                    libc::EACCES => denied = true,
                    other => return other,
                }
            }
            if denied { libc::EACCES } else { libc::ENOENT }
        }
    }
}

/// The shim's environment with `added` set over it.
fn environment(added: &[(String, String)]) -> Vec<OsString> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(key, _)| !added.iter().any(|(k, _)| OsStr::new(k) == key))
        .collect();
    vars.extend(added.iter().map(|(k, v)| (k.into(), v.into())));
    vars.into_iter()
        .map(|(key, value)| {
            let mut pair = key.into_vec();
            pair.push(b'=');
            pair.extend(value.into_vec());
            OsString::from_vec(pair)
        })
        .collect()
}

/// Where `program` is looked for: itself if it names a path, else each
/// directory of `PATH` (the replica's own, if its environment sets one).
fn candidates(program: &str, added: &[(String, String)]) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    let path = added
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    path.split(':')
        .map(|dir| match dir {
            "" => program.to_string(),
            dir => format!("{}/{program}", dir.trim_end_matches('/')),
        })
        .collect()
}

fn c_string(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a NUL byte in the command",
        )
    })
}

fn c_strings<'a>(items: impl Iterator<Item = &'a OsStr>) -> std::io::Result<Vec<CString>> {
    items.map(c_string).collect()
}

/// A NULL-terminated array of pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_looked_for_in_the_replicas_path_first() {
        let added = [("PATH".to_string(), "/opt/x/bin::/usr/bin/".to_string())];
        assert_eq!(
            candidates("api", &added),
            ["/opt/x/bin/api", "api", "/usr/bin/api"]
        );
        assert_eq!(candidates("./api", &added), ["./api"]);
        assert_eq!(candidates("/bin/api", &[]), ["/bin/api"]);
    }

    #[test]
    fn added_variables_replace_inherited_ones() {
        let env = environment(&[("HOME".into(), "/nowhere".into())]);
        let homes: Vec<&OsString> = env
            .iter()
            .filter(|v| v.as_bytes().starts_with(b"HOME="))
            .collect();
        assert_eq!(homes, [&OsString::from("HOME=/nowhere")]);
    }
}
