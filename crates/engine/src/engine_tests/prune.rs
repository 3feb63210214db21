//! Prune decisions: after a restore point is forgotten, exactly the chunks
//! only it used go, packs with nothing live are deleted, packs mostly dead
//! are rewritten with their live chunks, and the rest stay as they are.

use std::collections::BTreeSet;

use super::fixture::{dir, file, noise, no_cancel, now, snapshot, stored_packs, Fixture, DAY};
use crate::error::Error;
use crate::id::ChunkId;
use crate::index::Tier;
use crate::pack;
use crate::progress::NoProgress;
use crate::prune::{prune, PruneOptions, PruneReport};
use crate::restore_point;
use crate::storage::ObjectStore;

const KIB: usize = 1024;

fn options(dry_run: bool) -> PruneOptions {
    PruneOptions {
        repack_below: 0.5,
        repack_cold: false,
        dry_run,
    }
}

fn run(fx: &Fixture, dry_run: bool) -> PruneReport {
    prune(&fx.repo, &options(dry_run), &NoProgress, &no_cancel()).unwrap()
}

/// Two restore points of one source, the older to be forgotten, with
/// their data laid out in packs chosen by the test:
/// - `dead`: a pack only the old one uses (all dead once it goes);
/// - `mostly_dead`: 2 KiB shared, 16 KiB old-only (repacked at 0.5);
/// - `mostly_live`: 16 KiB shared, 1 KiB old-only (left as it is).
struct Scenario {
    fx: Fixture,
    old_only: Vec<Vec<u8>>,
    shared: Vec<Vec<u8>>,
    new_only: Vec<u8>,
    old: super::fixture::Committed,
    new: super::fixture::Committed,
}

impl Scenario {
    fn build() -> Scenario {
        let fx = Fixture::new();
        let d1 = noise("d1", 4 * KIB);
        let d2 = noise("d2", 4 * KIB);
        let s1 = noise("s1", KIB);
        let s2 = noise("s2", KIB);
        let a1 = noise("a1", 16 * KIB);
        let s3 = noise("s3", 16 * KIB);
        let a3 = noise("a3", KIB);
        let b1 = noise("b1", KIB);
        fx.store_data(&[&d1, &d2]);
        fx.store_data(&[&s1, &s2, &a1]);
        fx.store_data(&[&s3, &a3]);
        let old = fx.commit_files(
            "host",
            now() - 2 * DAY,
            &dir([
                ("d", file(&[&d1, &d2])),
                ("mixed", file(&[&s1, &a1, &s2])),
                ("tail", file(&[&s3, &a3])),
            ]),
        );
        let new = fx.commit_files(
            "host",
            now() - DAY,
            &dir([
                ("kept", dir([("one", file(&[&s1])), ("two", file(&[&s2, &s3]))])),
                ("new", file(&[&b1])),
            ]),
        );
        Scenario {
            fx,
            old_only: vec![d1, d2, a1, a3],
            shared: vec![s1, s2, s3],
            new_only: b1,
            old,
            new,
        }
    }

    fn pack_of(&self, bytes: &[u8]) -> crate::id::PackId {
        self.fx.location(&self.fx.id(bytes)).pack
    }
}

#[test]
fn prune_deletes_only_what_the_forgotten_restore_point_alone_used() {
    let s = Scenario::build();
    let fx = &s.fx;
    let dead_pack = s.pack_of(&s.old_only[0]);
    let mostly_dead = s.pack_of(&s.old_only[2]);
    let mostly_live = s.pack_of(&s.old_only[3]);
    let old_trees = fx.location(&s.old.root).pack;
    let new_data = s.pack_of(&s.new_only);
    let new_trees = fx.location(&s.new.root).pack;
    assert_eq!(s.pack_of(&s.shared[0]), mostly_dead);
    assert_eq!(s.pack_of(&s.shared[2]), mostly_live);
    let before = stored_packs(&fx.warm);
    assert_eq!(
        before,
        BTreeSet::from([dead_pack, mostly_dead, mostly_live, old_trees, new_data, new_trees])
    );
    let records = fx.indexed_packs();
    let size = |id| records[&id].size;
    let freed_packs = size(dead_pack) + size(old_trees) + size(mostly_dead);
    let bytes_before: u64 = before.iter().map(|id| size(*id)).sum();

    assert_eq!(fx.forget_all_but_newest("host"), BTreeSet::from([s.old.id]));
    let report = run(fx, false);

    assert_eq!(report.restore_points, 1);
    assert_eq!(report.packs_before, 6);
    // Deleted: the dead pack, the old trees' pack, and the rewritten one.
    assert_eq!(report.packs_deleted, 3);
    assert_eq!(report.packs_repacked, 1);
    assert_eq!(report.packs_written, 1);
    // d1, d2, a1 and the old restore point's root tree.
    assert_eq!(report.chunks_removed, 4);
    assert_eq!(report.bytes_before, bytes_before);
    assert!(report.bytes_rewritten > 0);
    assert_eq!(report.bytes_freed, freed_packs - report.bytes_rewritten);
    assert!(report.skipped.is_empty() && report.warnings.is_empty());

    let after = stored_packs(&fx.warm);
    let written: Vec<_> = after.difference(&before).copied().collect();
    assert_eq!(written.len(), 1);
    assert_eq!(
        after,
        BTreeSet::from([mostly_live, new_data, new_trees, written[0]])
    );
    assert_eq!(fx.indexed_packs().keys().copied().collect::<BTreeSet<_>>(), after);
    // The rewritten pack holds exactly the live chunks of the old one.
    let rewritten: BTreeSet<ChunkId> = fx
        .repo
        .packs()
        .trailer(Tier::Warm, &written[0])
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        rewritten,
        BTreeSet::from([fx.id(&s.shared[0]), fx.id(&s.shared[1])])
    );

    for bytes in s.shared.iter().chain([&s.new_only]) {
        assert_eq!(&fx.repo.read_chunk(&fx.id(bytes)).unwrap(), bytes);
    }
    for tree in s.new.tree_ids() {
        fx.repo.load_tree(&tree).unwrap();
    }
    for bytes in &s.old_only[..3] {
        assert!(matches!(
            fx.repo.read_chunk(&fx.id(bytes)),
            Err(Error::ChunkMissing { .. })
        ));
    }
    assert!(fx.repo.chunk_index().chunk(&s.old.root).unwrap().is_none());
    // a3 is dead but its pack was kept: still indexed, still readable
    // until a later prune rewrites the pack.
    assert_eq!(fx.repo.read_chunk(&fx.id(&s.old_only[3])).unwrap(), s.old_only[3]);
    assert_eq!(fx.restore_point_ids(), BTreeSet::from([s.new.id]));

    // Nothing more to do.
    let again = run(fx, false);
    assert_eq!(
        (again.packs_deleted, again.packs_repacked, again.chunks_removed, again.bytes_freed),
        (0, 0, 0, 0)
    );
    assert_eq!(stored_packs(&fx.warm), after);
}

