//! The tar reader on arbitrary bytes: every header and all content read, never a panic or a
//! hang; errors are fine.
#![no_main]

use std::io::Read;

use layerdiff::tar::reader::TarReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = TarReader::new(data);
    let mut sink = Vec::new();
    while let Ok(Some(_)) = reader.next_header() {
        sink.clear();
        if reader.read_to_end(&mut sink).is_err() {
            break;
        }
    }
});
