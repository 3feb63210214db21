//! Content-defined chunking of file data with FastCDC (2020 variant).
//!
//! [`StreamChunker`] cuts a stream exactly as FastCDC would cut the whole
//! stream held in memory: a chunk that ends before the end of the buffered
//! bytes is final (its cut point depends only on bytes already seen), and
//! the one that runs into the end of the buffer is carried over until more
//! data or the end of the stream arrives. Boundaries therefore do not
//! depend on read sizes, which the property tests check.

#![deny(clippy::cast_possible_truncation)]

use std::io::{self, Read};

use fastcdc::v2020::{FastCDC, Normalization};

use crate::codec::min_len;
use crate::config::ChunkerParams;

/// Read buffer; at least twice the largest chunk so that one read always
/// yields at least one final chunk.
const MIN_BUFFER: usize = 4 << 20;

pub struct StreamChunker {
    params: ChunkerParams,
    /// Mixed into FastCDC's gear table: 0 (none) in unencrypted
    /// repositories, secret in encrypted ones, so that cut points, and with
    /// them the sizes of stored chunks, do not fingerprint known files.
    seed: u64,
    buf: Vec<u8>,
}

impl StreamChunker {
    pub fn new(params: ChunkerParams) -> Self {
        Self::with_seed(params, 0)
    }

    pub fn with_seed(params: ChunkerParams, seed: u64) -> Self {
        let size = MIN_BUFFER.max(2 * params.max_size as usize);
        StreamChunker {
            params,
            seed,
            buf: vec![0; size],
        }
    }

    /// Reads up to `limit` bytes from `reader`, handing each chunk to
    /// `on_chunk` in order. Returns the number of bytes read, which is less
    /// than `limit` only when the stream ended early.
    pub fn chunk<R: Read, E: From<io::Error>>(
        &mut self,
        reader: &mut R,
        limit: u64,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let p = &self.params;
        let mut filled = 0usize;
        let mut total = 0u64;
        let mut eof = false;
        while !eof || filled > 0 {
            while !eof && filled < self.buf.len() {
                let want = min_len(limit - total, self.buf.len() - filled);
                if want == 0 {
                    eof = true;
                    break;
                }
                match reader.read(&mut self.buf[filled..filled + want]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        filled += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if filled == 0 {
                break;
            }
            let mut consumed = 0;
            let cuts = FastCDC::with_level_and_seed(
                &self.buf[..filled],
                p.min_size,
                p.avg_size,
                p.max_size,
                Normalization::Level1,
                self.seed,
            );
            for chunk in cuts {
                let end = chunk.offset + chunk.length;
                if end == filled && !eof {
                    break;
                }
                on_chunk(&self.buf[chunk.offset..end])?;
                consumed = end;
            }
            self.buf.copy_within(consumed..filled, 0);
            filled -= consumed;
        }
        Ok(total)
    }
}

/// Chunk lengths FastCDC gives for `data` held whole in memory.
pub fn chunk_lengths(data: &[u8], p: &ChunkerParams) -> Vec<usize> {
    FastCDC::new(data, p.min_size, p.avg_size, p.max_size)
        .map(|c| c.length)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SMALL: ChunkerParams = ChunkerParams {
        min_size: 64,
        avg_size: 256,
        max_size: 1024,
    };

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    /// A reader that returns at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn streamed(data: &[u8], params: ChunkerParams, step: usize) -> Vec<usize> {
        let mut chunker = StreamChunker::new(params);
        chunker.buf = vec![0; 4 * params.max_size as usize];
        let mut lengths = vec![];
        chunker
            .chunk::<_, io::Error>(&mut Trickle(data, step), u64::MAX, |c| {
                lengths.push(c.len());
                Ok(())
            })
            .unwrap();
        lengths
    }

    proptest! {
        #[test]
        fn streaming_matches_whole_buffer(len in 0usize..20_000, seed: u64, step in 1usize..5000) {
            let data = pseudo_random(len, seed);
            prop_assert_eq!(streamed(&data, SMALL, step), chunk_lengths(&data, &SMALL));
        }

        #[test]
        fn chunks_respect_bounds(len in 1usize..20_000, seed: u64) {
            let data = pseudo_random(len, seed);
            let lengths = chunk_lengths(&data, &SMALL);
            prop_assert_eq!(lengths.iter().sum::<usize>(), len);
            for (i, l) in lengths.iter().enumerate() {
                prop_assert!(*l <= SMALL.max_size as usize);
                if i + 1 < lengths.len() {
                    prop_assert!(*l >= SMALL.min_size as usize);
                }
            }
        }
    }

    /// A seeded chunker cuts elsewhere than an unseeded one, the same way
    /// every time, and still within the bounds.
    #[test]
    fn a_seed_moves_cut_points_deterministically() {
        let data = pseudo_random(64 << 20, 5);
        let cut = |seed| {
            let mut lengths = Vec::new();
            StreamChunker::with_seed(ChunkerParams::DEFAULT, seed)
                .chunk::<_, io::Error>(&mut &data[..], u64::MAX, |c| {
                    lengths.push(c.len());
                    Ok(())
                })
                .unwrap();
            lengths
        };
        let (plain, seeded) = (cut(0), cut(0x5eed_1234_abcd_0001));
        assert_eq!(plain, chunk_lengths(&data, &ChunkerParams::DEFAULT));
        assert_ne!(plain, seeded);
        assert_eq!(seeded, cut(0x5eed_1234_abcd_0001));
        assert_eq!(seeded.iter().sum::<usize>(), data.len());
        let max = ChunkerParams::DEFAULT.max_size as usize;
        assert!(seeded.iter().all(|l| *l <= max));
    }

    #[test]
    fn limit_stops_reading() {
        let data = pseudo_random(10_000, 7);
        let mut chunker = StreamChunker::new(SMALL);
        let mut sum = 0;
        let read = chunker
            .chunk::<_, io::Error>(&mut &data[..], 3000, |c| {
                sum += c.len();
                Ok(())
            })
            .unwrap();
        assert_eq!((read, sum), (3000, 3000));
    }

    /// Pinned boundaries of the production parameters on a seeded input: a
    /// silent change to FastCDC or its parameters would break deduplication
    /// against every existing repository.
    #[test]
    fn default_boundaries_are_pinned() {
        let data = pseudo_random(24 << 20, 42);
        let lengths = chunk_lengths(&data, &ChunkerParams::DEFAULT);
        let text = lengths.iter().map(|l| format!("{l}\n")).collect::<String>();
        crate::codec::assert_golden("fastcdc_default_lengths.txt", text.as_bytes());
    }
}
