//! Sequential reads through the mount, served by the parallel read-ahead:
//! exact bytes for a file of many chunks, read whole and by several readers
//! at once, and a damaged chunk in the middle of a read-ahead window gives
//! EIO where it lies, with every byte before it right and none after it
//! made up.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use rand::SeedableRng;

use crate::mount::{fuse_test_repo, MountGuard};
use crate::util::*;

const LEN: usize = 24 << 20;
const DAMAGED_AT: usize = 12 << 20;

/// Reads `path` from `from` in 1 MiB requests until the end or an error;
/// returns what was read and the error, if any.
fn read_sequentially(path: &Path, from: u64) -> (Vec<u8>, Option<std::io::Error>) {
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(from)).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

#[test]
fn sequential_readers_get_exact_bytes_and_damage_gives_eio() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let content = random_bytes(&mut rng, LEN);
    std::fs::write(src.join("good"), &content).unwrap();
    let victim = random_bytes(&mut rng, LEN);
    std::fs::write(src.join("victim"), &victim).unwrap();
    t.backup(&src, "s");
    // Flip one bit of the victim's chunk holding byte DAMAGED_AT.
    flip_stored_byte(&t, "s@latest", &src.join("victim"), DAMAGED_AT as u64);
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let dir = under(&mnt.join("files/s/latest"), &src);

    // Four readers of the same file at once, each sequential.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let (read, err) = read_sequentially(&dir.join("good"), 0);
                assert!(err.is_none(), "{err:?}");
                assert!(read == content, "wrong bytes through the read-ahead");
            });
        }
    });

    let (read, err) = read_sequentially(&dir.join("victim"), 0);
    let err = err.expect("reading across the damaged chunk fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        read.len() <= DAMAGED_AT,
        "bytes of the damaged chunk were served"
    );
    assert!(
        read == victim[..read.len()],
        "wrong bytes before the damage"
    );
    // Past the damaged chunk (chunks are at most 2 MiB), reading goes on.
    let after = DAMAGED_AT + (4 << 20);
    let (read, err) = read_sequentially(&dir.join("victim"), after as u64);
    assert!(err.is_none(), "{err:?}");
    assert!(read == victim[after..], "wrong bytes after the damage");
}
