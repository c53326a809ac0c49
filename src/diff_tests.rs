//! Tests of `diff`.

use std::io::Write;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::Path;

use super::*;
use crate::walk::testutil::*;

/// The mtime every test tree is frozen at, so trees written at different moments compare.
const T0: (i64, u32) = (1_600_000_000, 500);

/// Set the mtime of everything under `root` (not following symlinks) to [`T0`].
fn freeze(root: &Path) {
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            freeze(&path);
        }
        set_mtime(&path, T0.0, T0.1);
    }
}

fn summary(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), String::from_utf8_lossy(&c.path)))
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Two trees built by the same function, then `change` applied to the upper; both frozen.
fn pair(
    build: impl Fn(&Path),
    change: impl FnOnce(&Path),
) -> (tempfile::TempDir, tempfile::TempDir) {
    let (lower, upper) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build(lower.path());
    build(upper.path());
    change(upper.path());
    freeze(lower.path());
    freeze(upper.path());
    (lower, upper)
}

fn diff(lower: &Path, upper: &Path) -> Vec<String> {
    summary(&diff_dirs(lower, upper, &DiffOptions::default()).unwrap())
}

fn base(r: &Path) {
    write(&r.join("a/f1"), b"one");
    write(&r.join("a/f2"), b"two");
    write(&r.join("d/sub/x"), b"x");
    write(&r.join("d/y"), b"y");
    write(&r.join("keep"), b"keep");
    symlink("a/f1", r.join("link")).unwrap();
}

#[test]
fn added_modified_deleted() {
    let (l, u) = pair(base, |r| {
        write(&r.join("a/f1"), b"one!");
        std::fs::remove_file(r.join("a/f2")).unwrap();
        write(&r.join("a/f3"), b"three");
        std::fs::remove_dir_all(r.join("d")).unwrap();
    });
    assert_eq!(
        diff(l.path(), u.path()),
        ["C a/f1", "D a/f2", "A a/f3", "D d"]
    );
    let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
    let f1 = changes[0].entry.as_ref().unwrap();
    assert_eq!((f1.path.as_slice(), f1.size), (&b"a/f1"[..], 4));
    assert!(changes[1].entry.is_none() && changes.iter().all(|c| !c.opaque));
    // The reverse diff mirrors it.
    assert_eq!(
        diff(u.path(), l.path()),
        [
            "C a/f1",
            "A a/f2",
            "D a/f3",
            "A d",
            "A d/sub",
            "A d/sub/x",
            "A d/y"
        ]
    );
}

#[test]
fn identical_trees_diff_empty() {
    let (l, u) = pair(base, |_| {});
    assert_eq!(diff(l.path(), u.path()), Vec::<String>::new());
}

#[test]
fn copies_written_in_other_orders_diff_empty() {
    let names: Vec<String> = (0..30).map(|i| format!("dir{}/file{}", i % 4, i)).collect();
    let build = |r: &Path, order: &mut dyn Iterator<Item = &String>| {
        for n in order {
            write(&r.join(n), n.as_bytes());
        }
        // Hardlinks and symlinks made in a different order too, to other inodes.
        std::fs::hard_link(r.join("dir1/file1"), r.join("dir2/hl")).unwrap();
        symlink("../dir0/file0", r.join("dir3/sl")).unwrap();
        set_xattr(&r.join("dir0/file0"), "user.tag", b"v");
        freeze(r);
    };
    let (l, u) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build(l.path(), &mut names.iter());
    build(u.path(), &mut names.iter().rev());
    assert_eq!(diff(l.path(), u.path()), Vec::<String>::new());
    assert_eq!(diff(u.path(), l.path()), Vec::<String>::new());
}

#[test]
fn mode_bits_are_compared() {
    let (l, u) = pair(base, |r| {
        chmod(&r.join("keep"), 0o4755);
        chmod(&r.join("d"), 0o1777);
        chmod(&r.join("a/f2"), 0o2644);
    });
    let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
    assert_eq!(summary(&changes), ["C a/f2", "C d", "C keep"]);
    let modes: Vec<u32> = changes
        .iter()
        .map(|c| c.entry.as_ref().unwrap().mode)
        .collect();
    assert_eq!(modes, [0o2644, 0o1777, 0o4755]);
}

#[test]
fn owner_is_compared() {
    if !is_root("owner_is_compared") {
        return;
    }
    let (l, u) = pair(base, |r| {
        lchown(r.join("keep"), Some(1000), None).unwrap();
        lchown(r.join("link"), None, Some(1000)).unwrap();
    });
    assert_eq!(diff(l.path(), u.path()), ["C keep", "C link"]);
}

