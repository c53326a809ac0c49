//! PID 1 of a container: mount its root, switch into it, start the command, reap.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::{ContainerSpec, exec, os_fail, signals};

/// Device nodes a container gets, bound from the host's (which works with and without a user
/// namespace, where `mknod` would not). They are the only ones it can open: the root and `/dev`
/// are mounted `nodev`, so a node the image holds or the container makes (`mknod`) opens
/// nothing, where docker's device cgroup allows these alone.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Parts of `/proc` and `/sys` that tell of the host or change it, hidden as docker's
/// default spec hides them: a file under `/dev/null`, a directory under an empty read-only
/// tmpfs.
const MASKED: [&str; 11] = [
    "proc/asound",
    "proc/acpi",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Parts of `/proc` that change the host's kernel (`/proc/sys/kernel/core_pattern`,
/// `/proc/sysrq-trigger`), read-only as in docker's default spec.
const READ_ONLY: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

fn mount_err(what: &str, target: &str, e: rustix::io::Errno) -> String {
    format!("mounting {what} on {target}: {}", std::io::Error::from(e))
}

/// Open the directory or file `rel` of the container root without following any symlink, so a
/// mount never lands outside the root whatever the image or the container's writes put there.
fn open_in_root(root: &OwnedFd, rel: &str, dir: bool) -> Result<OwnedFd, String> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve).map_err(|e| {
        let kind = if dir { "directory" } else { "regular file" };
        format!(
            "/{rel} in the container must be a {kind} reached without symlinks: {}",
            std::io::Error::from(e)
        )
    })
}

/// The path that names an open descriptor (mounting on it mounts on what it resolved to).
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Overlay options beside the layers: without redirect_dir and metacopy, the upper dir
/// describes its changes by itself (a renamed directory is copied up whole), which is what a
/// commit reads. Without the inode index too, whatever the kernel's default: with it, writing
/// one name of a lower hard-link set changes the other names in place of copying them up.
fn overlay_options(rootless: bool) -> &'static [(&'static str, Option<&'static str>)] {
    if rootless {
        &[("userxattr", None), ("index", Some("off"))]
    } else {
        &[
            ("redirect_dir", Some("off")),
            ("metacopy", Some("off")),
            ("index", Some("off")),
        ]
    }
}

fn overlay_error(rootfs: &Path, e: rustix::io::Errno) -> String {
    let hint = if e == rustix::io::Errno::NODEV {
        " (this kernel has no overlayfs)"
    } else {
        ""
    };
    format!(
        "{}{hint}",
        mount_err("overlayfs", &rootfs.display().to_string(), e)
    )
}

/// Mount the container's root: overlayfs over the layers, `nodev` (see [`DEVICES`]). Lower
/// dirs are named relative to the layer cache, the working directory from here on.
fn mount_overlay(spec: &ContainerSpec) -> Result<(), String> {
    rustix::process::chdir(&spec.layers_dir)
        .map_err(|e| format!("entering {}: {e}", spec.layers_dir.display()))?;
    match mount_overlay_by_parts(spec) {
        Ok(()) => Ok(()),
        Err(None) => mount_overlay_at_once(spec),
        Err(Some(e)) => Err(overlay_error(&spec.rootfs, e)),
    }
}

/// Whether overlayfs takes its options one by one, `lowerdir+` included (Linux 6.8), through
/// the file-system context API. Not before 5.2 (no `fsopen`), nor under a profile that
/// refuses it; not before 6.5 either, where overlayfs still took its options through the
/// legacy parser, which accepts any key (and fails only at the end): a key no kernel knows
/// tells it.
fn overlay_by_parts() -> Result<bool, rustix::io::Errno> {
    use rustix::io::Errno;
    use rustix::mount::{FsOpenFlags, fsconfig_set_string, fsopen};
    let fs = match fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        Err(Errno::NOSYS | Errno::PERM) => return Ok(false),
        Err(e) => return Err(e),
    };
    if fsconfig_set_string(&fs, "layerdiff-probe", "1").is_ok() {
        return Ok(false); // the legacy parser
    }
    // Before 6.8 the key itself is unknown.
    match fsconfig_set_string(&fs, "lowerdir+", ".") {
        Err(Errno::INVAL) => Ok(false),
        _ => Ok(true),
    }
}

