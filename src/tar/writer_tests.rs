//! Tests of `writer`.

use super::*;
use std::process::Command;

fn meta(path: &[u8]) -> Meta<'_> {
    Meta {
        path,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timestamp {
            sec: 1_700_000_000,
            nsec: 0,
        },
        xattrs: &[],
    }
}

/// Parse PAX records back, checking every length prefix.
fn parse_pax(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
        let rec = &data[sp + 1..len];
        assert_eq!(data[len - 1], b'\n', "record length is wrong");
        let eq = rec.iter().position(|&b| b == b'=').unwrap();
        out.push((rec[..eq].to_vec(), rec[eq + 1..rec.len() - 1].to_vec()));
        data = &data[len..];
    }
    out
}

#[test]
fn pax_record_lengths_count_themselves() {
    for n in 0..2000 {
        let value = vec![b'v'; n];
        let mut out = Vec::new();
        pax_record(&mut out, b"path", &value);
        assert_eq!(parse_pax(&out), vec![(b"path".to_vec(), value)]);
    }
}

#[test]
fn numeric_fields() {
    let mut h = [0u8; BLOCK];
    assert!(put_number(&mut h, SIZE, 0o77777777777));
    assert_eq!(&h[SIZE.0..SIZE.0 + 12], b"77777777777\0");
    let big = 10i128 << 30; // 10 GiB: beyond the 11 octal digits
    assert!(!put_number(&mut h, SIZE, big));
    assert_eq!(h[SIZE.0], 0x80);
    assert_eq!(&h[SIZE.0 + 1..SIZE.0 + 7], &[0; 6]);
    assert_eq!(&h[SIZE.0 + 7..SIZE.0 + 12], &[0x02, 0x80, 0, 0, 0]);
    assert!(!put_number(&mut h, MTIME, -1));
    assert_eq!(&h[MTIME.0..MTIME.0 + 12], &[0xff; 12]);
    assert_eq!(pax_time(Timestamp { sec: 5, nsec: 7 }), "5.000000007");
    assert_eq!(
        pax_time(Timestamp {
            sec: -1,
            nsec: 500_000_000
        }),
        "-0.500000000"
    );
    assert_eq!(
        pax_time(Timestamp {
            sec: -2,
            nsec: 250_000_000
        }),
        "-1.750000000"
    );
}

#[test]
fn ustar_split_rule() {
    let a = [b'a'; 150];
    let mut p = a.to_vec();
    p.extend_from_slice(b"/");
    p.extend_from_slice(&[b'b'; 100]);
    assert_eq!(ustar_split(&p), Some(150));
    p.push(b'b'); // name part of 101 bytes
    assert_eq!(ustar_split(&p), None);
    assert_eq!(ustar_split(&[b'c'; 120]), None); // no slash
    let mut q = vec![b'd'; 160];
    q.push(b'/');
    q.extend_from_slice(b"e"); // prefix would be 160 bytes
    assert_eq!(ustar_split(&q), None);
}

#[test]
fn size_beyond_8_gib_gets_a_pax_record() {
    let mut tar = TarWriter::new(Vec::new());
    let size = (8u64 << 30) + 3;
    let body = tar.begin_file(&meta(b"big"), size).unwrap();
    assert_eq!(body.remaining(), size);
    let out = tar.get_ref().clone();
    assert_eq!(out.len(), 3 * BLOCK);
    assert_eq!(out[TYPEFLAG], b'x');
    let pax_len = tar::Header::from_byte_slice(&out[..BLOCK])
        .entry_size()
        .unwrap() as usize;
    let recs = parse_pax(&out[BLOCK..BLOCK + pax_len]);
    assert_eq!(
        recs,
        vec![(b"size".to_vec(), size.to_string().into_bytes())]
    );
    let h = tar::Header::from_byte_slice(&out[2 * BLOCK..]);
    assert_eq!(h.entry_size().unwrap(), size); // base-256 in the field as well
    assert_eq!(h.cksum().unwrap(), checksum_of(&out[2 * BLOCK..3 * BLOCK]));
    // The stream is mid-entry now: nothing else may be appended.
    assert!(matches!(
        tar.append_dir(&meta(b"d")),
        Err(Error::InvalidArgument(_))
    ));
}

