//! The command of a container: its user, environment and working directory, then `execve`.
//!
//! User names are looked up in the container's own `/etc/passwd` and `/etc/group` (after the
//! root switch), never the host's. The parsing is pure and tested on its own.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use super::{ContainerSpec, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SETUP, report};

/// The search path when the environment has none (the one `docker run` sets).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who a container's command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the groups of `/etc/group` that list the user).
    pub groups: Vec<u32>,
    /// Home directory (`/` when unknown).
    pub home: String,
}

/// A `/etc/passwd` line: (name, uid, gid, home).
pub fn parse_passwd(text: &str) -> Vec<(String, u32, u32, String)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 6 {
                return None;
            }
            Some((
                f[0].to_string(),
                f[2].parse().ok()?,
                f[3].parse().ok()?,
                f[5].to_string(),
            ))
        })
        .collect()
}

/// A `/etc/group` line: (name, gid, members).
pub fn parse_group(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string);
            Some((f[0].to_string(), f[2].parse().ok()?, members.collect()))
        })
        .collect()
}

/// Resolve `USER[:GROUP]` (names or numbers; empty: root) against the contents of the
/// container's `/etc/passwd` and `/etc/group`, as `docker run --user` does: a numeric user
/// unknown to passwd is allowed (group 0), a name must exist.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<UserSpec, String> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let found = match user.parse::<u32>() {
        Ok(uid) => {
            users
                .iter()
                .find(|u| u.1 == uid)
                .cloned()
                .or(Some((String::new(), uid, 0, "/".into())))
        }
        Err(_) => users.iter().find(|u| u.0 == user).cloned(),
    };
    let Some((name, uid, mut gid, home)) = found else {
        return Err(format!(
            "unable to find user {user}: no matching entries in /etc/passwd"
        ));
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in /etc/group")
                })?,
        };
    }
    let mut extra: Vec<u32> = if grp.is_some() || name.is_empty() {
        Vec::new()
    } else {
        groups
            .iter()
            .filter(|e| e.2.contains(&name))
            .map(|e| e.1)
            .collect()
    };
    if !extra.contains(&gid) {
        extra.insert(0, gid);
    }
    let home = if home.is_empty() {
        "/".to_string()
    } else {
        home
    };
    Ok(UserSpec {
        uid,
        gid,
        groups: extra,
        home,
    })
}

fn read_or_empty(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn become_user(spec: &ContainerSpec, user: &UserSpec) -> Result<(), String> {
    if spec.rootless && (user.uid, user.gid) != (0, 0) {
        // Its user namespace maps the caller alone, as root: there is no one else to become.
        return Err(format!(
            "user {}:{}: a rootless container has one user, root (the caller); it cannot run \
             as another",
            user.uid, user.gid
        ));
    }
    // SAFETY: plain credential system calls on values we own; each result is checked.
    unsafe {
        // A rootless container's user namespace forbids setgroups (it maps only the caller).
        if !spec.rootless && libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0 {
            return Err(super::os_fail("setgroups"));
        }
        if libc::setgid(user.gid) != 0 {
            return Err(super::os_fail(format!("setgid {}", user.gid)));
        }
        if libc::setuid(user.uid) != 0 {
            return Err(super::os_fail(format!("setuid {}", user.uid)));
        }
    }
    Ok(())
}

/// The capabilities a container's processes may hold: the default set of Docker and Podman
/// (chown, dac_override, fowner, fsetid, kill, setgid, setuid, setpcap, net_bind_service,
/// net_raw, sys_chroot, mknod, audit_write, setfcap). Everything else — sys_admin, sys_module,
/// sys_ptrace, net_admin… — leaves the bounding set, so not even root in the container gets it.
pub const KEPT_CAPABILITIES: u64 = 0xa804_25fb;

fn drop_capabilities() -> Result<(), String> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last.min(63) {
        if KEPT_CAPABILITIES & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(super::os_fail(format!("dropping capability {cap}")));
        }
    }
    Ok(())
}

fn enter_workdir(cwd: &str) -> Result<(), String> {
    let cwd = if cwd.is_empty() { "/" } else { cwd };
    make_dirs(Path::new(cwd), 0)
        .map_err(|e| format!("creating the working directory {cwd}: {e}"))?;
    rustix::process::chdir(cwd).map_err(|e| format!("entering the working directory {cwd}: {e}"))
}

