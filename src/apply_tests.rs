//! Table-driven tests of apply: OCI whiteout semantics and the hostile-layer classes.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

/// One archive member for a test layer. Names are raw bytes written into the header as is,
/// so hostile names (`..`, absolute) can be expressed.
enum M<'a> {
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32),
    Dir(&'a str),
    DirMode(&'a str, u32),
    Sym(&'a str, &'a str),
    Link(&'a str, &'a str),
}

fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let bytes = name.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn layer(members: &[M<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let (mut h, data): (tar::Header, &[u8]) = match m {
            M::File(n, d) => (header(n, tar::EntryType::Regular, d.len() as u64, 0o644), d),
            M::FileMode(n, d, mode) => {
                (header(n, tar::EntryType::Regular, d.len() as u64, *mode), d)
            }
            M::Dir(n) => (header(n, tar::EntryType::Directory, 0, 0o755), b""),
            M::DirMode(n, mode) => (header(n, tar::EntryType::Directory, 0, *mode), b""),
            M::Sym(n, t) => {
                let mut h = header(n, tar::EntryType::Symlink, 0, 0o777);
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                (h, b"")
            }
            M::Link(n, t) => {
                let mut h = header(n, tar::EntryType::Link, 0, 0o644);
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                (h, b"")
            }
        };
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn apply(root: &Path, members: &[M<'_>]) -> Result<ApplyStats> {
    apply_bytes(root, &layer(members))
}

fn apply_bytes(root: &Path, bytes: &[u8]) -> Result<ApplyStats> {
    let r = Root::open(root)?;
    apply_layer(&r, bytes, &ApplyOptions::default(), &crate::cancel::NEVER)
}

/// Apply `bytes` onto `root`, in overlay form or not.
fn apply_in_form(root: &Path, bytes: &[u8], overlay: bool) -> Result<ApplyStats> {
    let opts = ApplyOptions {
        overlay,
        ..ApplyOptions::default()
    };
    apply_layer(&Root::open(root)?, bytes, &opts, &crate::cancel::NEVER)
}

/// Every path under `root` with a short description, for whole-tree comparisons.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn rec(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.push(format!("{rel}/"));
                rec(base, &p, out);
            } else if md.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else {
                out.push(format!(
                    "{rel} = {}",
                    String::from_utf8_lossy(&fs::read(&p).unwrap())
                ));
            }
        }
    }
    rec(root, root, &mut out);
    out
}

fn lower(root: &Path) {
    apply(
        root,
        &[
            M::Dir("a"),
            M::File("a/old", b"old"),
            M::Dir("d"),
            M::File("d/x", b"x"),
            M::Dir("d/sub"),
            M::File("d/sub/y", b"y"),
            M::File("f", b"f"),
        ],
    )
    .unwrap();
}

