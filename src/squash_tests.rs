//! Tests of `squash`.

use super::*;
use crate::cancel::NEVER;

fn rec(kind: Kind) -> Record {
    Record {
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: (1, 0),
        xattrs: Vec::new(),
        link_set: None,
    }
}
fn file(p: &str, layer: usize, ordinal: u64) -> Op {
    Op::Put(
        p.as_bytes().to_vec(),
        rec(Kind::File {
            layer,
            offset: ordinal,
            size: 1,
        }),
    )
}
fn dir(p: &str) -> Op {
    Op::Put(p.as_bytes().to_vec(), rec(Kind::Dir))
}
fn wh(p: &str) -> Op {
    Op::Whiteout(p.as_bytes().to_vec())
}
fn opq(p: &str) -> Op {
    Op::Opaque(p.as_bytes().to_vec())
}
fn paths(s: &Squashed) -> (Vec<String>, Vec<String>, Vec<String>) {
    let f = |v: &[Vec<u8>]| {
        v.iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    };
    (
        s.records
            .keys()
            .map(|k| String::from_utf8_lossy(&k.0).into_owned())
            .collect(),
        f(&s.whiteouts),
        f(&s.opaque),
    )
}

fn try_squash(lower: &[Vec<Op>], range: &[Vec<Op>]) -> Result<Squashed> {
    let mut tree = LowerTree::default();
    for ops in lower {
        tree.apply(ops)?;
    }
    let mut folder = Folder::new(tree);
    for ops in range {
        folder.layer(ops)?;
    }
    folder.finish()
}

fn squash(lower: &[Vec<Op>], range: &[Vec<Op>]) -> Squashed {
    try_squash(lower, range).unwrap()
}

fn symlink(p: &str, target: &str) -> Op {
    Op::Put(
        p.as_bytes().to_vec(),
        rec(Kind::Symlink(target.as_bytes().to_vec())),
    )
}

/// A tree for [`resolve_parents`]: symbolic links, and whether each other path is a directory
/// (`None`: nothing there).
struct Tree<'a>(HashMap<&'a [u8], &'a [u8]>, fn(&[u8]) -> Option<bool>);

impl PathKinds for Tree<'_> {
    fn symlink(&self, p: &[u8]) -> Option<Vec<u8>> {
        self.0.get(p).map(|t| t.to_vec())
    }
    fn is_dir(&self, p: &[u8]) -> Option<bool> {
        (self.1)(p)
    }
}

#[test]
fn resolving_parents_follows_symlinks_inside_the_root() {
    let links: HashMap<&[u8], &[u8]> = [
        (&b"bin"[..], &b"usr/bin"[..]),
        (b"abs", b"/usr/lib/"),
        (b"up", b"../../.."),
        (b"usr/bin/sib", b"../lib"),
        (b"loop", b"loop"),
    ]
    .into();
    // Every other path a directory.
    let tree = Tree(links, |_| Some(true));
    let resolve = |p: &str| resolve_parents(p.as_bytes(), &tree, Walk::Make);
    let path = |p: &str| String::from_utf8(resolve(p).unwrap().path).unwrap();
    assert_eq!(path("bin/tool"), "usr/bin/tool");
    assert_eq!(path("bin"), "bin"); // the last component is not followed
    assert_eq!(path("abs/x"), "usr/lib/x");
    assert_eq!(path("up/etc/passwd"), "etc/passwd"); // `..` stops at the root
    assert_eq!(path("bin/sib/x"), "usr/lib/x"); // a chain
    assert_eq!(path("a/b/c"), "a/b/c");
    assert!(resolve("bin/sib/x").unwrap().reachable());
    assert!(matches!(resolve("loop/x"), Err(Error::Archive { .. })));
}

#[test]
fn dot_dot_in_a_link_target_steps_out_of_a_directory_that_must_be_there() {
    let links: HashMap<&[u8], &[u8]> = [
        (&b"via-file"[..], &b"file/../y"[..]),
        (b"via-gone", b"gone/../y"),
        (b"via-dir", b"d/../y"),
    ]
    .into();
    let kinds = |p: &[u8]| match p {
        b"file" => Some(false),
        b"d" => Some(true),
        _ => None,
    };
    let tree = Tree(links, kinds);
    let through_file = resolve_parents(b"via-file/x", &tree, Walk::Make).unwrap();
    assert!(through_file.through_file && !through_file.reachable());
    let through_gone = resolve_parents(b"via-gone/x", &tree, Walk::Make).unwrap();
    assert_eq!(through_gone.missing, [b"gone".to_vec()]);
    assert_eq!(through_gone.path, b"y/x");
    let through_dir = resolve_parents(b"via-dir/x", &tree, Walk::Make).unwrap();
    assert!(through_dir.reachable() && through_dir.path == b"y/x");
    // A lookup stops at the first directory on the way that is not there, before any loop.
    let looping: HashMap<&[u8], &[u8]> = [(&b"a/c"[..], &b"b/../c"[..])].into();
    let tree = Tree(looping, kinds);
    assert!(resolve_parents(b"a/c/x", &tree, Walk::Make).is_err());
    let lookup = resolve_parents(b"a/c/x", &tree, Walk::Lookup).unwrap();
    assert!(!lookup.reachable());
}

