//! RocksIndex against a real RocksDB in a temporary directory.
use super::*;
use crate::pack::{ChunkKind, Compression};

/// Bytes this thread has read through system calls so far; RocksDB
/// reads table blocks on the thread that looks up.
fn thread_read_bytes() -> u64 {
    let tid = nix::unistd::gettid();
    let io = std::fs::read_to_string(format!("/proc/self/task/{tid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn chunk_id(n: u64) -> ChunkId {
    ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn pack_id(n: u64) -> PackId {
    PackId(
        blake3::hash(&n.to_be_bytes()).as_bytes()[..16]
            .try_into()
            .unwrap(),
    )
}

fn entry(n: u64) -> PackEntry {
    PackEntry {
        id: chunk_id(n),
        offset: n * 4096,
        stored_len: 4000,
        raw_len: 8000,
        kind: ChunkKind::Data,
        compression: Compression::Zstd,
    }
}

fn record(tier: Tier, chunks: u64) -> PackRecord {
    PackRecord {
        tier,
        metadata: false,
        size: chunks * 4096,
        chunk_count: chunks as u32,
        live_bytes: chunks * 4000,
        created: 1_700_000_000,
    }
}

fn create(dir: &tempfile::TempDir) -> RocksIndex {
    RocksIndex::open(&dir.path().join("index"), IndexAccess::Create).unwrap()
}

#[test]
fn added_packs_index_their_chunks_by_tier() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(&dir);
    let warm: Vec<PackEntry> = (0..3).map(entry).collect();
    let cold: Vec<PackEntry> = (3..5).map(entry).collect();
    index
        .add_pack(pack_id(0), &record(Tier::Warm, 3), &warm)
        .unwrap();
    index
        .add_pack(pack_id(1), &record(Tier::Cold, 2), &cold)
        .unwrap();

    let location = index.chunk(&chunk_id(1)).unwrap().unwrap();
    assert_eq!(
        location,
        ChunkLocation {
            pack: pack_id(0),
            tier: Tier::Warm,
            entry: entry(1),
        }
    );
    assert_eq!(index.chunk(&chunk_id(4)).unwrap().unwrap().tier, Tier::Cold);
    assert_eq!(index.chunk(&chunk_id(9)).unwrap(), None);
    assert!(index.has_chunk(&chunk_id(3)).unwrap());
    assert!(!index.has_chunk(&chunk_id(9)).unwrap());
    assert!(index.has_warm_chunk(&chunk_id(2)).unwrap());
    assert!(!index.has_warm_chunk(&chunk_id(3)).unwrap());
    assert!(!index.has_warm_chunk(&chunk_id(9)).unwrap());

    let ids: Vec<ChunkId> = [2, 3, 9, 0].map(chunk_id).to_vec();
    assert_eq!(index.warm_chunks(&ids).unwrap(), [true, false, false, true]);
    assert!(index
        .has_all_warm_chunks(&[chunk_id(0), chunk_id(2)])
        .unwrap());
    assert!(!index.has_all_warm_chunks(&ids).unwrap());
    assert!(index.has_all_warm_chunks(&[]).unwrap());

    let mut all: Vec<ChunkId> = index.chunks().map(|l| l.unwrap().entry.id).collect();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "chunks in id order");
    all.sort();
    let mut expected: Vec<ChunkId> = (0..5).map(chunk_id).collect();
    expected.sort();
    assert_eq!(all, expected);
    let packs: Vec<(PackId, PackRecord)> = index.packs().map(Result::unwrap).collect();
    assert_eq!(packs.len(), 2);
    assert!(packs.contains(&(pack_id(1), record(Tier::Cold, 2))));
}

#[test]
fn removing_a_pack_removes_only_the_given_chunks_still_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(&dir);
    let entries: Vec<PackEntry> = (0..4).map(entry).collect();
    index
        .add_pack(pack_id(0), &record(Tier::Warm, 4), &entries)
        .unwrap();
    // Chunk 3 was repacked: its record now points at pack 1.
    index
        .add_pack(pack_id(1), &record(Tier::Warm, 1), &[entry(3)])
        .unwrap();

    index
        .remove_pack(&pack_id(0), &[chunk_id(0), chunk_id(1), chunk_id(3)])
        .unwrap();

    assert!(!index.has_chunk(&chunk_id(0)).unwrap());
    assert!(!index.has_chunk(&chunk_id(1)).unwrap());
    // Not named: left for the caller to account for.
    assert_eq!(index.chunk(&chunk_id(2)).unwrap().unwrap().pack, pack_id(0));
    assert_eq!(index.chunk(&chunk_id(3)).unwrap().unwrap().pack, pack_id(1));
    let packs: Vec<PackId> = index.packs().map(|p| p.unwrap().0).collect();
    assert_eq!(packs, [pack_id(1)]);
}

#[test]
fn catalog_lists_what_was_added_and_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(&dir);
    let a = RestorePointId([1; 32]);
    let b = RestorePointId([2; 32]);
    index.add_restore_point(&a, b"manifest a").unwrap();
    index.add_restore_point(&b, b"manifest b").unwrap();
    assert_eq!(
        index.restore_points().unwrap(),
        [(a, b"manifest a".to_vec()), (b, b"manifest b".to_vec())]
    );
    index.remove_restore_point(&a).unwrap();
    assert_eq!(
        index.restore_points().unwrap(),
        [(b, b"manifest b".to_vec())]
    );
    // Removing what is not there is no error: forget may be re-run.
    index.remove_restore_point(&a).unwrap();
}

