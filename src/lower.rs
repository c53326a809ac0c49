//! The lower layers of an overlay: what their merged tree holds at a path, found the way
//! overlayfs finds it. The overlay-upper diff asks it what an upper entry replaced; an apply
//! in overlay form over lower layers asks it what to copy up.
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

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::entry::{self, Kind, os_path};
use crate::error::{IoContext, Result};
use crate::{walk, whiteout};

/// The paths of each file with more than one link in a layer directory, by (device, inode).
type LinkGroups = HashMap<(u64, u64), Vec<Vec<u8>>>;

/// The lower directories of an overlay (top first), opened for lookups, with what each holds
/// at the directories looked up so far: the entries of an upper directory share most of
/// their parents.
pub(crate) struct Lowers<'a> {
    layers: Vec<(OwnedFd, &'a Path)>,
    dirs: Mutex<HashMap<(usize, Vec<u8>), AtDir>>,
    /// The hardlink groups of the layers whose files were copied up, by layer, read once.
    links: Mutex<HashMap<usize, LinkGroups>>,
}

/// What one lower layer holds at a parent of a path looked up.
#[derive(Clone, Copy)]
enum AtDir {
    /// Nothing: its layers below show theirs (unless a directory above is opaque).
    Absent,
    /// A whiteout, or anything but a directory: the layers below show nothing there.
    Hidden,
    /// A directory, opaque (hiding the layers below) or merged with them.
    Dir { opaque: bool },
}

/// What one lower layer has at a path.
enum InLower {
    /// The path itself, opened `O_PATH`.
    Found(OwnedFd),
    /// A whiteout of it or of a parent, or a parent that is not a directory: the layers
    /// below do not show it.
    Hidden,
    /// Nothing; the layers below show theirs unless a parent here is opaque.
    Absent { below_opaque: bool },
}

impl<'a> Lowers<'a> {
    /// Open each lower directory (top first).
    pub(crate) fn open(lowers: &'a [PathBuf]) -> Result<Self> {
        let layers = lowers
            .iter()
            .map(|p| Ok((walk::open_root(p)?, p.as_path())))
            .collect::<Result<_>>()?;
        Ok(Lowers {
            layers,
            dirs: Default::default(),
            links: Default::default(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// True when `rel` exists in the lowers (see [`Self::find`]).
    pub(crate) fn contains(&self, rel: &[u8]) -> Result<bool> {
        Ok(self.find(rel)?.is_some())
    }

    /// `rel` in the stack of lowers as overlayfs merges them, opened `O_PATH` with the
    /// lower's path; found without following any symlink. A lower layer's whiteout at `rel`,
    /// or a whiteout or anything but a directory at one of its parents, hides `rel` in the
    /// layers below (overlayfs does not merge a symlink with a directory); an opaque directory
    /// above it hides them too.
    pub(crate) fn find(&self, rel: &[u8]) -> Result<Option<(OwnedFd, &'a Path)>> {
        Ok(self
            .search(rel)?
            .map(|(i, found)| (found, self.layers[i].1)))
    }

    /// [`Self::find`], with the index of the layer that holds `rel`.
    fn search(&self, rel: &[u8]) -> Result<Option<(usize, OwnedFd)>> {
        for (i, &(ref fd, root)) in self.layers.iter().enumerate() {
            let at = || root.join(entry::os_path(rel));
            match self.in_layer(i, fd.as_fd(), rel).at(at())? {
                InLower::Found(found) => return Ok(Some((i, found))),
                InLower::Hidden | InLower::Absent { below_opaque: true } => return Ok(None),
                InLower::Absent {
                    below_opaque: false,
                } => {}
            }
        }
        Ok(None)
    }

    /// [`Self::find`] for a copy-up: the layer, the directory holding `rel` there and what
    /// `rel` is. `rel` is a path of the merged tree without a symbolic link on the way.
    pub(crate) fn found(&self, rel: &[u8]) -> Result<Option<Found>> {
        let Some((layer, found)) = self.search(rel)? else {
            return Ok(None);
        };
        let (fd, root) = &self.layers[layer];
        let at = || root.join(entry::os_path(rel));
        let stat = rustix::fs::fstat(&found).at(at())?;
        let parent = match entry::parent(rel) {
            b"" => rustix::fs::openat(fd, ".", PATH_FLAGS, Mode::empty()).at(at())?,
            dir => walk::open_beneath(fd.as_fd(), dir, PATH_FLAGS).at(at())?,
        };
        Ok(Some(Found {
            layer,
            parent,
            stat,
            path: at(),
        }))
    }

    fn in_layer(&self, i: usize, lower: BorrowedFd<'_>, rel: &[u8]) -> std::io::Result<InLower> {
        let mut below_opaque = false;
        let parents = rel
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(end, _)| &rel[..end]);
        for dir in parents {
            match self.at_dir(i, lower, dir)? {
                AtDir::Absent => return Ok(InLower::Absent { below_opaque }),
                AtDir::Hidden => return Ok(InLower::Hidden),
                AtDir::Dir { opaque } => below_opaque |= opaque,
            }
        }
        // Every parent is a directory here: the path is there or not.
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let found = match walk::open_beneath(lower, rel, flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(InLower::Absent { below_opaque });
            }
            Err(e) => return Err(e),
        };
        let st = rustix::fs::fstat(&found)?;
        let may_be_whiteout = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::CharacterDevice => st.st_rdev == 0,
            rustix::fs::FileType::RegularFile => st.st_size == 0, // by its xattr
            _ => false,
        };
        if may_be_whiteout
            && walk::entry_at(lower, rel)?.is_some_and(|e| whiteout::is_overlay_whiteout(&e))
        {
            return Ok(InLower::Hidden);
        }
        Ok(InLower::Found(found))
    }

    /// What lower `i` (open as `lower`) holds at the directory path `dir`, looked up once.
    fn at_dir(&self, i: usize, lower: BorrowedFd<'_>, dir: &[u8]) -> std::io::Result<AtDir> {
        let key = (i, dir.to_vec());
        let known = self
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some(known) = known {
            return Ok(known);
        }
        let at = match walk::entry_at(lower, dir)? {
            None => AtDir::Absent,
            // A whiteout too: it is never a directory.
            Some(e) if e.kind != Kind::Dir => AtDir::Hidden,
            Some(e) => AtDir::Dir {
                opaque: whiteout::is_overlay_opaque(&e),
            },
        };
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, at);
        Ok(at)
    }