/// Through the file-system context API, one layer at a time (`lowerdir+`): as many layers as
/// overlayfs stacks (500), whatever their paths. `Err(None)`: this kernel cannot, try
/// [`mount_overlay_at_once`]; `Err(Some)`: the mount failed.
fn mount_overlay_by_parts(spec: &ContainerSpec) -> Result<(), Option<rustix::io::Errno>> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    if !overlay_by_parts().map_err(Some)? {
        return Err(None);
    }
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(Some)?;
    for lower in &spec.lowers {
        fsconfig_set_string(&fs, "lowerdir+", lower.as_str()).map_err(Some)?;
    }
    fsconfig_set_string(&fs, "upperdir", &spec.upper).map_err(Some)?;
    fsconfig_set_string(&fs, "workdir", &spec.work).map_err(Some)?;
    for &(key, value) in overlay_options(spec.rootless) {
        match value {
            Some(v) => fsconfig_set_string(&fs, key, v),
            None => fsconfig_set_flag(&fs, key),
        }
        .map_err(Some)?;
    }
    fsconfig_create(&fs).map_err(Some)?;
    let mnt = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NODEV,
    )
    .map_err(Some)?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        &spec.rootfs,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(Some)
}

/// Through one `mount(2)`, whose options must fit in a page: some 48 layers.
fn mount_overlay_at_once(spec: &ContainerSpec) -> Result<(), String> {
    for part in spec.lowers.iter().map(String::as_str).chain([
        spec.upper.to_str().unwrap_or(","),
        spec.work.to_str().unwrap_or(","),
    ]) {
        if part.contains([',', ':', '\\']) || part.is_empty() {
            return Err(format!(
                "overlay layer path cannot contain ',', ':' or '\\': {part:?}"
            ));
        }
    }
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.lowers.join(":"),
        spec.upper.display(),
        spec.work.display()
    );
    for (key, value) in overlay_options(spec.rootless) {
        match value {
            Some(v) => data.push_str(&format!(",{key}={v}")),
            None => data.push_str(&format!(",{key}")),
        }
    }
    if data.len() >= 4096 {
        return Err(format!(
            "the image has {} layers: too many for one overlayfs mount on this kernel \
             (Linux 6.8 mounts up to 500)",
            spec.lowers.len() - 1
        ));
    }
    let data = CString::new(data).map_err(|_| "overlay options contain a NUL byte".to_string())?;
    rustix::mount::mount(
        "overlay",
        &spec.rootfs,
        "overlay",
        MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| overlay_error(&spec.rootfs, e))
}

fn mount_dev(root: &OwnedFd, rootfs: &Path) -> Result<(), String> {
    let dev = open_in_root(root, "dev", true)?;
    let nosuid = MountFlags::NOSUID | MountFlags::NOEXEC;
    rustix::mount::mount(
        "tmpfs",
        fd_path(&dev),
        "tmpfs",
        nosuid | MountFlags::NODEV,
        c"mode=755,size=65536k",
    )
    .map_err(|e| mount_err("tmpfs", "/dev", e))?;
    drop(dev);
    // /dev is now our own fresh tmpfs: plain paths below it cannot meet a symlink.
    let dir = rootfs.join("dev");
    for name in DEVICES {
        let target = dir.join(name);
        std::fs::write(&target, b"").map_err(|e| format!("creating /dev/{name}: {e}"))?;
        rustix::mount::mount_bind(Path::new("/dev").join(name), &target)
            .map_err(|e| mount_err(&format!("/dev/{name}"), &format!("/dev/{name}"), e))?;
    }
    for (name, mode) in [("pts", 0o755), ("shm", 0o1777)] {
        std::fs::create_dir(dir.join(name)).map_err(|e| format!("creating /dev/{name}: {e}"))?;
        rustix::fs::chmod(dir.join(name), Mode::from_raw_mode(mode))
            .map_err(|e| format!("chmod /dev/{name}: {e}"))?;
    }
    rustix::mount::mount(
        "devpts",
        dir.join("pts"),
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"newinstance,ptmxmode=0666,mode=0620",
    )
    .map_err(|e| mount_err("devpts", "/dev/pts", e))?;
    rustix::mount::mount(
        "shm",
        dir.join("shm"),
        "tmpfs",
        nosuid | MountFlags::NODEV,
        c"mode=1777",
    )
    .map_err(|e| mount_err("tmpfs", "/dev/shm", e))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dir.join(link))
            .map_err(|e| format!("creating /dev/{link}: {e}"))?;
    }
    Ok(())
}

