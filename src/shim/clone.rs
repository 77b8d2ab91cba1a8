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
//! On x86_64 the child shares the shim's memory until it execs
//! (`CLONE_VM | CLONE_VFORK`, as glibc's `posix_spawn` does) and runs on a
//! stack of its own: no copy of the shim's page tables, and no
//! copy-on-write faults in a child that only sets itself up and execs. That
//! halved the clone's cost and brought a restart with cgroups on to that
//! with them off (BENCHMARKS.md). The child then runs only a few system
//! calls on what was prepared before the clone, with every signal blocked
//! until it has put the shim's handlers back to their defaults (it shares
//! the shim's memory, so a handler run in it would act for the shim).
//! Elsewhere the child is a copy-on-write clone doing the same.
//! A failure before or at exec is sent back as its errno through a
//! close-on-exec pipe.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::fcntl::OFlag;
use nix::libc::{self, c_char, c_int, c_void};
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

const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The child's stack (it needs a few hundred bytes; a guard page below).
const CHILD_STACK: usize = 64 * 1024;

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
    let handled = super::WATCHED.map(|s| s as c_int);
    let null = File::open("/dev/null")?;
    let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let child = Child {
        stdio: [null.as_raw_fd(), out.as_raw_fd(), err.as_raw_fd()],
        uid: config.uid,
        gid: config.gid,
        cwd: &cwd,
        rlimits: &rlimits,
        handled: &handled,
        programs: &programs,
        argv: argv_ptrs.as_ptr(),
        env: env_ptrs.as_ptr(),
        report: report_w.as_raw_fd(),
    };
    let mut args = CloneArgs {
        // The shim waits (as for vfork) until the child has exec'd or failed.
        flags: CLONE_VFORK | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: leaf.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    let all = nix::sys::signal::SigSet::all();
    let before = all.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)?;
    let pid = clone(&mut args, &child);
    let _ = before.thread_set_mask();
    let pid = pid?;
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

/// The child's side of the clone: its setup and exec; on failure, the
/// errno to the shim and exit status 127.
extern "C" fn child_main(child: *mut c_void) -> c_int {
    // SAFETY: `child` is the `Child` that `clone` was given, alive in the
    // shim, which waits (CLONE_VFORK) until this process execs or exits.
    unsafe {
        let child = &*(child as *const Child);
        let errno = child.exec();
        libc::write(child.report, (&raw const errno).cast(), 4);
    }
    127
}

/// clone3 with `args` (their stack fields set here) running `child_main`
/// in the child; returns the child's pid once it has exec'd or exited.
#[cfg(target_arch = "x86_64")]
fn clone(args: &mut CloneArgs, child: &Child) -> std::io::Result<u32> {
    let stack = Stack::new()?;
    args.flags |= CLONE_VM;
    args.stack = stack.base as u64;
    args.stack_size = CHILD_STACK as u64;
    let ret: i64;
    // SAFETY: clone3 with a valid, fully initialised clone_args of the size
    // given. The child starts on its own stack (the kernel points rsp at
    // its top, 16-byte aligned), calls child_main, which never returns to
    // code of the shim, and exits with its result; every register but rax,
    // rcx and r11 is preserved by the syscall in both processes.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, {arg}",
            "call {main}",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            main = in(reg) child_main as extern "C" fn(*mut c_void) -> c_int,
            arg = in(reg) child as *const Child as *mut c_void,
            exit = const libc::SYS_exit_group,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            out("rcx") _,
            out("r11") _,
        );
    }
    drop(stack);
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(ret as u32)
}

/// clone3 with `args`: a copy-on-write child that runs `child_main`.
#[cfg(not(target_arch = "x86_64"))]
fn clone(args: &mut CloneArgs, child: &Child) -> std::io::Result<u32> {
    // SAFETY: clone3 with a valid, fully initialised clone_args of the size
    // given; no CLONE_VM, so the child has its own copy of our memory.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child, which exits right after.
        unsafe { libc::_exit(child_main(child as *const Child as *mut c_void)) }
    }
    Ok(pid as u32)
}

/// An anonymous mapping for the child's stack, with a guard page below it
/// (an overflow then kills the child instead of writing over the shim).
#[cfg(target_arch = "x86_64")]
struct Stack {
    mapping: *mut c_void,
    base: *mut c_void,
}

#[cfg(target_arch = "x86_64")]
impl Stack {
    const GUARD: usize = 4096;

    fn new() -> std::io::Result<Stack> {
        // SAFETY: a fresh private mapping, released in Drop.
        unsafe {
            let mapping = libc::mmap(
                std::ptr::null_mut(),
                Self::GUARD + CHILD_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if mapping == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let stack = Stack {
                mapping,
                base: mapping.cast::<u8>().add(Self::GUARD).cast(),
            };
            if libc::mprotect(mapping, Self::GUARD, libc::PROT_NONE) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(stack)
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used: the child has
        // exec'd or exited before clone returned (CLONE_VFORK).
        unsafe {
            libc::munmap(self.mapping, Self::GUARD + CHILD_STACK);
        }
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
    /// The signals the shim has handlers for.
    handled: &'a [c_int],
    /// The paths to try, in order (the `PATH` search is done before).
    programs: &'a [CString],
    argv: *const *const c_char,
    env: *const *const c_char,
    /// The write end of the pipe the errno of a failure goes to.
    report: c_int,
}

impl Child<'_> {
    /// Sets the child up and execs; returns the errno if that failed.
    ///
    /// # Safety
    /// Only in the child of a clone, before anything else runs in it, with
    /// every signal blocked. System calls are made directly where glibc's
    /// wrappers would act for the shim's threads or state (set*id).
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
                && libc::syscall(libc::SYS_setgid, gid) < 0
            {
                return errno();
            }
            if let Some(uid) = self.uid {
                // As std does: root dropping to a user drops its groups too.
                if libc::getuid() == 0
                    && libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
                {
                    return errno();
                }
                if libc::syscall(libc::SYS_setuid, uid) < 0 {
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
            // The shim ignores SIGPIPE (an ignored signal stays so across
            // exec) and has handlers, which must not run here, for the rest.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            for &signal in self.handled {
                libc::signal(signal, libc::SIG_DFL);
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
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
