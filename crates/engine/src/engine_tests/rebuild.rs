//! `repair index`: the index is derived data, rebuilt from packs,
//! manifests and thaw records alone. What the rebuilt index says must be
//! what the original said, chunk for chunk; damaged packs are salvaged and
//! damaged manifests set aside.

use std::collections::{BTreeMap, BTreeSet};

use super::fixture::{thaw_options, dir, file, noise, now, stored_packs, Fixture, DAY};
use crate::error::Error;
use crate::id::{ChunkId, PackId};
use crate::index::{PackRecord, Tier};
use crate::pack;
use crate::progress::NoProgress;
use crate::repair::{repair_index, DAMAGED_PREFIX};
use crate::restore_point;
use crate::storage::ObjectStore;

/// A pack record without its creation time, which a rebuild sets anew.
fn comparable(records: BTreeMap<PackId, PackRecord>) -> BTreeMap<PackId, (Tier, bool, u64, u32, u64)> {
    records
        .into_iter()
        .map(|(id, r)| (id, (r.tier, r.metadata, r.size, r.chunk_count, r.live_bytes)))
        .collect()
}

fn catalog(fx: &Fixture) -> BTreeMap<crate::id::RestorePointId, Vec<u8>> {
    fx.repo.catalog().restore_points().unwrap().into_iter().collect()
}

/// Removes every pack, chunk and catalog record through the index's own
/// methods, as a lost index would leave it.
fn empty_index(fx: &Fixture) {
    let chunks = fx.indexed_chunks();
    for id in fx.indexed_packs().keys() {
        let in_pack: Vec<ChunkId> = chunks
            .values()
            .filter(|l| l.pack == *id)
            .map(|l| l.entry.id)
            .collect();
        fx.repo.pack_table().remove_pack(id, &in_pack).unwrap();
    }
    for id in catalog(fx).keys() {
        fx.repo.catalog().remove_restore_point(id).unwrap();
    }
    assert!(fx.indexed_chunks().is_empty());
    assert!(fx.indexed_packs().is_empty());
}

#[test]
fn a_lost_index_is_rebuilt_to_what_it_was() {
    let mut fx = Fixture::build(false, 32 * 1024);
    let shared = noise("shared", 20_000);
    let contents: Vec<Vec<u8>> = (0..6).map(|i| noise(&format!("c{i}"), 12_000)).collect();
    let first = fx.commit_files(
        "host",
        now() - 2 * DAY,
        &dir([
            ("a", file(&[&contents[0], &shared])),
            ("etc", dir([("b", file(&[&contents[1], &contents[2]]))])),
        ]),
    );
    let second = fx.commit_files(
        "host",
        now() - DAY,
        &dir([
            ("a", file(&[&contents[3], &shared])),
            ("etc", dir([("c", file(&[&contents[4]]))])),
        ]),
    );
    // Data no restore point references is indexed too: prune decides.
    let orphan = noise("orphan", 5_000);
    fx.store_data(&[&orphan]);

    let chunks_before = fx.indexed_chunks();
    let packs_before = comparable(fx.indexed_packs());
    let catalog_before = catalog(&fx);
    assert_eq!(catalog_before.len(), 2);
    assert!(packs_before.len() >= 4, "{} packs", packs_before.len());

    empty_index(&fx);
    assert!(matches!(
        fx.repo.read_chunk(&first.root),
        Err(Error::ChunkMissing { .. })
    ));

    let report = repair_index(&mut fx.repo, &NoProgress, &super::fixture::no_cancel()).unwrap();
    assert_eq!(report.packs, packs_before.len() as u64);
    assert_eq!(report.chunks, chunks_before.len() as u64);
    assert_eq!(report.restore_points, 2);
    assert!(report.is_complete(), "{:?}", report.lines());
    assert!(report.salvaged.is_empty() && report.notes.is_empty());

    assert_eq!(fx.indexed_chunks(), chunks_before);
    assert_eq!(comparable(fx.indexed_packs()), packs_before);
    assert_eq!(catalog(&fx), catalog_before);
    assert_eq!(
        fx.restore_point_ids(),
        BTreeSet::from([first.id, second.id])
    );
    for bytes in contents.iter().take(5).chain([&shared, &orphan]) {
        assert_eq!(&fx.repo.read_chunk(&fx.id(bytes)).unwrap(), bytes);
    }
    for tree in first.tree_ids().union(&second.tree_ids()) {
        fx.repo.load_tree(tree).unwrap();
    }
    // The rebuilt index serves deduplication again.
    assert_eq!(fx.store_data(&[&shared, &orphan]).chunks_new, 0);
}

