//! OCI whiteout names, overlayfs whiteout and opaque forms, and the conversions between them.
//!
//! Every rule about whiteouts lives here, each next to the sentence of the specification it
//! implements: the OCI image-spec `layer.md` for names inside a layer, the kernel's
//! `Documentation/filesystems/overlayfs.rst` for the forms an overlayfs upper directory uses.
//! The functions are pure (names and [`Entry`] values in, answers out) so the corner cases are
//! tested without a filesystem.

use std::collections::{BTreeSet, HashSet};

use crate::entry::{Entry, Kind};

/// Prefix of a whiteout file name in a layer.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker in a layer.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The two namespaces overlayfs keeps its own xattrs in: `trusted.` by default, `user.` when
/// mounted with `userxattr` (unprivileged overlays).
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// True for a name the OCI spec reserves: anything starting with `.wh.`.
///
/// > As files prefixed with `.wh.` are special whiteout markers, it is not possible to create a
/// > filesystem which has a file or directory with a name beginning with `.wh.`.
///
/// A tree holding such a name cannot be committed (see [`crate::Error::ReservedName`]).
pub fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

/// True for the opaque-directory marker `.wh..wh..opq`.
///
/// > An opaque whiteout entry is a file with the name `.wh..wh..opq` indicating that all
/// > siblings are hidden in the lower layer.
pub fn is_opaque_marker(name: &[u8]) -> bool {
    name == OPAQUE_MARKER
}

/// The name a whiteout deletes: `.wh.foo` → `foo`.
///
/// > A whiteout filename consists of the prefix `.wh.` plus the basename of the path to be
/// > deleted.
///
/// `None` when `name` is not a well-formed whiteout:
/// - no `.wh.` prefix;
/// - the opaque marker `.wh..wh..opq` (it hides siblings; it is not a whiteout of `.wh..opq`);
/// - an empty basename (`.wh.`), or `.`/`..` (`.wh..`, `.wh...`), or one holding `/` or NUL:
///   a basename never does, and honouring these would delete outside the directory;
/// - a basename that is itself reserved (`.wh..wh.foo`): such a file cannot exist in a
///   filesystem built from layers (see [`is_reserved_name`]), so the name can only be an error.
pub fn whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if is_opaque_marker(name) {
        return None;
    }
    let target = name.strip_prefix(WHITEOUT_PREFIX)?;
    let valid = !target.is_empty()
        && target != b"."
        && target != b".."
        && !target.contains(&b'/')
        && !target.contains(&0)
        && !is_reserved_name(target);
    valid.then_some(target)
}

/// True for a well-formed whiteout name (see [`whiteout_target`]).
///
/// > A whiteout file is an empty file with a special filename that signifies a path should be
/// > deleted.
pub fn is_whiteout_name(name: &[u8]) -> bool {
    whiteout_target(name).is_some()
}

/// The whiteout name that deletes `name` (a basename): `foo` → `.wh.foo`.
///
/// `name` must be a valid basename, not itself reserved; the walk guarantees that for every
/// name it returns, and a tree with a reserved name is refused before any layer is written.
pub fn whiteout_name(name: &[u8]) -> Vec<u8> {
    debug_assert!(!name.is_empty() && !name.contains(&b'/') && !is_reserved_name(name));
    let mut out = Vec::with_capacity(WHITEOUT_PREFIX.len() + name.len());
    out.extend_from_slice(WHITEOUT_PREFIX);
    out.extend_from_slice(name);
    out
}

/// What a name found in a layer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerName<'a> {
    /// An ordinary name.
    Plain,
    /// The opaque marker: the directory's lower children are hidden.
    Opaque,
    /// A whiteout of the given basename.
    Whiteout(&'a [u8]),
    /// aufs' own metadata (`.wh..wh.plnk`, `.wh..wh.aufs`, …): not part of the format; ignored,
    /// as docker and containerd do.
    AufsMeta,
    /// A `.wh.` name that deletes nothing sensible (`.wh.`, `.wh..`, `.wh...`): an error.
    Malformed,
}