    /// The other paths of the file `found` (at `path`) in its layer, when it has more than
    /// one link there.
    pub(crate) fn other_links(&self, found: &Found, path: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        if found.stat.st_nlink < 2 {
            return Ok(Vec::new());
        }
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let groups = match links.entry(found.layer) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(link_groups(&self.layers[found.layer].0)?)
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
    pub(crate) fn root_names(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        for (dir, _) in &self.layers {
            names.extend(crate::root::list_dir(dir)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// What the merged lower tree holds at a path: the layer (index in [`Lowers`]) whose entry is
/// seen, its parent directory there, and the entry's status.
pub(crate) struct Found {
    /// The index of the layer that holds it.
    pub(crate) layer: usize,
    /// The directory in that layer that holds the entry, open `O_PATH` (enough for the `*at`
    /// calls, and for a directory its owner cannot read).
    pub(crate) parent: OwnedFd,
    /// The entry's status (not followed).
    pub(crate) stat: Stat,
    /// Where it is, for messages.
    pub(crate) path: PathBuf,
}

impl Found {
    /// The entry's type.
    pub(crate) fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }
}

const PATH_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A 0/0 character device: an overlayfs whiteout.
pub(crate) fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Copy the lower entry `found` (named `name` in its directory) into `dir` under the same
/// name, as overlayfs copies up: a directory (without its children), a symbolic link, a
/// regular file with its content, a fifo or a device node; with its owner (when `chown`),
/// its xattrs (overlayfs' own left out), mode and mtime. As with overlayfs, `dir` keeps its
/// times: a copy-up is no change to the directory it is made in (where the caller may set
/// them: one without privilege can only in a directory of its own).
pub(crate) fn copy_up(found: &Found, name: &[u8], dir: impl AsFd, chown: bool) -> io::Result<()> {
    let dir = dir.as_fd();
    let before = rustix::fs::fstat(dir)?;
    copy_up_entry(found, name, dir, chown)?;
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: before.st_atime,
            tv_nsec: before.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: before.st_mtime,
            tv_nsec: before.st_mtime_nsec as _,
        },
    };
    match rustix::fs::futimens(dir, &times) {
        Ok(()) | Err(Errno::PERM | Errno::ACCESS) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn copy_up_entry(found: &Found, name: &[u8], dir: BorrowedFd<'_>, chown: bool) -> io::Result<()> {
    use rustix::fs::{Gid, Timespec, Timestamps, Uid, XattrFlags};
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
    let to = walk::proc_entry_path(dir, name);
    let cname = std::ffi::CString::new(name).map_err(|_| io::Error::from(Errno::INVAL))?;
    let xattrs = walk::entry_xattrs(found.parent.as_fd(), &cname).map_err(|e| {
        // A caller without privilege cannot read the xattrs of a directory its owner made
        // unreadable: the copy would lose them, so it stops, saying where.
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{}: {e}", found.path.display()))
    })?;
    for (key, value) in xattrs
        .iter()
        .filter(|(k, _)| !whiteout::is_overlay_xattr(k))
    {
        match rustix::fs::lsetxattr(os_path(&to), os_path(key), value, XattrFlags::empty()) {
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