#[test]
fn mtime_only_change_and_content_mode() {
    let (l, u) = pair(base, |r| write(&r.join("a/f2"), b"TWO"));
    // a/f2: same size, different bytes. keep: same bytes, only the mtime differs.
    set_mtime(&u.path().join("a/f2"), T0.0 + 1, 0);
    set_mtime(&u.path().join("keep"), T0.0, T0.1 + 1);
    assert_eq!(diff(l.path(), u.path()), ["C a/f2", "C keep"]);
    let content = DiffOptions {
        content: true,
        ..Default::default()
    };
    assert_eq!(
        summary(&diff_dirs(l.path(), u.path(), &content).unwrap()),
        ["C a/f2"]
    );
    // Same size and mtime but other bytes: a change the contents show (without them it is
    // not seen, as in docker diff).
    let (l, u) = pair(base, |r| write(&r.join("a/f2"), b"TWO"));
    assert_eq!(diff(l.path(), u.path()), Vec::<String>::new());
    assert_eq!(
        summary(&diff_dirs(l.path(), u.path(), &content).unwrap()),
        ["C a/f2"]
    );
}

#[test]
fn paths_longer_than_path_max_are_compared_and_looked_up() {
    let (l, u) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rel = deep_file(l.path(), 20, "leaf", b"same");
    assert!(rel.len() > 4096);
    deep_file(u.path(), 20, "leaf", b"same");
    // Only the deepest file differs, and only in its mtime: its contents are read to clear it.
    let t = rustix::fs::Timespec {
        tv_sec: T0.0 + 1,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    let f = walk::open_beneath(
        walk::open_root(u.path()).unwrap().as_fd(),
        &rel,
        OFlags::RDONLY,
    )
    .unwrap();
    rustix::fs::futimens(&f, &times).unwrap();
    let content = DiffOptions {
        content: true,
        ..Default::default()
    };
    assert_eq!(
        summary(&diff_dirs(l.path(), u.path(), &content).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        summary(&diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap()).len(),
        1
    );
    // An overlay upper holding the same directories (copied up: changed, as in docker) and one
    // new file, which must be found absent from the lower.
    let o = tempfile::tempdir().unwrap();
    let new = deep_file(o.path(), 20, "new", b"n");
    let changes = overlay_diff(o.path(), &[l.path()]).unwrap();
    let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds.len(), 21);
    assert!(kinds[..20].iter().all(|k| *k == ChangeKind::Modified));
    assert_eq!(kinds[20], ChangeKind::Added);
    assert!(changes[20].path == new, "the new file is the last change");
}

#[test]
fn xattrs_are_compared_except_overlay_ones() {
    let probe = tempfile::tempdir().unwrap();
    write(&probe.path().join("p"), b"");
    if !set_xattr(&probe.path().join("p"), "user.probe", b"1") {
        return;
    }
    let (l, u) = pair(base, |r| {
        set_xattr(&r.join("keep"), "user.new", b"1");
        set_xattr(&r.join("a"), "user.overlay.origin", b"ignored");
    });
    let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
    assert_eq!(summary(&changes), ["C keep"]);
    assert_eq!(
        changes[0].entry.as_ref().unwrap().xattrs,
        [(b"user.new".to_vec(), b"1".to_vec())]
    );
}

#[test]
fn symlink_retarget() {
    // Same target length, so only the target itself differs.
    let (l, u) = pair(base, |r| {
        std::fs::remove_file(r.join("link")).unwrap();
        symlink("a/f2", r.join("link")).unwrap();
    });
    let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
    assert_eq!(summary(&changes), ["C link"]);
    assert_eq!(changes[0].entry.as_ref().unwrap().link_target, b"a/f2");
}

#[test]
fn kind_changes() {
    let (l, u) = pair(base, |r| {
        // file -> dir with children
        std::fs::remove_file(r.join("keep")).unwrap();
        write(&r.join("keep/inner/c"), b"c");
        // dir -> file (its lower subtree is implied gone)
        std::fs::remove_dir_all(r.join("d")).unwrap();
        write(&r.join("d"), b"now a file");
        // symlink -> file, file -> symlink
        std::fs::remove_file(r.join("link")).unwrap();
        write(&r.join("link"), b"a/f1");
        std::fs::remove_file(r.join("a/f1")).unwrap();
        symlink("f2", r.join("a/f1")).unwrap();
    });
    let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
    assert_eq!(
        summary(&changes),
        [
            "C a/f1",
            "C d",
            "C keep",
            "A keep/inner",
            "A keep/inner/c",
            "C link"
        ]
    );
    let kinds: Vec<Kind> = changes
        .iter()
        .map(|c| c.entry.as_ref().unwrap().kind)
        .collect();
    assert_eq!(
        kinds,
        [
            Kind::Symlink,
            Kind::File,
            Kind::Dir,
            Kind::Dir,
            Kind::File,
            Kind::File
        ]
    );
    assert!(changes.iter().all(|c| !c.opaque));
}

#[test]
fn deleted_directory_is_one_change() {
    let (l, u) = pair(base, |r| std::fs::remove_dir_all(r.join("a")).unwrap());
    assert_eq!(diff(l.path(), u.path()), ["D a"]);
}

#[test]
fn emptied_directory_lists_each_child() {
    let (l, u) = pair(base, |r| {
        std::fs::remove_dir_all(r.join("d")).unwrap();
        std::fs::create_dir(r.join("d")).unwrap();
    });
    assert_eq!(diff(l.path(), u.path()), ["D d/sub", "D d/y"]);
}

#[test]
fn hardlink_structure_is_compared() {
    let separate = |r: &Path| {
        write(&r.join("p"), b"same");
        write(&r.join("q"), b"same");
        write(&r.join("other"), b"o");
    };
    let link = |r: &Path| {
        std::fs::remove_file(r.join("q")).unwrap();
        std::fs::hard_link(r.join("p"), r.join("q")).unwrap();
    };
    // Linked in the upper only, and the other way round: both paths listed.
    let (l, u) = pair(separate, link);
    assert_eq!(diff(l.path(), u.path()), ["C p", "C q"]);
    assert_eq!(diff(u.path(), l.path()), ["C p", "C q"]);
    // Same structure on both sides: nothing.
    let (l, u) = pair(
        |r: &Path| {
            separate(r);
            link(r)
        },
        |_| {},
    );
    assert_eq!(diff(l.path(), u.path()), Vec::<String>::new());
    // A new link to an unchanged file: the file is listed with it.
    let (l, u) = pair(separate, |r| {
        std::fs::hard_link(r.join("other"), r.join("new")).unwrap()
    });
    assert_eq!(diff(l.path(), u.path()), ["A new", "C other"]);
    // One member modified: every member listed.
    let (l, u) = pair(
        |r: &Path| {
            separate(r);
            link(r)
        },
        |r| chmod(&r.join("q"), 0o600),
    );
    assert_eq!(diff(l.path(), u.path()), ["C p", "C q"]);
    // Symlinks have hardlink structure too.
    let symlinks = |r: &Path| {
        std::os::unix::fs::symlink("p", r.join("s")).unwrap();
        std::os::unix::fs::symlink("p", r.join("t")).unwrap();
    };
    let link_symlinks = |r: &Path| {
        std::fs::remove_file(r.join("t")).unwrap();
        std::fs::hard_link(r.join("s"), r.join("t")).unwrap();
    };
    let (l, u) = pair(symlinks, link_symlinks);
    assert_eq!(diff(l.path(), u.path()), ["C s", "C t"]);
    assert_eq!(diff(u.path(), l.path()), ["C s", "C t"]);
    let (l, u) = pair(
        |r: &Path| {
            symlinks(r);
            link_symlinks(r)
        },
        |_| {},
    );
    assert_eq!(diff(l.path(), u.path()), Vec::<String>::new());
}

#[test]
fn sockets_are_changes() {
    let (l, u) = pair(base, |r| {
        std::fs::remove_file(r.join("keep")).unwrap();
        std::os::unix::net::UnixListener::bind(r.join("keep")).unwrap();
        std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
    });
    assert_eq!(diff(l.path(), u.path()), ["C keep", "A sock"]);
}

#[test]
fn overlay_sockets_are_changes_and_a_layer_whites_out_what_one_replaced() {
    let (l, u) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(&l.path().join("keep"), b"k");
    let _a = std::os::unix::net::UnixListener::bind(u.path().join("keep")).unwrap();
    let _b = std::os::unix::net::UnixListener::bind(u.path().join("new")).unwrap();
    let changes = overlay_diff(u.path(), &[l.path()]).unwrap();
    assert_eq!(summary(&changes), ["C keep", "A new"]);
    let mut blob = Vec::new();
    let opts = crate::layer::LayerOptions {
        compression: crate::compress::Compression::None,
        ..Default::default()
    };
    let info = crate::layer::write_layer(u.path(), &changes, &opts, &mut blob).unwrap();
    let names: Vec<String> = tar::Archive::new(&blob[..])
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect();
    assert_eq!(names, [".wh.keep"]);
    assert_eq!(
        info.warnings,
        [
            "keep: socket not stored in the layer",
            "new: socket not stored in the layer"
        ]
    );
}

#[test]
fn a_cancelled_diff_stops_with_interrupted() {
    let (l, u) = pair(base, |r| write(&r.join("a/new"), b"n"));
    let cancel = Arc::new(Cancel::new());
    cancel.cancel();
    let opts = DiffOptions {
        content: true,
        cancel: Some(cancel),
    };
    for result in [
        diff_dirs(l.path(), u.path(), &opts),
        diff_overlay(u.path(), &[], &opts),
        full_tree(u.path(), opts.cancel.as_deref().unwrap()),
    ] {
        assert!(matches!(result, Err(Error::Interrupted)), "{result:?}");
    }
}

#[test]
fn roots_must_be_directories() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("f"), b"");
    let err = diff_dirs(t.path(), &t.path().join("f"), &DiffOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, .. } if path == &t.path().join("f")),
        "{err}"
    );
}