/// Classify a basename read from a layer.
pub fn classify_layer_name(name: &[u8]) -> LayerName<'_> {
    if !is_reserved_name(name) {
        LayerName::Plain
    } else if is_opaque_marker(name) {
        LayerName::Opaque
    } else if name.starts_with(b".wh..wh.") {
        LayerName::AufsMeta
    } else {
        whiteout_target(name).map_or(LayerName::Malformed, LayerName::Whiteout)
    }
}

/// A layer's whiteouts and opaque markers read so far and not yet carried out.
///
/// An entry about to go into a directory has those on its way carried out first ([`Self::due`]),
/// as docker and umoci carry one out when they read it: what lay there below the layer is gone,
/// and the entry goes into a directory made for it (`.wh.l` then `l/passwd`, over a lower
/// `l -> /etc`, makes a directory `l`; it never writes through the link; `d/.wh..wh..opq` then
/// `d/l/passwd` likewise). An entry that is no directory drops those below its own path
/// ([`Self::drop_replaced`]): it replaces whatever lay there below the layer, so they have
/// nothing left to hide, and a link it makes must not lead them elsewhere (`d/.wh.x` then
/// `d -> t` hides no `t/x`), and one read below such an entry later is not taken, for the same
/// reason. Those no later entry goes below or over are carried out at the end of the layer,
/// where their order against the layer's own entries does not matter.
#[derive(Debug, Default)]
pub struct Pending {
    /// Every one read, in the layer's order.
    read: Vec<Due>,
    whiteouts: BTreeSet<Vec<u8>>,
    opaque: BTreeSet<Vec<u8>>,
    /// Paths the layer wrote something that is no directory at so far: a marker read below
    /// one has nothing of the layers below left to hide.
    replaced: HashSet<Vec<u8>>,
    /// A directory found with nothing due on its way, nothing having been added since: the
    /// next entry's way is looked at only below what it shares with it.
    clear_to: Option<Vec<u8>>,
}

/// What an entry's way needs carried out first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// The whiteout of this path.
    Whiteout(Vec<u8>),
    /// The opaque marker of this directory.
    Opaque(Vec<u8>),
}

impl Pending {
    /// Whether the layer wrote something that is no directory at `path` or above it.
    fn under_replaced(&self, mut path: &[u8]) -> bool {
        while !path.is_empty() {
            if self.replaced.contains(path) {
                return true;
            }
            path = crate::entry::parent(path);
        }
        false
    }

    /// A whiteout of `path` read (nothing, below what the layer replaced by something that is
    /// no directory: what lay there below the layer is gone with it).
    pub fn whiteout(&mut self, path: &[u8]) {
        if !self.replaced.is_empty() && self.under_replaced(crate::entry::parent(path)) {
            return;
        }
        self.whiteouts.insert(path.to_vec());
        self.read.push(Due::Whiteout(path.to_vec()));
        self.clear_to = None;
    }

    /// The opaque marker of the directory `dir` read (nothing, at or below what the layer
    /// replaced by something that is no directory).
    pub fn opaque(&mut self, dir: &[u8]) {
        if !self.replaced.is_empty() && self.under_replaced(dir) {
            return;
        }
        self.opaque.insert(dir.to_vec());
        self.read.push(Due::Opaque(dir.to_vec()));
        self.clear_to = None;
    }

    /// What is left to carry out at the end of the layer, each once: every whiteout, then
    /// every opaque marker, each in the layer's order.
    pub fn rest(&mut self) -> Vec<Due> {
        let read = std::mem::take(&mut self.read);
        let (whiteouts, opaque): (Vec<Due>, Vec<Due>) = read
            .into_iter()
            .partition(|d| matches!(d, Due::Whiteout(_)));
        let mut rest = Vec::new();
        for due in whiteouts.into_iter().chain(opaque) {
            let left = match &due {
                Due::Whiteout(p) => self.whiteouts.remove(p),
                Due::Opaque(d) => self.opaque.remove(d),
            };
            if left {
                rest.push(due);
            }
        }
        rest
    }