fn mount_sys(root: &OwnedFd, rootfs: &Path) -> Result<(), String> {
    let sys = open_in_root(root, "sys", true)?;
    let target = fd_path(&sys);
    let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if rustix::mount::mount("sysfs", &target, "sysfs", flags, None).is_ok() {
        return Ok(());
    }
    // sysfs may only be mounted by the owner of the network namespace: a rootless container
    // sharing the host's network gets a read-only bind of the host's instead.
    rustix::mount::mount_bind_recursive("/sys", &target)
        .map_err(|e| mount_err("/sys", "/sys", e))?;
    // The remount must name the new mount's root, which the descriptor (opened on the
    // directory below it) does not; /sys was just checked to be a directory without symlinks.
    let mounted = rootfs.join("sys");
    rustix::mount::mount_remount(&mounted, MountFlags::BIND | MountFlags::RDONLY | flags, c"")
        .map_err(|e| mount_err("/sys (read-only)", "/sys", e))
}

/// Hide [`MASKED`] and make [`READ_ONLY`] read-only, below `/proc` and `/sys` as just mounted
/// in `rootfs` (kernel file systems: no symlinks on these paths). What this kernel lacks is
/// skipped.
fn restrict_kernel_files(rootfs: &Path) -> Result<(), String> {
    let fixed = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for rel in MASKED {
        let target = rootfs.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&target) else {
            continue;
        };
        let masked = if meta.is_dir() {
            rustix::mount::mount(
                "tmpfs",
                &target,
                "tmpfs",
                fixed | MountFlags::RDONLY,
                c"size=0",
            )
        } else {
            rustix::mount::mount_bind("/dev/null", &target)
        };
        masked.map_err(|e| mount_err("a mask", &format!("/{rel}"), e))?;
    }
    for rel in READ_ONLY {
        let target = rootfs.join(rel);
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        rustix::mount::mount_bind(&target, &target)
            .and_then(|()| {
                let flags = MountFlags::BIND | MountFlags::RDONLY | fixed;
                rustix::mount::mount_remount(&target, flags, c"")
            })
            .map_err(|e| mount_err("read-only", &format!("/{rel}"), e))?;
    }
    Ok(())
}

/// Bring the loopback interface of a new network namespace up.
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket and ioctl calls on a zeroed `ifreq` naming "lo"; the descriptor is
    // closed on every path.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(os_fail("socket for the loopback interface"));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut ok = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0;
        if ok {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            ok = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0;
        }
        let err = os_fail("bringing up the loopback interface");
        libc::close(sock);
        if ok { Ok(()) } else { Err(err) }
    }
}

/// Bind-mount the volume directory `source` at `target` in the root: the directory there is
/// made when missing (each component inside the root, no symbolic link followed), and an
/// empty volume is first given a copy of what the image holds there and that directory's
/// owner, mode and times, as docker fills a new anonymous volume.
fn mount_volume(rootfs: &Path, source: &Path, target: &str) -> Result<(), String> {
    let rel = target.trim_start_matches('/');
    let fail = |what: &str, e: std::io::Error| format!("volume {target}: {what}: {e}");
    // Made as apply makes a directory: each component inside the root, a symbolic link on
    // the way followed there (`/var/run -> /run`), as docker resolves a volume's path.
    let root = crate::root::Root::open(rootfs).map_err(|e| format!("volume {target}: {e}"))?;
    let dir = root
        .create_dir_all(rel.as_bytes())
        .map_err(|e| fail("making its directory", e))?;
    let volume = rustix::fs::open(source, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| fail("opening its directory", e.into()))?;
    // Filled once, when it is new, as docker fills an anonymous volume: what a run removed
    // from it stays removed.
    let filled = source.with_extension("filled");
    if !filled.exists() {
        // Two descriptors a level of the copy: as many as may be open meanwhile, and the
        // command's own limit put back after.
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, raised);
        let copied = copy_tree(&dir, &volume);
        let _ = setrlimit(Resource::Nofile, limit);
        copied.map_err(|e| fail("copying what the image holds there", e))?;
        copy_meta(&dir, None, &volume).map_err(|e| fail("giving it the image's owner", e))?;
        std::fs::write(&filled, b"").map_err(|e| fail("marking it filled", e))?;
    }
    rustix::mount::mount_bind(source, fd_path(&dir))
        .map_err(|e| mount_err(&source.display().to_string(), target, e))
}