// -----------------------------------------------------------------------------------------
// Overlay upper directories

/// An overlay mounted for a test: `upper` and `merged` under one temp dir; unmounted on drop.
struct Overlay {
    _dir: tempfile::TempDir,
    upper: PathBuf,
    merged: PathBuf,
    mounted: bool,
}

impl Overlay {
    fn mount(lowers: &[&Path], options: &str) -> Overlay {
        let dir = tempfile::tempdir().unwrap();
        let [upper, work, merged] = ["upper", "work", "merged"].map(|n| dir.path().join(n));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let lowerdir: Vec<_> = lowers.iter().map(|l| l.display().to_string()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={},{options}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        let data = std::ffi::CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            &merged,
            "overlay",
            rustix::mount::MountFlags::empty(),
            &*data,
        )
        .unwrap_or_else(|e| panic!("mount overlay {data:?}: {e}"));
        Overlay {
            _dir: dir,
            upper,
            merged,
            mounted: true,
        }
    }

    fn unmount(&mut self) {
        rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::empty()).unwrap();
        self.mounted = false;
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            // Best effort: a failed test must not leave the mount behind.
            let _ = rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn overlay_diff(upper: &Path, lowers: &[&Path]) -> Result<Vec<Change>> {
    let lowers: Vec<PathBuf> = lowers.iter().map(|l| l.to_path_buf()).collect();
    diff_overlay(upper, &lowers, &DiffOptions::default())
}

/// The regular files (path, mode, content) of the uncompressed layer `write_layer` makes of
/// the overlay upper's changes, read from the tree [`diff_overlay_view`] says holds them.
fn overlay_layer_files(upper: &Path, lowers: &[&Path]) -> Vec<(String, u32, Vec<u8>)> {
    use std::io::Read;
    let lowers: Vec<PathBuf> = lowers.iter().map(|l| l.to_path_buf()).collect();
    let d = diff_overlay_view(upper, &lowers, &DiffOptions::default()).unwrap();
    let contents = crate::layer::Contents {
        path: upper,
        fd: d.view.as_ref().map(AsFd::as_fd),
    };
    let opts = crate::layer::LayerOptions {
        compression: crate::compress::Compression::None,
        ..Default::default()
    };
    let mut blob = Vec::new();
    crate::layer::write_layer(contents, &d.changes, &opts, &mut blob).unwrap();
    let mut files = Vec::new();
    for e in tar::Archive::new(&blob[..]).entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            files.push((name, e.header().mode().unwrap(), data));
        }
    }
    files
}

