//! One filesystem object as the walk saw it, and the order entries are kept in.

use std::cmp::Ordering;

/// The type of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Unix socket: never enters a layer.
    Socket,
}

/// A point in time with nanoseconds, as `statx` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since the epoch (may be negative).
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

/// One object of a tree: everything a layer records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the tree root, components joined by `/`, no leading or trailing `/`.
    /// Raw bytes: names need not be UTF-8.
    pub path: Vec<u8>,
    /// Object type.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Size in bytes for regular files, 0 for everything else.
    pub size: u64,
    /// Extended attributes (name, value), sorted by name. Overlayfs' own are kept here so the
    /// overlay reader can see them; the layer writer drops them.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Symlink target (empty for other kinds).
    pub link_target: Vec<u8>,
    /// Device major number (devices only).
    pub rdev_major: u32,
    /// Device minor number (devices only).
    pub rdev_minor: u32,
    /// Device of the inode: with `ino`, the hardlink identity.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Link count.
    pub nlink: u64,
}

impl Entry {
    /// The last path component.
    pub fn name(&self) -> &[u8] {
        base_name(&self.path)
    }

    /// True for a member of a hardlink set: anything but a directory or a socket (which no
    /// layer holds) with more than one link. Symlinks, FIFOs and devices can be hardlinked
    /// too, and a layer links them as docker's does.
    pub fn is_hardlinked(&self) -> bool {
        !matches!(self.kind, Kind::Dir | Kind::Socket) && self.nlink > 1
    }
}

/// Compare two relative paths component by component, by name bytes.
///
/// This is the order of every entry list and every layer: a directory comes right before its
/// own descendants, and those come before the directory's next sibling (`a`, `a/z`, `a-b`),
/// which a flat byte comparison would not give (`-` sorts before `/`).
pub fn cmp_paths(a: &[u8], b: &[u8]) -> Ordering {
    // Component by component is byte order with `/` below every other byte: at the first
    // difference, the path whose component ended there sorts first; a path that is a prefix
    // of the other (fewer components, or a shorter last one) sorts first too.
    match first_difference(a, b) {
        None => a.len().cmp(&b.len()),
        Some(i) => {
            let rank = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
            rank(a[i]).cmp(&rank(b[i]))
        }
    }
}

/// Where `a` and `b` first differ, within the shorter one's length. Long shared prefixes (deep
/// paths of one directory) are skipped a block at a time.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    const BLOCK: usize = 32;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    a[i..n]
        .iter()
        .zip(&b[i..n])
        .position(|(x, y)| x != y)
        .map(|j| i + j)
}

/// The longest path that is `a` or one of its parents and `b` or one of its parents.
pub fn common_dir<'a>(a: &'a [u8], b: &[u8]) -> &'a [u8] {
    let n = first_difference(a, b).unwrap_or(a.len().min(b.len()));
    let ends = |p: &[u8]| n == p.len() || p[n] == b'/';
    if ends(a) && ends(b) {
        return &a[..n];
    }
    &a[..a[..n].iter().rposition(|&c| c == b'/').unwrap_or(0)]
}

/// The parent of a relative path (`b""` for a top-level name).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// The last component of a relative path.
pub fn base_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Join a parent path and a name.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// A relative path as an OS path (for error messages and `*at` calls).
pub fn os_path(path: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_order_keeps_subtrees_together() {
        let mut v: Vec<&[u8]> = vec![b"a-b", b"a/z", b"a", b"b", b"a/b/c", b"A"];
        v.sort_by(|x, y| cmp_paths(x, y));
        assert_eq!(v, vec![&b"A"[..], b"a", b"a/b/c", b"a/z", b"a-b", b"b"]);
    }

    #[test]
    fn order_is_component_by_component_for_all_short_paths() {
        // Every path of up to four bytes over an alphabet with `/` and bytes on both sides
        // of it, against the definition: the component lists compared in order.
        let by_components = |a: &[u8], b: &[u8]| {
            let ca: Vec<&[u8]> = a.split(|&c| c == b'/').collect();
            let cb: Vec<&[u8]> = b.split(|&c| c == b'/').collect();
            ca.cmp(&cb)
        };
        let alphabet = [b'!', b'-', b'/', b'0', b'a', 0xff];
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = paths.clone();
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|p| {
                    alphabet.iter().map(move |&c| {
                        let mut q = p.clone();
                        q.push(c);
                        q
                    })
                })
                .collect();
            paths.extend(last.iter().cloned());
        }
        for a in &paths {
            for b in paths.iter().step_by(7) {
                assert_eq!(cmp_paths(a, b), by_components(a, b), "{a:?} {b:?}");
            }
        }
        // Behind a long shared prefix (compared a block at a time), and one of its lengths.
        for prefix in [
            b"d/".repeat(35),
            b"d/".repeat(16),
            [b"x".repeat(31), b"/".to_vec()].concat(),
        ] {
            for a in paths.iter().step_by(3) {
                for b in paths.iter().step_by(11) {
                    let (pa, pb) = ([&prefix[..], a].concat(), [&prefix[..], b].concat());
                    assert_eq!(
                        cmp_paths(&pa, &pb),
                        by_components(&pa, &pb),
                        "{pa:?} {pb:?}"
                    );
                    let short = &prefix[..prefix.len() - 1];
                    let pc = [short, b].concat();
                    assert_eq!(
                        cmp_paths(&pa, &pc),
                        by_components(&pa, &pc),
                        "{pa:?} {pc:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn parent_and_join() {
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a/b", b"x"), b"a/b/x");
    }
}
