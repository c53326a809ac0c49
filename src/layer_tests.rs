//! Tests of `layer`.

use super::*;
use crate::entry::{Entry, Timestamp};
use crate::walk::NO_OPENAT2;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::Ordering;

/// An entry for `rel` below `root`, as a walk would report it.
fn stat(root: &Path, rel: &[u8]) -> Entry {
    let md = std::fs::symlink_metadata(root.join(os_path(rel))).unwrap();
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else {
        Kind::File
    };
    let link_target = if kind == Kind::Symlink {
        std::fs::read_link(root.join(os_path(rel)))
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec()
    } else {
        Vec::new()
    };
    Entry {
        path: rel.to_vec(),
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: Timestamp {
            sec: md.mtime(),
            nsec: md.mtime_nsec() as u32,
        },
        size: if kind == Kind::File { md.size() } else { 0 },
        xattrs: Vec::new(),
        link_target,
        rdev_major: rustix::fs::major(md.rdev()),
        rdev_minor: rustix::fs::minor(md.rdev()),
        dev: md.dev(),
        ino: md.ino(),
        nlink: md.nlink(),
    }
}

fn added(e: Entry) -> Change {
    Change {
        kind: ChangeKind::Added,
        path: e.path.clone(),
        entry: Some(e),
        opaque: false,
    }
}

fn deleted(p: &[u8]) -> Change {
    Change {
        kind: ChangeKind::Deleted,
        path: p.to_vec(),
        entry: None,
        opaque: false,
    }
}

/// A hand-made entry (no file behind it).
fn entry(path: &[u8], kind: Kind) -> Entry {
    Entry {
        path: path.to_vec(),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: Timestamp {
            sec: 1_700_000_000,
            nsec: 0,
        },
        size: 0,
        xattrs: Vec::new(),
        link_target: Vec::new(),
        rdev_major: 0,
        rdev_minor: 0,
        dev: 1,
        ino: 0,
        nlink: 1,
    }
}

fn sorted(mut v: Vec<Change>) -> Vec<Change> {
    v.sort_by(|a, b| cmp_paths(&a.path, &b.path));
    v
}

/// The tar paths `plan` gives for `changes`.
fn planned(changes: &[Change]) -> Vec<String> {
    let (ops, _) = plan(Path::new("/up"), changes).unwrap();
    ops.iter()
        .map(|op| match *op {
            Op::Entry(i) => String::from_utf8_lossy(&changes[i].path).into_owned(),
            Op::Link(i, t) => format!(
                "{} => {}",
                String::from_utf8_lossy(&changes[i].path),
                String::from_utf8_lossy(&changes[t].path)
            ),
            Op::Whiteout(i) => {
                let p = &changes[i].path;
                let (d, n) = (parent(p), &p[p.len() - name_len(p)..]);
                String::from_utf8_lossy(&crate::entry::join(d, &[b".wh.", n].concat())).into_owned()
            }
            Op::Opaque(i) => {
                format!("{}/.wh..wh..opq", String::from_utf8_lossy(&changes[i].path))
            }
        })
        .collect()
}

#[test]
fn whiteouts_and_opaque_markers_come_before_siblings() {
    let mut opq = added(entry(b"b", Kind::Dir));
    opq.opaque = true;
    let changes = sorted(vec![
        added(entry(b"a", Kind::Dir)),
        added(entry(b"a/a1", Kind::File)),
        deleted(b"a/z"),
        deleted(b"a/b"),
        added(entry(b"a/c", Kind::Dir)),
        deleted(b"a/c/x"),
        added(entry(b"a/c/y", Kind::File)),
        opq,
        added(entry(b"b/k", Kind::File)),
        deleted(b"c"),
        // No change for "d" or "d/e": the whiteout still goes before its siblings.
        added(entry(b"d/e/f", Kind::File)),
        deleted(b"d/e/g"),
        added(entry(b"d/h", Kind::File)),
        deleted(b"d/0"),
        added(entry(b"a-b", Kind::File)),
    ]);
    assert_eq!(
        planned(&changes),
        [
            ".wh.c",
            "a",
            ".wh.b",
            "a/.wh.z",
            "a/a1",
            "a/c",
            "a/c/.wh.x",
            "a/c/y",
            "a-b",
            "b",
            "b/.wh..wh..opq",
            "b/k",
            "d/.wh.0",
            "d/e/.wh.g",
            "d/e/f",
            "d/h",
        ]
        .map(|s| s.replace(".wh.b", "a/.wh.b"))
    );
}

