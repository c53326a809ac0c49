//! Reader tests: our writer's archives, GNU tar's and Python's, and broken ones.

use std::process::Command;

use super::*;
use crate::tar::writer::{Meta, TarWriter};

fn meta<'a>(path: &'a [u8], xattrs: &'a [(Vec<u8>, Vec<u8>)]) -> Meta<'a> {
    Meta {
        path,
        mode: 0o4755,
        uid: 3_000_000,
        gid: 7,
        mtime: Timestamp {
            sec: 1_700_000_000,
            nsec: 123_456_789,
        },
        xattrs,
    }
}

fn all(bytes: &[u8]) -> Result<Vec<(Header, Vec<u8>)>> {
    let mut r = TarReader::new(bytes);
    let mut out = Vec::new();
    while let Some(h) = r.next_header()? {
        let mut data = Vec::new();
        r.read_to_end(&mut data)
            .map_err(|e| bad("test", e.to_string()))?;
        out.push((h, data));
    }
    Ok(out)
}

#[test]
fn reads_what_our_writer_writes() {
    let long = [b"d/".repeat(80), b"\xff\xfename".to_vec()].concat();
    let xattrs = vec![
        (b"user.newline".to_vec(), b"a\nb=c\n".to_vec()),
        (b"security.capability".to_vec(), vec![1, 0, 0, 2, 0xff]),
    ];
    let mut w = TarWriter::new(Vec::new());
    w.append_dir(&meta(b"d", &[])).unwrap();
    w.append_file_bytes(&meta(&long, &xattrs), b"hello")
        .unwrap();
    w.append_symlink(&meta(b"s", &[]), &b"t/".repeat(70))
        .unwrap();
    w.append_hardlink(&meta(b"h", &[]), &long).unwrap();
    w.append_char_device(&meta(b"c", &[]), 4, 64).unwrap();
    w.append_whiteout(b"d", b"gone").unwrap();
    let bytes = w.finish().unwrap();
    let got = all(&bytes).unwrap();
    assert_eq!(got.len(), 6);
    assert_eq!(got[0].0.kind, EntryKind::Dir);
    let (file, data) = &got[1];
    assert_eq!(file.path, long);
    assert_eq!(data, b"hello");
    assert_eq!((file.mode, file.uid, file.gid), (0o4755, 3_000_000, 7));
    assert_eq!(
        file.mtime,
        Timestamp {
            sec: 1_700_000_000,
            nsec: 123_456_789
        }
    );
    let mut want = xattrs.clone();
    want.sort();
    let mut have = file.xattrs.clone();
    have.sort();
    assert_eq!(have, want);
    assert_eq!(got[2].0.link, b"t/".repeat(70));
    assert_eq!(
        (got[3].0.kind, &got[3].0.link),
        (EntryKind::Hardlink, &long)
    );
    assert_eq!((got[4].0.dev_major, got[4].0.dev_minor), (4, 64));
    assert_eq!(got[5].0.path, b"d/.wh.gone");
}

#[test]
fn reads_gnu_long_names_and_python_pax() {
    let t = tempfile::tempdir().unwrap();
    let name = "n".repeat(150);
    std::fs::create_dir(t.path().join("src")).unwrap();
    std::fs::write(t.path().join("src").join(&name), b"gnu").unwrap();
    std::os::unix::fs::symlink("x".repeat(120), t.path().join("src/l")).unwrap();
    for format in ["gnu", "pax", "ustar"] {
        let out = Command::new("tar")
            .args([
                "-C",
                t.path().join("src").to_str().unwrap(),
                "--format",
                format,
                "-cf",
                "-",
                ".",
            ])
            .output()
            .unwrap();
        if format == "ustar" {
            // ustar cannot hold a 120-byte link target: GNU tar refuses, and so do we.
            continue;
        }
        assert!(out.status.success(), "{format}");
        let got = all(&out.stdout).unwrap();
        let file = got
            .iter()
            .find(|(h, _)| h.path.ends_with(name.as_bytes()))
            .unwrap();
        assert_eq!(file.1, b"gnu", "{format}");
        let link = got
            .iter()
            .find(|(h, _)| h.kind == EntryKind::Symlink)
            .unwrap();
        assert_eq!(link.0.link, "x".repeat(120).as_bytes(), "{format}");
    }
    let py = Command::new("python3")
        .args([
            "-c",
            "import io,sys,tarfile\nb=io.BytesIO()\nt=tarfile.open(fileobj=b,mode='w',format=tarfile.PAX_FORMAT)\n\
             i=tarfile.TarInfo('p/'+'q'*200)\ni.size=3\ni.pax_headers={'SCHILY.xattr.user.k':'v\\nw'}\n\
             t.addfile(i,io.BytesIO(b'abc'))\nt.close()\nsys.stdout.buffer.write(b.getvalue())",
        ])
        .output()
        .unwrap();
    assert!(py.status.success());
    let got = all(&py.stdout).unwrap();
    assert_eq!(got[0].0.path, [b"p/".to_vec(), b"q".repeat(200)].concat());
    assert_eq!(got[0].1, b"abc");
    assert_eq!(
        got[0].0.xattrs,
        vec![(b"user.k".to_vec(), b"v\nw".to_vec())]
    );
}