#[test]
fn paths_through_symlinked_directories_go_where_apply_puts_them() {
    // Merged /usr: the range writes bin/tool through the symlink bin -> usr/bin.
    let usr = vec![dir("usr"), dir("usr/bin"), file("usr/bin/sh", 0, 0)];
    let s = squash(
        &[],
        &[
            usr.clone(),
            vec![symlink("bin", "usr/bin")],
            vec![file("bin/tool", 2, 0)],
        ],
    );
    assert_eq!(
        paths(&s).0,
        ["bin", "usr", "usr/bin", "usr/bin/sh", "usr/bin/tool"]
    );
    // The same with the symlink below the range.
    let lower = vec![[usr, vec![symlink("bin", "/usr/bin")]].concat()];
    let s = squash(&lower, &[vec![file("bin/tool", 0, 0)]]);
    assert_eq!(paths(&s).0, ["usr/bin/tool"]);
    // A whiteout or an opaque marker under a symlinked directory hides what is behind it.
    let lower = vec![vec![
        dir("real"),
        file("real/x", 9, 0),
        symlink("lnk", "real"),
    ]];
    let s = squash(&lower, &[vec![wh("lnk/x")]]);
    assert_eq!(paths(&s), (vec![], vec!["real/x".into()], vec![]));
    let s = squash(&lower, &[vec![opq("lnk")]]);
    assert_eq!(paths(&s), (vec![], vec!["real/x".into()], vec![]));
    let s = squash(&[], &[lower[0].clone(), vec![wh("lnk/x")]]);
    assert_eq!(paths(&s).0, ["lnk", "real"]);
}

#[test]
fn a_path_below_a_file_is_refused_as_apply_refuses_it() {
    let below_file = |r: Result<Squashed>| match r {
        Err(Error::Archive { entry, reason }) => {
            assert_eq!(
                (entry.as_str(), reason.as_str()),
                ("a/b", "Not a directory")
            );
        }
        other => panic!("{other:?}"),
    };
    // The file in the same layer, in an earlier one of the range, or below the range.
    below_file(try_squash(&[], &[vec![file("a", 0, 0), file("a/b", 0, 1)]]));
    below_file(try_squash(
        &[],
        &[vec![file("a", 0, 0)], vec![file("a/b", 1, 0)]],
    ));
    below_file(try_squash(
        &[vec![file("a", 9, 0)]],
        &[vec![file("a/b", 0, 0)]],
    ));
    // A whiteout of the file read after the path: the path is refused, as apply refuses it.
    below_file(try_squash(
        &[vec![file("a", 9, 0)]],
        &[vec![file("a/b", 0, 0), wh("a")]],
    ));
    // Read before it, the whiteout is carried out first: the path goes into a directory made
    // for it, as it does in the next layer.
    let s = squash(
        &[vec![file("a", 9, 0)]],
        &[vec![wh("a"), file("a/b", 0, 0)]],
    );
    assert_eq!(paths(&s).0, ["a", "a/b"]);
    let s = squash(
        &[vec![file("a", 9, 0)]],
        &[vec![wh("a")], vec![file("a/b", 1, 0)]],
    );
    assert_eq!(paths(&s).0, ["a", "a/b"]);
    // A directory put in place of the file first is a directory.
    squash(
        &[vec![file("a", 9, 0)]],
        &[vec![dir("a"), file("a/b", 0, 0)]],
    );
}