#[test]
fn plan_checks_its_input() {
    let up = Path::new("/up");
    let bad = |c: Vec<Change>| plan(up, &c).unwrap_err();
    assert!(matches!(
        bad(vec![
            added(entry(b"b", Kind::Dir)),
            added(entry(b"a", Kind::Dir))
        ]),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        bad(vec![deleted(b"a"), deleted(b"a")]),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        bad(vec![deleted(b"a"), added(entry(b"a/b", Kind::File))]),
        Error::InvalidArgument(_)
    ));
    let mut opaque_file = added(entry(b"f", Kind::File));
    opaque_file.opaque = true;
    assert!(matches!(bad(vec![opaque_file]), Error::InvalidArgument(_)));
    match bad(vec![
        added(entry(b"x", Kind::Dir)),
        added(entry(b"x/.wh.y", Kind::File)),
    ]) {
        Error::ReservedName { path } => assert_eq!(path, Path::new("/up/x/.wh.y")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        bad(vec![deleted(b".wh..wh..opq")]),
        Error::ReservedName { .. }
    ));
}

#[test]
fn hardlinks_point_at_the_first_path_and_sockets_are_left_out() {
    let mut f1 = entry(b"z", Kind::File);
    f1.nlink = 2;
    f1.ino = 42;
    let mut f2 = f1.clone();
    f2.path = b"a/x".to_vec();
    let changes = sorted(vec![
        added(entry(b"a", Kind::Dir)),
        added(f2),
        added(f1),
        added(entry(b"s", Kind::Socket)),
    ]);
    assert_eq!(planned(&changes), ["a", "a/x", "z => a/x"]);
    let (_, warnings) = plan(Path::new("/up"), &changes).unwrap();
    assert_eq!(warnings, ["s: socket not stored in the layer"]);
    // Symlinks, FIFOs and devices are linked the same way; directories never are.
    let linked = |path: &[u8], kind, ino| {
        let mut e = entry(path, kind);
        e.nlink = 2;
        e.ino = ino;
        added(e)
    };
    let changes = sorted(vec![
        linked(b"c1", Kind::CharDevice, 1),
        linked(b"c2", Kind::CharDevice, 1),
        linked(b"d1", Kind::Dir, 2),
        linked(b"f1", Kind::Fifo, 3),
        linked(b"f2", Kind::Fifo, 3),
        linked(b"l1", Kind::Symlink, 4),
        linked(b"l2", Kind::Symlink, 4),
    ]);
    assert_eq!(
        planned(&changes),
        ["c1", "c2 => c1", "d1", "f1", "f2 => f1", "l1", "l2 => l1"]
    );
    // A socket in place of what the lower had: that is whited out, before its siblings.
    let mut replaced = added(entry(b"a/r", Kind::Socket));
    replaced.kind = ChangeKind::Modified;
    let changes = sorted(vec![
        added(entry(b"a", Kind::Dir)),
        added(entry(b"a/b", Kind::File)),
        replaced,
    ]);
    assert_eq!(planned(&changes), ["a", "a/.wh.r", "a/b"]);
    let (_, warnings) = plan(Path::new("/up"), &changes).unwrap();
    assert_eq!(warnings, ["a/r: socket not stored in the layer"]);
}

#[test]
fn an_empty_xattr_value_is_kept_with_a_warning() {
    let mut f = entry(b"f", Kind::File);
    f.xattrs = vec![
        (b"user.empty".to_vec(), Vec::new()),
        (b"user.full".to_vec(), b"x".to_vec()),
    ];
    let (ops, warnings) = plan(Path::new("/up"), &[added(f)]).unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(
        warnings,
        [
            "f: xattr user.empty has an empty value, which tools reading layers with Go's tar \
          (docker, containerd, podman, umoci) drop"
        ]
    );
}

