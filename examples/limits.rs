//! Reference limits for `tools/bench`: reads every file below a directory on
//! all cores and reports MB/s for reading alone, reading + BLAKE3, and
//! reading + zstd at Strata's default level, on 1 MiB pieces.
//! Usage: limits DIR [hash|zstd|read]...

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("listing") {
        let entry = entry.expect("entry");
        let ft = entry.file_type().expect("type");
        if ft.is_dir() {
            files(&entry.path(), out);
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
}

fn run(paths: &[PathBuf], mode: &str) -> (u64, f64) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (tx, rx) = crossbeam_channel::bounded::<&PathBuf>(64);
    let started = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut compressor = zstd::bulk::Compressor::new(3).unwrap();
                    let mut bytes = 0u64;
                    for path in rx {
                        let mut f = std::fs::File::open(path).expect("open");
                        loop {
                            let n = f.read(&mut buf).expect("read");
                            if n == 0 {
                                break;
                            }
                            bytes += n as u64;
                            match mode {
                                "hash" => {
                                    std::hint::black_box(blake3::hash(&buf[..n]));
                                }
                                "zstd" => {
                                    std::hint::black_box(compressor.compress(&buf[..n]).unwrap());
                                }
                                _ => {}
                            }
                        }
                    }
                    bytes
                })
            })
            .collect();
        for p in paths {
            tx.send(p).unwrap();
        }
        drop(tx);
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    (total, started.elapsed().as_secs_f64())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: limits DIR [read|hash|zstd]..."));
    let modes: Vec<String> = args.collect();
    let mut paths = Vec::new();
    files(&dir, &mut paths);
    for mode in if modes.is_empty() {
        vec!["read".into(), "hash".into(), "zstd".into()]
    } else {
        modes
    } {
        let (bytes, secs) = run(&paths, &mode);
        println!(
            "{mode:5} {:8.1} MB/s ({bytes} bytes in {secs:.2}s)",
            bytes as f64 / 1e6 / secs
        );
    }
}