#[test]
fn broken_archives_are_errors() {
    let mut w = TarWriter::new(Vec::new());
    w.append_file_bytes(&meta(b"f", &[]), &[1u8; 3000]).unwrap();
    let good = w.finish().unwrap();
    let mut bad_sum = good.clone();
    bad_sum[10] ^= 1;
    let mut pax = Vec::new();
    {
        // A PAX header whose record length lies.
        let mut h = [0u8; BLOCK];
        h[..5].copy_from_slice(b"x/pax");
        let rec = b"99 path=evil\n";
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{:011o}", rec.len()).as_bytes());
        h[156] = b'x';
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        pax.extend_from_slice(&h);
        let mut data = rec.to_vec();
        data.resize(BLOCK, 0);
        pax.extend_from_slice(&data);
        pax.extend_from_slice(&good);
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated content", good[..1500].to_vec(), "truncated"),
        ("truncated header", good[..100].to_vec(), "truncated"),
        ("checksum", bad_sum, "checksum"),
        ("pax length", pax, "PAX"),
        ("garbage", vec![0x41; 2048], "checksum"),
    ];
    for (what, bytes, needle) in cases {
        let err = all(&bytes).unwrap_err().to_string();
        assert!(err.contains(needle), "{what}: {err}");
    }
}

/// A stream that ends right after its last member's content, with neither that member's
/// padding nor an end marker, as older `umoci insert` writes a layer: Go's archive/tar (and so
/// docker and containerd) reads it whole, and so do we. Padding cut short is still truncation.
#[test]
fn a_stream_ending_with_its_last_content_unpadded_is_whole() {
    let mut w = TarWriter::new(Vec::new());
    w.append_file_bytes(&meta(b"a", &[]), b"first").unwrap();
    w.append_file_bytes(&meta(b"f", &[]), &[1u8; 3000]).unwrap();
    let good = w.finish().unwrap();
    let mut r = TarReader::new(&good[..]);
    let mut end = 0;
    while let Some(h) = r.next_header().unwrap() {
        end = (h.data_offset + h.size) as usize; // where the last content ends
    }
    assert_eq!(&good[end - 3000..end], &[1u8; 3000][..]);
    let entries = all(&good[..end]).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].1, vec![1u8; 3000]);
    for cut in [end + 10, end - 1] {
        let err = all(&good[..cut]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{cut}: {err}");
    }
}

#[test]
fn offsets_point_at_the_content() {
    let mut w = TarWriter::new(Vec::new());
    w.append_file_bytes(&meta(b"a", &[]), b"first").unwrap();
    w.append_file_bytes(&meta(b"b", &[]), b"second").unwrap();
    let bytes = w.finish().unwrap();
    let mut r = TarReader::new(&bytes[..]);
    let mut offsets = Vec::new();
    while let Some(h) = r.next_header().unwrap() {
        offsets.push((h.data_offset as usize, h.size as usize));
    }
    assert_eq!(&bytes[offsets[0].0..offsets[0].0 + offsets[0].1], b"first");
    assert_eq!(&bytes[offsets[1].0..offsets[1].0 + offsets[1].1], b"second");
}