#[test]
fn whiteout_order_within_a_layer_never_matters() {
    let cases: &[(&str, Vec<M<'_>>, Vec<&str>)] = &[
        (
            "whiteout before",
            vec![M::File("a/.wh.old", b""), M::File("a/old", b"new")],
            vec!["a/", "a/old = new"],
        ),
        (
            "whiteout after",
            vec![M::File("a/old", b"new"), M::File("a/.wh.old", b"")],
            vec!["a/", "a/old = new"],
        ),
        (
            "dir whiteout before new dir",
            vec![M::File(".wh.a", b""), M::Dir("a"), M::File("a/n", b"n")],
            vec!["a/", "a/n = n"],
        ),
        (
            "dir whiteout after new dir",
            vec![M::Dir("a"), M::File("a/n", b"n"), M::File(".wh.a", b"")],
            vec!["a/", "a/n = n"],
        ),
        (
            "opaque first",
            vec![
                M::Dir("a"),
                M::File("a/.wh..wh..opq", b""),
                M::File("a/n", b"n"),
            ],
            vec!["a/", "a/n = n"],
        ),
        (
            "opaque last",
            vec![
                M::Dir("a"),
                M::File("a/n", b"n"),
                M::File("a/.wh..wh..opq", b""),
            ],
            vec!["a/", "a/n = n"],
        ),
    ];
    for (what, members, want) in cases {
        let t = tempfile::tempdir().unwrap();
        lower(t.path());
        apply(t.path(), members).unwrap();
        let got: Vec<String> = tree(t.path())
            .into_iter()
            .filter(|l| l.starts_with("a"))
            .collect();
        assert_eq!(&got, want, "{what}");
    }
}

#[test]
fn a_whiteout_before_the_entries_below_it_keeps_them_off_what_it_hides() {
    // As docker and umoci read a layer in order: once `.wh.X` is read, what lay at X below
    // the layer is gone, and entries below X go into a directory made for them (0755), never
    // through a link that lay there, into a directory's old owner and mode, or onto a file.
    let base = [
        M::Dir("etc"),
        M::File("etc/passwd", b"root"),
        M::Sym("l", "/etc"),
        M::DirMode("p", 0o700),
        M::File("p/old", b"old"),
        M::File("q", b"q"),
    ];
    let rest = ["p/", "p/old = old", "q = q"];
    let cases: &[(&str, Vec<M<'_>>, Vec<&str>)] = &[
        (
            "a link",
            vec![M::File(".wh.l", b""), M::File("l/passwd", b"pwned")],
            [
                &["etc/", "etc/passwd = root", "l/", "l/passwd = pwned"],
                &rest[..],
            ]
            .concat(),
        ),
        (
            "a link, the entry deeper",
            vec![M::File(".wh.l", b""), M::File("l/a/b", b"b")],
            [
                &["etc/", "etc/passwd = root", "l/", "l/a/", "l/a/b = b"],
                &rest[..],
            ]
            .concat(),
        ),
        (
            "a directory",
            vec![M::File(".wh.p", b""), M::File("p/x", b"x")],
            vec![
                "etc/",
                "etc/passwd = root",
                "l -> /etc",
                "p/",
                "p/x = x",
                "q = q",
            ],
        ),
        (
            "a file",
            vec![M::File(".wh.q", b""), M::File("q/x", b"x")],
            vec![
                "etc/",
                "etc/passwd = root",
                "l -> /etc",
                "p/",
                "p/old = old",
                "q/",
                "q/x = x",
            ],
        ),
        (
            // docker's order too: the entry went through the link before the whiteout came.
            "a link whited out after",
            vec![M::File("l/passwd", b"pwned"), M::File(".wh.l", b"")],
            [&["etc/", "etc/passwd = pwned"], &rest[..]].concat(),
        ),
        (
            "a link, entries on both sides",
            vec![
                M::File("l/a", b"a"),
                M::File(".wh.l", b""),
                M::File("l/b", b"b"),
            ],
            [
                &["etc/", "etc/a = a", "etc/passwd = root", "l/", "l/b = b"],
                &rest[..],
            ]
            .concat(),
        ),
    ];
    for (what, members, want) in cases {
        let t = tempfile::tempdir().unwrap();
        apply(t.path(), &base).unwrap();
        apply(t.path(), members).unwrap();
        assert_eq!(&tree(t.path()), want, "{what}");
        if *what == "a directory" {
            let md = fs::metadata(t.path().join("p")).unwrap();
            assert_eq!(md.permissions().mode() & 0o7777, 0o755, "{what}");
        }
    }
}

#[test]
fn an_opaque_marker_before_the_entries_below_it_keeps_them_off_what_it_hides() {
    // `x/.wh..wh..opq` hides the lower `x/l -> /etc`: `x/l/passwd` after it goes into a new
    // directory `x/l`, as umoci puts it, not through the link; in both forms.
    for overlay in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (lower, top) = (t.path().join("lower"), t.path().join("top"));
        let base = [
            M::Dir("etc"),
            M::File("etc/passwd", b"root"),
            M::Dir("x"),
            M::Sym("x/l", "/etc"),
        ];
        let members = [
            M::File("x/.wh..wh..opq", b""),
            M::File("x/l/passwd", b"pwned"),
        ];
        let opts = ApplyOptions {
            overlay,
            ..ApplyOptions::default()
        };
        let into = if overlay { &top } else { &lower };
        let r = Root::open(&lower).unwrap();
        apply_layer(&r, &layer(&base)[..], &opts, &crate::cancel::NEVER).unwrap();
        let opts = ApplyOptions {
            lowers: overlay.then(|| vec![lower.clone()]),
            ..opts
        };
        let r = Root::open(into).unwrap();
        apply_layer(&r, &layer(&members)[..], &opts, &crate::cancel::NEVER).unwrap();
        assert_eq!(
            fs::read(lower.join("etc/passwd")).unwrap(),
            b"root",
            "{overlay}"
        );
        assert_eq!(
            fs::read(into.join("x/l/passwd")).unwrap(),
            b"pwned",
            "{overlay}"
        );
        assert!(
            fs::symlink_metadata(into.join("x/l")).unwrap().is_dir(),
            "{overlay}"
        );
    }
}

#[test]
fn a_whiteout_never_reaches_through_the_link_this_layer_put_in_its_place() {
    // `a` was a directory and is now a link (to `d`, or to the root); the whiteout of the old
    // `a` hides it alone, never what the new link points at.
    for (target, order_whiteout_first) in [("/d", true), ("d", false), ("/", true), ("..", false)] {
        let t = tempfile::tempdir().unwrap();
        lower(t.path());
        let wh = M::File(".wh.a", b"");
        let link = M::Sym("a", target);
        let members = if order_whiteout_first {
            vec![wh, link]
        } else {
            vec![link, wh]
        };
        apply(t.path(), &members).unwrap();
        assert_eq!(
            tree(t.path()),
            vec![
                format!("a -> {target}"),
                "d/".to_string(),
                "d/sub/".to_string(),
                "d/sub/y = y".to_string(),
                "d/x = x".to_string(),
                "f = f".to_string(),
            ],
            "a -> {target}"
        );
    }
}

#[test]
fn an_entry_replacing_the_link_its_parent_was_reached_through_is_seen_by_the_next() {
    // `l -> .` makes `l/l` name `l` itself: the directory entry replaces the link, so the
    // next entry's `l/secret` is in that directory, which gets the entry's mode; in one layer
    // or split in two, as umoci and GNU tar give it.
    let one = |t: &Path| {
        apply(
            t,
            &[
                M::Sym("l", "."),
                M::DirMode("l/l", 0o755),
                M::File("l/secret", b"s"),
            ],
        )
        .unwrap();
    };
    let two = |t: &Path| {
        apply(t, &[M::Sym("l", "."), M::DirMode("l/l", 0o755)]).unwrap();
        apply(t, &[M::File("l/secret", b"s")]).unwrap();
    };
    for (what, how) in [("one layer", &one as &dyn Fn(&Path)), ("two layers", &two)] {
        let t = tempfile::tempdir().unwrap();
        how(t.path());
        assert_eq!(tree(t.path()), vec!["l/", "l/secret = s"], "{what}");
        let mode = fs::metadata(t.path().join("l"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{what}");
    }
}

#[test]
fn a_directory_named_like_a_removed_one_is_known_by_its_name() {
    // The kernel shows a removed directory's path with " (deleted)" after it; a directory
    // really named so is still where this layer wrote, and its own whiteout spares that.
    for dir in ["x (deleted)", "x"] {
        let t = tempfile::tempdir().unwrap();
        let new = format!("{dir}/.wh.new");
        apply(
            t.path(),
            &[
                M::Dir(dir),
                M::Sym("lx", dir),
                M::File("lx/new", b"n"),
                M::File(&new, b""),
            ],
        )
        .unwrap();
        assert_eq!(
            tree(t.path()),
            vec![
                format!("lx -> {dir}"),
                format!("{dir}/"),
                format!("{dir}/new = n")
            ],
            "{dir}"
        );
    }
}

#[test]
fn opaque_hides_lower_children_at_every_depth_but_keeps_the_layers() {
    let t = tempfile::tempdir().unwrap();
    lower(t.path());
    apply(
        t.path(),
        &[M::File("d/sub/z", b"z"), M::File("d/.wh..wh..opq", b"")],
    )
    .unwrap();
    let got: Vec<String> = tree(t.path())
        .into_iter()
        .filter(|l| l.starts_with('d'))
        .collect();
    assert_eq!(got, vec!["d/", "d/sub/", "d/sub/z = z"]);
}

#[test]
fn whiteouts_of_absent_and_redundant_paths_are_fine() {
    let t = tempfile::tempdir().unwrap();
    lower(t.path());
    apply(
        t.path(),
        &[
            M::File(".wh.nothing", b""),
            M::File(".wh.d", b""),
            M::File("d/.wh.x", b""),
            M::File("d/sub/.wh.y", b""),
        ],
    )
    .unwrap();
    assert!(!t.path().join("d").exists());
    assert!(t.path().join("f").exists());
}

#[test]
fn malformed_whiteouts_are_refused() {
    for name in [".wh.", "a/.wh..", "a/.wh..."] {
        let t = tempfile::tempdir().unwrap();
        lower(t.path());
        let err = apply(t.path(), &[M::File(name, b"")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed whiteout"), "{name}: {err}");
        assert!(t.path().join("a/old").exists(), "{name} removed something");
    }
}

#[test]
fn dir_over_dir_keeps_children_and_takes_attributes() {
    let t = tempfile::tempdir().unwrap();
    lower(t.path());
    apply(t.path(), &[M::DirMode("d", 0o1750)]).unwrap();
    let md = fs::metadata(t.path().join("d")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o1750);
    assert_eq!(md.mtime(), 1_000_000);
    assert!(t.path().join("d/x").exists());
}

#[test]
fn replacing_a_hardlinked_file_keeps_the_other_link() {
    let t = tempfile::tempdir().unwrap();
    apply(t.path(), &[M::File("a", b"old"), M::Link("b", "a")]).unwrap();
    apply(t.path(), &[M::File("a", b"new")]).unwrap();
    assert_eq!(fs::read(t.path().join("a")).unwrap(), b"new");
    assert_eq!(fs::read(t.path().join("b")).unwrap(), b"old");
}

fn md_of(root: &Path, p: &str) -> fs::Metadata {
    fs::symlink_metadata(root.join(p)).unwrap()
}

#[test]
fn aufs_hardlinks_are_one_file_made_from_the_link_directory() {
    let t = tempfile::tempdir().unwrap();
    lower(t.path());
    let stats = apply(
        t.path(),
        &[
            M::DirMode(".wh..wh.plnk", 0o700),
            M::FileMode(".wh..wh.plnk/1234.5678", b"kept", 0o751),
            M::Sym(".wh..wh.plnk/ignored", "x"),
            M::Link("a/one", ".wh..wh.plnk/1234.5678"),
            M::Link("a/two", "/.wh..wh.plnk/1234.5678"),
            M::Link("three", "a/one"),
        ],
    )
    .unwrap();
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    assert_eq!(
        tree(t.path()),
        [
            "a/",
            "a/old = old",
            "a/one = kept",
            "a/two = kept",
            "d/",
            "d/sub/",
            "d/sub/y = y",
            "d/x = x",
            "f = f",
            "three = kept",
        ]
    );
    let md = |p: &str| fs::metadata(t.path().join(p)).unwrap();
    assert_eq!(md("a/one").mode() & 0o7777, 0o751);
    assert_eq!(md("a/one").mtime(), 1_000_000);
    // One file, as in the aufs branch.
    assert_eq!(md("a/one").ino(), md("a/two").ino());
    assert_eq!(md("a/one").ino(), md("three").ino());
    assert_eq!(md("a/one").nlink(), 3);

    // A hardlink whose first path was replaced meanwhile makes the file again.
    let t = tempfile::tempdir().unwrap();
    apply(
        t.path(),
        &[
            M::File(".wh..wh.plnk/9", b"kept"),
            M::Link("one", ".wh..wh.plnk/9"),
            M::File("one", b"other"),
            M::Link("two", ".wh..wh.plnk/9"),
            M::Link("three", ".wh..wh.plnk/9"),
            M::Link("three", ".wh..wh.plnk/9"),
        ],
    )
    .unwrap();
    assert_eq!(
        tree(t.path()),
        ["one = other", "three = kept", "two = kept"]
    );
    assert_eq!(md_of(t.path(), "two").ino(), md_of(t.path(), "three").ino());
    assert_eq!(md_of(t.path(), "two").nlink(), 2);

    let err = apply(t.path(), &[M::Link("x", ".wh..wh.plnk/elsewhere")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x: hardlink target .wh..wh.plnk/elsewhere is not in the layer before it"),
        "{err}"
    );
    // Deeper than the link directory's own files, a .wh. directory is refused as before.
    let err = apply(t.path(), &[M::File(".wh..wh.plnk/d/f", b"")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a whiteout name (.wh.) is used as a directory"),
        "{err}"
    );
}

#[test]
fn a_link_never_makes_a_directory_under_a_whiteouts_name() {
    for overlay in [false, true] {
        for target in [".wh.etc", ".wh..wh..opq", "a/.wh.b/c", "/.wh.etc"] {
            let t = tempfile::tempdir().unwrap();
            let bytes = layer(&[M::Sym("s", target), M::File("s/x", b"x")]);
            let err = apply_in_form(t.path(), &bytes, overlay)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("a whiteout name (.wh.) is used as a directory"),
                "{target} overlay={overlay}: {err}"
            );
            let made: Vec<String> = tree(t.path())
                .into_iter()
                .filter(|p| {
                    let path = p.split(' ').next().unwrap_or_default();
                    path.split('/').any(|c| c.starts_with(".wh."))
                })
                .collect();
            assert_eq!(made, Vec::<String>::new(), "{target} overlay={overlay}");
        }
    }
}

#[test]
fn an_entry_replacing_a_directory_its_parent_was_reached_through_is_seen_by_the_next() {
    // `d/s -> ..`: `d/s/d` is `d` itself, which the file replaces; `d/s/x` then goes through a
    // file, and is refused as squash and umoci refuse it, not written where `d/s` led before.
    let t = tempfile::tempdir().unwrap();
    let err = apply(
        t.path(),
        &[
            M::Dir("d"),
            M::Sym("d/s", ".."),
            M::File("d/s/d", b"file"),
            M::File("d/s/x", b"x"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Not a directory"), "{err}");
    assert!(!t.path().join("x").exists());
}

#[test]
fn hardlink_survives_whiteout_of_its_target() {
    let t = tempfile::tempdir().unwrap();
    lower(t.path());
    apply(t.path(), &[M::File(".wh.f", b""), M::Link("g", "f")]).unwrap();
    assert!(!t.path().join("f").exists());
    assert_eq!(fs::read(t.path().join("g")).unwrap(), b"f");
}

#[test]
fn setuid_and_sticky_modes_are_kept() {
    let t = tempfile::tempdir().unwrap();
    apply(
        t.path(),
        &[M::FileMode("s", b"#!", 0o4755), M::DirMode("tmp", 0o1777)],
    )
    .unwrap();
    assert_eq!(
        fs::metadata(t.path().join("s"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(t.path().join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
}

/// A target directory beside a sentinel file whose metadata must not move.
struct Arena {
    _t: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
    before: (u64, i64, i64, u32),
}

fn arena() -> Arena {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"keep").unwrap();
    let md = fs::metadata(outside.join("victim")).unwrap();
    let before = (md.size(), md.mtime(), md.mtime_nsec(), md.mode());
    Arena {
        _t: t,
        root,
        outside,
        before,
    }
}

impl Arena {
    fn check_untouched(&self, what: &str) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["victim"], "{what}: something created outside");
        let md = fs::metadata(self.outside.join("victim")).unwrap();
        assert_eq!(
            (md.size(), md.mtime(), md.mtime_nsec(), md.mode()),
            self.before,
            "{what}"
        );
        assert_eq!(
            fs::read(self.outside.join("victim")).unwrap(),
            b"keep",
            "{what}"
        );
        let parent = self.root.parent().unwrap();
        let mut top: Vec<_> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(
            top,
            vec!["outside", "root"],
            "{what}: something created beside the root"
        );
    }
}

#[test]
fn hostile_layers_stay_inside_the_root() {
    let cases: Vec<(&str, Vec<M<'_>>)> = vec![
        ("dot-dot name", vec![M::File("../outside/victim", b"pwned")]),
        ("absolute name", vec![M::File("/outside/victim", b"pwned")]),
        (
            "symlink to parent then write",
            vec![M::Sym("l", "../outside"), M::File("l/victim", b"pwned")],
        ),
        (
            "absolute symlink then write",
            vec![M::Sym("l", "/"), M::File("l/outside/victim", b"pwned")],
        ),
        (
            "chained symlinks",
            vec![
                M::Sym("a", "b"),
                M::Sym("b", "../../outside"),
                M::File("a/victim", b"pwned"),
            ],
        ),
        (
            "symlink then overwrite the link",
            vec![M::Sym("v", "../outside/victim"), M::File("v", b"mine")],
        ),
        (
            "hardlink to outside",
            vec![M::Link("h", "../outside/victim")],
        ),
        (
            "hardlink through symlink",
            vec![M::Sym("l", "../outside"), M::Link("h", "l/victim")],
        ),
        (
            "dir metadata through later symlink",
            vec![M::DirMode("d", 0o777), M::Sym("d", "../outside")],
        ),
        (
            "whiteout through symlinked dir",
            vec![M::Sym("l", "../outside"), M::File("l/.wh.victim", b"")],
        ),
        (
            "opaque through symlinked dir",
            vec![M::Sym("l", "../outside"), M::File("l/.wh..wh..opq", b"")],
        ),
        (
            "symlink named dot",
            vec![M::Sym(".", "../outside"), M::File("victim", b"inside")],
        ),
    ];
    for (what, members) in cases {
        let a = arena();
        let result = apply(&a.root, &members);
        a.check_untouched(what);
        if let Err(e) = result {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{what}: multi-line error {msg}");
        }
    }
}

#[test]
fn dot_dot_names_are_an_error_naming_the_entry() {
    let a = arena();
    let err = apply(&a.root, &[M::File("x/../../outside/victim", b"p")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x/../../outside/victim") && err.contains(".."),
        "{err}"
    );
}

#[test]
fn os_errors_read_as_the_os_says_them_and_a_hardlink_names_its_target() {
    let t = tempfile::tempdir().unwrap();
    let err = apply(t.path(), &[M::Link("h", "no/such")])
        .unwrap_err()
        .to_string();
    assert_eq!(err, "h: hardlink target no/such: No such file or directory");
    let err = apply(t.path(), &[M::File("f", b"f"), M::File("f/g", b"g")])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("f/g: ") && !err.contains("os error"),
        "{err}"
    );
}

#[test]
fn lower_symlinks_are_resolved_inside_the_root() {
    let a = arena();
    apply(&a.root, &[M::Sym("etc", "/real-etc"), M::Dir("real-etc")]).unwrap();
    apply(&a.root, &[M::File("etc/passwd", b"root")]).unwrap();
    assert_eq!(fs::read(a.root.join("real-etc/passwd")).unwrap(), b"root");
    a.check_untouched("lower symlink");
}

#[test]
fn a_compressed_stream_is_read_to_its_end_after_the_archive() {
    // The archive ends before the stream does: in its last gzip member, whose CRC comes after
    // it, or in its zstd frame, whose checksum does. A stream damaged or cut after the archive's
    // end, or followed by other bytes, is an error, as docker and containerd, which read a
    // layer on to its end, have it; and nothing of it is taken for good. The layer's one
    // member is small (inflated whole) or large (streamed).
    for size in [5_000usize, 6 << 20] {
        let content: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let mut tar = layer(&[M::File("big", &content), M::File("after", b"z")]);
        tar.extend_from_slice(&[0u8; 8192]); // padding after the end, as GNU tar writes
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let mut zst_encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        zst_encoder.include_checksum(true).unwrap();
        std::io::Write::write_all(&mut zst_encoder, &tar).unwrap();
        let zst = zst_encoder.finish().unwrap();
        let damaged = |blob: &[u8], at: usize| {
            let mut b = blob.to_vec();
            b[at] ^= 0x01;
            b
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("gzip, zeros after", [&gz[..], &[0u8; 512]].concat()),
            (
                "gzip, garbage after",
                [&gz[..], &b"garbage!".repeat(64)].concat(),
            ),
            ("gzip, CRC damaged", damaged(&gz, gz.len() - 6)),
            ("gzip, size damaged", damaged(&gz, gz.len() - 2)),
            ("gzip, trailer cut", gz[..gz.len() - 4].to_vec()),
            (
                "zstd, garbage after",
                [&zst[..], &b"garbage!".repeat(64)].concat(),
            ),
            ("zstd, checksum damaged", damaged(&zst, zst.len() - 2)),
            ("zstd, checksum cut", zst[..zst.len() - 4].to_vec()),
        ];
        for (what, bytes) in cases {
            let t = tempfile::tempdir().unwrap();
            let err = apply_bytes(t.path(), &bytes).expect_err(&format!("{what}, {size}"));
            assert!(!err.to_string().contains('\n'), "{what}, {size}: {err}");
        }
        for blob in [&gz, &zst] {
            let t = tempfile::tempdir().unwrap();
            apply_bytes(t.path(), blob).unwrap();
            assert_eq!(fs::read(t.path().join("big")).unwrap(), content);
            assert_eq!(fs::read(t.path().join("after")).unwrap(), b"z");
        }
    }
}

#[test]
fn broken_streams_are_errors_not_panics() {
    let good = layer(&[M::File("a", &[7u8; 5000]), M::File("b", b"b")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &good).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&good[..], 3).unwrap();
    let mut corrupt_gz = gz.clone();
    let mid = corrupt_gz.len() / 2;
    corrupt_gz[mid] ^= 0xff;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated tar", good[..1000].to_vec()),
        ("truncated gzip", gz[..gz.len() / 2].to_vec()),
        ("corrupt gzip", corrupt_gz),
        ("truncated zstd", zst[..zst.len() / 2].to_vec()),
        (
            "garbage",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ];
    for (what, bytes) in cases {
        let t = tempfile::tempdir().unwrap();
        let err = apply_bytes(t.path(), &bytes);
        assert!(err.is_err(), "{what}: accepted");
        assert!(!err.unwrap_err().to_string().contains('\n'), "{what}");
    }
    // And the intact streams, in each form, apply.
    for bytes in [&good, &gz, &zst] {
        let t = tempfile::tempdir().unwrap();
        apply_bytes(t.path(), bytes).unwrap();
        assert_eq!(fs::read(t.path().join("b")).unwrap(), b"b");
    }
}

/// The diff_id is the sha256 of the whole uncompressed stream: what follows the archive's
/// end (a tar program's padding to its record size) counts, however the layer is compressed.
#[test]
fn diff_id_hashes_the_whole_stream_past_the_archive() {
    let mut stream = layer(&[M::Dir("d"), M::File("d/f", b"content")]);
    stream.extend_from_slice(&[0u8; 9000]);
    let want = crate::digest::sha256_digest(&stream);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &stream).unwrap();
    let zst = zstd::encode_all(&stream[..], 3).unwrap();
    for (name, blob) in [
        ("plain", stream.clone()),
        ("gzip", gz.finish().unwrap()),
        ("zstd", zst),
    ] {
        for wanted in [false, true] {
            let t = tempfile::tempdir().unwrap();
            let r = Root::open(t.path()).unwrap();
            let opts = ApplyOptions {
                diff_id: wanted,
                ..ApplyOptions::default()
            };
            let stats = apply_layer(&r, &blob[..], &opts, &crate::cancel::NEVER).unwrap();
            assert_eq!(stats.bytes, stream.len() as u64, "{name}");
            assert_eq!(stats.diff_id, wanted.then(|| want.clone()), "{name}");
            assert_eq!(fs::read(t.path().join("d/f")).unwrap(), b"content");
        }
    }
}

/// A Ctrl-C while a large file's content is copied stops the apply there, not once the file
/// is whole.
#[test]
fn a_cancel_stops_the_copy_of_a_large_file() {
    struct Trip<'a, R> {
        inner: R,
        read: usize,
        cancel: &'a crate::cancel::Cancel,
    }
    impl<R: std::io::Read> std::io::Read for Trip<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let len = buf.len().min(64 << 10);
            let n = self.inner.read(&mut buf[..len])?;
            self.read += n;
            if self.read > 4 << 20 {
                self.cancel.cancel(); // as a Ctrl-C 4 MiB into the file
            }
            Ok(n)
        }
    }
    let big = vec![7u8; 64 << 20];
    let bytes = layer(&[M::File("big", &big)]);
    let t = tempfile::tempdir().unwrap();
    let r = Root::open(t.path()).unwrap();
    let cancel = crate::cancel::Cancel::new();
    let blob = Trip {
        inner: &bytes[..],
        read: 0,
        cancel: &cancel,
    };
    let err = apply_layer(&r, blob, &ApplyOptions::default(), &cancel).unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err}");
    let written = fs::metadata(t.path().join("big")).map_or(0, |m| m.len());
    assert!(
        written < 32 << 20,
        "{written} bytes written after the cancel"
    );
}

#[test]
fn size_limit_stops_a_bomb() {
    let big = vec![0u8; 1 << 20];
    let bytes = layer(&[M::File("z", &big)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    let t = tempfile::tempdir().unwrap();
    let r = Root::open(t.path()).unwrap();
    let opts = ApplyOptions {
        max_size: 100_000,
        ..ApplyOptions::default()
    };
    let err = apply_layer(&r, &gz.finish().unwrap()[..], &opts, &crate::cancel::NEVER).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

/// The limit counts every uncompressed byte, file contents included: a layer of exactly the
/// limit applies, one byte less of limit refuses it, plain or compressed.
#[test]
fn size_limit_is_exact() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let bytes = layer(&[M::Dir("d"), M::File("d/f", &data), M::File("g", b"x")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    let gz = gz.finish().unwrap();
    for blob in [&bytes[..], &gz[..]] {
        // What the reader consumes: the archive up to its end marker.
        let t = tempfile::tempdir().unwrap();
        let r = Root::open(t.path()).unwrap();
        let total = apply_layer(&r, blob, &ApplyOptions::default(), &crate::cancel::NEVER)
            .unwrap()
            .bytes;
        assert!(total > 300_000);
        for (limit, ok) in [(total, true), (total + 1, true), (total - 1, false)] {
            let t = tempfile::tempdir().unwrap();
            let r = Root::open(t.path()).unwrap();
            let opts = ApplyOptions {
                max_size: limit,
                ..ApplyOptions::default()
            };
            let res = apply_layer(&r, blob, &opts, &crate::cancel::NEVER);
            assert_eq!(res.is_ok(), ok, "limit {limit} of {total}: {res:?}");
            if ok {
                assert_eq!(fs::read(t.path().join("d/f")).unwrap(), data);
            }
        }
    }
}

#[test]
fn overlay_form_writes_char_device_whiteouts_and_opaque_xattrs() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for mknod and trusted xattrs");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let r = Root::open(t.path()).unwrap();
    let opts = ApplyOptions {
        overlay: true,
        ..ApplyOptions::default()
    };
    let bytes = layer(&[
        M::Dir("d"),
        M::File("d/.wh..wh..opq", b""),
        M::File(".wh.gone", b""),
    ]);
    apply_layer(&r, &bytes[..], &opts, &crate::cancel::NEVER).unwrap();
    let md = fs::symlink_metadata(t.path().join("gone")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(md.file_type().is_char_device() && md.rdev() == 0);
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(t.path().join("d"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
}

#[test]
fn overlay_form_spares_what_its_layer_wrote_through_a_link_as_a_flat_apply_does() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for mknod");
        return;
    }
    let members = [
        M::Dir("d"),
        M::File("d/x", b"x"),
        M::Sym("l", "d"),
        M::File("l/.wh.x", b""),
    ];
    for overlay in [false, true] {
        let t = tempfile::tempdir().unwrap();
        apply_in_form(t.path(), &layer(&members), overlay)
            .unwrap_or_else(|e| panic!("overlay {overlay}: {e}"));
        assert_eq!(
            tree(t.path()),
            vec!["d/", "d/x = x", "l -> d"],
            "overlay {overlay}"
        );
    }
}

/// Entries of one directory share its open descriptor; an entry that replaces that directory
/// (or one above it) must not leave later entries writing into the replaced one.
#[test]
fn an_entry_replacing_the_directory_of_the_entries_before_it_is_seen() {
    // The directory becomes a file: an entry below it is an error, not a hidden write.
    let t = tempfile::tempdir().unwrap();
    let r = apply(
        t.path(),
        &[
            M::Dir("a"),
            M::File("a/x", b"x"),
            M::File("a", b"now a file"),
            M::File("a/y", b"y"),
        ],
    );
    assert!(r.is_err(), "{r:?}");
    assert_eq!(tree(t.path()), vec!["a = now a file"]);

    // The directory becomes a symlink to another one: later entries go where it points, as
    // a lookup from the root would take them.
    let t = tempfile::tempdir().unwrap();
    apply(
        t.path(),
        &[
            M::Dir("a/b"),
            M::File("a/b/x", b"x"),
            M::Dir("c"),
            M::Sym("a/b", "/c"),
            M::File("a/b/y", b"y"),
        ],
    )
    .unwrap();
    assert_eq!(tree(t.path()), vec!["a/", "a/b -> /c", "c/", "c/y = y"]);

    // An ancestor replaced by a new directory: the old one and its files are gone.
    let t = tempfile::tempdir().unwrap();
    apply(
        t.path(),
        &[
            M::Dir("a/b"),
            M::File("a/b/x", b"x"),
            M::File("a", b"f"),
            M::Dir("a"),
            M::File("a/b/z", b"z"),
        ],
    )
    .unwrap();
    assert_eq!(tree(t.path()), vec!["a/", "a/b/", "a/b/z = z"]);
}

#[test]
fn directory_metadata_is_never_set_through_a_parent_made_a_symlink_later() {
    // `a/tmp` is made with mode 0777, then `a` becomes a symlink to the root: the directory
    // went away with `a`, and the root's own `tmp` must keep its mode.
    let t = tempfile::tempdir().unwrap();
    apply(t.path(), &[M::DirMode("tmp", 0o755)]).unwrap();
    apply(
        t.path(),
        &[M::Dir("a"), M::DirMode("a/tmp", 0o777), M::Sym("a", "/")],
    )
    .unwrap();
    let mode = fs::metadata(t.path().join("tmp")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    // Through a symlink the lower layer made, a directory entry is applied where it leads.
    let t = tempfile::tempdir().unwrap();
    apply(t.path(), &[M::Dir("real"), M::Sym("l", "real")]).unwrap();
    apply(t.path(), &[M::DirMode("l/sub", 0o700)]).unwrap();
    let mode = fs::metadata(t.path().join("real/sub")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700);
}

#[test]
fn a_whiteout_name_used_as_a_directory_is_refused() {
    let t = tempfile::tempdir().unwrap();
    lower(t.path());
    let err = apply(t.path(), &[M::File(".wh.f/bar", b"x")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("whiteout name (.wh.) is used as a directory"),
        "{err}"
    );
    assert!(t.path().join("f").exists());
    assert!(!t.path().join(".wh.f").exists());
}

#[test]
fn gnu_sparse_files_in_pax_form_are_refused() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    let pax = b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n";
    h.set_size(pax.len() as u64);
    h.set_path("PaxHeaders/sparse").unwrap();
    h.set_cksum();
    b.append(&h, &pax[..]).unwrap();
    let mut h = header(
        "GNUSparseFile.0/sparse",
        tar::EntryType::Regular,
        512,
        0o644,
    );
    h.set_cksum();
    b.append(&h, &[0u8; 512][..]).unwrap();
    let t = tempfile::tempdir().unwrap();
    let err = apply_bytes(t.path(), &b.into_inner().unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains("GNU sparse files are not supported"),
        "{err}"
    );
}

#[test]
fn zstd_blob_starting_with_a_skippable_frame_is_read() {
    let tar = layer(&[M::File("f", b"content")]);
    let mut blob = vec![0x50, 0x2a, 0x4d, 0x18, 8, 0, 0, 0];
    blob.extend_from_slice(&[7; 8]);
    blob.extend(zstd::encode_all(&tar[..], 3).unwrap());
    let t = tempfile::tempdir().unwrap();
    apply_bytes(t.path(), &blob).unwrap();
    assert_eq!(tree(t.path()), vec!["f = content"]);
}

/// Each of `layers` applied in overlay form into a directory of its own under `base`, over
/// the ones before it: their directories, bottom first.
fn stacked(base: &Path, layers: &[&[M<'_>]]) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for (i, members) in layers.iter().enumerate() {
        let dir = base.join(format!("layer{i}"));
        let r = Root::open(&dir).unwrap();
        let opts = ApplyOptions {
            overlay: true,
            lowers: Some(dirs.iter().rev().cloned().collect()),
            ..ApplyOptions::default()
        };
        apply_layer(&r, &layer(members)[..], &opts, &crate::cancel::NEVER).unwrap();
        dirs.push(dir);
    }
    dirs
}

#[test]
fn over_its_lowers_an_entry_goes_through_their_links_and_copies_up_their_dirs() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for chown, mknod and trusted xattrs");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dirs = stacked(
        t.path(),
        &[
            &[
                M::DirMode("usr", 0o750),
                M::DirMode("usr/lib", 0o711),
                M::File("usr/lib/a", b"a"),
                M::Sym("lib", "usr/lib"),
                M::Sym("dangling", "nowhere/x"),
            ],
            &[
                M::File("lib/b", b"b"),
                // A whiteout through the link hides the lower file where the link leads; one
                // through a link to nothing, or of nothing, makes nothing.
                M::File("lib/.wh.a", b""),
                M::File("dangling/.wh.z", b""),
                M::File(".wh.none", b""),
            ],
        ],
    );
    // The link is not copied up (it stays one, below); the directories it leads through are,
    // with their modes.
    let names = |p: &str| {
        let mut v: Vec<String> = fs::read_dir(dirs[1].join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(""), ["usr"]);
    assert_eq!(names("usr"), ["lib"]);
    assert_eq!(names("usr/lib"), ["a", "b"]);
    assert_eq!(fs::read(dirs[1].join("usr/lib/b")).unwrap(), b"b");
    let md = |p: &str| fs::symlink_metadata(dirs[1].join(p)).unwrap();
    assert_eq!(md("usr").mode() & 0o7777, 0o750);
    assert_eq!(md("usr/lib").mode() & 0o7777, 0o711);
    use std::os::unix::fs::FileTypeExt;
    assert!(md("usr/lib/a").file_type().is_char_device() && md("usr/lib/a").rdev() == 0);
}

#[test]
fn over_its_lowers_a_hardlink_copies_up_its_target_with_its_other_names() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for chown and mknod");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dirs = stacked(
        t.path(),
        &[
            &[
                M::Dir("bin"),
                M::FileMode("bin/busybox", b"bb", 0o4755),
                M::Link("bin/sh", "bin/busybox"),
            ],
            &[M::Link("bin/ash", "bin/busybox")],
        ],
    );
    assert_eq!(
        tree(&dirs[1]),
        ["bin/", "bin/ash = bb", "bin/busybox = bb", "bin/sh = bb"]
    );
    let md = |p: &str| fs::symlink_metadata(dirs[1].join(p)).unwrap();
    assert_eq!(md("bin/busybox").nlink(), 3);
    assert_eq!(md("bin/ash").ino(), md("bin/sh").ino());
    assert_eq!(md("bin/busybox").mode() & 0o7777, 0o4755);
    assert_eq!(md("bin/busybox").mtime(), 1_000_000);
}

#[test]
fn over_its_lowers_an_opaque_directory_hides_them_below_it() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for trusted xattrs");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dirs = stacked(
        t.path(),
        &[
            &[M::Dir("a"), M::Dir("a/c"), M::File("a/c/d", b"d")],
            // a/c is not copied up under the opaque a; nor is anything an entry of the layer
            // reaches below a directory it replaced.
            &[
                M::File("a/.wh..wh..opq", b""),
                M::File("a/c/.wh..wh..opq", b""),
            ],
        ],
    );
    assert_eq!(tree(&dirs[1]), ["a/"]);
    let mut buf = [0u8; 2];
    let n = rustix::fs::getxattr(dirs[1].join("a"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
}

#[test]
fn overlay_xattrs_in_a_layer_are_never_applied() {
    // overlayfs' own xattrs are the layer cache's markers (opaque, whiteout, redirect): a
    // layer that carries them must not plant them, in either form, on any kind of entry.
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    let entries = [
        ("d", tar::EntryType::Directory, "user.kept"),
        ("f", tar::EntryType::Regular, "user.kept"),
        ("s", tar::EntryType::Symlink, "trusted.kept"),
    ];
    for (name, kind, kept) in entries {
        b.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
            ("SCHILY.xattr.user.overlay.opaque", &b"y"[..]),
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/x"[..]),
            (&format!("SCHILY.xattr.{kept}")[..], &b"1"[..]),
        ])
        .unwrap();
        let mut h = header(name, kind, 0, 0o755);
        if kind == tar::EntryType::Symlink {
            h.as_old_mut().linkname[..1].copy_from_slice(b"d");
        }
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    for overlay in [false, true] {
        let t = tempfile::tempdir().unwrap();
        apply_in_form(t.path(), &bytes, overlay).unwrap();
        for (name, _, kept) in entries {
            let names: Vec<String> = xattr_names(&t.path().join(name));
            assert_eq!(names, [kept], "{name}, overlay form: {overlay}");
        }
    }
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf).unwrap();
    let mut v: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}