#[test]
fn a_hardlink_to_a_lower_file_replaced_in_the_range_is_refused() {
    let lower = vec![vec![file("a", 9, 0)]];
    let link = vec![Op::Link(b"b".to_vec(), b"a".to_vec())];
    // Applied in order b keeps the lower a's content, which the range does not hold.
    for later in [file("a", 1, 0), wh("a")] {
        match try_squash(&lower, &[link.clone(), vec![later]]) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("b is a hardlink to a"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    // Left alone, the link stays a link to the lower file.
    let s = squash(&lower, &[link.clone(), vec![file("c", 1, 0)]]);
    assert_eq!(
        s.records[&Key(b"b".to_vec())].kind,
        Kind::LinkToLower(b"a".to_vec())
    );
}

#[test]
fn a_hardlink_to_a_directory_is_refused_as_apply_refuses_it() {
    let range = vec![
        vec![dir("dd"), file("dd/x", 0, 0)],
        vec![Op::Link(b"hd".to_vec(), b"dd".to_vec())],
    ];
    match try_squash(&[], &range) {
        Err(Error::Archive { entry, reason }) => {
            assert_eq!(
                (entry.as_str(), reason.as_str()),
                ("hd", "hardlink to a directory")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn whiteouts_survive_only_where_they_hide_something_below() {
    let base = vec![vec![dir("a"), file("a/x", 9, 0), file("keep", 9, 1)]];
    // Added then deleted inside the range: nothing left, no whiteout needed.
    let s = squash(&base, &[vec![file("tmp", 0, 0)], vec![wh("tmp")]]);
    assert_eq!(paths(&s), (vec![], vec![], vec![]));
    // Deleting a lower file: the whiteout stays.
    let s = squash(&base, &[vec![wh("a/x")], vec![file("b", 1, 0)]]);
    assert_eq!(paths(&s), (vec!["b".into()], vec!["a/x".into()], vec![]));
    // Nested redundant whiteouts fold into the outer one.
    let s = squash(&base, &[vec![wh("a/x")], vec![wh("a")]]);
    assert_eq!(paths(&s), (vec![], vec!["a".into()], vec![]));
    // Deleted then recreated as a directory: an opaque directory.
    let s = squash(&base, &[vec![wh("a")], vec![dir("a"), file("a/y", 1, 1)]]);
    assert_eq!(
        paths(&s),
        (vec!["a".into(), "a/y".into()], vec![], vec!["a".into()])
    );
    // Squashing everything: no whiteouts at all.
    let s = squash(&[], &[base[0].clone(), vec![wh("a")]]);
    assert_eq!(paths(&s), (vec!["keep".into()], vec![], vec![]));
}

#[test]
fn opaque_folds_and_keeps_the_same_layers_entries() {
    let base = vec![vec![dir("d"), file("d/old", 9, 0)]];
    let s = squash(
        &base,
        &[
            vec![file("d/mid", 0, 0)],
            vec![dir("d"), file("d/new", 1, 0), opq("d")],
        ],
    );
    // The opaque marker becomes a whiteout of each lower child it hid.
    assert_eq!(
        paths(&s),
        (
            vec!["d".into(), "d/new".into()],
            vec!["d/old".into()],
            vec![]
        )
    );
}

#[test]
fn last_writer_wins_and_hardlinks_keep_their_content() {
    let s = squash(
        &[],
        &[
            vec![file("a", 0, 0), Op::Link(b"b".to_vec(), b"a".to_vec())],
            vec![file("a", 1, 5)],
        ],
    );
    let get = |p: &str| s.records[&Key(p.as_bytes().to_vec())].kind.clone();
    assert_eq!(
        get("a"),
        Kind::File {
            layer: 1,
            offset: 5,
            size: 1
        }
    );
    assert_eq!(
        get("b"),
        Kind::File {
            layer: 0,
            offset: 0,
            size: 1
        }
    );
}

#[test]
fn file_over_directory_replaces_the_subtree() {
    let s = squash(
        &[],
        &[vec![dir("x"), file("x/in", 0, 1)], vec![file("x", 1, 0)]],
    );
    assert_eq!(paths(&s).0, vec!["x".to_string()]);
}

/// Real trees → real layers → squash, compared with applying the layers one by one.
#[test]
fn squash_applies_like_the_layers_in_order() {
    use crate::apply::{ApplyOptions, apply_layer};
    use crate::diff::{DiffOptions, diff_dirs, full_tree};
    use crate::layer::write_layer_file;
    use std::fs;

    let t = tempfile::tempdir().unwrap();
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    let blobs = t.path().join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    fs::create_dir_all(a.join("etc/sub")).unwrap();
    fs::write(a.join("etc/keep"), b"keep").unwrap();
    fs::write(a.join("etc/sub/gone"), b"gone").unwrap();
    fs::write(a.join("big"), vec![5u8; 300_000]).unwrap();
    fs::hard_link(a.join("big"), a.join("big-link")).unwrap();
    fs::create_dir_all(a.join("d")).unwrap();
    fs::write(a.join("d/old"), b"old").unwrap();
    // Hardlinked symlinks and FIFOs: one inode each, as for files.
    std::os::unix::fs::symlink("etc/keep", a.join("sl")).unwrap();
    fs::hard_link(a.join("sl"), a.join("sl2")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        a.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    fs::hard_link(a.join("pipe"), a.join("pipe2")).unwrap();
    let copy = |from: &Path, to: &Path| {
        assert!(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(from)
                .arg(to)
                .status()
                .unwrap()
                .success()
        );
    };
    copy(&a, &b);
    fs::remove_dir_all(b.join("etc/sub")).unwrap();
    fs::write(b.join("new"), b"new").unwrap();
    fs::remove_dir_all(b.join("d")).unwrap();
    fs::create_dir(b.join("d")).unwrap();
    fs::write(b.join("d/fresh"), b"fresh").unwrap();
    std::os::unix::fs::symlink("new", b.join("b-sl")).unwrap();
    fs::hard_link(b.join("b-sl"), b.join("b-sl2")).unwrap();
    copy(&b, &c);
    // One name of a linked symlink made anew: the set breaks.
    fs::remove_file(c.join("sl")).unwrap();
    std::os::unix::fs::symlink("etc/other", c.join("sl")).unwrap();
    fs::remove_file(c.join("new")).unwrap();
    fs::write(c.join("big"), b"rewritten").unwrap();
    std::os::unix::fs::symlink("etc/keep", c.join("link")).unwrap();

    let opts = LayerOptions {
        compression: crate::compress::Compression::Gzip { level: 1 },
        ..LayerOptions::default()
    };
    let l1 = write_layer_file(&a, &full_tree(&a, &NEVER).unwrap(), &opts, &blobs).unwrap();
    let l2 = write_layer_file(
        &b,
        &diff_dirs(&a, &b, &DiffOptions::default()).unwrap(),
        &opts,
        &blobs,
    )
    .unwrap();
    let l3 = write_layer_file(
        &c,
        &diff_dirs(&b, &c, &DiffOptions::default()).unwrap(),
        &opts,
        &blobs,
    )
    .unwrap();
    let paths: Vec<PathBuf> = [&l1, &l2, &l3]
        .iter()
        .map(|l| l.path.clone().unwrap())
        .collect();

    let apply_all = |dir: &Path, layers: &[PathBuf]| {
        let root = crate::root::Root::open(dir).unwrap();
        for l in layers {
            apply_layer(
                &root,
                File::open(l).unwrap(),
                &ApplyOptions::default(),
                &NEVER,
            )
            .unwrap();
        }
    };
    let snapshot = |dir: &Path| -> Vec<String> {
        crate::walk::walk(dir)
            .unwrap()
            .into_iter()
            .map(|e| {
                let content = if e.kind == crate::entry::Kind::File {
                    fs::read(dir.join(crate::entry::os_path(&e.path))).unwrap()
                } else {
                    Vec::new()
                };
                let mtime = if e.kind == crate::entry::Kind::Dir {
                    Default::default()
                } else {
                    e.mtime
                };
                format!(
                    "{:?} {:?} {:o} {} {} {:?} {:?} {} {:?}",
                    String::from_utf8_lossy(&e.path),
                    e.kind,
                    e.mode,
                    e.uid,
                    e.gid,
                    e.link_target,
                    mtime,
                    e.nlink,
                    blake3::hash(&content)
                )
            })
            .collect()
    };
    let sequential = t.path().join("seq");
    apply_all(&sequential, &paths);
    assert_eq!(snapshot(&sequential), snapshot(&c));
    let nlink = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(sequential.join(p)).unwrap().nlink()
    };
    assert_eq!(
        ["sl", "sl2", "pipe", "pipe2", "b-sl", "b-sl2"].map(nlink),
        [1, 1, 2, 2, 2, 2]
    );

    // All three into one.
    let all = squash_files(&[], &paths, &opts, &blobs, &NEVER).unwrap();
    let out = t.path().join("all");
    apply_all(&out, &[all.path.clone().unwrap()]);
    assert_eq!(snapshot(&out), snapshot(&sequential));

    // The last two on top of the first.
    let top = squash_files(&paths[..1], &paths[1..], &opts, &blobs, &NEVER).unwrap();
    let out = t.path().join("top");
    apply_all(&out, &[paths[0].clone(), top.path.clone().unwrap()]);
    assert_eq!(snapshot(&out), snapshot(&sequential));

    // Deterministic: the same squash gives the same bytes.
    let again = squash_files(&[], &paths, &opts, &blobs, &NEVER).unwrap();
    assert_eq!(again.digest, all.digest);
}

/// A plain tar by GNU tar of files `name` (70,000 times `byte`), given the names backwards so
/// the entries are not in path order.
fn backwards_tar(dir: &Path, files: &[(&str, u8)]) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    for (name, byte) in files {
        std::fs::write(src.join(name), vec![*byte; 70_000]).unwrap();
    }
    gnu_tar(
        &src,
        &dir.join("layer.tar"),
        files.iter().rev().map(|(name, _)| *name),
    )
}

/// `tar -cf layer -C src names...`, GNU tar's archive of `names` in that order.
fn gnu_tar<'a>(src: &Path, layer: &Path, names: impl IntoIterator<Item = &'a str>) -> PathBuf {
    let ok = std::process::Command::new("tar")
        .arg("-cf")
        .arg(layer)
        .arg("-C")
        .arg(src)
        .args(names)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    layer.to_path_buf()
}

/// A layer whose entries are not in path order (GNU tar given the names backwards) is squashed
/// correctly: its contents are read from a spool instead of the stream.
#[test]
fn unsorted_layers_squash_correctly() {
    use std::fs;
    let t = tempfile::tempdir().unwrap();
    let layer = backwards_tar(t.path(), &[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
    let blobs = t.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let opts = LayerOptions::default();
    let info = squash_files(&[], &[layer], &opts, &blobs, &NEVER).unwrap();
    let out = t.path().join("out");
    let root = crate::root::Root::open(&out).unwrap();
    crate::apply::apply_layer(
        &root,
        File::open(info.path.unwrap()).unwrap(),
        &crate::apply::ApplyOptions::default(),
        &NEVER,
    )
    .unwrap();
    for (name, byte) in [("a", 1u8), ("b", 2), ("c", 3), ("d", 4)] {
        assert_eq!(
            fs::read(out.join(name)).unwrap(),
            vec![byte; 70_000],
            "{name}"
        );
    }
}

/// `cp -a from to`.
fn cp_a(from: &Path, to: &Path) {
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status();
    assert!(cp.unwrap().success());
}

/// `count` files `fNN` of 100,000 bytes in `dir`: text-like runs mixed with pseudo-random
/// bytes from `seed`, compressible but not trivially.
fn varied_files(dir: &Path, count: usize, seed: u64) {
    let mut x = seed;
    for i in 0..count {
        let data: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 4 == 0 {
                    b'a' + (x % 26) as u8
                } else {
                    (x >> 8) as u8
                }
            })
            .collect();
        std::fs::write(dir.join(format!("f{i:02}")), data).unwrap();
    }
}

#[test]
fn squash_takes_members_of_its_sources_and_writes_the_same_bytes() {
    use crate::compress::Compression;
    use crate::diff::{DiffOptions, diff_dirs, full_tree};
    use crate::layer::write_layer_file;
    use crate::members::MemberIndex;
    use std::fs;
    use std::sync::Arc;

    let t = tempfile::tempdir().unwrap();
    let (a, b, blobs) = (
        t.path().join("a"),
        t.path().join("b"),
        t.path().join("blobs"),
    );
    fs::create_dir_all(a.join("usr/lib")).unwrap();
    fs::create_dir_all(&blobs).unwrap();
    // Several MiB of varied contents under usr/, so the layer has many members.
    varied_files(&a.join("usr/lib"), 64, 7);
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&a)
            .arg(&b)
            .status()
            .unwrap()
            .success()
    );
    fs::create_dir(b.join("etc")).unwrap();
    fs::write(b.join("etc/conf"), b"x=1\n").unwrap();
    fs::write(b.join("aaa"), b"before usr in the squashed order").unwrap();

    let gzip = LayerOptions {
        compression: Compression::Gzip { level: 1 },
        ..LayerOptions::default()
    };
    let l1 = write_layer_file(&a, &full_tree(&a, &NEVER).unwrap(), &gzip, &blobs).unwrap();
    let l2 = write_layer_file(
        &b,
        &diff_dirs(&a, &b, &DiffOptions::default()).unwrap(),
        &gzip,
        &blobs,
    )
    .unwrap();
    let range = [l1.path.clone().unwrap(), l2.path.clone().unwrap()];

    let out_plain = t.path().join("plain");
    let out_reuse = t.path().join("reuse");
    fs::create_dir_all(&out_plain).unwrap();
    fs::create_dir_all(&out_reuse).unwrap();
    // An empty index: nothing to take, everything compressed.
    let plain = LayerOptions {
        reuse: Some(Arc::new(MemberIndex::new(1))),
        ..gzip.clone()
    };
    let p = squash_files(&[], &range, &plain, &out_plain, &NEVER).unwrap();
    let mut index = MemberIndex::new(1);
    for r in &range {
        index.add_blob(r).unwrap();
    }
    let index = Arc::new(index);
    let with = LayerOptions {
        reuse: Some(index.clone()),
        ..gzip.clone()
    };
    let r = squash_files(&[], &range, &with, &out_reuse, &NEVER).unwrap();
    assert_eq!(p.digest, r.digest);
    assert_eq!(p.diff_id, r.diff_id);
    assert!(
        fs::read(p.path.unwrap()).unwrap() == fs::read(r.path.unwrap()).unwrap(),
        "same bytes"
    );
    // Most of the result is usr/, taken whole from the first layer.
    assert!(index.hits() >= 4, "{} members taken", index.hits());
}

/// Two gzip layers written by us: many members of `usr/` in the first, a few changes on top.
fn two_gzip_layers(t: &Path) -> (Vec<PathBuf>, LayerOptions) {
    use crate::compress::Compression;
    use crate::diff::{DiffOptions, diff_dirs, full_tree};
    use crate::layer::write_layer_file;
    use std::fs;
    let (a, b, blobs) = (t.join("a"), t.join("b"), t.join("blobs"));
    fs::create_dir_all(a.join("usr/lib")).unwrap();
    fs::create_dir_all(&blobs).unwrap();
    varied_files(&a.join("usr/lib"), 24, 11);
    cp_a(&a, &b);
    fs::create_dir(b.join("etc")).unwrap();
    fs::write(b.join("etc/conf"), b"x=1\n").unwrap();
    fs::remove_file(b.join("usr/lib/f03")).unwrap();
    fs::write(b.join("usr/lib/f07"), b"replaced").unwrap();
    let gzip = LayerOptions {
        compression: Compression::Gzip { level: 1 },
        ..LayerOptions::default()
    };
    let l1 = write_layer_file(&a, &full_tree(&a, &NEVER).unwrap(), &gzip, &blobs).unwrap();
    let changes = diff_dirs(&a, &b, &DiffOptions::default()).unwrap();
    let l2 = write_layer_file(&b, &changes, &gzip, &blobs).unwrap();
    (vec![l1.path.unwrap(), l2.path.unwrap()], gzip)
}

fn identity(p: &Path) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn indexed_squash_gives_the_same_bytes_and_shrugs_off_wrong_indexes() {
    use crate::squash_index::{LayerIndex, encode, load};
    use std::fs;
    let t = tempfile::tempdir().unwrap();
    let (range, opts) = two_gzip_layers(t.path());
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    let never = &NEVER;
    let plain = squash_files(&[], &range, &opts, &out, never).unwrap();
    let expected = fs::read(plain.path.as_ref().unwrap()).unwrap();
    let idx: Vec<PathBuf> = ["i/one", "i/two"]
        .iter()
        .map(|n| t.path().join(n))
        .collect();
    let squash = || {
        let info = squash_files_indexed(&[], &range, &idx, &opts, &out, never).unwrap();
        assert_eq!(info.diff_id, plain.diff_id);
        assert!(
            fs::read(info.path.unwrap()).unwrap() == expected,
            "same bytes"
        );
    };

    // The first squash reads the layers and writes their indexes; the next uses them as they
    // are (a stale one would have been replaced by a new file).
    squash();
    let written: Vec<LayerIndex> = idx
        .iter()
        .enumerate()
        .map(|(i, p)| load(p, i).unwrap())
        .collect();
    assert!(!written[0].members.is_empty());
    let before: Vec<_> = idx.iter().map(|p| identity(p)).collect();
    squash();
    assert_eq!(idx.iter().map(|p| identity(p)).collect::<Vec<_>>(), before);

    // Wrong indexes of every kind give the same bytes, and are replaced by right ones.
    let check_rewritten = |what: &str| {
        if idx.iter().any(|p| !p.exists()) {
            squash(); // a removed index is written again by the next squash
        }
        for (i, p) in idx.iter().enumerate() {
            assert_eq!(load(p, i).as_ref(), Some(&written[i]), "{what}: index {i}");
        }
    };
    let (one, two) = (fs::read(&idx[0]).unwrap(), fs::read(&idx[1]).unwrap());
    fs::write(&idx[0], &two).unwrap();
    fs::write(&idx[1], &one).unwrap();
    squash();
    check_rewritten("swapped");

    let mut changed = written[0].clone();
    if let Some(Op::Put(_, r)) = changed
        .ops
        .iter_mut()
        .rev()
        .find(|o| matches!(o, Op::Put(..)))
    {
        r.mode ^= 0o100;
    }
    fs::write(&idx[0], encode(&changed)).unwrap();
    squash();
    check_rewritten("an entry's mode");

    let mut fewer = written[1].clone();
    fewer.ops.pop();
    fs::write(&idx[1], encode(&fewer)).unwrap();
    squash();
    check_rewritten("an entry missing");

    let mut moved = written[0].clone();
    moved.members[1].offset += 1;
    fs::write(&idx[0], encode(&moved)).unwrap();
    squash();
    check_rewritten("a member's place");

    let mut lying = written[0].clone();
    let (a, b) = (lying.members[0].clone(), lying.members[1].clone());
    (lying.members[0].key, lying.members[0].size) = (b.key, b.size);
    (lying.members[1].key, lying.members[1].size) = (a.key, a.size);
    fs::write(&idx[0], encode(&lying)).unwrap();
    squash(); // never taken: their CRC-32s do not match the bytes they were offered for
    check_rewritten("members' keys");

    fs::write(&idx[1], &one[..one.len() / 2]).unwrap();
    squash();
    check_rewritten("a truncated file");
}

#[test]
fn a_layer_damaged_after_its_archive_fails_the_squash_with_or_without_its_index() {
    use std::fs;
    let t = tempfile::tempdir().unwrap();
    let (range, opts) = two_gzip_layers(t.path());
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    let idx: Vec<PathBuf> = ["i/one", "i/two"]
        .iter()
        .map(|n| t.path().join(n))
        .collect();
    // Indexes written from the intact layers, then the last member's CRC of the top one
    // damaged: it comes after the archive's end, which both passes would stop at.
    squash_files_indexed(&[], &range, &idx, &opts, &out, &NEVER).unwrap();
    let mut top = fs::read(&range[1]).unwrap();
    let crc = top.len() - 6;
    top[crc] ^= 0x01;
    fs::write(&range[1], &top).unwrap();
    for indexed in [true, false] {
        let res = if indexed {
            squash_files_indexed(&[], &range, &idx, &opts, &out, &NEVER)
        } else {
            squash_files(&[], &range, &opts, &out, &NEVER)
        };
        let err = res.expect_err(&format!("indexed: {indexed}")).to_string();
        assert!(err.contains("checksum"), "indexed: {indexed}: {err}");
    }
}

#[test]
fn indexed_squash_of_an_unsorted_layer_falls_back_and_stays_right() {
    use std::fs;
    let t = tempfile::tempdir().unwrap();
    let layer = backwards_tar(t.path(), &[("a", 1), ("b", 2), ("c", 3)]);
    let blobs = t.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let opts = LayerOptions::default();
    let never = &NEVER;
    let plain = squash_files(&[], std::slice::from_ref(&layer), &opts, &blobs, never).unwrap();
    let idx = [t.path().join("idx")];
    for _ in 0..2 {
        let info = squash_files_indexed(
            &[],
            std::slice::from_ref(&layer),
            &idx,
            &opts,
            &blobs,
            never,
        )
        .unwrap();
        assert_eq!(info.digest, plain.digest);
        // Its contents are not in path order: no index is kept for it, to be found stale.
        assert!(!idx[0].exists());
    }
}

#[test]
fn contents_are_in_path_order_when_pass_2_reads_the_layer_forward() {
    let ops = |files: &[(&str, u64)]| -> Vec<Op> {
        files.iter().map(|&(p, off)| file(p, 0, off)).collect()
    };
    assert!(contents_in_path_order(
        &ops(&[("a", 1), ("b", 2), ("c/d", 3)]),
        0
    ));
    assert!(!contents_in_path_order(
        &ops(&[("c", 1), ("b", 2), ("a", 3)]),
        0
    ));
    // The same content at two paths: the second is a hardlink to the first, read once.
    assert!(contents_in_path_order(
        &ops(&[("a", 1), ("x", 1), ("b", 2)]),
        0
    ));
    // Taken first at a path after one whose content lies later: read out of order.
    assert!(!contents_in_path_order(&ops(&[("z", 1), ("b", 2)]), 0));
    // Only what a path holds at the end of the layer is read.
    assert!(!contents_in_path_order(
        &ops(&[("a", 2), ("a", 3), ("b", 1)]),
        0
    ));
    assert!(!contents_in_path_order(
        &ops(&[("a", 1), ("b", 2), ("b", 3), ("a", 4)]),
        0
    ));
    assert!(contents_in_path_order(
        &ops(&[("b", 1), ("a", 2), ("b", 3)]),
        0
    ));
    // Other layers' contents and other kinds do not count.
    let mut mixed = ops(&[("a", 1), ("b", 2)]);
    mixed.push(file("0", 1, 9));
    mixed.push(dir("c"));
    assert!(contents_in_path_order(&mixed, 0));
}

/// The index a layer's writer leaves is the one squash would make by reading the layer, for
/// every compression, with long names, xattrs, links and whiteouts in it.
#[test]
fn a_written_layer_leaves_the_index_reading_it_gives() {
    use crate::compress::Compression;
    use crate::diff::{DiffOptions, diff_dirs, full_tree};
    use crate::layer::write_layer_file;
    use crate::squash_index::load;
    use std::fs;
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let deep = format!("d/{}/{}", "x".repeat(120), "y".repeat(120));
    fs::create_dir_all(a.join(&deep)).unwrap();
    fs::create_dir_all(a.join("gone/sub")).unwrap();
    fs::write(a.join(format!("{deep}/file")), vec![3u8; 300_000]).unwrap();
    fs::write(a.join("gone/sub/f"), b"x").unwrap();
    fs::write(a.join("big"), vec![9u8; 2_500_000]).unwrap();
    cp_a(&a, &b);
    fs::remove_dir_all(b.join("gone")).unwrap();
    fs::write(b.join("new"), b"new").unwrap();
    fs::hard_link(b.join("new"), b.join("new-link")).unwrap();
    symlink("/etc/passwd", b.join("sym")).unwrap();
    let _ = xattr_set(&b.join("new"), "user.note", b"\xffvalue");
    for compression in [
        Compression::Gzip { level: 1 },
        Compression::Zstd { level: 3 },
        Compression::None,
    ] {
        let out = t.path().join(format!("out-{compression:?}"));
        let idx = out.join("index");
        fs::create_dir_all(&out).unwrap();
        let opts = LayerOptions {
            compression,
            index_dir: Some(idx.clone()),
            ..LayerOptions::default()
        };
        let l1 = write_layer_file(&a, &full_tree(&a, &NEVER).unwrap(), &opts, &out).unwrap();
        let changes = diff_dirs(&a, &b, &DiffOptions::default()).unwrap();
        let l2 = write_layer_file(&b, &changes, &opts, &out).unwrap();
        for info in [l1, l2] {
            let hex = info.digest.strip_prefix("sha256:").unwrap();
            let written = load(&idx.join(hex), 0).expect("an index was written");
            let (ops, seen) = layer_ops(info.path.as_ref().unwrap(), 0, true, &NEVER).unwrap();
            assert_eq!(written.ops, ops, "{compression:?}");
            assert_eq!(written.members, seen.unwrap(), "{compression:?}");
            if matches!(compression, Compression::Gzip { .. }) {
                assert!(!written.members.is_empty());
            }
        }
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a live buffer for the duration of the call.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A member an index lent counts only if the layer, inflated, showed the same member there:
/// same place, length, size and content key.
#[test]
fn lent_members_must_be_what_the_layer_holds() {
    let seen = vec![
        MemberSeen {
            offset: 0,
            len: 100,
            head: None,
            key: [1; 16],
            size: 4096,
        },
        MemberSeen {
            offset: 100,
            len: 50,
            head: None,
            key: [2; 16],
            size: 2048,
        },
    ];
    let index = PathBuf::from("idx");
    let checked = vec![(Some(0), seen, index.clone())];
    assert!(check_taken(&[(0, 100, 50, [2; 16], 2048)], &checked).is_ok());
    // A blob read in pass 1 (not checked here) is not this function's concern.
    assert!(check_taken(&[(1, 7, 1, [9; 16], 1)], &checked).is_ok());
    for wrong in [
        (0, 101, 50, [2; 16], 2048), // place
        (0, 100, 51, [2; 16], 2048), // length
        (0, 100, 50, [3; 16], 2048), // content key
        (0, 100, 50, [2; 16], 2049), // size
    ] {
        assert!(
            matches!(check_taken(&[wrong], &checked), Err(Error::StaleIndex(p)) if p == index),
            "{wrong:?}"
        );
    }
}

/// A Ctrl-C while a large file is written into the squashed layer stops it there, not once
/// the file is whole; nothing is left in the blobs directory.
#[test]
fn a_cancel_stops_the_squash_inside_a_large_file() {
    use std::fs;
    use std::sync::Arc;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    // 256 MiB that compresses to nothing less (xorshift), so the output grows as it is read.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..(256usize << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    fs::write(src.join("big"), &data).unwrap();
    drop(data);
    let layer = gnu_tar(&src, &t.path().join("layer.tar"), ["big"]);
    fs::remove_file(src.join("big")).unwrap();
    let blobs = t.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let cancel = Arc::new(crate::cancel::Cancel::new());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (blobs, cancel, done) = (blobs.clone(), cancel.clone(), done.clone());
        std::thread::spawn(move || {
            // As a Ctrl-C once 16 MiB of the file are out; then the most it ever held.
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let written: u64 = fs::read_dir(&blobs)
                    .unwrap()
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum();
                most = most.max(written);
                if written > 16 << 20 {
                    cancel.cancel();
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            most
        })
    };
    let opts = LayerOptions {
        compression: crate::compress::Compression::None,
        ..LayerOptions::default()
    };
    let res = squash_files(&[], &[layer], &opts, &blobs, &cancel);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    assert!(matches!(res, Err(Error::Interrupted)), "{res:?}");
    assert!(most < 128 << 20, "{most} bytes written before it stopped");
    assert_eq!(fs::read_dir(&blobs).unwrap().count(), 0, "left in blobs/");
}

#[test]
fn the_directory_two_paths_share() {
    for (a, b, want) in [
        (&b"a/b/c"[..], &b"a/b/d"[..], &b"a/b"[..]),
        (b"a/b", b"a/b", b"a/b"),
        (b"a/b", b"a/b/c/d", b"a/b"),
        (b"a/b/c/d", b"a/b", b"a/b"),
        (b"a/bc", b"a/b", b"a"),
        (b"a/b", b"a/bc/d", b"a"),
        (b"ab", b"a", b""),
        (b"", b"a/b", b""),
        (b"x", b"y", b""),
    ] {
        assert_eq!(crate::entry::common_dir(a, b), want, "{a:?} {b:?}");
    }
}