fn checksum_of(block: &[u8]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum()
}

#[test]
fn file_changed_is_detected() {
    let mut tar = TarWriter::new(Vec::new());
    match tar.append_file(&meta(b"short"), 10, &b"12345"[..]) {
        Err(Error::FileChanged {
            expected: 10,
            found: 5,
            path,
        }) => {
            assert_eq!(path, os_path(b"short"))
        }
        other => panic!("{other:?}"),
    }
    let mut tar = TarWriter::new(Vec::new());
    match tar.append_file(&meta(b"long"), 10, &b"123456789012345"[..]) {
        Err(Error::FileChanged {
            expected: 10,
            found: 11,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let mut tar = TarWriter::new(Vec::new());
    let mut body = tar.begin_file(&meta(b"f"), 3).unwrap();
    assert!(matches!(
        body.write(b"1234"),
        Err(Error::FileChanged {
            expected: 3,
            found: 4,
            ..
        })
    ));
}

#[test]
fn bad_paths_are_refused() {
    for p in [
        &b""[..],
        b"/abs",
        b"a//b",
        b"a/../b",
        b"./a",
        b"a/",
        b"nul\0",
    ] {
        let mut tar = TarWriter::new(Vec::new());
        assert!(
            matches!(tar.append_dir(&meta(p)), Err(Error::InvalidArgument(_))),
            "{p:?}"
        );
    }
    let mut tar = TarWriter::new(Vec::new());
    assert!(tar.append_whiteout(b"a", b"b/c").is_err());
    assert!(tar.append_symlink(&meta(b"l"), b"").is_err());
    let bad = [(b"user.a=b".to_vec(), b"v".to_vec())];
    let m = Meta {
        xattrs: &bad,
        ..meta(b"x")
    };
    assert!(matches!(tar.append_dir(&m), Err(Error::InvalidArgument(_))));
}

#[test]
fn a_pax_header_no_reader_takes_is_refused() {
    // 16 xattrs of 64 KiB: just over the 1 MiB of PAX records that tar readers accept.
    let xattrs: Vec<(Vec<u8>, Vec<u8>)> = (0..16)
        .map(|i| (format!("trusted.x{i:02}").into_bytes(), vec![b'v'; 65536]))
        .collect();
    let m = Meta {
        xattrs: &xattrs,
        ..meta(b"big")
    };
    let mut tar = TarWriter::new(Vec::new());
    match tar.append_dir(&m) {
        Err(Error::InvalidArgument(msg)) => assert!(
            msg.starts_with("big: its metadata (xattrs) take 10")
                && msg.ends_with("more than the 1048576 bytes tar readers accept"),
            "{msg}"
        ),
        other => panic!("{other:?}"),
    }
    // At the limit, it is written, and our reader takes it back.
    let fits: Vec<(Vec<u8>, Vec<u8>)> = xattrs[..15].to_vec();
    let m = Meta {
        xattrs: &fits,
        ..meta(b"big")
    };
    let mut tar = TarWriter::new(Vec::new());
    tar.append_dir(&m).unwrap();
    let bytes = tar.finish().unwrap();
    let mut reader = crate::tar::reader::TarReader::new(&bytes[..]);
    let h = reader.next_header().unwrap().unwrap();
    assert_eq!(h.xattrs.len(), 15);
}

#[test]
fn markers_have_fixed_metadata_and_mtime_is_clamped() {
    let mut tar = TarWriter::new(Vec::new()).with_source_date_epoch(Some(1_000));
    tar.append_whiteout(b"dir", b"gone").unwrap();
    tar.append_opaque(b"dir").unwrap();
    let late = Meta {
        mtime: Timestamp {
            sec: 2_000,
            nsec: 5,
        },
        ..meta(b"late")
    };
    tar.append_fifo(&late).unwrap();
    let early = Meta {
        mtime: Timestamp { sec: 500, nsec: 0 },
        ..meta(b"early")
    };
    tar.append_fifo(&early).unwrap();
    let out = tar.finish().unwrap();
    let mut ar = tar::Archive::new(&out[..]);
    let got: Vec<_> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path_bytes().into_owned(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
                h.entry_type().as_byte(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (b"dir/.wh.gone".to_vec(), 0, 0, b'0'),
            (b"dir/.wh..wh..opq".to_vec(), 0, 0, b'0'),
            (b"late".to_vec(), 0o644, 1_000, b'6'),
            (b"early".to_vec(), 0o644, 500, b'6'),
        ]
    );
    // Clamped: no nanoseconds, so no PAX header anywhere.
    assert!(
        !out.windows(PAX_HEADER_NAME.len())
            .any(|w| w == PAX_HEADER_NAME)
    );
}

/// A little of everything a layer holds.
fn sample() -> Vec<u8> {
    let xattrs = vec![
        (
            b"security.capability".to_vec(),
            vec![
                1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        (b"trusted.overlay.opaque".to_vec(), b"y".to_vec()),
        (b"user.comment".to_vec(), b"a=b\nc \xff".to_vec()),
        (b"user.overlay.redirect".to_vec(), b"/x".to_vec()),
    ];
    let long_dir: Vec<u8> = [&[b'd'; 90][..], b"/", &[b'e'; 90]].concat(); // 181: splits
    let long_file: Vec<u8> = [&long_dir[..], b"/", &[b'f'; 120]].concat(); // no split
    let very_long: Vec<u8> = [&long_dir[..], b"/", &[b'g'; 99], b"/", &[b'h'; 99]].concat(); // > 255
    let latin1: Vec<u8> = [&long_dir[..], b"/caf\xe9-", &[b'i'; 110]].concat();
    let target: Vec<u8> = [&b"../"[..], &[b't'; 200]].concat();

    let mut tar = TarWriter::new(Vec::new());
    let m = |p| Meta {
        path: p,
        mode: 0o755,
        uid: 1000,
        gid: 100,
        mtime: Timestamp {
            sec: 1_600_000_000,
            nsec: 0,
        },
        xattrs: &[],
    };
    tar.append_dir(&m(b"d")).unwrap();
    tar.append_opaque(b"d").unwrap();
    tar.append_whiteout(b"d", b"old").unwrap();
    tar.append_file_bytes(
        &Meta {
            xattrs: &xattrs,
            mode: 0o4755,
            ..m(b"d/caps")
        },
        b"#!/bin/sh\n",
    )
    .unwrap();
    tar.append_hardlink(&m(b"d/caps-link"), b"d/caps").unwrap();
    tar.append_dir(&m(&long_dir)).unwrap();
    let g_dir: Vec<u8> = [&long_dir[..], b"/", &[b'g'; 99]].concat();
    tar.append_dir(&m(&g_dir)).unwrap();
    tar.append_file(&m(&long_file), 3, &b"abc"[..]).unwrap();
    tar.append_file(&m(&very_long), 1000, &[7u8; 1000][..])
        .unwrap();
    tar.append_file_bytes(&m(&latin1), b"").unwrap();
    tar.append_file_bytes(&m(b"d/\xff\xfe"), b"x").unwrap();
    tar.append_symlink(&m(b"d/sym"), &target).unwrap();
    tar.append_symlink(&m(b"d/sym-bin"), &[&b"/x/"[..], &[0xe9; 120]].concat())
        .unwrap();
    tar.append_fifo(&m(b"d/fifo")).unwrap();
    tar.append_char_device(&m(b"d/null"), 1, 3).unwrap();
    tar.append_block_device(&m(b"d/sda"), 8, 0).unwrap();
    let ns = Meta {
        mtime: Timestamp {
            sec: 1_600_000_000,
            nsec: 123_456_789,
        },
        uid: 4_000_000,
        gid: 5,
        ..m(b"d/ns")
    };
    tar.append_file_bytes(&ns, b"ns").unwrap();
    tar.finish().unwrap()
}

/// Pinned: any change to the bytes this writer emits shows up here.
const SAMPLE_SHA256: &str =
    "sha256:ea1fd694e946b6cbfd6a98afe97077675228f1e82228c1cd2a5f46267be9e9b1";

#[test]
fn output_is_deterministic_and_pinned() {
    let a = sample();
    assert_eq!(a, sample());
    assert_eq!(a.len() % BLOCK, 0);
    assert_eq!(crate::digest::sha256_digest(&a), SAMPLE_SHA256);
}

fn hexs(b: &[u8]) -> String {
    crate::digest::hex(b)
}

#[test]
fn python_tarfile_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    std::fs::write(&path, sample()).unwrap();
    let script = r#"
import os, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    for m in t.getmembers():
        x = ";".join("%s=%s" % (k[13:], v.encode("utf-8", "surrogateescape").hex())
                     for k, v in sorted(m.pax_headers.items()) if k.startswith("SCHILY.xattr."))
        print("\t".join(str(f) for f in [os.fsencode(m.name).hex(), m.type.decode(), oct(m.mode), m.uid, m.gid,
              int(m.mtime), m.pax_headers.get("mtime", ""), m.size, os.fsencode(m.linkname).hex(),
              m.devmajor, m.devminor, m.uname + "/" + m.gname, x]))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 17, "{got}");
    let row = |name: &[u8], rest: &str| format!("{}\t{}", hexs(name), rest);
    let ld: Vec<u8> = [&[b'd'; 90][..], b"/", &[b'e'; 90]].concat();
    assert_eq!(
        lines[0],
        row(b"d", "5\t0o755\t1000\t100\t1600000000\t\t0\t\t0\t0\t/\t")
    );
    assert_eq!(
        lines[1],
        row(b"d/.wh..wh..opq", "0\t0o0\t0\t0\t0\t\t0\t\t0\t0\t/\t")
    );
    assert_eq!(
        lines[2],
        row(b"d/.wh.old", "0\t0o0\t0\t0\t0\t\t0\t\t0\t0\t/\t")
    );
    assert_eq!(
        lines[3],
        row(
            b"d/caps",
            "0\t0o4755\t1000\t100\t1600000000\t\t10\t\t0\t0\t/\tsecurity.capability=0100000220000000000000000000000000000000;user.comment=613d620a6320ff"
        )
    );
    assert_eq!(
        lines[4],
        row(
            b"d/caps-link",
            &format!(
                "1\t0o755\t1000\t100\t1600000000\t\t0\t{}\t0\t0\t/\t",
                hexs(b"d/caps")
            )
        )
    );
    assert_eq!(
        lines[5],
        row(&ld, "5\t0o755\t1000\t100\t1600000000\t\t0\t\t0\t0\t/\t")
    );
    assert_eq!(
        lines[7],
        row(
            &[&ld[..], b"/", &[b'f'; 120]].concat(),
            "0\t0o755\t1000\t100\t1600000000\t\t3\t\t0\t0\t/\t"
        )
    );
    assert_eq!(
        lines[8],
        row(
            &[&ld[..], b"/", &[b'g'; 99], b"/", &[b'h'; 99]].concat(),
            "0\t0o755\t1000\t100\t1600000000\t\t1000\t\t0\t0\t/\t"
        )
    );
    assert_eq!(
        lines[9],
        row(
            &[&ld[..], b"/caf\xe9-", &[b'i'; 110]].concat(),
            "0\t0o755\t1000\t100\t1600000000\t\t0\t\t0\t0\t/\t"
        )
    );
    assert_eq!(
        lines[10],
        row(
            b"d/\xff\xfe",
            "0\t0o755\t1000\t100\t1600000000\t\t1\t\t0\t0\t/\t"
        )
    );
    let t: Vec<u8> = [&b"../"[..], &[b't'; 200]].concat();
    assert_eq!(
        lines[11],
        row(
            b"d/sym",
            &format!(
                "2\t0o755\t1000\t100\t1600000000\t\t0\t{}\t0\t0\t/\t",
                hexs(&t)
            )
        )
    );
    let t2: Vec<u8> = [&b"/x/"[..], &[0xe9; 120]].concat();
    assert_eq!(
        lines[12],
        row(
            b"d/sym-bin",
            &format!(
                "2\t0o755\t1000\t100\t1600000000\t\t0\t{}\t0\t0\t/\t",
                hexs(&t2)
            )
        )
    );
    assert_eq!(
        lines[13],
        row(
            b"d/fifo",
            "6\t0o755\t1000\t100\t1600000000\t\t0\t\t0\t0\t/\t"
        )
    );
    assert_eq!(
        lines[14],
        row(
            b"d/null",
            "3\t0o755\t1000\t100\t1600000000\t\t0\t\t1\t3\t/\t"
        )
    );
    assert_eq!(
        lines[15],
        row(
            b"d/sda",
            "4\t0o755\t1000\t100\t1600000000\t\t0\t\t8\t0\t/\t"
        )
    );
    assert_eq!(
        lines[16],
        row(
            b"d/ns",
            "0\t0o755\t4000000\t5\t1600000000\t1600000000.123456789\t2\t\t0\t0\t/\t"
        )
    );
}

#[test]
fn gnu_tar_lists_and_extracts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    std::fs::write(&path, sample()).unwrap();
    let out = Command::new("tar").arg("-tvf").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        17
    );

    let root = dir.path().join("x");
    std::fs::create_dir(&root).unwrap();
    let out = Command::new("tar")
        .args([
            "--no-same-owner",
            "--exclude=d/null",
            "--exclude=d/sda",
            "-xf",
        ])
        .arg(&path)
        .arg("-C")
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = |p: &[u8]| root.join(os_path(p));
    let ld: Vec<u8> = [&[b'd'; 90][..], b"/", &[b'e'; 90]].concat();
    assert_eq!(std::fs::read(at(b"d/caps")).unwrap(), b"#!/bin/sh\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(at(b"d/caps")).unwrap().ino(),
        std::fs::metadata(at(b"d/caps-link")).unwrap().ino()
    );
    assert_eq!(
        std::fs::read(at(&[&ld[..], b"/", &[b'f'; 120]].concat())).unwrap(),
        b"abc"
    );
    assert_eq!(
        std::fs::read(at(&[&ld[..], b"/", &[b'g'; 99], b"/", &[b'h'; 99]].concat())).unwrap(),
        vec![7u8; 1000]
    );
    assert_eq!(std::fs::read(at(b"d/\xff\xfe")).unwrap(), b"x");
    assert!(at(&[&ld[..], b"/caf\xe9-", &[b'i'; 110]].concat()).exists());
    let t: Vec<u8> = [&b"../"[..], &[b't'; 200]].concat();
    assert_eq!(std::fs::read_link(at(b"d/sym")).unwrap(), os_path(&t));
    let fifo = std::fs::symlink_metadata(at(b"d/fifo")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(fifo.file_type().is_fifo());
    assert_eq!(
        std::fs::metadata(at(b"d/ns")).unwrap().mtime_nsec(),
        123_456_789
    );
}

#[test]
fn tar_crate_reads_it() {
    let data = sample();
    let mut ar = tar::Archive::new(&data[..]);
    let mut n = 0;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        assert_eq!(
            e.header().cksum().unwrap(),
            e.header()
                .as_bytes()
                .iter()
                .enumerate()
                .map(|(i, &b)| if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                })
                .sum::<u32>()
        );
        if e.path_bytes().as_ref() == b"d/caps" {
            // The `tar` crate splits PAX data at every '\n', so it cannot read the value
            // of user.comment (which holds one); the first record still parses.
            let x = e
                .pax_extensions()
                .unwrap()
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(x.key_bytes(), b"SCHILY.xattr.security.capability");
        }
        n += 1;
    }
    assert_eq!(n, 17);
}

#[test]
fn an_mtime_in_the_epoch_second_is_clamped_to_it() {
    let mut tar = TarWriter::new(Vec::new()).with_source_date_epoch(Some(1_000));
    let m = Meta {
        mtime: Timestamp {
            sec: 1_000,
            nsec: 5,
        },
        ..meta(b"f")
    };
    tar.append_fifo(&m).unwrap();
    let out = tar.finish().unwrap();
    assert!(
        !out.windows(PAX_HEADER_NAME.len())
            .any(|w| w == PAX_HEADER_NAME),
        "an mtime of epoch + 5 ns kept its nanoseconds in a PAX record"
    );
}

#[test]
fn exactly_8_gib_needs_the_pax_size_record() {
    let mut h = [0u8; BLOCK];
    assert!(put_number(&mut h, SIZE, (1i128 << 33) - 1));
    assert!(
        !put_number(&mut h, SIZE, 1i128 << 33),
        "8 GiB does not fit 11 octal digits"
    );
    let mut out = Vec::new();
    let mut tar = TarWriter::new(&mut out);
    let _body = tar.begin_file(&meta(b"big"), 8u64 << 30).unwrap();
    let record = b"size=8589934592\n";
    assert!(out.windows(record.len()).any(|w| w == record));
}
