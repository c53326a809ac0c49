//! Telling, cheaply, how little deflate would gain on a gzip member's bytes.
//!
//! Already-compressed content (`.deb`, `.xz`, `.zst`, `.woff2`, most `.gz`) is where deflate
//! is slowest and gains least: libdeflate level 4 runs at 66 MB/s on the `.deb` files of a
//! Debian rootfs and makes them 0.02 % smaller. Such a member is better stored (deflate's
//! block type 0, a copy). The estimate here runs at 250–420 MB/s on such data and stops within
//! the first 32 KiB or two of compressible data: 0.08 s over the whole tar of a Debian
//! rootfs. What deflate can gain comes from two sources, and the
//! estimate adds up both:
//!
//! * **Huffman coding** of the bytes: for each 32 KiB, the bits an order-0 code would save
//!   (`8 - entropy` per byte), which is what deflate's per-block codes get on data without
//!   repeats;
//! * **repeats** within deflate's 32 KiB window: a sample of positions picked by their
//!   content (one in 16, so both copies of a repeat are sampled alike) is kept in a small
//!   table, and each repeat found is extended and counted whole.
//!
//! A member is stored when the estimate stays under 1 % of its size, and deflated at
//! libdeflate's fastest level (which finds the long repeats, tar headers and padding, that
//! such data still has) when it stays under 2 %. Measured in 1 MiB pieces against libdeflate
//! level 2 (the default) everywhere, deflate's CPU time (the estimate's own not counted) and
//! the output's size:
//!
//! | content | time | size |
//! |---|---|---|
//! | Debian 12 minbase rootfs, as a tar (204 MB) | 0.78 | +0.07 % |
//! | its `.deb` files (159 MB) | 0.00 | +0.03 % |
//! | `.woff2` fonts (25 MB) | 0.00 | +0.16 % |
//! | `.gz` files (66 MB) | 0.11 | +0.21 % |
//! | `.zst` files (200 MB) | 0.01 | +0.21 % |
//! | `.whl` (32 MB), `.zip` (56 MB) | 0.52, 0.78 | +0.45 %, +0.08 % |
//! | `.jar` (200 MB), `.png` (12 MB) | 0.91, 0.99 | +0.03 %, 0.00 % |
//!
//! Storing below 1 % rather than 0.25 % costs the Debian tar 63 kB: 21 MB of its members are
//! estimated between the two, and the fastest level made them 0.3 % smaller, for 0.22 s of
//! CPU time, a seventh of the whole layer's deflate time.
//!
//! The choice is a function of the bytes alone, so output stays deterministic.

/// Stored when deflate is estimated to save less than this fraction (1/100: 1 %).
const STORE_BELOW: f64 = 1.0 / 100.0;
/// Deflated at libdeflate's fastest level when it is estimated to save less than this (2 %).
const FAST_BELOW: f64 = 1.0 / 50.0;
/// Bytes whose entropy is taken together: deflate's window.
const CHUNK: usize = 32 << 10;
/// Farthest back a repeat counts (deflate's window).
const WINDOW: usize = 32 << 10;
/// Longest repeat deflate codes as one match.
const MAX_MATCH: usize = 258;
/// Sampled positions: those whose 8-byte hash has its top 4 bits clear (one in 16).
const SAMPLE_SHIFT: u32 = 60;
/// log2 of the slots in the table of sampled positions.
const TABLE_BITS: u32 = 12;

/// How much work deflating a member is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    /// Deflate would save under 1 %: store the bytes.
    Store,
    /// Deflate would save under 2 %: its fastest level gets that as well as any.
    Fast,
    /// Compressible: the level asked for.
    Full,
}

impl Effort {
    /// The libdeflate level this effort deflates at, `asked` being the level asked for.
    pub fn level(self, asked: i32) -> i32 {
        match self {
            Effort::Store => 0,
            Effort::Fast => 1,
            Effort::Full => asked,
        }
    }
}

/// How much deflating `data` is worth, by an estimate of what deflate would save.
pub fn effort(data: &[u8]) -> Effort {
    let n = data.len() as f64;
    // An empty input's bound is 0, which its gain of 0 reaches: it is deflated like the rest.
    let fast_below = (n * FAST_BELOW).ceil() as usize;
    let gain = estimated_gain(data, fast_below);
    if gain >= fast_below {
        Effort::Full
    } else if (gain as f64) < n * STORE_BELOW {
        Effort::Store
    } else {
        Effort::Fast
    }
}

/// Bytes deflate is estimated to save on `data`, counting no further than `enough`.
fn estimated_gain(data: &[u8], enough: usize) -> usize {
    let mut gain = 0.0;
    for chunk in data.chunks(CHUNK) {
        gain += huffman_gain(chunk);
        if gain >= enough as f64 {
            return enough;
        }
    }
    let gain = gain as usize;
    gain + repeated_bytes(data, enough - gain)
}