    /// An entry that is no directory replaces `path`: the whiteouts below it and the opaque
    /// markers of it and below it are dropped, and returned (whiteouts first, each kind in path
    /// order), and those read below it later are not taken. What they would hide below the
    /// layer goes with what the entry replaces (`d -> t`, then `d/.wh.x`, hides no `t/x`).
    pub fn drop_replaced(&mut self, path: &[u8]) -> Vec<Due> {
        self.replaced.insert(path.to_vec());
        if self.whiteouts.is_empty() && self.opaque.is_empty() {
            return Vec::new();
        }
        // The paths below `path`: `path/` up to `path0` (`0` sorts right after `/`).
        let (mut from, mut to) = (path.to_vec(), path.to_vec());
        from.push(b'/');
        to.push(b'/' + 1);
        let take_below = |set: &mut BTreeSet<Vec<u8>>| {
            let below: Vec<Vec<u8>> = set.range(from.clone()..to.clone()).cloned().collect();
            for p in &below {
                set.remove(p);
            }
            below
        };
        let mut due: Vec<Due> = take_below(&mut self.whiteouts)
            .into_iter()
            .map(Due::Whiteout)
            .collect();
        if self.opaque.remove(path) {
            due.push(Due::Opaque(path.to_vec()));
        }
        due.extend(take_below(&mut self.opaque).into_iter().map(Due::Opaque));
        due
    }

    /// What must be carried out before an entry goes into the directory `dir`, shallowest
    /// first, taken out of what is pending: whiteouts of `dir` and of its parents, and opaque
    /// markers of their parents (an entry right in an opaque directory needs nothing: it
    /// replaces whatever lay at its own name).
    pub fn due(&mut self, dir: &[u8]) -> Vec<Due> {
        let mut due = Vec::new();
        if self.whiteouts.is_empty() && self.opaque.is_empty() {
            return due;
        }
        let looked = self
            .clear_to
            .as_deref()
            .map_or(0, |c| crate::entry::common_dir(c, dir).len());
        let ends = dir
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| i);
        for end in ends.chain(std::iter::once(dir.len())) {
            if end == 0 || end <= looked {
                continue;
            }
            let way = &dir[..end];
            let above = crate::entry::parent(way);
            if self.opaque.remove(above) {
                due.push(Due::Opaque(above.to_vec()));
            }
            if self.whiteouts.remove(way) {
                due.push(Due::Whiteout(way.to_vec()));
            }
        }
        self.clear_to = Some(dir.to_vec());
        due
    }
}

/// The directory at a layer's root where aufs keeps the files that hardlinks of the layer
/// point at (aufs "pseudo-links": a hardlinked file copied up keeps its inode there).
pub const AUFS_LINK_DIR: &[u8] = b".wh..wh.plnk";

/// For an entry name `.wh..wh.plnk/NAME` (leading `/` and `.` components allowed): `NAME`.
///
/// Layers made by docker on aufs hold such files, and hardlinks to them elsewhere in the layer:
/// in the container those paths were one file, kept there. Apply and squash make that file at
/// the first hardlink's path, with the kept file's content and header, and the other hardlinks
/// links to it (docker makes each a copy; containerd and umoci refuse the layer); the directory
/// itself is never made. Only a direct child counts: aufs keeps the directory flat, and
/// anything deeper is an error as any other `.wh.` name used as a directory is.
pub fn aufs_link_source(name: &[u8]) -> Option<&[u8]> {
    let mut comps = name
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".");
    let (dir, leaf) = (comps.next()?, comps.next()?);
    let valid =
        dir == AUFS_LINK_DIR && comps.next().is_none() && leaf != b".." && !leaf.contains(&0);
    valid.then_some(leaf)
}

