//! Run a command in a container: new namespaces, an overlayfs root, a minimal init.
//!
//! [`run`] is called in a fresh, single-threaded helper process (`unshare` of the user and
//! mount namespaces is refused in a multi-threaded one). It makes the namespaces, forks the
//! container's PID 1 — which mounts the root, pivots into it and starts the command behind a
//! reaping, signal-forwarding init — and waits for it. Nothing is mounted in the caller's mount
//! namespace: every mount dies with the container's namespace, so an interrupted run leaves
//! none behind.
//!
//! Failures before the command starts are reported as one line on `error_fd` with exit code
//! [`EXIT_SETUP`]; a command that cannot be found gives [`EXIT_NOT_FOUND`], one that cannot be
//! executed [`EXIT_CANNOT_EXEC`] (the codes of `docker run`).

mod exec;
mod rootfs;
mod seccomp;
mod signals;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

pub use exec::{UserSpec, parse_group, parse_passwd, resolve_user};

/// Exit code when the container could not be set up.
pub const EXIT_SETUP: i32 = 125;
/// Exit code when the command exists but cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit code when the command is not found in the image.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Everything the helper needs to start one container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Map the caller to root in a new user namespace (and mount overlayfs with `userxattr`).
    pub rootless: bool,
    /// A new, empty network namespace (only loopback, brought up).
    pub new_network: bool,
    /// The container's hostname.
    pub hostname: String,
    /// Directory the layer directories are named relative to (keeps the overlay options short).
    pub layers_dir: PathBuf,
    /// Overlay lower directories, top-most first, relative to `layers_dir` or absolute.
    pub lowers: Vec<String>,
    /// The container's upper and work directories.
    pub upper: PathBuf,
    /// Overlayfs work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the merged root is mounted (inside the container's own mount namespace).
    pub rootfs: PathBuf,
    /// Files bind-mounted over paths of the root: (host file, path inside the root).
    pub binds: Vec<(PathBuf, String)>,
    /// The image's volumes: (host directory, absolute path inside the root). Each is
    /// bind-mounted there, the directory made when the image has none; an empty one is first
    /// given what the image holds there, as docker fills a new anonymous volume.
    pub volumes: Vec<(PathBuf, String)>,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment of the command.
    pub env: Vec<String>,
    /// Working directory inside the root (created when missing, as `docker run` does).
    pub cwd: String,
    /// `USER[:GROUP]` by name or number, resolved in the container's `/etc/passwd` and
    /// `/etc/group`; empty means root.
    pub user: String,
    /// Where setup errors are written, one line each (2: stderr).
    pub error_fd: RawFd,
    /// The process the helper must not outlive (the caller); `0` for none.
    pub parent_pid: i32,
    /// `cgroup.procs` files of the container's control groups, open for writing: the command
    /// joins them before it starts, so its processes are limited and counted there, and the
    /// helper and init are not (they are not the container's processes to docker either).
    pub cgroup_fds: Vec<RawFd>,
    /// With `-t`: a Unix socket to send the master side of the command's terminal over
    /// (`SCM_RIGHTS`), as runc's console socket; `-1` for none. The terminal is made in the
    /// container's own `/dev/pts`, and is the command's controlling terminal and its standard
    /// streams.
    pub console_fd: RawFd,
    /// The terminal's first size, rows and columns (the caller's; 0 for none), set before the
    /// command starts.
    pub console_size: (u16, u16),
}

/// Report `msg` on the error channel.
fn report(fd: RawFd, msg: &str) {
    let line = format!("{}\n", msg.replace('\n', " "));
    let fd = if fd < 0 { 2 } else { fd };
    // SAFETY: writing a byte buffer we own to a descriptor; a failure only loses the message.
    unsafe {
        libc::write(fd, line.as_ptr().cast(), line.len());
    }
}

/// A failure message with the OS error attached.
fn os_fail(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn cstr(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte: {s:?}"))
}

/// Run the container described by `spec` and return its exit code (the command's, or 128 plus
/// the signal that ended it, or one of the `EXIT_*` codes).
pub fn run(spec: &ContainerSpec) -> i32 {
    match start(spec) {
        Ok(code) => code,
        Err(msg) => {
            report(spec.error_fd, &msg);
            EXIT_SETUP
        }
    }
}

fn start(spec: &ContainerSpec) -> Result<i32, String> {
    if spec.error_fd >= 0 {
        // The command must not inherit the error channel: it is closed on exec.
        // SAFETY: fcntl on a descriptor number; an invalid one only returns an error.
        unsafe { libc::fcntl(spec.error_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    if spec.parent_pid > 0 {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| format!("setting the parent-death signal: {e}"))?;
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != spec.parent_pid {
            return Err("the caller exited before the container started".into());
        }
    }
    let argv = spec
        .argv
        .iter()
        .map(|a| cstr(a, "command argument"))
        .collect::<Result<Vec<_>, _>>()?;
    if argv.is_empty() {
        return Err("no command to run: give one, or an image with Entrypoint or Cmd".into());
    }
    if spec.rootless {
        enter_user_namespace()?;
    }
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID;
    if spec.new_network {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare only changes this (single-threaded) process's namespaces.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(os_fail("creating the container's namespaces (unshare)"));
    }
    let blocked = signals::block_all()?;
    // Held open by this process for as long as it lives: the container's PID 1 sees from it
    // whether this process died before PID 1 asked to die with it.
    let mut alive = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_fail("creating a pipe"));
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (alive_r, alive_w) = unsafe {
        (
            OwnedFd::from_raw_fd(alive[0]),
            OwnedFd::from_raw_fd(alive[1]),
        )
    };
    // SAFETY: the helper is single-threaded, so the child may do anything after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_fail("fork"));
    }
    if pid == 0 {
        // PID 1 of the container: never returns. The parent-death signal is not inherited
        // across fork: without its own, PID 1 (and the whole container) would outlive a
        // killed supervisor, running on unwatched and reported as exited.
        drop(alive_w);
        let orphaned =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .is_err()
                || parent_gone(&alive_r);
        if orphaned {
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(EXIT_SETUP) }
        }
        drop(alive_r);
        let code = match rootfs::container_init(spec, &argv, &blocked) {
            Ok(code) => code,
            Err(msg) => {
                report(spec.error_fd, &msg);
                EXIT_SETUP
            }
        };
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) }
    }
    drop(alive_r);
    let code = signals::supervise(pid, false);
    drop(alive_w);
    Ok(code)
}

/// True when the other end of `alive` (held by the parent) is closed: the parent is gone.
fn parent_gone(alive: &OwnedFd) -> bool {
    let mut fd = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll of one valid descriptor, without waiting.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents & libc::POLLHUP != 0
}

/// Map the caller to root in a new user namespace.
fn enter_user_namespace() -> Result<(), String> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: unshare only changes this (single-threaded) process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(os_fail(
            "creating a user namespace for a rootless container (is \
             /proc/sys/user/max_user_namespaces zero, or unprivileged user namespaces disabled?)",
        ));
    }
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| format!("writing {file}: {e}"))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    Ok(())
}