#[test]
fn thaw_marks_are_set_listed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(&dir);
    let pack = pack_id(7);
    let rp = RestorePointId([3; 32]);
    assert_eq!(index.pack_thawed_until(&pack).unwrap(), None);
    assert!(index.thaws().unwrap().is_empty());

    index.set_pack_thawed(&pack, 100).unwrap();
    index.set_restore_point_thawed(&rp, 200).unwrap();
    index.set_pack_thawed(&pack, 150).unwrap();
    assert_eq!(index.pack_thawed_until(&pack).unwrap(), Some(150));
    assert_eq!(index.restore_point_thawed_until(&rp).unwrap(), Some(200));
    let marks = index.thaws().unwrap();
    assert_eq!(
        marks,
        [
            ThawMark {
                target: ThawTarget::Pack(pack),
                until: 150
            },
            ThawMark {
                target: ThawTarget::RestorePoint(rp),
                until: 200
            },
        ]
    );

    index.remove_thaw(&ThawTarget::Pack(pack)).unwrap();
    assert_eq!(index.pack_thawed_until(&pack).unwrap(), None);
    assert_eq!(index.restore_point_thawed_until(&rp).unwrap(), Some(200));
    index.remove_thaw(&ThawTarget::RestorePoint(rp)).unwrap();
    assert!(index.thaws().unwrap().is_empty());
}

#[test]
fn a_rebuild_is_refused_until_marked_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    {
        let index = RocksIndex::open(&path, IndexAccess::Create).unwrap();
        index
            .add_pack(pack_id(0), &record(Tier::Warm, 1), &[entry(0)])
            .unwrap();
        index
            .add_restore_point(&RestorePointId([1; 32]), b"m")
            .unwrap();
        index.set_pack_thawed(&pack_id(0), 100).unwrap();
        index.clear_derived().unwrap();
        assert_eq!(index.chunks().count(), 0);
        assert_eq!(index.packs().count(), 0);
        assert!(index.restore_points().unwrap().is_empty());
        // Left as they were, like the schema version.
        assert_eq!(index.pack_thawed_until(&pack_id(0)).unwrap(), Some(100));
    }
    // The schema version survives clearing: still a whole index.
    drop(RocksIndex::open(&path, IndexAccess::Primary).unwrap());

    let rebuilt = dir.path().join("rebuilt");
    {
        let index = RocksIndex::open(&rebuilt, IndexAccess::Rebuild).unwrap();
        index
            .add_pack(pack_id(0), &record(Tier::Warm, 1), &[entry(0)])
            .unwrap();
    }
    for access in [IndexAccess::Primary, IndexAccess::Secondary] {
        let err = RocksIndex::open(&rebuilt, access).err().expect("refused");
        assert!(err.to_string().contains("schema version missing"), "{err}");
    }
    {
        // A rebuild re-run after being cut short.
        let index = RocksIndex::open(&rebuilt, IndexAccess::Rebuild).unwrap();
        index.mark_rebuilt().unwrap();
    }
    let index = RocksIndex::open(&rebuilt, IndexAccess::Primary).unwrap();
    assert!(index.has_chunk(&chunk_id(0)).unwrap());
}

#[test]
fn a_missing_index_is_refused_unless_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    for access in [IndexAccess::Primary, IndexAccess::Secondary] {
        let err = RocksIndex::open(&path, access).err().expect("refused");
        assert!(err.to_string().contains("repair index"), "{err}");
    }
}

#[test]
fn a_secondary_catches_up_with_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let writer = RocksIndex::open(&path, IndexAccess::Create).unwrap();
    let reader = RocksIndex::open(&path, IndexAccess::Secondary).unwrap();
    assert!(reader.is_secondary());
    assert!(!writer.is_secondary());

    writer
        .add_pack(pack_id(0), &record(Tier::Warm, 1), &[entry(0)])
        .unwrap();
    writer.set_pack_thawed(&pack_id(0), 100).unwrap();
    assert!(!reader.has_chunk(&chunk_id(0)).unwrap());
    reader.catch_up().unwrap();
    assert!(reader.has_chunk(&chunk_id(0)).unwrap());
    assert_eq!(reader.packs().count(), 1);
    assert_eq!(reader.pack_thawed_until(&pack_id(0)).unwrap(), Some(100));
    // A writer's view is current; catching up is a no-op.
    writer.catch_up().unwrap();
}

/// A reader's lookups must cost a data block each, not a re-read of a
/// table's whole index block: with a million chunks, that block is
/// about 800 KB, larger than a shard of the reader's block cache.
#[test]
fn reader_lookups_in_a_large_index_read_little() {
    const CHUNKS: u64 = 1_000_000;
    const PER_PACK: u64 = 50_000;
    const LOOKUPS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let writer = RocksIndex::open(&path, IndexAccess::Create).unwrap();
    for p in 0..CHUNKS / PER_PACK {
        let entries: Vec<PackEntry> = (p * PER_PACK..(p + 1) * PER_PACK).map(entry).collect();
        writer
            .add_pack(pack_id(p), &record(Tier::Warm, PER_PACK), &entries)
            .unwrap();
    }
    let chunks = writer.cf(CF_CHUNKS);
    writer.db.flush_cf(chunks).unwrap();
    writer
        .db
        .compact_range_cf(chunks, None::<&[u8]>, None::<&[u8]>);

    let reader = RocksIndex::open(&path, IndexAccess::Secondary).unwrap();
    let before = thread_read_bytes();
    for n in 0..LOOKUPS {
        let id = chunk_id(n * (CHUNKS / LOOKUPS));
        let location = reader.chunk(&id).unwrap().expect("indexed chunk");
        assert_eq!(location.entry.id, id);
    }
    let read = thread_read_bytes() - before;
    // One 4 KiB data block and at most a few index and filter
    // partitions per lookup; the monolithic index block cost 16 GB here.
    assert!(
        read < 64 * LOOKUPS * 1024,
        "{LOOKUPS} lookups read {read} bytes"
    );
}