/// Symbolic links followed on the way to a working directory before giving up (the kernel's
/// own limit).
const MAX_LINKS: u32 = 40;

/// `mkdir -p` of `path` that follows symbolic links, a dangling one included: the directory it
/// names is made, as runc makes a working directory. Called inside the container's root, where
/// a link cannot lead out of it.
fn make_dirs(path: &Path, links: u32) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Ok(target) = std::fs::read_link(path) {
        if links >= MAX_LINKS {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        return make_dirs(&parent.join(target), links + 1);
    }
    if let Some(parent) = path.parent() {
        make_dirs(parent, links)?;
    }
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        done => done,
    }
}

/// Set up and exec the container's command. Returns only on failure, with the exit code.
/// Move this process into the control groups whose `cgroup.procs` files `fds` hold open
/// ("0" names the writer). The descriptors close on exec.
fn join_cgroups(fds: &[RawFd]) -> Result<(), String> {
    for &fd in fds {
        // SAFETY: a write of a byte string we own to a descriptor the spec handed over.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(super::os_fail("joining the container's control group"));
        }
    }
    Ok(())
}

/// Make a terminal in the container's `/dev/pts` the command's controlling terminal and its
/// standard streams (owned by the user it runs as), and send its master side over
/// `console`, as runc does for `-t`. Called in the command's process, before it becomes the
/// user.
fn open_console(console: RawFd, size: (u16, u16), user: &UserSpec) -> Result<(), String> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let fail = |what: &str, e: rustix::io::Errno| format!("{what}: {e}");
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(|e| fail("opening /dev/ptmx", e))?;
    rustix::pty::unlockpt(&master).map_err(|e| fail("unlocking the terminal", e))?;
    let name =
        rustix::pty::ptsname(&master, Vec::new()).map_err(|e| fail("naming the terminal", e))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("opening the terminal", e))?;
    if size != (0, 0) {
        let winsize = libc::winsize {
            ws_row: size.0,
            ws_col: size.1,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize, on the terminal just made.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } != 0 {
            return Err(super::os_fail("sizing the terminal"));
        }
    }
    // The user it runs as may use its terminal; one the user namespace does not map (a
    // rootless run) is refused when the command becomes it, with its own message.
    match rustix::fs::fchown(
        &slave,
        Some(rustix::fs::Uid::from_raw(user.uid)),
        Some(rustix::fs::Gid::from_raw(user.gid)),
    ) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::PERM) => {}
        Err(e) => return Err(fail("giving the terminal to the user", e)),
    }
    // A session of its own, whose controlling terminal this one becomes.
    rustix::process::setsid().map_err(|e| fail("setsid", e))?;
    rustix::process::ioctl_tiocsctty(&slave).map_err(|e| fail("taking the terminal", e))?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(super::os_fail("making the terminal the standard streams"));
        }
    }
    send_fd(console, master.as_raw_fd()).map_err(|e| format!("handing over the terminal: {e}"))?;
    // SAFETY: the console socket is ours to close; the command must not keep it.
    unsafe { libc::close(console) };
    Ok(())
}

/// Send the descriptor `fd` over the Unix socket `sock` (`SCM_RIGHTS`), with one byte.
fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    // SAFETY: both descriptors stay open for the duration of the call.
    let (sock, fd) = unsafe {
        (
            std::os::fd::BorrowedFd::borrow_raw(sock),
            std::os::fd::BorrowedFd::borrow_raw(fd),
        )
    };
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(b"t")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