#[test]
fn a_dry_run_reports_and_changes_nothing() {
    let s = Scenario::build();
    let fx = &s.fx;
    fx.forget_all_but_newest("host");
    let objects = snapshot(&fx.warm);
    let chunks = fx.indexed_chunks();
    let packs = fx.indexed_packs();

    let report = run(fx, true);
    assert_eq!(report.restore_points, 1);
    assert_eq!(report.packs_before, 6);
    // The dead pack and the old trees' pack go; one pack is rewritten.
    assert_eq!(report.packs_deleted, 2);
    assert_eq!(report.packs_repacked, 1);
    assert_eq!(report.packs_written, 0);
    assert!(report.bytes_freed > 0);

    assert_eq!(snapshot(&fx.warm), objects);
    assert_eq!(fx.indexed_chunks(), chunks);
    assert_eq!(fx.indexed_packs(), packs);
}

#[test]
fn nothing_referenced_is_nothing_pruned() {
    let s = Scenario::build();
    let objects = snapshot(&s.fx.warm);
    let report = run(&s.fx, false);
    assert_eq!(report.restore_points, 2);
    assert_eq!(
        (report.packs_deleted, report.packs_repacked, report.chunks_removed, report.bytes_freed),
        (0, 0, 0, 0)
    );
    assert_eq!(snapshot(&s.fx.warm), objects);
}

#[test]
fn an_unindexed_leftover_pack_is_removed_but_an_orphan_chunk_needs_no_restore_point() {
    let fx = Fixture::new();
    let kept = fx.commit_files("host", now(), &dir([("f", file(&[b"kept data"]))]));
    // A pack sealed but never indexed: what a crash between the two leaves.
    let mut open = fx.repo.packs().open(Tier::Warm, false).unwrap();
    let encoded = fx
        .repo
        .codec()
        .encoder()
        .unwrap()
        .encode(fx.repo.ids().chunk_id(b"leftover"), pack::ChunkKind::Data, b"leftover")
        .unwrap();
    open.append(&encoded).unwrap();
    let leftover = fx.repo.packs().seal(open).unwrap();
    // An indexed chunk no restore point references.
    let orphan = noise("orphan", 2 * KIB);
    fx.store_data(&[&orphan]);
    let orphan_pack = fx.location(&fx.id(&orphan)).pack;

    let report = run(&fx, false);
    assert_eq!(report.packs_deleted, 2);
    assert_eq!(report.chunks_removed, 1, "the orphan's record; the leftover had none");
    let remaining = stored_packs(&fx.warm);
    assert!(!remaining.contains(&leftover.id));
    assert!(!remaining.contains(&orphan_pack));
    assert_eq!(fx.indexed_packs().keys().copied().collect::<BTreeSet<_>>(), remaining);
    assert_eq!(fx.repo.read_chunk(&fx.id(b"kept data")).unwrap(), b"kept data");
    fx.repo.load_tree(&kept.root).unwrap();
}

#[test]
fn prune_refuses_to_run_beside_a_damaged_manifest() {
    let s = Scenario::build();
    let fx = &s.fx;
    fx.forget_all_but_newest("host");
    fx.warm
        .flip_byte(&restore_point::object_name(&s.new.id), 20)
        .unwrap();
    let objects = snapshot(&fx.warm);
    let err = prune(&fx.repo, &options(false), &NoProgress, &no_cancel()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(snapshot(&fx.warm), objects, "nothing deleted");
}

#[test]
fn a_cancelled_prune_deletes_nothing() {
    let s = Scenario::build();
    s.fx.forget_all_but_newest("host");
    let objects = snapshot(&s.fx.warm);
    let cancel = no_cancel();
    cancel.cancel();
    let err = prune(&s.fx.repo, &options(false), &NoProgress, &cancel).unwrap_err();
    assert!(matches!(err, Error::Interrupted(_)), "{err}");
    assert_eq!(snapshot(&s.fx.warm), objects);
    assert!(s.fx.warm.size(&restore_point::object_name(&s.new.id)).is_ok());
}