#[test]
fn an_xattr_name_no_pax_record_can_hold_is_refused_with_the_whole_path() {
    let mut f = entry(b"d/f", Kind::File);
    f.xattrs = vec![(b"user.a=b".to_vec(), b"v".to_vec())];
    let d = entry(b"d", Kind::Dir);
    let err = plan(Path::new("/up"), &[added(d), added(f)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid argument: /up/d/f: xattr name \"user.a=b\" cannot be stored in a PAX record"
    );
    // overlayfs' own are left out of a layer, whatever their names.
    let mut g = entry(b"g", Kind::File);
    g.xattrs = vec![(b"trusted.overlay.a=b".to_vec(), b"v".to_vec())];
    assert!(plan(Path::new("/up"), &[added(g)]).is_ok());
}

/// A small tree with one of everything a walk finds, and its changes.
fn tree() -> (tempfile::TempDir, Vec<Change>) {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir_all(r.join("etc/ssl")).unwrap();
    std::fs::write(r.join("etc/hostname"), b"box\n").unwrap();
    std::fs::write(
        r.join("etc/big"),
        (0..3_000_000u32)
            .map(|i| (i * 7 % 253) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::hard_link(r.join("etc/hostname"), r.join("etc/ssl/hostname-link")).unwrap();
    std::os::unix::fs::symlink(
        "../".repeat(60) + "usr/share/zoneinfo/UTC",
        r.join("etc/localtime"),
    )
    .unwrap();
    std::fs::write(r.join(os_path(b"etc/caf\xe9")), b"latin-1 name").unwrap();
    let long: Vec<u8> = [&b"etc/ssl/"[..], &[b'n'; 200]].concat();
    std::fs::write(r.join(os_path(&long)), b"long").unwrap();
    Command::new("mkfifo")
        .arg(r.join("etc/fifo"))
        .status()
        .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(r.join("etc/sock")).unwrap();
    let mut paths: Vec<Vec<u8>> = vec![
        b"etc".to_vec(),
        b"etc/big".to_vec(),
        b"etc/caf\xe9".to_vec(),
        b"etc/fifo".to_vec(),
        b"etc/hostname".to_vec(),
        b"etc/localtime".to_vec(),
        b"etc/sock".to_vec(),
        b"etc/ssl".to_vec(),
        b"etc/ssl/hostname-link".to_vec(),
        long,
    ];
    paths.sort_by(|a, b| cmp_paths(a, b));
    let mut changes: Vec<Change> = paths.iter().map(|p| added(stat(r, p))).collect();
    changes.push(deleted(b"etc/gone"));
    changes.push(deleted(b"var"));
    changes[0].opaque = true;
    (dir, sorted(changes))
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
    )
}

fn opts(compression: Compression, threads: usize) -> LayerOptions {
    LayerOptions {
        compression,
        threads,
        ..LayerOptions::default()
    }
}

#[test]
fn uncompressed_layer_reads_back_in_layer_order() {
    let (dir, changes) = tree();
    let blobs = tempfile::tempdir().unwrap();
    let info = write_layer_file(
        dir.path(),
        &changes,
        &opts(Compression::None, 2),
        blobs.path(),
    )
    .unwrap();
    let path = info.path.clone().unwrap();
    assert_eq!(info.digest, info.diff_id);
    assert_eq!(sha256sum(&path), info.digest);
    assert_eq!(path, blobs.path().join(&info.digest[7..]));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), info.tar_size);
    assert_eq!(info.size, info.tar_size);
    assert_eq!(info.warnings, ["etc/sock: socket not stored in the layer"]);
    assert_eq!(
        std::fs::read_dir(blobs.path()).unwrap().count(),
        1,
        "no temporary file left"
    );

    let data = std::fs::read(&path).unwrap();
    let mut ar = tar::Archive::new(&data[..]);
    let mut got = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        got.push((
            name,
            e.header().entry_type().as_byte() as char,
            content.len(),
            link,
        ));
    }
    let long = format!("etc/ssl/{}", "n".repeat(200));
    let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        names,
        [
            ".wh.var",
            "etc/",
            "etc/.wh..wh..opq",
            "etc/.wh.gone",
            "etc/big",
            "etc/caf\u{fffd}",
            "etc/fifo",
            "etc/hostname",
            "etc/localtime",
            "etc/ssl/",
            "etc/ssl/hostname-link",
            &long,
        ]
    );
    assert_eq!(got[4].2, 3_000_000);
    assert_eq!(got[10].1, '1');
    assert_eq!(got[10].3.as_deref(), Some("etc/hostname"));
    assert!(
        got[8]
            .3
            .as_ref()
            .unwrap()
            .ends_with("usr/share/zoneinfo/UTC")
    );

    let out = Command::new("tar").arg("-tvf").arg(&path).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compressed_layers_are_identical_across_thread_counts() {
    let (dir, changes) = tree();
    let plain = {
        let mut v = Vec::new();
        let info = write_layer(dir.path(), &changes, &opts(Compression::None, 1), &mut v).unwrap();
        (info, v)
    };
    for c in [
        Compression::Gzip { level: 5 },
        Compression::Zstd { level: 3 },
    ] {
        let mut first = None;
        for threads in [1, 2, 4] {
            let blobs = tempfile::tempdir().unwrap();
            let info =
                write_layer_file(dir.path(), &changes, &opts(c, threads), blobs.path()).unwrap();
            let path = info.path.clone().unwrap();
            assert_eq!(sha256sum(&path), info.digest);
            assert_eq!(info.diff_id, plain.0.diff_id);
            assert_eq!(info.tar_size, plain.0.tar_size);
            assert_eq!(info.media_type, c.media_type());
            let blob = std::fs::read(&path).unwrap();
            assert_eq!(blob.len() as u64, info.size);
            let tool = if matches!(c, Compression::Gzip { .. }) {
                "gzip"
            } else {
                "zstd"
            };
            let out = Command::new(tool).arg("-dc").arg(&path).output().unwrap();
            assert!(out.stdout == plain.1, "{tool} -dc gives the tar back");
            match &first {
                None => first = Some(blob),
                Some(f) => assert!(*f == blob, "{tool}: threads {threads} changed the bytes"),
            }
        }
    }
}