pub fn exec_command(spec: &ContainerSpec, argv: &[CString]) -> i32 {
    let prepared = (|| -> Result<(Vec<CString>, String), String> {
        join_cgroups(&spec.cgroup_fds)?;
        let user = resolve_user(
            &spec.user,
            &read_or_empty("/etc/passwd"),
            &read_or_empty("/etc/group"),
        )?;
        if spec.console_fd >= 0 {
            open_console(spec.console_fd, spec.console_size, &user)?;
        }
        let mut env = spec.env.clone();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", user.home));
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_string();
        // docker's: what the command creates does not depend on the caller's shell.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        enter_workdir(&spec.cwd)?;
        rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
        drop_capabilities()?;
        become_user(spec, &user)?;
        let env = env
            .iter()
            .map(|e| super::cstr(e, "environment variable"))
            .collect::<Result<Vec<_>, _>>()?;
        super::seccomp::confine()?;
        Ok((env, path))
    })();
    let (env, path) = match prepared {
        Ok(p) => p,
        Err(msg) => {
            report(spec.error_fd, &msg);
            return EXIT_SETUP;
        }
    };
    let name = spec.argv[0].as_str();
    let candidates: Vec<String> = if name.contains('/') {
        vec![name.to_string()]
    } else {
        path.split(':')
            .map(|dir| if dir.is_empty() { "." } else { dir })
            .map(|dir| format!("{}/{name}", dir.trim_end_matches('/')))
            .collect()
    };
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut denied = None;
    for candidate in candidates {
        let Ok(file) = CString::new(candidate.clone()) else {
            continue;
        };
        // SAFETY: NUL-terminated argument and environment arrays of live CStrings.
        unsafe { libc::execve(file.as_ptr(), argp.as_ptr(), envp.as_ptr()) };
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => denied = Some((candidate, err)),
            _ => {
                report(spec.error_fd, &format!("exec {candidate:?}: {err}"));
                return EXIT_CANNOT_EXEC;
            }
        }
    }
    match denied {
        Some((candidate, err)) => {
            report(spec.error_fd, &format!("exec {candidate:?}: {err}"));
            EXIT_CANNOT_EXEC
        }
        None if name.contains('/') => {
            report(
                spec.error_fd,
                &format!("exec {name:?}: no such file or directory in the image"),
            );
            EXIT_NOT_FOUND
        }
        None => {
            report(
                spec.error_fd,
                &format!("exec {name:?}: executable file not found in $PATH"),
            );
            EXIT_NOT_FOUND
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_working_directory_is_made_through_dangling_links() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::os::unix::fs::symlink("data/real", root.join("lnk")).expect("symlink");
        std::os::unix::fs::symlink("loop", root.join("loop")).expect("symlink");
        std::fs::write(root.join("file"), b"").expect("file");
        make_dirs(&root.join("lnk/new/deeper"), 0).expect("made");
        assert!(root.join("data/real/new/deeper").is_dir());
        make_dirs(&root.join("lnk/new"), 0).expect("there already");
        let looped = make_dirs(&root.join("loop/x"), 0).expect_err("a loop");
        assert_eq!(looped.raw_os_error(), Some(libc::ELOOP));
        let file = make_dirs(&root.join("file/x"), 0).expect_err("a file");
        assert_eq!(file.raw_os_error(), Some(libc::ENOTDIR));
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\nbad\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nadm:x:4:www,other\nstaff:x:50:\n";

    /// (uid, gid, groups, home) or a piece of the error message.
    type Expected = Result<(u32, u32, &'static [u32], &'static str), &'static str>;

    #[test]
    fn resolves_users_like_docker() {
        let table: &[(&str, Expected)] = &[
            ("", Ok((0, 0, &[0], "/root"))),
            ("root", Ok((0, 0, &[0], "/root"))),
            ("www", Ok((33, 33, &[33, 4], "/var/www"))),
            ("33", Ok((33, 33, &[33, 4], "/var/www"))),
            ("1234", Ok((1234, 0, &[0], "/"))),
            ("1234:50", Ok((1234, 50, &[50], "/"))),
            ("www:staff", Ok((33, 50, &[50], "/var/www"))),
            ("nobody", Err("unable to find user nobody")),
            ("www:nogroup", Err("unable to find group nogroup")),
        ];
        for (spec, want) in table {
            let got = resolve_user(spec, PASSWD, GROUP);
            match want {
                Ok((uid, gid, groups, home)) => {
                    let got = got.unwrap();
                    assert_eq!(
                        (got.uid, got.gid, got.groups.as_slice(), got.home.as_str()),
                        (*uid, *gid, *groups, *home),
                        "{spec}"
                    );
                }
                Err(msg) => assert!(got.unwrap_err().contains(msg), "{spec}"),
            }
        }
    }
}