/// Copy the tree in `from` into the empty directory `to`: directories, files (hardlinks kept
/// as links, xattrs kept), symbolic links and fifos, with their owners, modes and times (a
/// device node or socket is left out, and an owner or xattr the caller cannot give, rootless,
/// is left as it is).
fn copy_tree(from: &OwnedFd, to: &OwnedFd) -> std::io::Result<()> {
    let mut links = std::collections::HashMap::new();
    copy_dir(from, to, to, b"", &mut links)
}

/// [`copy_tree`] of the directory `from` into `to`, which is `rel` below `top`; `links` maps a
/// multiply linked file's (device, inode) to the first copy's path below `top`.
fn copy_dir(
    from: &OwnedFd,
    to: &OwnedFd,
    top: &OwnedFd,
    rel: &[u8],
    links: &mut std::collections::HashMap<(u64, u64), Vec<u8>>,
) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType};
    let names: Vec<CString> = rustix::fs::Dir::read_from(from)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| !matches!(n.to_bytes(), b"." | b".."))
        .collect();
    for name in names {
        let st = rustix::fs::statat(from, &name, AtFlags::SYMLINK_NOFOLLOW)?;
        let path = if rel.is_empty() {
            name.to_bytes().to_vec()
        } else {
            [rel, b"/", name.to_bytes()].concat()
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                rustix::fs::mkdirat(to, &name, Mode::from_raw_mode(0o700))?;
                let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let src = rustix::fs::openat(from, &name, flags, Mode::empty())?;
                let dst = rustix::fs::openat(to, &name, flags, Mode::empty())?;
                copy_dir(&src, &dst, top, &path, links)?;
                copy_meta(&src, None, &dst)?;
                copy_xattrs(&src, &dst)?;
            }
            FileType::RegularFile => {
                let id = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&id) {
                        let first = CString::new(first.clone())?;
                        rustix::fs::linkat(top, &first, to, &name, AtFlags::empty())?;
                        continue;
                    }
                    links.insert(id, path.clone());
                }
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let src = rustix::fs::openat(from, &name, flags, Mode::empty())?;
                let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
                let dst = rustix::fs::openat(to, &name, create, Mode::from_raw_mode(0o600))?;
                std::io::copy(
                    &mut std::fs::File::from(src.try_clone()?),
                    &mut std::fs::File::from(dst.try_clone()?),
                )?;
                copy_meta(&src, None, &dst)?;
                // After the owner: giving one clears a file's capabilities.
                copy_xattrs(&src, &dst)?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(from, &name, Vec::new())?;
                rustix::fs::symlinkat(&target, to, &name)?;
                chown_at(to, &name, (st.st_uid, st.st_gid))?;
                rustix::fs::utimensat(to, &name, &times_of(&st), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            FileType::Fifo => {
                rustix::fs::mknodat(to, &name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
                let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let src = rustix::fs::openat(from, &name, flags, Mode::empty())?;
                let dst = rustix::fs::openat(
                    to,
                    &name,
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                copy_meta(&src, Some(st), &dst)?;
            }
            _ => {} // devices and sockets: what a volume holds is data
        }
    }
    Ok(())
}

