//! Throughput of each CPU stage of ingest, alone, on the same data: BLAKE3,
//! zstd (the configured level), FastCDC, and Strata's chunk codec with and
//! without encryption (compression at level 1, then AES-256-GCM).
//! These are the limits that `tools/bench` compares backups against.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{RngCore, SeedableRng};
use strata::chunker::chunk_lengths;
use strata::config::ChunkerParams;
use strata::crypto::{MasterKey, Protection};
use strata::id::ChunkId;
use strata::pack::{ChunkCodec, ChunkKind};

fn data_sets() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut random = vec![0u8; 16 << 20];
    rng.fill_bytes(&mut random);
    let words = [
        "alpha ", "storage ", "chunk ", "pack\n", "index ", "restore ", "point ",
    ];
    let mut text = Vec::with_capacity(16 << 20);
    let mut i = 0u64;
    while text.len() < 16 << 20 {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.extend_from_slice(words[(i >> 33) as usize % words.len()].as_bytes());
    }
    vec![("random", random), ("text", text)]
}

fn stages(c: &mut Criterion) {
    let params = ChunkerParams::DEFAULT;
    for (name, data) in data_sets() {
        let mut group = c.benchmark_group(format!("stage/{name}"));
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.sample_size(10);
        group.bench_with_input(BenchmarkId::new("blake3", name), &data, |b, d| {
            b.iter(|| {
                d.chunks(1 << 20)
                    .map(|c| ChunkId::of(c).0[0])
                    .fold(0u8, |a, x| a ^ x)
            })
        });
        group.bench_with_input(BenchmarkId::new("zstd-3", name), &data, |b, d| {
            let mut compressor = zstd::bulk::Compressor::new(3).unwrap();
            b.iter(|| {
                d.chunks(1 << 20)
                    .map(|c| compressor.compress(c).unwrap().len())
                    .sum::<usize>()
            })
        });
        group.bench_with_input(BenchmarkId::new("fastcdc", name), &data, |b, d| {
            b.iter(|| chunk_lengths(d, &params).len())
        });
        let sealed = Protection::encrypted(&MasterKey::generate().unwrap());
        for (label, protection) in [("chunk-codec", Protection::none()), ("chunk-codec-sealed", sealed)] {
            group.bench_with_input(BenchmarkId::new(label, name), &data, |b, d| {
                let mut encoder = ChunkCodec::with_protection(1, protection.clone())
                    .encoder()
                    .unwrap();
                b.iter(|| {
                    d.chunks(1 << 20)
                        .map(|c| {
                            encoder
                                .encode(ChunkId([0; 32]), ChunkKind::Data, c)
                                .unwrap()
                                .bytes
                                .len()
                        })
                        .sum::<usize>()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, stages);
criterion_main!(benches);