fn opaque_paths(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| c.opaque)
        .map(|c| String::from_utf8_lossy(&c.path).into_owned())
        .collect()
}

fn no_overlay_xattrs(changes: &[Change]) -> bool {
    changes
        .iter()
        .flat_map(|c| &c.entry)
        .all(|e| e.xattrs.iter().all(|(n, _)| !whiteout::is_overlay_xattr(n)))
}

fn mknod_whiteout(path: &Path) {
    let (kind, mode) = (
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o000),
    );
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, mode, rustix::fs::makedev(0, 0)).unwrap();
}

#[test]
fn real_overlay_changes() {
    if !is_root("real_overlay_changes") {
        return;
    }
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    for f in ["a/f1", "a/f2", "b/dir/x", "c/old", "keep", "ren/src"] {
        write(&l.join(f), f.as_bytes());
    }
    let mut ovl = Overlay::mount(&[l], "redirect_dir=nofollow,metacopy=off,index=off");
    let m = ovl.merged.clone();
    write(&m.join("new"), b"new");
    write(&m.join("a/f1"), b"changed");
    std::fs::remove_file(m.join("a/f2")).unwrap();
    std::fs::remove_dir_all(m.join("b/dir")).unwrap();
    std::fs::remove_dir_all(m.join("c")).unwrap();
    std::fs::create_dir(m.join("c")).unwrap();
    write(&m.join("c/n"), b"n");
    std::fs::rename(m.join("ren/src"), m.join("ren/dst")).unwrap();
    ovl.unmount();

    let with_lower = overlay_diff(&ovl.upper, &[l]).unwrap();
    assert_eq!(
        summary(&with_lower),
        [
            "C a",
            "C a/f1",
            "D a/f2",
            "C b",
            "D b/dir",
            "C c",
            "A c/n",
            "A new",
            "C ren",
            "A ren/dst",
            "D ren/src"
        ]
    );
    assert_eq!(opaque_paths(&with_lower), ["c"]);
    assert!(no_overlay_xattrs(&with_lower));
    let f1 = with_lower[1].entry.as_ref().unwrap();
    assert_eq!((f1.kind, f1.size), (Kind::File, 7));

    // Without lowers: directories C, everything else A.
    let alone = overlay_diff(&ovl.upper, &[]).unwrap();
    assert_eq!(
        summary(&alone),
        [
            "C a",
            "A a/f1",
            "D a/f2",
            "C b",
            "D b/dir",
            "C c",
            "A c/n",
            "A new",
            "C ren",
            "A ren/dst",
            "D ren/src"
        ]
    );
    assert_eq!(opaque_paths(&alone), ["c"]);
}