/// Give `dst` the xattrs of `src` (overlayfs' own excepted); one the caller may not set
/// (rootless: `security.*`, `trusted.*`), or the file system does not take, is left out.
fn copy_xattrs(src: &OwnedFd, dst: &OwnedFd) -> std::io::Result<()> {
    let mut names = vec![0u8; 64 << 10];
    let n = match rustix::fs::flistxattr(src, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut value = vec![0u8; 64 << 10];
    for key in names[..n].split(|&b| b == 0).filter(|k| !k.is_empty()) {
        if crate::whiteout::is_overlay_xattr(key) {
            continue;
        }
        let key = CString::new(key)?;
        let len = match rustix::fs::fgetxattr(src, &key, &mut value) {
            Ok(len) => len,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        match rustix::fs::fsetxattr(dst, &key, &value[..len], rustix::fs::XattrFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The access and modification times `st` holds.
fn times_of(st: &rustix::fs::Stat) -> rustix::fs::Timestamps {
    let time = |sec: i64, nsec: u64| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::Timestamps {
        last_access: time(st.st_atime, st.st_atime_nsec),
        last_modification: time(st.st_mtime, st.st_mtime_nsec),
    }
}

/// Give `dst` the owner, mode and times of `src` (or of `known`, its stat).
fn copy_meta(src: &OwnedFd, known: Option<rustix::fs::Stat>, dst: &OwnedFd) -> std::io::Result<()> {
    let st = match known {
        Some(st) => st,
        None => rustix::fs::fstat(src)?,
    };
    chown_at(dst, c"", (st.st_uid, st.st_gid))?;
    rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    rustix::fs::futimens(dst, &times_of(&st))?;
    Ok(())
}

/// Change the owner of `name` in `dir` (`""`: `dir` itself), not following a link; an owner
/// the caller may not give (rootless, unmapped) is left as it is.
fn chown_at(dir: &OwnedFd, name: &std::ffi::CStr, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Gid, Uid};
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    match rustix::fs::chownat(dir, name, Some(uid), Some(gid), flags) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::PERM) => Ok(()),
        other => Ok(other?),
    }
}

fn setup_root(spec: &ContainerSpec) -> Result<(), String> {
    // Nothing we mount may propagate back to the host's mount namespace.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| format!("making the mount namespace private: {e}"))?;
    mount_overlay(spec)?;
    let root = rustix::fs::open(
        &spec.rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening {}: {e}", spec.rootfs.display()))?;
    for (source, target) in &spec.binds {
        let rel = target.trim_start_matches('/');
        let fd = open_in_root(&root, rel, false)?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| format!("stat /{rel}: {e}"))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(format!("/{rel} in the container must be a regular file"));
        }
        rustix::mount::mount_bind(source, fd_path(&fd))
            .map_err(|e| mount_err(&source.display().to_string(), &format!("/{rel}"), e))?;
    }
    for (source, target) in &spec.volumes {
        mount_volume(&spec.rootfs, source, target)?;
    }
    let proc_dir = open_in_root(&root, "proc", true)?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    rustix::mount::mount("proc", fd_path(&proc_dir), "proc", flags, None)
        .map_err(|e| mount_err("proc", "/proc", e))?;
    mount_dev(&root, &spec.rootfs)?;
    mount_sys(&root, &spec.rootfs)?;
    drop(root);
    restrict_kernel_files(&spec.rootfs)?;
    // Switch the root: the old one is stacked under the new and detached at once.
    rustix::process::chdir(&spec.rootfs).map_err(|e| format!("entering the root: {e}"))?;
    rustix::process::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| format!("detaching the old root: {e}"))?;
    rustix::process::chdir("/").map_err(|e| format!("entering the new root: {e}"))?;
    rustix::system::sethostname(spec.hostname.as_bytes())
        .map_err(|e| format!("setting the hostname {:?}: {e}", spec.hostname))?;
    if spec.new_network {
        loopback_up()?;
    }
    Ok(())
}

/// Body of the container's PID 1: set up, start the command, reap until it ends.
pub fn container_init(
    spec: &ContainerSpec,
    argv: &[CString],
    blocked: &signals::SigSet,
) -> Result<i32, String> {
    setup_root(spec)?;
    // SAFETY: PID 1 is single-threaded, so the child may do anything after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_fail("fork"));
    }
    if pid == 0 {
        signals::restore(blocked);
        let code = exec::exec_command(spec, argv);
        // SAFETY: exec failed; leave the forked child without running destructors.
        unsafe { libc::_exit(code) }
    }
    Ok(signals::supervise(pid, true))
}