/// True for an xattr that belongs to overlayfs itself (`trusted.overlay.*`, `user.overlay.*`).
///
/// These describe how an upper directory relates to its lowers; they never enter a layer and
/// are never applied from one (DESIGN.md, "Formats and rules").
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The value of overlayfs xattr `key` (e.g. `b"opaque"`) on `xattrs`, looked up in both
/// namespaces (`trusted.` first): the walk cannot know which one the mount used.
fn overlay_xattr<'a>(xattrs: &'a [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'a [u8]> {
    OVERLAY_XATTR_PREFIXES
        .iter()
        .find_map(|prefix| xattr_value(xattrs, prefix, key))
}

/// The value of xattr `prefix` + `key`, by binary search ([`Entry::xattrs`] is sorted by name).
fn xattr_value<'a>(
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
    prefix: &[u8],
    key: &[u8],
) -> Option<&'a [u8]> {
    let name = [prefix, key].concat();
    let i = xattrs
        .binary_search_by(|(n, _)| n.as_slice().cmp(&name))
        .ok()?;
    Some(xattrs[i].1.as_slice())
}

/// True when the xattr `key` is set in the `user.` namespace but not in `trusted.`: the upper
/// directory was written by an overlay mounted with `userxattr`.
pub fn overlay_xattr_is_user(entry: &Entry, key: &[u8]) -> bool {
    let has = |prefix: &[u8]| xattr_value(&entry.xattrs, prefix, key).is_some();
    !has(OVERLAY_XATTR_PREFIXES[0]) && has(OVERLAY_XATTR_PREFIXES[1])
}

/// The file handle an upper entry was copied up from (its `overlay.origin` xattr): the handle
/// type and bytes, as `name_to_handle_at` gives them for that lower file.
///
/// The xattr holds overlayfs' `struct ovl_fb`: version 0, magic `0xfb`, its own length, flags,
/// the handle type, the lower file system's UUID (16 bytes), then the handle.
pub fn overlay_origin(entry: &Entry) -> Option<(u8, &[u8])> {
    let fb = overlay_xattr(&entry.xattrs, b"origin")?;
    const HEADER: usize = 5 + 16;
    let valid = fb.len() > HEADER && fb[0] == 0 && fb[1] == 0xfb && usize::from(fb[2]) == fb.len();
    valid.then(|| (fb[4], &fb[HEADER..]))
}

/// True when overlayfs indexed the entry as a hard link (`index=on`, or `nfs_export`): it keeps
/// an `overlay.nlink` xattr on an upper file that is one name of a lower inode with several.
///
/// > With the "inodes index" feature, on copy up of any lower inode, an index entry is created
/// > [...] when a hardlink to a lower inode is copied up, [...] the other aliases of the same
/// > lower inode see the same upper inode.
pub fn is_overlay_indexed_link(entry: &Entry) -> bool {
    entry.kind != Kind::Dir && overlay_xattr(&entry.xattrs, b"nlink").is_some()
}

/// True for an overlayfs whiteout in an upper directory.
///
/// > A whiteout is created as a character device with 0/0 device number or as a zero-size
/// > regular file with the xattr "trusted.overlay.whiteout".
///
/// The kernel asks for directories holding such files to be marked (`overlay.opaque=x`, in
/// 6.7 `overlay.whiteouts`), but the mark only spares its directory listing a look at every
/// file's xattrs: a lookup takes such a file for a whiteout in any directory (a listing of an
/// unmarked one shows the name, but nothing can open or stat it), so it is a whiteout here
/// too, marked or not. Overlayfs may hard-link all its 0/0 whiteouts to one
/// inode; that does not matter here, as a whiteout is never a hardlink-set member (whiteouts
/// are emitted without an entry).
pub fn is_overlay_whiteout(entry: &Entry) -> bool {
    match entry.kind {
        Kind::CharDevice => entry.rdev_major == 0 && entry.rdev_minor == 0,
        Kind::File => entry.size == 0 && overlay_xattr(&entry.xattrs, b"whiteout").is_some(),
        _ => false,
    }
}