/// Bytes an order-0 code of `chunk` saves against 8 bits a byte.
fn huffman_gain(chunk: &[u8]) -> f64 {
    // Four histograms, so that a run of one byte value does not serialise the increments.
    let mut hist = [[0u32; 256]; 4];
    let mut words = chunk.chunks_exact(4);
    for w in &mut words {
        hist[0][usize::from(w[0])] += 1;
        hist[1][usize::from(w[1])] += 1;
        hist[2][usize::from(w[2])] += 1;
        hist[3][usize::from(w[3])] += 1;
    }
    for &b in words.remainder() {
        hist[0][usize::from(b)] += 1;
    }
    let n = chunk.len() as f64;
    // n * entropy = -sum(c * log2(c / n)); the gain is n * 8 - n * entropy, in bits.
    let mut bits = n * 8.0;
    let [a, b, c, d] = &hist;
    for (((a, b), c), d) in a.iter().zip(b).zip(c).zip(d) {
        let c = f64::from(a + b + c + d);
        if c > 0.0 {
            bits += c * (c / n).log2();
        }
    }
    bits / 8.0
}

/// Bytes of `data` found to repeat something at most [`WINDOW`] bytes before them, counting
/// no further than `enough`.
fn repeated_bytes(data: &[u8], enough: usize) -> usize {
    let mut table = [u32::MAX; 1 << TABLE_BITS];
    let mut found = 0;
    let mut q = 0;
    while q + 8 <= data.len() && found < enough {
        let word = u64::from_le_bytes(data[q..q + 8].try_into().expect("8 bytes"));
        let h = word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if h >> SAMPLE_SHIFT == 0 {
            let slot = (h >> (SAMPLE_SHIFT - TABLE_BITS)) as usize & ((1 << TABLE_BITS) - 1);
            let p = table[slot] as usize;
            table[slot] = q as u32;
            if p != u32::MAX as usize && q - p <= WINDOW && data[p..p + 8] == data[q..q + 8] {
                let mut len = 8;
                while len < MAX_MATCH && q + len < data.len() && data[p + len] == data[q + len] {
                    len += 1;
                }
                found += len;
                q += len;
                continue;
            }
        }
        q += 1;
    }
    found
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bytes from a fixed xorshift generator: no repeats, entropy ~8 bits a byte.
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// The raw deflate stream libdeflate makes of `data` at `level`.
    pub(crate) fn deflated(level: i32, data: &[u8]) -> Vec<u8> {
        let lvl = libdeflater::CompressionLvl::new(level).unwrap();
        let mut c = libdeflater::Compressor::new(lvl);
        let mut out = vec![0; c.deflate_compress_bound(data.len())];
        let n = c.deflate_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn deflated_len(data: &[u8]) -> usize {
        deflated(4, data).len()
    }

    #[test]
    fn the_member_framing_version_goes_with_these_thresholds() {
        // A squash takes a source's member when its tag's version is ours: whoever changes
        // what is stored or deflated fast changes the bytes, and must raise the version too.
        assert_eq!(
            (crate::members::TAG_VERSION, STORE_BELOW, FAST_BELOW),
            (3, 0.01, 0.02)
        );
    }

    #[test]
    fn efforts_deflate_at_store_fast_and_the_level_asked_for() {
        let efforts = [Effort::Store, Effort::Fast, Effort::Full];
        assert_eq!(efforts.map(|e| e.level(6)), [0, 1, 6]);
        assert_eq!(efforts.map(|e| e.level(9)), [0, 1, 9]);
    }

    #[test]
    fn noise_is_stored_and_deflate_agrees() {
        let data = noise(1 << 20, 7);
        assert_eq!(effort(&data), Effort::Store);
        assert!(deflated_len(&data) as f64 > data.len() as f64 * (1.0 - STORE_BELOW));
    }

    #[test]
    fn text_and_zeros_are_deflated() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("Package: lib{i}\nVersion: 1.{}\n", i % 7).into_bytes())
            .collect();
        assert_eq!(effort(&text), Effort::Full);
        assert_eq!(effort(&vec![0; 1 << 20]), Effort::Full);
        assert_eq!(effort(&[]), Effort::Full);
    }

    #[test]
    fn noise_repeated_within_the_window_is_deflated() {
        // Every byte is uniformly distributed (no Huffman gain), but each 4 KiB appears twice:
        // deflate halves it, and the repeat count must see that.
        let block = noise(4096, 3);
        let data: Vec<u8> = (0..128)
            .flat_map(|i| {
                if i % 2 == 0 {
                    noise(4096, i + 11)
                } else {
                    block.clone()
                }
            })
            .collect();
        assert!(deflated_len(&data) < data.len() * 3 / 4);
        assert_eq!(effort(&data), Effort::Full);
    }

    #[test]
    fn noise_with_a_little_text_is_deflated_fast() {
        // 1 MiB of noise with 2 % of it text: deflate gains more than storing would lose, and
        // less than the fast level's bound.
        let mut data = noise(1 << 20, 5);
        let text = b"usr/share/doc/libc6/changelog.Debian.gz\0\0\0\0\0\0\0\0";
        for (i, chunk) in data.chunks_mut(4096).enumerate() {
            if i % 2 == 0 {
                for (d, t) in chunk.iter_mut().zip(text.iter().cycle().take(160)) {
                    *d = *t;
                }
            }
        }
        let gain = 1.0 - deflated_len(&data) as f64 / data.len() as f64;
        assert!(
            gain > STORE_BELOW && gain < FAST_BELOW,
            "deflate gains {gain}"
        );
        assert_eq!(effort(&data), Effort::Fast);
    }
}
