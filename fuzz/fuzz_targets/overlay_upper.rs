//! The overlay-upper reader on arbitrary upper directories: the input is a little program that
//! builds one (files, directories, symlinks, 0/0 whiteouts, opaque and redirect xattrs), then
//! `diff_overlay` reads it. Never a panic; errors are fine.
#![no_main]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use layerdiff::diff::{DiffOptions, diff_overlay};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("layerdiff-fuzz-upper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

const NAMES: [&str; 6] = ["a", "b", ".wh.c", "d", ".wh..wh..opq", "e"];
const XATTRS: [(&str, &[u8]); 5] = [
    ("trusted.overlay.opaque", b"y"),
    ("user.overlay.opaque", b"x"),
    ("trusted.overlay.redirect", b"/a"),
    ("trusted.overlay.metacopy", b""),
    ("trusted.overlay.whiteout", b""),
];

fn build(upper: &Path, program: &[u8]) {
    let mut dir = upper.to_path_buf();
    for op in program.chunks(2) {
        let (code, arg) = (op[0], *op.get(1).unwrap_or(&0));
        let path = dir.join(NAMES[arg as usize % NAMES.len()]);
        let _ = match code % 7 {
            0 => std::fs::create_dir(&path).map(|()| dir = path),
            1 => std::fs::write(&path, [arg]),
            2 => symlink(NAMES[(arg / 7) as usize % NAMES.len()], &path),
            3 => rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, u32::from(arg % 2)),
            )
            .map_err(Into::into),
            4 => {
                let (k, v) = XATTRS[arg as usize % XATTRS.len()];
                rustix::fs::lsetxattr(&dir, k, v, rustix::fs::XattrFlags::empty())
                    .map_err(Into::into)
            }
            5 => {
                dir = upper.to_path_buf();
                Ok(())
            }
            _ => std::fs::hard_link(upper.join("a"), &path),
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let upper = scratch().join("upper");
    let _ = std::fs::remove_dir_all(&upper);
    std::fs::create_dir_all(&upper).unwrap();
    build(&upper, &data[..data.len().min(64)]);
    let _ = diff_overlay(&upper, &[], &DiffOptions::default());
});