/// True for an opaque directory in an upper directory: its lower contents are hidden.
///
/// > A directory is made opaque by setting the xattr "trusted.overlay.opaque" to "y".
///
/// Only the value `y` counts: `x` marks a merged (not opaque) directory that holds xattr
/// whiteouts (see [`is_overlay_whiteout`]).
pub fn is_overlay_opaque(entry: &Entry) -> bool {
    entry.kind == Kind::Dir && overlay_xattr(&entry.xattrs, b"opaque") == Some(b"y")
}

/// The redirect of an entry, if overlayfs moved it with `redirect_dir=on` (or a metacopy file
/// points at its data elsewhere).
///
/// > the "trusted.overlay.redirect" extended attribute is set to the path of the original
/// > location from the root of the overlay. Finally the directory is moved to the new location.
///
/// Such an upper directory does not hold the moved directory's lower contents, so it cannot be
/// read as a change set by itself.
pub fn overlay_redirect(entry: &Entry) -> Option<&[u8]> {
    overlay_xattr(&entry.xattrs, b"redirect")
}

/// True for a metadata-only copy-up: the upper file holds no data.
///
/// > An upper file in this state is marked with "trusted.overlayfs.metacopy" xattr which
/// > indicates that the upper file contains no data.
///
/// (The kernel's actual name is `trusted.overlay.metacopy`; the documentation's "overlayfs" is
/// a typo.)
pub fn is_overlay_metacopy(entry: &Entry) -> bool {
    entry.kind == Kind::File && overlay_xattr(&entry.xattrs, b"metacopy").is_some()
}

/// An overlay mount writes its xattrs in one namespace: `trusted.overlay.*`, or with
/// `userxattr` (unprivileged) `user.overlay.*`. Once an upper directory shows a
/// `trusted.overlay.*` xattr anywhere, its root (`root_xattrs`, where overlayfs keeps the
/// mount's `uuid`) included (a copied-up file's `origin`, an `opaque` directory…), its
/// `user.overlay.*` xattrs are the tree's own (a rootless store kept inside the image, say),
/// not markers: they are dropped here so that nothing reads them as whiteouts, opaque
/// directories, redirects or metacopy files. (By name they are overlayfs' own, so no layer
/// holds them either way.)
pub fn keep_one_overlay_namespace(entries: &mut [Entry], root_xattrs: &[(Vec<u8>, Vec<u8>)]) {
    if !shows_xattr_in(entries, root_xattrs, OVERLAY_XATTR_PREFIXES[0]) {
        return;
    }
    let user = OVERLAY_XATTR_PREFIXES[1];
    for e in entries {
        e.xattrs.retain(|(k, _)| !k.starts_with(user));
    }
}

/// True when an upper directory (its entries, and its root's xattrs) shows an xattr that only
/// an overlay mounted with `userxattr` writes.
pub fn shows_user_overlay_xattrs(entries: &[Entry], root_xattrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    shows_xattr_in(entries, root_xattrs, OVERLAY_XATTR_PREFIXES[1])
}

/// True when the root or an entry of an upper directory has an xattr named `prefix…`.
fn shows_xattr_in(entries: &[Entry], root_xattrs: &[(Vec<u8>, Vec<u8>)], prefix: &[u8]) -> bool {
    std::iter::once(root_xattrs)
        .chain(entries.iter().map(|e| e.xattrs.as_slice()))
        .any(|xattrs| xattrs.iter().any(|(k, _)| k.starts_with(prefix)))
}

