//! Apply of arbitrary bytes (as tar, or gzip/zstd when the magic says so) into a scratch root:
//! never a panic, and nothing ever appears beside the root.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use layerdiff::apply::{ApplyOptions, apply_layer};
use layerdiff::cancel::NEVER;
use layerdiff::root::Root;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("layerdiff-fuzz-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let arena = scratch();
    let root_path = arena.join("root");
    let _ = std::fs::remove_dir_all(&root_path);
    let root = Root::open(&root_path).unwrap();
    let opts = ApplyOptions {
        chown: false,
        max_size: 64 << 20,
        ..ApplyOptions::default()
    };
    let _ = apply_layer(&root, data, &opts, &NEVER);
    let beside: Vec<_> = std::fs::read_dir(arena)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside,
        vec!["root"],
        "apply created something outside its root"
    );
});
