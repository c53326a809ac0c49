//! The layer-index decoder on arbitrary bodies (sealed with a valid checksum, so the parser
//! itself is reached): never a panic or a runaway allocation, and what decodes encodes back to
//! the same bytes.
#![no_main]

use layerdiff::squash_index::{decode, encode, seal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let data = seal(body.to_vec());
    if let Some(index) = decode(&data, 0) {
        assert_eq!(encode(&index), data);
    }
});