#[test]
fn a_rebuild_keeps_cold_locations_and_thaws() {
    let mut fx = Fixture::with_cold();
    let old_only = noise("old only", 30_000);
    let shared = noise("shared", 30_000);
    let young_only = noise("young only", 30_000);
    // The old restore point's own data in a pack that the tier run leaves
    // with nothing live (the unreferenced chunk keeps the warm pack's bytes,
    // and so its id, apart from the cold pack's).
    fx.store_data(&[&old_only, &noise("unreferenced", 100)]);
    let old = fx.commit_files(
        "host",
        now() - 200 * DAY,
        &dir([("old", file(&[&old_only])), ("shared", file(&[&shared]))]),
    );
    fx.commit_files(
        "host",
        now(),
        &dir([("young", file(&[&young_only])), ("shared", file(&[&shared]))]),
    );
    let cancel = super::fixture::no_cancel();
    let tiered = crate::tier::run(&fx.repo, Some(90), &[], &NoProgress, &cancel).unwrap();
    assert_eq!(tiered.chunks_moved, 1);
    let rp = fx.restore_point(&old.id);
    crate::thaw::thaw(&fx.repo, &rp, &thaw_options(3, false), &NoProgress, &cancel).unwrap();

    let chunks_before = fx.indexed_chunks();
    let packs_before = comparable(fx.indexed_packs());
    let thaws_before = fx.repo.thaw_table().thaws().unwrap();
    assert_eq!(chunks_before[&fx.id(&old_only)].tier, Tier::Cold);
    assert_eq!(thaws_before.len(), 2, "the pack's thaw and the restore point's");

    empty_index(&fx);
    for mark in &thaws_before {
        fx.repo.thaw_table().remove_thaw(&mark.target).unwrap();
    }
    let report = repair_index(&mut fx.repo, &NoProgress, &cancel).unwrap();
    assert!(report.is_complete(), "{:?}", report.lines());
    assert_eq!(report.thawed_packs, 1);
    assert_eq!(fx.indexed_chunks(), chunks_before);
    assert_eq!(comparable(fx.indexed_packs()), packs_before);
    assert_eq!(fx.repo.thaw_table().thaws().unwrap(), thaws_before);
    assert_eq!(fx.repo.read_chunk(&fx.id(&old_only)).unwrap(), old_only);
}

#[test]
fn a_pack_with_a_damaged_trailer_is_salvaged_whole() {
    let mut fx = Fixture::new();
    let contents: Vec<Vec<u8>> = (0..5).map(|i| noise(&format!("s{i}"), 7_000)).collect();
    let refs: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
    let committed = fx.commit_files("host", now(), &dir([("f", file(&refs))]));
    let location = fx.location(&fx.id(&contents[0]));
    let name = pack::object_name(&location.pack);
    let trailer = fx.repo.packs().trailer(Tier::Warm, &location.pack).unwrap();
    let data_end = trailer
        .iter()
        .map(|e| e.offset + e.stored_len as u64)
        .max()
        .unwrap();
    // A byte of the first trailer entry: the trailer no longer verifies.
    fx.warm.flip_byte(&name, data_end as usize + 3).unwrap();
    assert!(fx.repo.packs().trailer(Tier::Warm, &location.pack).is_err());

    let report = repair_index(&mut fx.repo, &NoProgress, &super::fixture::no_cancel()).unwrap();
    assert_eq!(report.salvaged.len(), 1, "{:?}", report.lines());
    let salvaged = &report.salvaged[0];
    assert_eq!(salvaged.pack, location.pack.to_string());
    assert_eq!(salvaged.chunks_salvaged, contents.len() as u64);
    assert_eq!(salvaged.bytes_unaccounted, 0);
    assert!(report.affected.is_empty(), "{:?}", report.affected);
    assert!(fx.warm.size(&format!("{DAMAGED_PREFIX}{name}")).is_ok());
    for bytes in &contents {
        assert_eq!(&fx.repo.read_chunk(&fx.id(bytes)).unwrap(), bytes);
    }
    fx.repo.load_tree(&committed.root).unwrap();
    // Every pack left under packs/ is whole and indexed.
    for id in stored_packs(&fx.warm) {
        fx.repo.packs().trailer(Tier::Warm, &id).unwrap();
        assert!(fx.indexed_packs().contains_key(&id));
    }
}

#[test]
fn a_damaged_manifest_is_set_aside_and_the_others_catalogued() {
    let mut fx = Fixture::new();
    let a = fx.commit_files("host", now() - DAY, &dir([("a", file(&[b"aaaa"]))]));
    let b = fx.commit_files("host", now(), &dir([("b", file(&[b"bbbb"]))]));
    let name = restore_point::object_name(&a.id);
    fx.warm.flip_byte(&name, 12).unwrap();

    let report = repair_index(&mut fx.repo, &NoProgress, &super::fixture::no_cancel()).unwrap();
    assert_eq!(report.restore_points, 1);
    assert_eq!(report.damaged_manifests.len(), 1);
    assert_eq!(report.damaged_manifests[0].object, name);
    assert!(!report.is_complete());
    assert!(fx.warm.size(&name).is_err(), "moved out of manifests/");
    assert!(fx.warm.size(&format!("{DAMAGED_PREFIX}{name}")).is_ok());
    assert_eq!(catalog(&fx).into_keys().collect::<Vec<_>>(), vec![b.id]);
    assert_eq!(fx.restore_point_ids(), BTreeSet::from([b.id]));
}