/// A raw header block with a valid checksum.
fn block(name: &[u8], typeflag: u8, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// `h` with `field` (offset, bytes) written over and the checksum made right again.
fn with_field(mut h: [u8; BLOCK], (at, bytes): (usize, &[u8])) -> [u8; BLOCK] {
    h[at..at + bytes.len()].copy_from_slice(bytes);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

fn member(out: &mut Vec<u8>, header: [u8; BLOCK], data: &[u8]) {
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

#[test]
fn gnu_then_pax_then_ustar_decide_names_and_sizes() {
    // A GNU long name and a PAX path that disagree with each other and with the header: the
    // GNU name wins, as Go (docker, containerd, umoci) applies it after the PAX records,
    // whichever comes first. The link has a PAX record only: it wins over the header's.
    let mut a = Vec::new();
    let names = pax(&[("path", "pax-name"), ("linkpath", "pax-link")]);
    member(&mut a, block(b"pax", b'x', names.len() as u64), &names);
    member(&mut a, block(b"././@LongLink", b'L', 9), b"gnu-name\0");
    member(&mut a, block(b"ustar-name", b'2', 0), b"");
    // A PAX size larger than the header's: the content is read by the PAX size, and the next
    // header is found where that size says, not inside the content.
    let content = b"0123456789".repeat(100);
    let records = pax(&[("size", &content.len().to_string())]);
    member(&mut a, block(b"pax", b'x', records.len() as u64), &records);
    member(&mut a, block(b"sized", b'0', 10), &content);
    member(&mut a, block(b"after", b'0', 0), b"");
    // A GNU long link before the PAX header, and an empty GNU long name, which says nothing.
    member(&mut a, block(b"././@LongLink", b'K', 9), b"gnu-link\0");
    member(&mut a, block(b"././@LongLink", b'L', 1), b"\0");
    member(&mut a, block(b"pax", b'x', names.len() as u64), &names);
    member(&mut a, block(b"ustar-name", b'1', 0), b"");
    a.extend_from_slice(&[0u8; 2 * BLOCK]);

    let got = all(&a).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(
        (got[0].0.path.as_slice(), got[0].0.link.as_slice()),
        (&b"gnu-name"[..], &b"pax-link"[..])
    );
    assert_eq!(got[1].0.path, b"sized");
    assert_eq!(got[1].1, content);
    assert_eq!(got[2].0.path, b"after");
    assert_eq!(
        (got[3].0.path.as_slice(), got[3].0.link.as_slice()),
        (&b"pax-name"[..], &b"gnu-link"[..])
    );
}

#[test]
fn a_trailing_slash_makes_a_directory_of_the_old_regular_type_only() {
    // A '0' entry named "d/" whose content is a header: a file with that content, as Go and
    // Python read it; its content never yields an entry ("hidden") of its own.
    let mut a = Vec::new();
    let inner = block(b"hidden", b'0', 0);
    member(&mut a, block(b"d/", b'0', BLOCK as u64), &inner);
    member(&mut a, block(b"e/", 0, 0), b"");
    member(&mut a, block(b"f/", b'5', 0), b"");
    a.extend_from_slice(&[0u8; 2 * BLOCK]);
    let got = all(&a).unwrap();
    let kinds: Vec<(&[u8], EntryKind)> = got.iter().map(|(h, _)| (&h.path[..], h.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (&b"d/"[..], EntryKind::File),
            (&b"e/"[..], EntryKind::Dir),
            (&b"f/"[..], EntryKind::Dir)
        ]
    );
    assert_eq!(got[0].1, inner.to_vec());
}

#[test]
fn oversized_extended_headers_and_dangling_extensions_are_refused() {
    let mut a = Vec::new();
    member(&mut a, block(b"big", b'x', MAX_META + 1), b"");
    let err = all(&a).unwrap_err().to_string();
    assert!(err.contains("extended header"), "{err}");

    let mut b = Vec::new();
    let records = pax(&[("path", "x")]);
    member(&mut b, block(b"pax", b'x', records.len() as u64), &records);
    b.extend_from_slice(&[0u8; 2 * BLOCK]);
    let err = all(&b).unwrap_err().to_string();
    assert!(err.contains("ends after an extended header"), "{err}");
}

/// Numeric fields as Go's archive/tar reads them (docker, containerd, umoci): octal with NULs
/// and spaces trimmed at both ends, or GNU base-256 in two's complement.
#[test]
fn numeric_fields_read_as_go_reads_them() {
    let mut r7 = [0xffu8; 12];
    r7[8..].copy_from_slice(&[0xed, 0x30, 0x08, 0x80]); // GNU tar's 1960-01-01
    let mut i64_max = [0xffu8; 12];
    i64_max[..5].copy_from_slice(&[0x80, 0, 0, 0, 0x7f]);
    let mut past_max = [0u8; 12];
    past_max[..5].copy_from_slice(&[0x80, 0, 0, 0, 0x80]);
    let cases: Vec<(&[u8], Option<i64>)> = vec![
        (b"0000644\0", Some(0o644)),
        (b"\0\0\x00644\0\0", Some(0o644)),
        (b"  644   ", Some(0o644)),
        (b" \x000644 \0 ", Some(0o644)),
        (b"\0\0\0\0\0\0\0\0", Some(0)),
        (b"        ", Some(0)),
        (b"64\x004\0\0\0\0", Some(0o64)),
        (b"6 44\0\0\0\0", None),
        (b"0000648\0", None),
        (b"+000644\0", None),
        (&[0x80, 0, 0, 0, 0, 0, 0, 1], Some(1)),
        (&[0xff; 12], Some(-1)),
        (&r7, Some(-315_619_200)),
        (&[0xc0, 0, 0, 0, 0, 0, 0, 0], Some(-(1 << 62))),
        (&i64_max, Some(i64::MAX)),
        (&past_max, None),
        (
            &[
                0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            None,
        ),
    ];
    for (field, want) in cases {
        assert_eq!(numeric(field), want, "{field:?}");
    }

    // A header whose mode and uid have leading NULs: 0644 and 1000, not 0.
    let mut a = Vec::new();
    let h = with_field(block(b"f", b'0', 5), (100, b"\0\0\x00644\0\0"));
    let h = with_field(h, (108, b"\0\0\x001750\0"));
    member(&mut a, h, b"hello");
    a.extend_from_slice(&[0u8; 2 * BLOCK]);
    let got = all(&a).unwrap();
    assert_eq!((got[0].0.mode, got[0].0.uid), (0o644, 1000));
    assert_eq!(got[0].1, b"hello");

    // An octal field with a space inside is not a number (Go: "invalid tar header").
    let mut b = Vec::new();
    member(
        &mut b,
        with_field(block(b"f", b'0', 0), (108, b"1 2\0")),
        b"",
    );
    let err = all(&b).unwrap_err().to_string();
    assert!(err.contains("f: bad uid field"), "{err}");
}

#[test]
fn pax_times_read_as_go_reads_them() {
    let t = |sec, nsec| Some(Timestamp { sec, nsec });
    let cases: Vec<(&str, Option<Timestamp>)> = vec![
        ("1700000000", t(1_700_000_000, 0)),
        ("1700000000.5", t(1_700_000_000, 500_000_000)),
        ("1.1234567891", t(1, 123_456_789)),
        ("1.", t(1, 0)),
        ("+7", t(7, 0)),
        ("-315619200", t(-315_619_200, 0)),
        ("-315619200.5", t(-315_619_201, 500_000_000)),
        ("-0.25", t(-1, 750_000_000)),
        ("-1.000", t(-1, 0)),
        ("", None),
        (".5", None),
        ("--5", None),
        ("-+5", None),
        ("1.5x", None),
        ("1.1234567890x", None),
        ("1.-5", None),
        ("9223372036854775808", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_time(text.as_bytes()), want, "{text:?}");
    }
}

/// A file dated 1960: GNU tar writes its mtime negative in base-256 (`--format=gnu`, its
/// default) or as a PAX record `mtime=-315619199.75` (`--format=pax`); Python's tarfile a PAX
/// record. Go (docker, containerd, umoci) reads them all, and so do we.
#[test]
fn mtimes_before_1970_are_read() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("old"), b"1960").unwrap();
    let touched = Command::new("touch")
        .args(["-d", "1960-01-01 00:00:00.25 UTC"])
        .arg(src.join("old"))
        .status()
        .unwrap();
    assert!(touched.success());
    for (format, want) in [
        (
            "gnu",
            Timestamp {
                sec: -315_619_200,
                nsec: 0,
            },
        ),
        (
            "pax",
            Timestamp {
                sec: -315_619_200,
                nsec: 250_000_000,
            },
        ),
    ] {
        let out = Command::new("tar")
            .arg("-C")
            .arg(&src)
            .args(["--format", format, "-cf", "-", "old"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{format}");
        let got = all(&out.stdout).unwrap();
        assert_eq!(
            (got[0].0.mtime, &got[0].1[..]),
            (want, &b"1960"[..]),
            "{format}"
        );
    }

    let mut a = Vec::new();
    let records = pax(&[("mtime", "-315619200.5")]);
    member(&mut a, block(b"pax", b'x', records.len() as u64), &records);
    member(&mut a, block(b"py", b'0', 0), b"");
    a.extend_from_slice(&[0u8; 2 * BLOCK]);
    let got = all(&a).unwrap();
    assert_eq!(
        got[0].0.mtime,
        Timestamp {
            sec: -315_619_201,
            nsec: 500_000_000
        }
    );
}

/// One zero block then EOF, or two, end the archive; one zero block with more after it is an
/// error (Go's archive/tar: "invalid tar header"), not an end that hides the rest.
#[test]
fn a_lone_zero_block_before_more_entries_is_an_error() {
    let mut a1 = Vec::new();
    member(&mut a1, block(b"a1", b'0', 2), b"a1");
    let zero = [0u8; BLOCK];
    let mut b1 = Vec::new();
    member(&mut b1, block(b"b1", b'0', 2), b"b1");
    let cat = |parts: &[&[u8]]| parts.concat();
    let ends: Vec<(&str, Vec<u8>, usize)> = vec![
        ("one zero block", cat(&[&a1, &zero]), 1),
        ("two zero blocks", cat(&[&a1, &zero, &zero]), 1),
        ("two then more", cat(&[&a1, &zero, &zero, &b1]), 1),
        ("none", a1.clone(), 1),
    ];
    for (what, bytes, n) in ends {
        assert_eq!(all(&bytes).unwrap().len(), n, "{what}");
    }
    let err = all(&cat(&[&a1, &zero, &b1, &zero, &zero]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "a1: a lone zero block at byte 1024 before more entries (an archive ends with two)"
    );
    let err = all(&cat(&[&a1, &zero, &zero[..100]]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
}

/// An empty PAX value deletes the record (POSIX), so the ustar field stands: Go, GNU tar and
/// umoci read `path=` as no `path` record, not as an empty name (the root).
#[test]
fn an_empty_pax_value_leaves_the_ustar_field() {
    let mut ustar = block(b"ustar-name", b'2', 0);
    ustar = with_field(ustar, (157, b"ustar-link"));
    ustar = with_field(ustar, (108, b"0000007\0"));
    ustar = with_field(ustar, (116, b"0000011\0"));
    ustar = with_field(ustar, (136, b"00000000144\0"));
    let keys = [
        "path", "linkpath", "size", "uid", "gid", "mtime", "uname", "gname",
    ];
    for key in keys {
        // Empty alone, and empty after a value: the later record deletes the earlier.
        for records in [vec![(key, "")], vec![(key, "9"), (key, "")]] {
            let mut a = Vec::new();
            let records = pax(&records);
            member(&mut a, block(b"pax", b'x', records.len() as u64), &records);
            member(&mut a, ustar, b"");
            a.extend_from_slice(&[0u8; 2 * BLOCK]);
            let got = all(&a).unwrap_or_else(|e| panic!("{key}: {e}"));
            let h = &got[0].0;
            assert_eq!(
                (&h.path[..], &h.link[..], h.uid, h.gid, h.mtime.sec, h.size),
                (&b"ustar-name"[..], &b"ustar-link"[..], 7, 9, 100, 0),
                "{key}"
            );
        }
    }
}

/// What is wrong in a PAX header is reported under the name of the entry it was for (its GNU
/// or PAX name if it has one, else its header's), not the one before it.
#[test]
fn errors_in_extended_headers_name_the_entry_they_are_for() {
    let x = |records: &[(&str, &str)]| {
        let mut out = Vec::new();
        let records = pax(records);
        member(
            &mut out,
            block(b"pax", b'x', records.len() as u64),
            &records,
        );
        out
    };
    let lying = {
        // A record whose length says more than there is.
        let mut out = Vec::new();
        member(&mut out, block(b"pax", b'x', 13), b"99 path=evil\n");
        out
    };
    let mut before = Vec::new();
    member(&mut before, block(b"before", b'0', 0), b"");
    let mut entry = Vec::new();
    member(&mut entry, block(b"ustar-name", b'0', 0), b"");
    let mut long = Vec::new();
    member(&mut long, block(b"././@LongLink", b'L', 9), b"gnu-name\0");
    let zeros = [0u8; 2 * BLOCK];
    let cat = |parts: &[&[u8]]| parts.concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad size",
            cat(&[&before, &x(&[("size", "12x")]), &entry, &zeros]),
            "ustar-name: bad PAX size \"12x\"",
        ),
        (
            "bad mtime, PAX path",
            cat(&[
                &before,
                &x(&[("path", "pax-name"), ("mtime", "1.x")]),
                &entry,
            ]),
            "pax-name: bad PAX mtime \"1.x\"",
        ),
        (
            "bad uid, GNU name",
            cat(&[&before, &x(&[("uid", "-1")]), &long, &entry, &zeros]),
            "gnu-name: bad PAX uid \"-1\"",
        ),
        (
            "malformed record",
            cat(&[&before, &lying, &entry, &zeros]),
            "ustar-name: malformed PAX record (length does not match)",
        ),
        (
            "malformed record, then the stream cut",
            cat(&[&before, &lying, &entry[..100]]),
            "<entry after before>: malformed PAX record (length does not match)",
        ),
        (
            "malformed record, then the end",
            cat(&[&lying, &zeros]),
            "<first entry>: malformed PAX record (length does not match)",
        ),
        (
            "sparse",
            cat(&[
                &before,
                &x(&[("GNU.sparse.major", "1"), ("GNU.sparse.name", "real")]),
                &entry,
            ]),
            "real: GNU sparse files are not supported in layers",
        ),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(all(&bytes).unwrap_err().to_string(), want, "{what}");
    }

    // A sparse file as GNU tar writes it (PAX format 1.0, its name a placeholder).
    let t = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(t.path().join("holes")).unwrap();
    f.set_len(1 << 20).unwrap();
    let out = Command::new("tar")
        .arg("-C")
        .arg(t.path())
        .args(["--format=pax", "--sparse", "-cf", "-", "holes"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = all(&out.stdout).unwrap_err().to_string();
    assert_eq!(err, "holes: GNU sparse files are not supported in layers");
}

/// Go's archive/tar (docker, containerd, umoci) takes the last PAX header before an entry, not
/// a merge of all, and returns a global header as an entry of its own, so nothing read before
/// one applies to the entry after it.
#[test]
fn the_last_pax_header_counts_and_a_global_header_ends_what_came_before() {
    let x = |flag: u8, records: &[(&str, &str)]| {
        let mut out = Vec::new();
        let records = pax(records);
        member(
            &mut out,
            block(b"pax", flag, records.len() as u64),
            &records,
        );
        out
    };
    let mut entry = Vec::new();
    member(&mut entry, block(b"ustar-name", b'0', 0), b"");
    let mut long = Vec::new();
    member(&mut long, block(b"././@LongLink", b'L', 9), b"gnu-name\0");
    let cat = |parts: &[&[u8]]| [parts.concat(), vec![0u8; 2 * BLOCK]].concat();
    let cases: Vec<(&str, Vec<u8>, (&str, u32))> = vec![
        (
            "two PAX headers",
            cat(&[
                &x(b'x', &[("path", "pax-name")]),
                &x(b'x', &[("uid", "5")]),
                &entry,
            ]),
            ("ustar-name", 5),
        ),
        (
            "GNU name, then two PAX headers",
            cat(&[
                &long,
                &x(b'x', &[("uid", "5")]),
                &x(b'x', &[("gid", "6")]),
                &entry,
            ]),
            ("gnu-name", 0),
        ),
        (
            "PAX header, then a global one",
            cat(&[
                &x(b'x', &[("path", "pax-name"), ("uid", "5")]),
                &x(b'g', &[("uid", "7")]),
                &entry,
            ]),
            ("ustar-name", 0),
        ),
        (
            "GNU name, then a global header",
            cat(&[&long, &x(b'g', &[]), &entry]),
            ("ustar-name", 0),
        ),
    ];
    for (what, bytes, (name, uid)) in cases {
        let got = all(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got.len(), 1, "{what}");
        assert_eq!(
            (&got[0].0.path[..], got[0].0.uid),
            (name.as_bytes(), uid),
            "{what}"
        );
    }
    // A PAX header that cannot be parsed is reported though a good one follows.
    let mut lying = Vec::new();
    member(&mut lying, block(b"pax", b'x', 13), b"99 path=evil\n");
    let err = all(&cat(&[&lying, &x(b'x', &[("uid", "5")]), &entry])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ustar-name: malformed PAX record (length does not match)"
    );
}
