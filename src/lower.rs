//! The layers below one being applied in overlayfs form: what their merged tree holds at a
//! path, found the way overlayfs finds it.
//!
//! A layer applied by itself in overlay form (whiteouts as 0/0 character devices, opaque
//! directories as an xattr) cannot see the layers below it. A layer that writes through a
//! symbolic link an earlier layer made (`lib/x` over `lib -> usr/lib`), or hard-links to an
//! earlier layer's file, then makes a directory where the link was, or fails. With the lower
//! directories known, the apply copies up what it passes through, as overlayfs does for a
//! write through a mount: the merged tree then matches the layers applied in order onto one
//! directory. See [`crate::apply::ApplyOptions::lowers`].
//!
//! Lookup follows overlayfs: the topmost layer holding the path decides; a whiteout hides it
//! and everything below; a directory merges with the directories below it at the same path,
//! down to the first opaque one; anything else under a directory is hidden by it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::entry::os_path;
use crate::error::{IoContext, Result};

/// The paths of each file with more than one link in a layer directory, by (device, inode).
type LinkGroups = HashMap<(u64, u64), Vec<Vec<u8>>>;

/// The lower directories of a layer, top first, each open.
#[derive(Debug)]
pub struct Lowers {
    dirs: Vec<OwnedFd>,
    /// The xattr that marks an opaque directory in them.
    opaque_key: &'static str,
    /// The hardlink groups of the layers whose files were copied up, by layer, read once.
    links: RefCell<HashMap<usize, LinkGroups>>,
}

/// What the merged lower tree holds at a path: the layer (index in [`Lowers`]) whose entry is
/// seen, its parent directory there, and the entry's status.
pub struct Found {
    /// The index of the layer that holds it.
    pub layer: usize,
    /// The directory in that layer that holds the entry, open `O_PATH` (enough for the `*at`
    /// calls, and for a directory its owner cannot read).
    pub parent: OwnedFd,
    /// The entry's status (not followed).
    pub stat: Stat,
}

impl Found {
    /// The entry's type.
    pub fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }
}

const PATH_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A 0/0 character device: an overlayfs whiteout.
pub fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

impl Lowers {
    /// Open the directories `dirs` (top first); opaque directories in them carry
    /// `user.overlay.opaque` when `userxattr`, else `trusted.overlay.opaque`.
    pub fn open(dirs: &[PathBuf], userxattr: bool) -> Result<Lowers> {
        let dirs = dirs
            .iter()
            .map(|d| {
                rustix::fs::open(
                    d,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .at(d)
            })
            .collect::<Result<Vec<_>>>()?;
        let opaque_key = if userxattr {
            "user.overlay.opaque"
        } else {
            "trusted.overlay.opaque"
        };
        Ok(Lowers {
            dirs,
            opaque_key,
            links: RefCell::new(HashMap::new()),
        })
    }

    fn is_opaque(&self, parent: impl AsFd, name: &[u8]) -> bool {
        let Ok(fd) = rustix::fs::openat(
            parent,
            os_path(name),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        self.is_opaque_dir(&fd)
    }

    /// Whether the open directory `fd` is marked opaque, in these layers' form.
    pub fn is_opaque_dir(&self, fd: impl AsFd) -> bool {
        let mut value = [0u8; 2];
        matches!(rustix::fs::fgetxattr(fd, self.opaque_key, &mut value), Ok(1) if value[0] == b'y')
    }

    /// The other paths of the file `found` (at `path`) in its layer, when it has more than
    /// one link there.
    pub fn other_links(&self, found: &Found, path: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        if found.stat.st_nlink < 2 {
            return Ok(Vec::new());
        }
        let mut links = self.links.borrow_mut();
        let groups = match links.entry(found.layer) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(link_groups(&self.dirs[found.layer])?)
            }
        };
        let id = (found.stat.st_dev, found.stat.st_ino);
        Ok(groups
            .get(&id)
            .map(|paths| paths.iter().filter(|p| *p != path).cloned().collect())
            .unwrap_or_default())
    }