#[test]
fn golden_digests() {
    // Fixed metadata and contents: nothing from the machine enters the layer.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("app")).unwrap();
    std::fs::write(dir.path().join("app/hello.txt"), b"hello, layer\n").unwrap();
    let mut d = entry(b"app", Kind::Dir);
    d.uid = 1000;
    let mut f = entry(b"app/hello.txt", Kind::File);
    f.mode = 0o644;
    f.size = 13;
    f.mtime = Timestamp {
        sec: 1_700_000_000,
        nsec: 5,
    };
    f.xattrs = vec![
        (b"user.x".to_vec(), b"1".to_vec()),
        (b"trusted.overlay.origin".to_vec(), b"z".to_vec()),
    ];
    let mut l = entry(b"app/link", Kind::Symlink);
    l.link_target = b"hello.txt".to_vec();
    let changes = vec![
        added(d),
        added(f),
        added(l),
        deleted(b"app/old"),
        deleted(b"tmp"),
    ];
    let get = |c| write_layer(dir.path(), &changes, &opts(c, 2), io::sink()).unwrap();
    let none = get(Compression::None);
    let gz = get(Compression::default());
    let zst = get(Compression::Zstd {
        level: crate::compress::DEFAULT_ZSTD_LEVEL,
    });
    assert_eq!(
        none.diff_id,
        "sha256:488d820040844d98bb48bd4001037dcf12f148e477d8a85eeab94ff89c9364a3"
    );
    assert_eq!(gz.diff_id, none.diff_id);
    assert_eq!(
        gz.digest,
        "sha256:f225f1e18b54e78ccac7272f4c02fbaab6224eb5fec6fc98720771b5cf79b93b"
    );
    assert_eq!(
        zst.digest,
        "sha256:8b0872758caed80837d24c78dc45215231dc2230a7e64d0285abfa2b9771c8c3"
    );
    // What the pinned bytes hold, as Python's tarfile reads them.
    let mut tar = Vec::new();
    write_layer(dir.path(), &changes, &opts(Compression::None, 1), &mut tar).unwrap();
    let script = r#"
import io, sys, tarfile
with tarfile.open(fileobj=io.BytesIO(sys.stdin.buffer.read())) as t:
    for m in t:
        print(m.name, m.type.decode(), oct(m.mode), m.uid, m.pax_headers.get("mtime", int(m.mtime)),
              sorted(m.pax_headers), m.linkname)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "\
.wh.tmp 0 0o0 0 0 [] 
app 5 0o755 1000 1700000000 [] 
app/.wh.old 0 0o0 0 0 [] 
app/hello.txt 0 0o644 0 1700000000.000000005 ['SCHILY.xattr.user.x', 'mtime'] 
app/link 2 0o755 0 1700000000 [] hello.txt
"
    );
    // mtime clamping changes the diff_id.
    let clamped = write_layer(
        dir.path(),
        &changes,
        &LayerOptions {
            source_date_epoch: Some(0),
            ..opts(Compression::None, 1)
        },
        io::sink(),
    )
    .unwrap();
    assert_ne!(clamped.diff_id, none.diff_id);
}