#[test]
fn hand_made_upper_forms() {
    if !is_root("hand_made_upper_forms") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    // 0/0 whiteouts, two of them sharing one inode as overlayfs does.
    mknod_whiteout(&u.join("gone"));
    std::fs::hard_link(u.join("gone"), u.join("gone2")).unwrap();
    // Opaque directories; a whiteout inside one hides nothing more. Beside trusted.overlay.*
    // xattrs, a user.overlay.* one is the tree's own, not a marker.
    write(&u.join("o/f"), b"f");
    set_xattr(&u.join("o"), "trusted.overlay.opaque", b"y");
    mknod_whiteout(&u.join("o/w"));
    std::fs::create_dir(u.join("uo")).unwrap();
    set_xattr(&u.join("uo"), "user.overlay.opaque", b"y");
    // xattr whiteouts: in a directory marked opaque=x (which is not opaque), the root too, and
    // in an unmarked one, where the kernel's lookup finds them just the same.
    write(&u.join("x/f"), b"f");
    write(&u.join("x/w"), b"");
    set_xattr(&u.join("x/w"), "trusted.overlay.whiteout", b"");
    set_xattr(&u.join("x"), "trusted.overlay.opaque", b"x");
    write(&u.join("plain/w"), b"");
    set_xattr(&u.join("plain/w"), "trusted.overlay.whiteout", b"");
    write(&u.join("rw"), b"");
    set_xattr(&u.join("rw"), "trusted.overlay.whiteout", b"");
    set_xattr(&u, "trusted.overlay.opaque", b"x");
    // A hardlink set: every member is in the upper.
    write(&u.join("h1"), b"h");
    std::fs::hard_link(u.join("h1"), u.join("h2")).unwrap();

    let alone = overlay_diff(&u, &[]).unwrap();
    assert_eq!(
        summary(&alone),
        [
            "D gone",
            "D gone2",
            "A h1",
            "A h2",
            "C o",
            "A o/f",
            "C plain",
            "D plain/w",
            "D rw",
            "C uo",
            "C x",
            "A x/f",
            "D x/w"
        ]
    );
    assert_eq!(opaque_paths(&alone), ["o"]);
    assert!(no_overlay_xattrs(&alone));

    // With a lower: letters follow existence there; a path below a lower symlink is not there.
    let lower = tempfile::tempdir().unwrap();
    write(&lower.path().join("o/old"), b"");
    write(&lower.path().join("h1"), b"");
    std::fs::create_dir(lower.path().join("elsewhere")).unwrap();
    symlink("elsewhere", lower.path().join("x")).unwrap();
    write(&lower.path().join("elsewhere/f"), b"");
    let with_lower = overlay_diff(&u, &[lower.path()]).unwrap();
    assert_eq!(
        summary(&with_lower),
        [
            "D gone",
            "D gone2",
            "C h1",
            "A h2",
            "C o",
            "A o/f",
            "A plain",
            "D plain/w",
            "D rw",
            "A uo",
            "C x",
            "A x/f",
            "D x/w"
        ]
    );
}