/// Remove overlayfs' own xattrs from an entry (after the decisions that need them are made).
pub fn strip_overlay_xattrs(entry: &mut Entry) {
    entry.xattrs.retain(|(name, _)| !is_overlay_xattr(name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Timestamp;

    fn entry(kind: Kind, xattrs: &[(&str, &str)]) -> Entry {
        let mut xattrs: Vec<_> = xattrs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        xattrs.sort();
        Entry {
            path: b"d/x".to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            size: 0,
            xattrs,
            link_target: Vec::new(),
            rdev_major: 0,
            rdev_minor: 0,
            dev: 1,
            ino: 2,
            nlink: 1,
        }
    }

    #[test]
    fn whiteout_targets() {
        let table: &[(&[u8], Option<&[u8]>)] = &[
            (b".wh.foo", Some(b"foo")),
            (b".wh..hidden", Some(b".hidden")),
            (b".wh.a.wh.b", Some(b"a.wh.b")),
            (b".wh.\xff\xfe", Some(b"\xff\xfe")),
            (b"foo", None),
            (b".wh", None),
            (b"wh.foo", None),
            (b".wh.", None),
            (b".wh..", None),
            (b".wh...", None),
            (b".wh..wh..opq", None),
            (b".wh..wh.foo", None),
            (b".wh.a/b", None),
            (b".wh.a\0", None),
        ];
        for (name, want) in table {
            assert_eq!(
                whiteout_target(name),
                *want,
                "{}",
                String::from_utf8_lossy(name)
            );
            assert_eq!(is_whiteout_name(name), want.is_some());
        }
    }

    #[test]
    fn reserved_and_opaque_names() {
        let table: &[(&[u8], bool, bool)] = &[
            // name, reserved, opaque marker
            (b".wh..wh..opq", true, true),
            (b".wh.foo", true, false),
            (b".wh.", true, false),
            (b".wh..wh..opq2", true, false),
            (b".wh", false, false),
            (b"foo.wh.", false, false),
        ];
        for (name, reserved, opaque) in table {
            assert_eq!(
                is_reserved_name(name),
                *reserved,
                "{}",
                String::from_utf8_lossy(name)
            );
            assert_eq!(
                is_opaque_marker(name),
                *opaque,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn whiteout_name_round_trips() {
        for name in [&b"foo"[..], b".hidden", b"a b", b"\xff"] {
            assert_eq!(whiteout_target(&whiteout_name(name)), Some(name));
        }
    }

    #[test]
    fn overlay_xattr_names() {
        let table: &[(&[u8], bool)] = &[
            (b"trusted.overlay.opaque", true),
            (b"user.overlay.redirect", true),
            (b"trusted.overlay.", true),
            (b"trusted.overlayfoo", false),
            (b"user.overlayx.opaque", false),
            (b"security.capability", false),
            (b"user.mime_type", false),
        ];
        for (name, want) in table {
            assert_eq!(
                is_overlay_xattr(name),
                *want,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn overlay_whiteout_forms() {
        let mut dev00 = entry(Kind::CharDevice, &[]);
        let mut dev11 = entry(Kind::CharDevice, &[]);
        dev11.rdev_major = 1;
        dev11.rdev_minor = 3;
        let xwh = entry(Kind::File, &[("trusted.overlay.whiteout", "")]);
        let uxwh = entry(Kind::File, &[("user.overlay.whiteout", "")]);
        let mut xwh_nonempty = xwh.clone();
        xwh_nonempty.size = 1;
        let plain = entry(Kind::File, &[]);
        let dir = entry(Kind::Dir, &[("trusted.overlay.whiteout", "")]);
        let table: &[(&Entry, bool)] = &[
            // entry, whiteout
            (&dev00, true),
            (&dev11, false),
            (&xwh, true),
            (&uxwh, true),
            (&xwh_nonempty, false),
            (&plain, false),
            (&dir, false),
        ];
        for (i, (e, want)) in table.iter().enumerate() {
            assert_eq!(is_overlay_whiteout(e), *want, "row {i}");
        }
        // A hard-linked 0/0 device (overlayfs shares one whiteout inode) is still a whiteout.
        dev00.nlink = 7;
        assert!(is_overlay_whiteout(&dev00));
    }

    type Xattrs<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn overlay_dir_markers() {
        let table: &[(Xattrs, bool)] = &[
            // dir xattrs, opaque
            (&[], false),
            (&[("trusted.overlay.opaque", "y")], true),
            (&[("user.overlay.opaque", "y")], true),
            // The mark of a directory holding xattr whiteouts is not opacity.
            (&[("trusted.overlay.opaque", "x")], false),
            (&[("user.overlay.opaque", "x")], false),
            (&[("trusted.overlay.whiteouts", "")], false),
            (&[("trusted.overlay.opaque", "n")], false),
            (&[("user.opaque", "y")], false),
        ];
        for (i, (xattrs, opaque)) in table.iter().enumerate() {
            let e = entry(Kind::Dir, xattrs);
            assert_eq!(is_overlay_opaque(&e), *opaque, "row {i}");
        }
        // Only directories are opaque.
        assert!(!is_overlay_opaque(&entry(
            Kind::File,
            &[("trusted.overlay.opaque", "y")]
        )));
    }

    #[test]
    fn redirect_and_metacopy() {
        let moved = entry(Kind::Dir, &[("trusted.overlay.redirect", "/old")]);
        assert_eq!(overlay_redirect(&moved), Some(&b"/old"[..]));
        assert!(!overlay_xattr_is_user(&moved, b"redirect"));
        let umoved = entry(Kind::Dir, &[("user.overlay.redirect", "old")]);
        assert_eq!(overlay_redirect(&umoved), Some(&b"old"[..]));
        assert!(overlay_xattr_is_user(&umoved, b"redirect"));
        assert_eq!(overlay_redirect(&entry(Kind::Dir, &[])), None);

        assert!(is_overlay_metacopy(&entry(
            Kind::File,
            &[("trusted.overlay.metacopy", "")]
        )));
        assert!(is_overlay_metacopy(&entry(
            Kind::File,
            &[("user.overlay.metacopy", "")]
        )));
        assert!(!is_overlay_metacopy(&entry(
            Kind::File,
            &[("user.metacopy", "")]
        )));
    }

    #[test]
    fn strip_keeps_other_xattrs() {
        let mut e = entry(
            Kind::Dir,
            &[
                ("security.capability", "c"),
                ("trusted.overlay.opaque", "y"),
                ("user.a", "1"),
                ("user.overlay.origin", "o"),
            ],
        );
        strip_overlay_xattrs(&mut e);
        let names: Vec<_> = e.xattrs.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, vec![&b"security.capability"[..], b"user.a"]);
    }

    #[test]
    fn layer_names_are_classified() {
        let cases: &[(&[u8], LayerName<'_>)] = &[
            (b"foo", LayerName::Plain),
            (b".whx", LayerName::Plain),
            (b".wh.foo", LayerName::Whiteout(b"foo")),
            (b".wh..wh..opq", LayerName::Opaque),
            (b".wh..wh.plnk", LayerName::AufsMeta),
            (b".wh.", LayerName::Malformed),
            (b".wh..", LayerName::Malformed),
            (b".wh...", LayerName::Malformed),
        ];
        for (name, want) in cases {
            assert_eq!(
                classify_layer_name(name),
                *want,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn the_origin_handle_is_read_from_overlays_struct_ovl_fb() {
        let with_origin = |value: Vec<u8>| {
            let mut e = entry(Kind::File, &[]);
            e.xattrs = vec![(b"trusted.overlay.origin".to_vec(), value)];
            e
        };
        let fb = |len: u8, magic: u8| {
            let mut v = vec![0, magic, len, 0, 0x81];
            v.extend([7; 16]); // the file system's UUID
            v.extend([1, 2, 3, 4, 5, 6, 7, 8]); // the handle
            v
        };
        assert_eq!(
            overlay_origin(&with_origin(fb(29, 0xfb))),
            Some((0x81, &[1, 2, 3, 4, 5, 6, 7, 8][..]))
        );
        assert_eq!(overlay_origin(&with_origin(fb(28, 0xfb))), None); // length
        assert_eq!(overlay_origin(&with_origin(fb(29, 0xfa))), None); // magic
        assert_eq!(overlay_origin(&with_origin(vec![0, 0xfb, 3])), None); // no handle
        assert_eq!(overlay_origin(&entry(Kind::File, &[])), None);
    }

    #[test]
    fn user_overlay_xattrs_are_data_where_the_overlay_wrote_trusted_ones() {
        let opaque = || entry(Kind::Dir, &[("user.overlay.opaque", "y")]);
        let mut rootless = vec![opaque()];
        keep_one_overlay_namespace(&mut rootless, &[]);
        assert!(is_overlay_opaque(&rootless[0]));
        assert!(shows_user_overlay_xattrs(&rootless, &[]));
        let origin = entry(Kind::File, &[("trusted.overlay.origin", "x")]);
        let mut rootful = vec![opaque(), origin];
        keep_one_overlay_namespace(&mut rootful, &[]);
        assert!(!is_overlay_opaque(&rootful[0]));
        assert_eq!(rootful[1].xattrs.len(), 1);
        // The mount's uuid on the upper root is enough: nothing else need have been copied up.
        let uuid = |ns: &str| vec![(format!("{ns}.overlay.uuid").into_bytes(), vec![7; 16])];
        let mut new_files_only = vec![opaque()];
        keep_one_overlay_namespace(&mut new_files_only, &uuid("trusted"));
        assert!(!is_overlay_opaque(&new_files_only[0]));
        assert!(shows_user_overlay_xattrs(&[], &uuid("user")));
        assert!(!shows_user_overlay_xattrs(&[], &uuid("trusted")));
    }

    #[test]
    fn aufs_link_sources_are_the_direct_children_of_the_root_plnk_directory() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b".wh..wh.plnk/1234.5678", Some(b"1234.5678")),
            (b"./.wh..wh.plnk/x", Some(b"x")),
            (b"/.wh..wh.plnk//x", Some(b"x")),
            (b".wh..wh.plnk", None),
            (b".wh..wh.plnk/", None),
            (b".wh..wh.plnk/a/b", None),
            (b".wh..wh.plnk/..", None),
            (b"d/.wh..wh.plnk/x", None),
            (b".wh..wh.aufs/x", None),
            (b"x", None),
        ];
        for (name, want) in cases {
            assert_eq!(
                aufs_link_source(name),
                *want,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }
    #[test]
    fn only_a_0_0_char_device_is_a_whiteout() {
        for (major, minor, want) in [(0, 0, true), (0, 5, false), (5, 0, false), (1, 3, false)] {
            let mut e = entry(Kind::CharDevice, &[]);
            e.rdev_major = major;
            e.rdev_minor = minor;
            assert_eq!(is_overlay_whiteout(&e), want, "{major}:{minor}");
        }
    }

    #[test]
    fn an_entry_replacing_a_path_drops_the_markers_below_it() {
        let w = |p: &str| Due::Whiteout(p.as_bytes().to_vec());
        let o = |p: &str| Due::Opaque(p.as_bytes().to_vec());
        let mut pending = Pending::default();
        pending.opaque(b"d");
        pending.whiteout(b"d/x");
        pending.whiteout(b"dx");
        pending.whiteout(b"d");
        pending.opaque(b"d/e");
        pending.whiteout(b"e/y");
        // Nothing below a path that holds none, nor its siblings sharing a prefix.
        assert_eq!(pending.drop_replaced(b"e/y"), vec![]);
        assert_eq!(pending.drop_replaced(b"d/x/z"), vec![]);
        // Below `d`: its whiteouts first, then its opaque markers, each in path order; the
        // whiteout of `d` itself and of `dx` stay.
        assert_eq!(
            pending.drop_replaced(b"d"),
            vec![w("d/x"), o("d"), o("d/e")]
        );
        assert_eq!(pending.drop_replaced(b"d"), vec![]);
        // Read below what the layer replaced: not taken; beside it, taken.
        pending.whiteout(b"d/later");
        pending.opaque(b"d");
        pending.opaque(b"d/e/f");
        pending.whiteout(b"dz");
        assert_eq!(pending.rest(), vec![w("dx"), w("d"), w("e/y"), w("dz")]);
    }
}