/// The error of writing the layer of `changes` into a fresh blobs directory, which must be
/// left empty (no temporary file behind).
fn failed_write(root: &Path, changes: &[Change], compression: Compression) -> Error {
    let blobs = tempfile::tempdir().unwrap();
    let err = write_layer_file(root, changes, &opts(compression, 2), blobs.path())
        .expect_err("the write fails");
    assert_eq!(
        std::fs::read_dir(blobs.path()).unwrap().count(),
        0,
        "temporary file removed"
    );
    err
}

#[test]
fn a_file_that_changed_size_is_an_error() {
    let (dir, mut changes) = tree();
    // A small file (read whole) and a large one (streamed), each seen by the walk one byte
    // larger (it shrank since) and one byte smaller (it grew).
    for name in [&b"etc/hostname"[..], b"etc/big"] {
        let i = changes.iter().position(|c| c.path == name).unwrap();
        let real = changes[i].entry.as_ref().unwrap().size;
        for seen in [real + 1, real - 1] {
            changes[i].entry.as_mut().unwrap().size = seen;
            match failed_write(dir.path(), &changes, Compression::Gzip { level: 1 }) {
                Error::FileChanged {
                    path,
                    expected,
                    found,
                } => {
                    assert_eq!(path, dir.path().join(os_path(name)));
                    assert_eq!((expected, found), (seen, real));
                }
                other => panic!("{other:?}"),
            }
        }
        changes[i].entry.as_mut().unwrap().size = real;
    }
}

/// Content for file `n` of `len` bytes, different for every file and offset.
fn content(n: u64, len: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn contents_read_back_whole_across_batches_chunks_and_reused_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let small = SMALL_FILE;
    let chunk = CHUNK;
    let batch = BATCH_BYTES;
    // Sizes at every edge of the reader: small files (read in batches), large ones (streamed
    // in chunks), and enough files of all sizes for each reader buffer to be used many times.
    let mut sizes = vec![
        0,
        1,
        511,
        512,
        small - 1,
        small,
        small + 1,
        chunk + small - 1,
        batch - 1,
        batch,
        batch + 1,
        2 * batch + 3,
    ];
    sizes.extend((0..1500u64).map(|i| i * 7919 % 6000));
    sizes.extend((0..40u64).map(|i| 300_000 + i * 15_000));
    let mut changes = Vec::new();
    for (n, &len) in sizes.iter().enumerate() {
        // Interleave the sizes so batches are cut at every kind of neighbour.
        let name = format!("f{:05}", (n * 7) % sizes.len());
        std::fs::write(dir.path().join(&name), content(n as u64, len)).unwrap();
        changes.push(added(stat(dir.path(), name.as_bytes())));
    }
    let changes = sorted(changes);
    let mut tar = Vec::new();
    write_layer(dir.path(), &changes, &opts(Compression::None, 2), &mut tar).unwrap();
    let mut seen = 0;
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut got = Vec::new();
        e.read_to_end(&mut got).unwrap();
        let want = std::fs::read(dir.path().join(&name)).unwrap();
        assert!(
            got == want,
            "{name}: {} bytes read back, {} in the file",
            got.len(),
            want.len()
        );
        seen += 1;
    }
    assert_eq!(seen, sizes.len());
}