#[test]
fn redirect_without_lowers_is_refused() {
    if !is_root("redirect_without_lowers_is_refused") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("moved")).unwrap();
    set_xattr(
        &t.path().join("moved"),
        "trusted.overlay.redirect",
        b"/orig",
    );
    match overlay_diff(t.path(), &[]) {
        Err(Error::Overlay { path, reason }) => {
            assert_eq!(path, t.path().join("moved"));
            assert!(reason.contains("give its lower directories"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // user.overlay.* redirects are never followed by the kernel: refused even with lowers.
    let u = tempfile::tempdir().unwrap();
    std::fs::create_dir(u.path().join("moved")).unwrap();
    set_xattr(&u.path().join("moved"), "user.overlay.redirect", b"/orig");
    let err = overlay_diff(u.path(), &[t.path()]).unwrap_err();
    assert!(
        matches!(&err, Error::Overlay { reason, .. } if reason.contains("user.overlay")),
        "{err}"
    );
    // A merged tree that cannot be mounted: refused, with the kernel's reason.
    let missing = t.path().join("missing");
    let err = overlay_diff(t.path(), &[&missing]).unwrap_err();
    eprintln!("{err}");
    assert!(
        matches!(&err, Error::Overlay { reason, .. } if reason.contains("mounting")),
        "{err}"
    );
}

#[test]
fn upper_with_indexed_hard_links_is_refused() {
    if !is_root("upper_with_indexed_hard_links_is_refused") {
        return;
    }
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    write(&l.join("a"), b"7");
    std::fs::hard_link(l.join("a"), l.join("b")).unwrap();
    write(&l.join("single"), b"1");
    // With index=on a write to `a` changes `b` in the merged tree too, but only `a` is copied
    // up: the upper dir alone would make a layer where `b` keeps "7".
    let mut ovl = Overlay::mount(&[l], "index=on,redirect_dir=off,metacopy=off");
    let m = ovl.merged.clone();
    write(&m.join("single"), b"2");
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("a"))
        .unwrap()
        .write_all(b"8")
        .unwrap();
    assert_eq!(std::fs::read(m.join("b")).unwrap(), b"78");
    ovl.unmount();
    for lowers in [vec![l], vec![]] {
        match overlay_diff(&ovl.upper, &lowers) {
            Err(Error::Overlay { path, reason }) => {
                assert_eq!(path, ovl.upper.join("a"));
                assert!(reason.contains("index=on"), "{reason}");
                let why = if lowers.is_empty() {
                    "give its lower directories"
                } else {
                    "its lower file has 2 names"
                };
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // A file of one name copied up under index=on carries no nlink xattr and is fine.
    let mut ovl = Overlay::mount(&[l], "index=on,redirect_dir=off,metacopy=off");
    write(&ovl.merged.join("single"), b"3");
    ovl.unmount();
    assert_eq!(
        summary(&overlay_diff(&ovl.upper, &[l]).unwrap()),
        ["C single"]
    );
}

/// A lower tree with a directory to rename.
fn lower_with_dir(r: &Path) {
    write(&r.join("olddir/f1"), b"1");
    write(&r.join("olddir/sub/f2"), b"2");
    write(&r.join("other/keep"), b"k");
}

#[test]
fn redirect_falls_back_to_merged_tree() {
    if !is_root("redirect_falls_back_to_merged_tree") {
        return;
    }
    let lower = tempfile::tempdir().unwrap();
    lower_with_dir(lower.path());
    let mut ovl = Overlay::mount(&[lower.path()], "redirect_dir=on,index=off");
    std::fs::rename(ovl.merged.join("olddir"), ovl.merged.join("newdir")).unwrap();
    ovl.unmount();
    let moved = crate::walk::walk(&ovl.upper).unwrap();
    assert!(
        moved
            .iter()
            .any(|e| whiteout::overlay_redirect(e).is_some()),
        "no redirect written"
    );

    let want = [
        "A newdir",
        "A newdir/f1",
        "A newdir/sub",
        "A newdir/sub/f2",
        "D olddir",
    ];
    let changes = overlay_diff(&ovl.upper, &[lower.path()]).unwrap();
    assert_eq!(summary(&changes), want);
    assert!(no_overlay_xattrs(&changes));
    assert_eq!(changes[3].entry.as_ref().unwrap().size, 1);
    assert!(matches!(
        overlay_diff(&ovl.upper, &[]),
        Err(Error::Overlay { .. })
    ));
    // The moved files are in the lower only: the layer has their contents all the same (and
    // the old name's whiteout, a regular file in the tar).
    let files = overlay_layer_files(&ovl.upper, &[lower.path()]);
    let names: Vec<_> = files.iter().map(|(n, _, d)| (n.as_str(), &d[..])).collect();
    assert_eq!(
        names,
        [
            (".wh.olddir", &b""[..]),
            ("newdir/f1", b"1"),
            ("newdir/sub/f2", b"2")
        ]
    );
}

#[test]
fn redirect_fallback_with_two_lowers() {
    if !is_root("redirect_fallback_with_two_lowers") {
        return;
    }
    let (top, bottom) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    lower_with_dir(bottom.path());
    write(&top.path().join("olddir/from_top"), b"t");
    let mut ovl = Overlay::mount(&[top.path(), bottom.path()], "redirect_dir=on,index=off");
    std::fs::rename(ovl.merged.join("olddir"), ovl.merged.join("newdir")).unwrap();
    ovl.unmount();
    let changes = overlay_diff(&ovl.upper, &[top.path(), bottom.path()]).unwrap();
    assert_eq!(
        summary(&changes),
        [
            "A newdir",
            "A newdir/f1",
            "A newdir/from_top",
            "A newdir/sub",
            "A newdir/sub/f2",
            "D olddir"
        ]
    );
}

#[test]
fn metacopy_falls_back_to_merged_tree() {
    if !is_root("metacopy_falls_back_to_merged_tree") {
        return;
    }
    let lower = tempfile::tempdir().unwrap();
    write(&lower.path().join("data"), b"0123456789");
    freeze(lower.path());
    let mut ovl = Overlay::mount(&[lower.path()], "redirect_dir=on,metacopy=on,index=off");
    chmod(&ovl.merged.join("data"), 0o600);
    ovl.unmount();
    let upper = crate::walk::walk(&ovl.upper).unwrap();
    assert!(
        upper.iter().any(whiteout::is_overlay_metacopy),
        "no metacopy written"
    );

    let changes = overlay_diff(&ovl.upper, &[lower.path()]).unwrap();
    assert_eq!(summary(&changes), ["C data"]);
    let e = changes[0].entry.as_ref().unwrap();
    assert_eq!((e.mode, e.size), (0o600, 10));
    match overlay_diff(&ovl.upper, &[]) {
        Err(Error::Overlay { path, reason }) => {
            assert_eq!(path, ovl.upper.join("data"));
            assert!(reason.contains("metacopy"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The upper's `data` is a metacopy with no data of its own: the layer has the lower's.
    assert_eq!(
        overlay_layer_files(&ovl.upper, &[lower.path()]),
        [("data".to_string(), 0o600, b"0123456789".to_vec())]
    );
}

#[test]
fn without_paths_drops_the_named_paths_and_what_is_below_them() {
    let t = tempfile::tempdir().unwrap();
    for p in [
        "etc/hosts",
        "etc/hostsx",
        "etc/hostname",
        "hosts",
        "lay/blobs/b",
        "lay.x/f",
    ] {
        let full = t.path().join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        write(&full, b"x");
    }
    let all = full_tree(t.path(), &NEVER).unwrap();
    let excluded = ["/etc/hosts".into(), "etc/hostname".into(), "lay/".into()];
    let kept = without_paths(all.clone(), &excluded);
    assert_eq!(
        summary(&kept),
        ["A etc", "A etc/hostsx", "A hosts", "A lay.x", "A lay.x/f"]
    );
    assert_eq!(without_paths(all.clone(), &[]), all);
}

#[test]
fn root_owner_maps_only_the_given_ids() {
    if !is_root("root_owner_maps_only_the_given_ids") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    for (name, uid, gid) in [("a", 1000, 1000), ("b", 1000, 7), ("c", 5, 1000)] {
        let p = t.path().join(name);
        write(&p, b"x");
        lchown(&p, Some(uid), Some(gid)).unwrap();
    }
    let changes = with_root_owner(full_tree(t.path(), &NEVER).unwrap(), Some((1000, 1000)));
    let owners: Vec<(u32, u32)> = changes
        .iter()
        .filter(|c| c.path != b"")
        .map(|c| c.entry.as_ref().map(|e| (e.uid, e.gid)).unwrap())
        .collect();
    assert_eq!(owners, [(0, 0), (0, 7), (5, 0)]);
}

#[test]
fn a_layer_gets_the_unchanged_directories_above_its_changes() {
    let (l, u) = pair(
        |r: &Path| {
            write(&r.join("tmp/deep/f"), b"1");
            write(&r.join("tmp/gone"), b"g");
            write(&r.join("other/x"), b"x");
            chmod(&r.join("tmp"), 0o1777);
        },
        |r| {
            write(&r.join("tmp/deep/f"), b"22");
            std::fs::remove_file(r.join("tmp/gone")).unwrap();
        },
    );
    // The diff lists what changed; removing tmp/gone changed tmp's mtime, not tmp/deep's.
    let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
    std::os::unix::fs::chown(u.path().join("tmp/deep"), Some(7), Some(8)).unwrap();
    let changes: Vec<Change> = changes.into_iter().filter(|c| c.path != b"tmp").collect();
    assert_eq!(summary(&changes), ["C tmp/deep/f", "D tmp/gone"]);
    let root = walk::open_root(u.path()).unwrap();
    let full = with_parent_dirs(root.as_fd(), u.path(), changes).unwrap();
    assert_eq!(
        summary(&full),
        ["C tmp", "C tmp/deep", "C tmp/deep/f", "D tmp/gone"]
    );
    let entry = |p: &[u8]| {
        let c = full.iter().find(|c| c.path == p).unwrap();
        c.entry.clone().unwrap()
    };
    assert_eq!(
        (entry(b"tmp").kind, entry(b"tmp").mode),
        (Kind::Dir, 0o1777)
    );
    assert_eq!((entry(b"tmp/deep").uid, entry(b"tmp/deep").gid), (7, 8));
    // Nothing to add: the same list back.
    let again = with_parent_dirs(root.as_fd(), u.path(), full.clone()).unwrap();
    assert_eq!(summary(&again), summary(&full));
}

#[test]
fn whiteouts_opaque_directories_and_files_in_a_lower_layer_hide_the_layers_below_it() {
    if !is_root("whiteouts_opaque_directories_and_files_in_a_lower_layer_hide_the_layers_below_it")
    {
        return;
    }
    let (top, bottom, u) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (top, bottom) = (top.path(), bottom.path());
    for f in ["gone", "od/x", "d/y", "kept", "in/deep"] {
        write(&bottom.join(f), b"1");
    }
    // The top lower layer, in overlay form: a whiteout, an opaque directory, a file over a
    // directory, and a directory of the bottom layer merged with its own.
    mknod_whiteout(&top.join("gone"));
    std::fs::create_dir(top.join("od")).unwrap();
    assert!(set_xattr(&top.join("od"), "trusted.overlay.opaque", b"y"));
    write(&top.join("d"), b"file");
    write(&top.join("in/other"), b"2");
    for f in ["gone", "od/x", "d/y", "kept", "in/deep", "in/other", "new"] {
        std::fs::create_dir_all(u.path().join(f).parent().unwrap()).unwrap();
        write(&u.path().join(f), b"up");
    }
    let changes = overlay_diff(u.path(), &[top, bottom]).unwrap();
    let files: Vec<String> = summary(&changes)
        .into_iter()
        .filter(|c| !matches!(&c[2..], "od" | "in"))
        .collect();
    assert_eq!(
        files,
        [
            "C d", // a file in the top layer
            "A d/y",
            "A gone",
            "C in/deep",
            "C in/other",
            "C kept",
            "A new",
            "A od/x"
        ]
    );
}

#[test]
fn device_numbers_are_compared() {
    if !is_root("device_numbers_are_compared") {
        return;
    }
    let mk = |r: &Path, minor: u32| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("c"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(1, minor),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("b"),
            rustix::fs::FileType::BlockDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(7, minor),
        )
        .unwrap();
    };
    let (l, u) = pair(|r: &Path| write(&r.join("f"), b"x"), |_| {});
    mk(l.path(), 3);
    mk(u.path(), 5);
    freeze(l.path());
    freeze(u.path());
    assert_eq!(diff(l.path(), u.path()), ["C b", "C c"]);
}

#[test]
fn deleting_a_dir_does_not_swallow_a_sibling_with_its_name_as_prefix() {
    let (l, u) = pair(
        |r: &Path| {
            write(&r.join("lib/x"), b"x");
            write(&r.join("lib64/y"), b"y");
            write(&r.join("libc"), b"c");
        },
        |r| {
            std::fs::remove_dir_all(r.join("lib")).unwrap();
            std::fs::remove_dir_all(r.join("lib64")).unwrap();
            std::fs::remove_file(r.join("libc")).unwrap();
        },
    );
    assert_eq!(diff(l.path(), u.path()), ["D lib", "D lib64", "D libc"]);
}

#[test]
fn a_dir_or_symlink_whose_only_change_is_mtime_is_listed() {
    let (l, u) = pair(base, |_| {});
    set_mtime(&u.path().join("d"), T0.0 + 1, 0);
    set_mtime(&u.path().join("link"), T0.0, T0.1 + 1);
    assert_eq!(diff(l.path(), u.path()), ["C d", "C link"]);
}