    /// The names in the root directories of the lower layers (whiteouts among them), each
    /// once.
    pub fn root_names(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        for dir in &self.dirs {
            names.extend(crate::root::list_dir(dir)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// What the merged lower tree holds at `path` (relative, no `.`/`..`, no symbolic link
    /// on the way in the merged tree), if anything.
    pub fn lookup(&self, path: &[u8]) -> io::Result<Option<Found>> {
        // The layers in which the directory reached so far is a directory that takes part in
        // the merge, top first, with that directory open in each.
        let mut layers: Vec<(usize, OwnedFd)> = self
            .dirs
            .iter()
            .enumerate()
            .map(|(i, d)| Ok((i, rustix::fs::openat(d, ".", PATH_FLAGS, Mode::empty())?)))
            .collect::<rustix::io::Result<_>>()?;
        let comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let Some((last, dirs)) = comps.split_last() else {
            return Ok(None);
        };
        for comp in dirs {
            let mut next = Vec::new();
            for (layer, dir) in &layers {
                let st = match rustix::fs::statat(dir, os_path(comp), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
                    Err(e) => return Err(e.into()),
                };
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    // A whiteout, or anything else: it hides what lies below, and is not a
                    // directory to go through unless one above it is.
                    break;
                }
                next.push((
                    *layer,
                    rustix::fs::openat(dir, os_path(comp), PATH_FLAGS, Mode::empty())?,
                ));
                if self.is_opaque(dir, comp) {
                    break;
                }
            }
            if next.is_empty() {
                return Ok(None);
            }
            layers = next;
        }
        for (layer, dir) in layers {
            match rustix::fs::statat(&dir, os_path(last), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if is_whiteout(&st) => return Ok(None),
                Ok(stat) => {
                    return Ok(Some(Found {
                        layer,
                        parent: dir,
                        stat,
                    }));
                }
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }
}

/// Every xattr of the file at `path` (not followed), overlayfs' own left out.
fn xattrs_of(path: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(os_path(path), &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            // No xattrs to read there, or none this caller may read (a directory its owner
            // made unreadable): nothing is copied of them.
            Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::ACCESS) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for key in names[..n].split(|&b| b == 0).filter(|k| !k.is_empty()) {
        if crate::whiteout::is_overlay_xattr(key) {
            continue;
        }
        let mut value = vec![0u8; 4096];
        let len = loop {
            match rustix::fs::lgetxattr(os_path(path), os_path(key), &mut value) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA | rustix::io::Errno::ACCESS) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            value.truncate(len);
            out.push((key.to_vec(), value));
        }
    }
    Ok(out)
}

/// `/proc/self/fd/N/name`: the entry `name` of the open directory `dir`, as a path the
/// `l*xattr` calls take without following the entry itself.
fn proc_path(dir: impl AsFd, name: &[u8]) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

/// Copy the lower entry `found` (named `name` in its directory) into `dir` under the same
/// name, as overlayfs copies up: a directory (without its children), a symbolic link, a
/// regular file with its content, a fifo or a device node; with its owner (when `chown`),
/// its xattrs (overlayfs' own left out), mode and mtime.
pub fn copy_up(found: &Found, name: &[u8], dir: impl AsFd, chown: bool) -> io::Result<()> {
    use rustix::fs::{Gid, Timespec, Timestamps, Uid, XattrFlags};
    let dir = dir.as_fd();
    let st = &found.stat;
    let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
    let leaf = os_path(name);
    match found.kind() {
        FileType::Directory => rustix::fs::mkdirat(dir, leaf, Mode::from_raw_mode(0o700))?,
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(&found.parent, leaf, Vec::new())?;
            rustix::fs::symlinkat(target.as_c_str(), dir, leaf)?;
        }
        FileType::RegularFile => {
            let from = match rustix::fs::openat(
                &found.parent,
                leaf,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                // A caller without privilege cannot read a file it made unreadable (mode 000),
                // but may link it, as the layer below made it: the copy is then that file,
                // the same inode, owner, mode and all (never written through: every entry of
                // a layer makes a file anew).
                Err(rustix::io::Errno::ACCESS) if !chown => {
                    rustix::fs::linkat(&found.parent, leaf, dir, leaf, AtFlags::empty())?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let to = rustix::fs::openat(
                dir,
                leaf,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            io::copy(&mut std::fs::File::from(from), &mut std::fs::File::from(to))?;
        }
        ft => rustix::fs::mknodat(dir, leaf, ft, mode, st.st_rdev)?,
    }
    if chown {
        rustix::fs::chownat(
            dir,
            leaf,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    let to = proc_path(dir, name);
    for (key, value) in xattrs_of(&proc_path(&found.parent, name))? {
        match rustix::fs::lsetxattr(os_path(&to), os_path(&key), &value, XattrFlags::empty()) {
            // What the layer directory cannot hold (trusted.* without privilege, say) stays
            // below, as when the layer itself is applied without privilege.
            Ok(()) | Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if found.kind() != FileType::Symlink {
        // After the owner: chown clears setuid and setgid.
        rustix::fs::chmodat(dir, leaf, mode, AtFlags::empty())?;
    }
    let mtime = Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    };
    let times = Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    rustix::fs::utimensat(dir, leaf, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Every file with more than one link in the tree `root`, by (device, inode). Directories are
/// opened one at a time, by path, never through a symbolic link; one that cannot be read
/// (a caller without privilege) is left out: only its files' links are not kept together.
fn link_groups(root: &OwnedFd) -> io::Result<LinkGroups> {
    use rustix::fs::ResolveFlags;
    let mut groups = LinkGroups::new();
    let mut todo: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = todo.pop() {
        let opened = if rel.is_empty() {
            rustix::fs::openat(
                root,
                ".",
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        } else {
            rustix::fs::openat2(
                root,
                os_path(&rel),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            )
        };
        let dir = match opened {
            Ok(dir) => dir,
            Err(rustix::io::Errno::ACCESS) => continue,
            Err(e) => return Err(e.into()),
        };
        let names = match crate::root::list_dir(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => continue,
            Err(e) => return Err(e),
        };
        for name in names {
            let st = rustix::fs::statat(&dir, os_path(&name), AtFlags::SYMLINK_NOFOLLOW)?;
            let path = crate::entry::join(&rel, &name);
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                todo.push(path);
            } else if st.st_nlink > 1 {
                groups.entry((st.st_dev, st.st_ino)).or_default().push(path);
            }
        }
    }
    Ok(groups)
}
