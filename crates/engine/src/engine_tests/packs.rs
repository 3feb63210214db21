//! Pack sealing and reading through the repository: what the backup
//! pipeline stores reads back byte for byte, data and metadata never share
//! a pack, full packs are sealed at the target size, and damage is refused,
//! never returned as data.

use std::collections::{BTreeMap, BTreeSet};

use super::fixture::{noise, stored_packs, Fixture, SMALL_PACKS};
use crate::error::Error;
use crate::id::{ChunkId, PackId};
use crate::index::Tier;
use crate::pack::{self, ChunkKind};
use crate::storage::ObjectStore;
use crate::tree::Tree;

/// 24 data chunks of 16 KiB (more than five 64 KiB packs' worth) and a
/// few trees.
fn mixed_chunks() -> Vec<(ChunkKind, Vec<u8>)> {
    let mut chunks: Vec<(ChunkKind, Vec<u8>)> = (0..24)
        .map(|i| (ChunkKind::Data, noise(&format!("data {i}"), 16 * 1024)))
        .collect();
    for i in 0..3 {
        let mut tree = crate::tree::Tree::default();
        tree.nodes.push(crate::tree::Node {
            name: format!("file-{i}").into_bytes(),
            kind: crate::tree::NodeKind::Fifo,
            mode: 0o600,
            uid: i,
            gid: 0,
            user: vec![],
            group: vec![],
            mtime: Default::default(),
            atime: Default::default(),
            size: 0,
            nlink: 1,
            link_id: 0,
            xattrs: vec![],
        });
        chunks.push((ChunkKind::Tree, tree.encode()));
    }
    chunks
}

#[test]
fn stored_chunks_read_back_byte_exact_from_packs_of_one_class() {
    let fx = Fixture::build(false, SMALL_PACKS);
    let chunks = mixed_chunks();
    let stored = fx.store(&chunks);
    assert_eq!(stored.chunks_new, chunks.len() as u64);

    for (kind, bytes) in &chunks {
        let id = fx.id(bytes);
        assert_eq!(&fx.repo.read_chunk(&id).unwrap(), bytes, "chunk {id:?}");
        let location = fx.location(&id);
        assert_eq!(location.tier, Tier::Warm);
        assert_eq!(location.entry.kind, *kind);
        assert_eq!(location.entry.raw_len as usize, bytes.len());
    }
    let tree = &chunks.last().unwrap().1;
    assert_eq!(
        fx.repo.load_tree(&fx.id(tree)).unwrap(),
        Tree::decode(&fx.id(tree), tree).unwrap()
    );

    // Every pack in the store is indexed, and its trailer is what the
    // index says about its chunks; no pack mixes data and metadata.
    let records = fx.indexed_packs();
    let in_store = stored_packs(&fx.warm);
    assert_eq!(records.keys().copied().collect::<BTreeSet<_>>(), in_store);
    assert_eq!(stored.packs, in_store.len() as u64);
    let mut packs_of_class: BTreeMap<bool, Vec<(PackId, u64)>> = BTreeMap::new();
    for (id, record) in &records {
        let trailer = fx.repo.packs().trailer(Tier::Warm, id).unwrap();
        assert_eq!(record.chunk_count as usize, trailer.len());
        assert_eq!(record.size, fx.warm.size(&pack::object_name(id)).unwrap());
        for entry in &trailer {
            assert_eq!(entry.kind.is_metadata(), record.metadata, "pack {id:?} mixes classes");
            let location = fx.location(&entry.id);
            assert_eq!((location.pack, location.entry), (*id, *entry));
        }
        packs_of_class
            .entry(record.metadata)
            .or_default()
            .push((*id, record.size));
    }
    // 384 KiB of data in 64 KiB packs: sealed when full, so all but the
    // last data pack reached the target.
    let data_packs = &packs_of_class[&false];
    assert!(data_packs.len() >= 5, "{} data packs", data_packs.len());
    let small = data_packs.iter().filter(|(_, size)| *size < SMALL_PACKS).count();
    assert!(small <= 1, "{small} data packs below the target size");
    assert_eq!(packs_of_class[&true].len(), 1, "the trees fit one pack");
}

#[test]
fn chunks_already_stored_are_not_stored_again() {
    let fx = Fixture::new();
    let a = noise("a", 10_000);
    let b = noise("b", 10_000);
    let first = fx.store_data(&[&a, &b, &a]);
    assert_eq!(first.chunks_new, 2, "a repeated chunk in one run is stored once");
    let packs = stored_packs(&fx.warm);
    let second = fx.store_data(&[&a, &b]);
    assert_eq!(second.chunks_new, 0);
    assert_eq!(second.packs, 0);
    assert_eq!(stored_packs(&fx.warm), packs);
    let c = noise("c", 10_000);
    assert_eq!(fx.store_data(&[&a, &c]).chunks_new, 1);
    assert_eq!(fx.indexed_chunks().len(), 3);
}

#[test]
fn a_flipped_byte_is_refused_as_damage_and_neighbours_still_read() {
    let fx = Fixture::new();
    let chunks: Vec<Vec<u8>> = (0..4).map(|i| noise(&format!("n{i}"), 8 * 1024)).collect();
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    fx.store_data(&refs);
    let ids: Vec<ChunkId> = chunks.iter().map(|c| fx.id(c)).collect();
    let victim = ids[1];
    let pack = fx.location(&victim).pack;
    assert!(ids.iter().all(|id| fx.location(id).pack == pack), "one run, one pack");

    fx.damage_chunk(&victim);
    match fx.repo.read_chunk(&victim) {
        Err(Error::ChunkDamaged { id, pack: p, .. }) => assert_eq!((id, p), (victim, pack)),
        other => panic!("expected ChunkDamaged, got {other:?}"),
    }
    for (id, bytes) in ids.iter().zip(&chunks).filter(|(id, _)| **id != victim) {
        assert_eq!(&fx.repo.read_chunk(id).unwrap(), bytes);
    }
}

#[test]
fn a_damaged_compressed_chunk_is_refused_too() {
    let fx = Fixture::new();
    let text = b"the same line, compressible, again and again\n".repeat(500);
    fx.store_data(&[&text]);
    let id = fx.id(&text);
    let location = fx.location(&id);
    assert_eq!(location.entry.compression, pack::Compression::Zstd);
    assert!(location.entry.stored_len < location.entry.raw_len);
    // Every byte of the stored frame, one at a time: never wrong bytes.
    for offset in 0..location.entry.stored_len as u64 {
        let name = pack::object_name(&location.pack);
        let at = (location.entry.offset + offset) as usize;
        fx.warm.flip_byte(&name, at).unwrap();
        let read = fx.repo.read_chunk(&id);
        fx.warm.flip_byte(&name, at).unwrap();
        assert!(
            matches!(read, Err(Error::ChunkDamaged { .. })),
            "byte {offset}: {:?}",
            read.map(|b| b.len())
        );
    }
    assert_eq!(fx.repo.read_chunk(&id).unwrap(), text);
}

#[test]
fn an_unknown_chunk_is_missing_and_a_missing_pack_is_not_found() {
    let fx = Fixture::new();
    let unknown = fx.id(b"never stored");
    assert!(matches!(
        fx.repo.read_chunk(&unknown),
        Err(Error::ChunkMissing { id }) if id == unknown
    ));
    let bytes = noise("lost", 4096);
    fx.store_data(&[&bytes]);
    let location = fx.location(&fx.id(&bytes));
    fx.warm.delete(&pack::object_name(&location.pack)).unwrap();
    let err = fx.repo.read_chunk(&fx.id(&bytes)).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}