#[test]
fn a_file_that_reads_longer_than_its_size_is_an_error() {
    // procfs files have a size of 0 and content: the one byte read past the size catches it.
    let root = Path::new("/proc/self");
    let changes = vec![added(stat(root, b"status"))];
    assert_eq!(changes[0].entry.as_ref().unwrap().size, 0);
    match write_layer(root, &changes, &opts(Compression::None, 2), io::sink()) {
        Err(Error::FileChanged {
            path,
            expected,
            found,
        }) => {
            assert_eq!(path, root.join("status"));
            assert_eq!((expected, found), (0, 1));
        }
        other => panic!("{other:?}"),
    }
}

/// A sink that takes nothing until it is opened.
struct Gate {
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (open, opened) = &*self.open;
        let mut is_open = open.lock().unwrap();
        while !*is_open {
            is_open = opened.wait(is_open).unwrap();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The layer of `names` below `dir`, written while `change` runs: the sink stays shut until
/// then, so the reader stops, its buffers full, part of the way into a file larger than they
/// hold.
fn write_while(dir: &Path, names: &[&str], change: impl FnOnce()) -> Result<LayerInfo> {
    let changes = sorted(
        names
            .iter()
            .map(|n| added(stat(dir, n.as_bytes())))
            .collect(),
    );
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let sink = Gate { open: gate.clone() };
    let root = dir.to_path_buf();
    let writer = std::thread::spawn(move || {
        write_layer(root.as_path(), &changes, &opts(Compression::None, 2), sink)
    });
    // Time for the reader to open the large file; were it slower, the file would change
    // before its open, which the open's size check reports the same way.
    std::thread::sleep(std::time::Duration::from_millis(300));
    change();
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    writer.join().unwrap()
}

#[test]
fn a_large_file_that_changes_size_while_it_is_read_is_an_error() {
    let big: u64 = 20 << 20;
    let append = |path: &Path| {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"!").unwrap();
    };
    // Grown: as the last file of the layer (nothing reads on after it), and before another.
    for names in [&["big"][..], &["big", "z"]] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, content(1, big)).unwrap();
        std::fs::write(dir.path().join("z"), b"z").unwrap();
        match write_while(dir.path(), names, || append(&path)) {
            Err(Error::FileChanged {
                path: named,
                expected,
                found,
            }) => {
                assert_eq!(named, path);
                assert_eq!((expected, found), (big, big + 1));
            }
            other => panic!("{names:?}: {other:?}"),
        }
    }
    // Shrunk.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    std::fs::write(&path, content(1, big)).unwrap();
    let to = (12 << 20) + 5;
    let truncate = || {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(to).unwrap();
    };
    match write_while(dir.path(), &["big"], truncate) {
        Err(Error::FileChanged {
            expected, found, ..
        }) => assert_eq!((expected, found), (big, to)),
        other => panic!("{other:?}"),
    }
}

/// A sink that cancels the layer once it has taken `after` bytes, and counts what it took.
struct CancelAfter {
    cancel: Arc<crate::cancel::Cancel>,
    after: u64,
    taken: u64,
}

impl Write for CancelAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.taken += buf.len() as u64;
        if self.taken > self.after {
            self.cancel.cancel();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn cancel_is_seen_inside_a_big_file_and_leaves_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    File::create(dir.path().join("big"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let changes = vec![added(stat(dir.path(), b"big"))];
    let cancel = Arc::new(crate::cancel::Cancel::new());
    let mut o = opts(Compression::None, 1);
    o.cancel = Some(cancel.clone());
    let mut sink = CancelAfter {
        cancel: cancel.clone(),
        after: 4 << 20,
        taken: 0,
    };
    let err = write_layer(dir.path(), &changes, &o, &mut sink).unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err:?}");
    assert!(sink.taken < 64 << 20, "went on for {} bytes", sink.taken);

    // Cancelled once the blob is complete: it is not put in place either.
    let blobs = tempfile::tempdir().unwrap();
    let cancel = crate::cancel::Cancel::new();
    let err = write_blob_file(blobs.path(), &cancel, |blob, tmp| {
        let (info, blob) = write_layer_into(
            dir.path().into(),
            &changes,
            &opts(Compression::Gzip { level: 1 }, 1),
            blob,
            0,
            tmp,
        )?;
        cancel.cancel();
        Ok((info, blob))
    })
    .unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err:?}");
    assert_eq!(std::fs::read_dir(blobs.path()).unwrap().count(), 0);
}

