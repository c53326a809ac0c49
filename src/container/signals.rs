//! The signal handling of a minimal init: every asynchronous signal is blocked and taken with
//! `sigwaitinfo`, forwarded to the main child, and `SIGCHLD` reaps.
//!
//! A PID 1 ignores every signal it has no handler for, but blocked signals are never ignored,
//! so blocking them is what lets a container's init receive `SIGTERM` or `SIGINT` at all.
//!
//! Signals the kernel itself sends (`SI_KERNEL`: a terminal's Ctrl-C or Ctrl-Z, a hang-up or a
//! resize) go to the whole foreground process group, the command included, so they are not
//! forwarded: the command gets each of them exactly once. (A command given a terminal of its
//! own, `-t`, is in a session of its own: the caller passes the terminal's signals on to it.)

use std::mem::MaybeUninit;

/// Signals a fault raises in the thread that caused it: never blocked, never forwarded.
const SYNCHRONOUS: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// A signal set, as the libc calls take it.
pub struct SigSet(libc::sigset_t);

fn forwarded_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the set; sigdelset only changes bits of it.
    unsafe {
        libc::sigfillset(set.as_mut_ptr());
        let mut set = set.assume_init();
        for sig in SYNCHRONOUS {
            libc::sigdelset(&mut set, sig);
        }
        set
    }
}

/// Block every asynchronous signal; returns the mask that was in force.
pub fn block_all() -> Result<SigSet, String> {
    let set = forwarded_set();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: both pointers are valid sigset_t storage.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, old.as_mut_ptr()) } != 0 {
        return Err(super::os_fail("blocking signals"));
    }
    // SAFETY: sigprocmask succeeded, so `old` was written.
    Ok(SigSet(unsafe { old.assume_init() }))
}

/// In a child about to exec: default dispositions for every signal and the mask `old`.
pub fn restore(old: &SigSet) {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting a disposition to the default is always valid; the result is ignored
        // for numbers the kernel does not allow (the ones the C library reserves).
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: `old.0` is a valid signal set taken from sigprocmask.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old.0, std::ptr::null_mut()) };
}

/// The exit code a shell reports for a wait status.
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// Forward signals to `child` until it exits, and return its exit code. With `reap_all`
/// (PID 1), also reap every other process that ends, orphans re-parented to us included.
pub fn supervise(child: libc::pid_t, reap_all: bool) -> i32 {
    let set = forwarded_set();
    loop {
        // Reap first: the child may have exited before its SIGCHLD was blocked or waited for.
        loop {
            let mut status = 0;
            let target = if reap_all { -1 } else { child };
            // SAFETY: waitpid with a valid status pointer.
            let pid = unsafe { libc::waitpid(target, &mut status, libc::WNOHANG) };
            if pid == child {
                return exit_code(status);
            }
            if pid <= 0 {
                break;
            }
        }
        let mut info = MaybeUninit::<libc::siginfo_t>::uninit();
        // SAFETY: `set` is a valid signal set and `info` valid storage for the answer.
        let sig = unsafe { libc::sigwaitinfo(&set, info.as_mut_ptr()) };
        // SAFETY: sigwaitinfo filled `info` when it returned a signal number.
        let from_kernel = sig > 0 && unsafe { info.assume_init().si_code } == libc::SI_KERNEL;
        if sig > 0 && sig != libc::SIGCHLD && !from_kernel {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(child, sig) };
        }
    }
}