#[test]
fn a_file_that_vanished_after_the_walk_is_an_error_naming_it() {
    for name in [&b"etc/hostname"[..], b"etc/big"] {
        let (dir, changes) = tree();
        std::fs::remove_file(dir.path().join(os_path(name))).unwrap();
        match failed_write(dir.path(), &changes, Compression::Zstd { level: 1 }) {
            Error::Io { path, source } => {
                assert_eq!(path, dir.path().join(os_path(name)));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn symlinks_in_the_path_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).unwrap();
    let mut f = entry(b"d/secret", Kind::File);
    f.size = 6;
    let changes = vec![added(f)];
    let err = write_layer(
        dir.path(),
        &changes,
        &opts(Compression::None, 1),
        io::sink(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    // Also through the per-component fallback.
    let root: OwnedFd = rustix::fs::open(
        dir.path(),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    NO_OPENAT2.store(true, Ordering::Relaxed);
    let res = open_beneath(root.as_fd(), b"d/secret", READ_FLAGS);
    NO_OPENAT2.store(false, Ordering::Relaxed);
    assert!(res.is_err());
    assert!(open_beneath(root.as_fd(), b"../x", READ_FLAGS).is_err());
}

#[test]
fn names_up_to_path_max_are_read_and_longer_ones_refused() {
    let empty = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 16 directories of 250 bytes and a name of 80: 4096 bytes, one more than `openat2` takes
    // with its NUL, so the file is opened one component at a time.
    let rel = crate::walk::testutil::deep_file(dir.path(), 16, &"f".repeat(80), b"deep");
    assert_eq!(rel.len(), PATH_MAX);
    let diff = |upper: &Path| {
        crate::diff::diff_dirs(empty.path(), upper, &crate::diff::DiffOptions::default()).unwrap()
    };
    let changes = diff(dir.path());
    let mut blob = Vec::new();
    write_layer(dir.path(), &changes, &opts(Compression::None, 1), &mut blob).unwrap();
    let mut ar = tar::Archive::new(&blob[..]);
    let mut found = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            found = Some((e.path_bytes().into_owned(), content));
        }
    }
    assert_eq!(found, Some((rel, b"deep".to_vec())));

    // One byte more: no unpacker could create it, so it is refused, named.
    let rel = crate::walk::testutil::deep_file(dir.path(), 16, &"g".repeat(81), b"x");
    let err = write_layer(
        dir.path(),
        &diff(dir.path()),
        &opts(Compression::None, 1),
        io::sink(),
    )
    .unwrap_err();
    match err {
        Error::PathTooLong { path, max } => {
            assert_eq!((path, max), (dir.path().join(os_path(&rel)), PATH_MAX));
        }
        other => panic!("{other:?}"),
    }
}

/// Memory does not grow with file size: a 2 GiB (sparse) file with < 100 MB peak RSS.
/// Run alone: `cargo test --release -- --ignored big_file`.
#[test]
#[ignore]
fn big_file_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let f = File::create(dir.path().join("big")).unwrap();
    f.set_len(2 << 30).unwrap();
    drop(f);
    let changes = vec![added(stat(dir.path(), b"big"))];
    let t = std::time::Instant::now();
    let info = write_layer(
        dir.path(),
        &changes,
        &opts(Compression::Gzip { level: 1 }, 0),
        io::sink(),
    )
    .unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "2 GiB in {:?}, peak RSS {} MB, {}",
        t.elapsed(),
        hwm / 1024,
        info.digest
    );
    assert!(hwm < 100 * 1024, "peak RSS {hwm} kB");
    assert!(info.tar_size >= (2 << 30) + 3 * 512);
}

/// Rough timing on a real tree: `LAYERDIFF_BENCH_TREE=/some/rootfs cargo test --release --
/// --ignored --nocapture bench_tree`. Prints, asserts nothing about time.
#[test]
#[ignore]
fn bench_tree() {
    let Some(root) = std::env::var_os("LAYERDIFF_BENCH_TREE") else {
        return;
    };
    let root = PathBuf::from(root);
    fn walk(root: &Path, rel: &[u8], out: &mut Vec<Change>) {
        for d in std::fs::read_dir(root.join(os_path(rel))).unwrap() {
            let p = crate::entry::join(rel, d.unwrap().file_name().as_bytes());
            let e = stat(root, &p);
            let is_dir = e.kind == Kind::Dir;
            out.push(added(e));
            if is_dir {
                walk(root, &p, out);
            }
        }
    }
    let mut changes = Vec::new();
    walk(&root, b"", &mut changes);
    let changes = sorted(changes);
    let blobs = tempfile::tempdir().unwrap();
    let configs = [
        Compression::None,
        Compression::Gzip { level: 5 },
        Compression::Zstd { level: 3 },
        Compression::Zstd { level: 2 },
    ];
    for c in configs {
        for threads in [0, 1] {
            let (mut sink_best, mut file_best) = (f64::MAX, f64::MAX);
            let mut info = None;
            for _ in 0..3 {
                let t = std::time::Instant::now();
                info = Some(write_layer(&root, &changes, &opts(c, threads), io::sink()).unwrap());
                sink_best = sink_best.min(t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                let file =
                    write_layer_file(&root, &changes, &opts(c, threads), blobs.path()).unwrap();
                file_best = file_best.min(t.elapsed().as_secs_f64());
                std::fs::remove_file(file.path.unwrap()).unwrap();
            }
            let info = info.unwrap();
            eprintln!(
                "{c:?} threads {threads}: {} entries, tar {} B, blob {} B, best of 3: sink {sink_best:.3}s, file {file_best:.3}s",
                changes.len(),
                info.tar_size,
                info.size,
            );
        }
    }
}

fn blob_file(file: File) -> BlobFile {
    BlobFile::new(file).unwrap()
}

#[test]
fn blob_file_writes_every_byte_in_order_across_its_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let mut blob = blob_file(File::create(&path).unwrap());
    let mut expected = Vec::new();
    // Sizes below, at and above a buffer, so writes straddle every boundary.
    for (i, len) in [
        1,
        511,
        BLOB_BUFFER - 3,
        7,
        BLOB_BUFFER,
        3 * BLOB_BUFFER + 5,
        0,
        9,
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..len).map(|j| (i * 31 + j % 251) as u8).collect();
        blob.write_all(&data).unwrap();
        expected.extend_from_slice(&data);
        if i == 3 {
            blob.flush().unwrap();
        }
    }
    blob.sync().unwrap();
    assert!(std::fs::read(&path).unwrap() == expected);
}

#[test]
fn a_write_error_on_the_blob_writer_thread_reaches_the_writer() {
    let full = File::options().write(true).open("/dev/full").unwrap();
    let mut blob = blob_file(full);
    let data = vec![7u8; BLOB_BUFFER + 1];
    let err = (0..2 * BLOB_BUFFERS + 4)
        .find_map(|_| blob.write_all(&data).err())
        .unwrap_or_else(|| blob.sync().unwrap_err());
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

    // Also when the error comes with the last bytes, at sync.
    let full = File::options().write(true).open("/dev/full").unwrap();
    let mut blob = blob_file(full);
    blob.write_all(b"tail").unwrap();
    let err = blob.sync().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
}

#[test]
fn every_later_member_links_to_the_first() {
    let linked = |path: &[u8]| {
        let mut e = entry(path, Kind::File);
        e.nlink = 3;
        e.ino = 77;
        added(e)
    };
    let changes = sorted(vec![linked(b"a"), linked(b"b"), linked(b"c")]);
    assert_eq!(planned(&changes), ["a", "b => a", "c => a"]);
}
