//! Tier decisions: `tier run` moves the data only old restore points use
//! to cold packs, keeps metadata and data shared with young restore points
//! warm, and a moved chunk reads as "cold" until thawed, then byte exact.

use std::collections::BTreeSet;

use super::fixture::{thaw_options, dir, file, noise, no_cancel, now, snapshot, stored_packs, Committed, Fixture, DAY};
use crate::error::Error;
use crate::id::PackId;
use crate::index::Tier;
use crate::progress::NoProgress;
use crate::thaw_record::thaw_object_name;
use crate::restore_point::RestorePoint;
use crate::storage::ObjectStore;
use crate::tier::{self, TierReport};

struct Scenario {
    fx: Fixture,
    /// Only the old restore point uses these (one incompressible, one
    /// compressible).
    old_only: [Vec<u8>; 2],
    /// Used by both restore points.
    shared: Vec<u8>,
    young_only: Vec<u8>,
    old: Committed,
    young: Committed,
}

fn scenario() -> Scenario {
    let fx = Fixture::with_cold();
    let old_only = [
        noise("old only", 40_000),
        b"an old log line that compresses well\n".repeat(600),
    ];
    let shared = noise("shared", 4_000);
    let young_only = noise("young only", 10_000);
    let lib = dir([("shared.so", file(&[&shared]))]);
    // One run: the old data and the shared chunk share a warm pack, which
    // the move leaves mostly dead.
    let old = fx.commit_files(
        "host",
        now() - 200 * DAY,
        &dir([
            ("lib", lib.clone()),
            ("old.bin", file(&[&old_only[0]])),
            ("old.log", file(&[&old_only[1]])),
        ]),
    );
    let young = fx.commit_files(
        "host",
        now() - DAY,
        &dir([("lib", lib), ("young.bin", file(&[&young_only]))]),
    );
    Scenario {
        fx,
        old_only,
        shared,
        young_only,
        old,
        young,
    }
}

fn run(fx: &Fixture, warm_days: u32) -> TierReport {
    tier::run(&fx.repo, Some(warm_days), &[], &NoProgress, &no_cancel()).unwrap()
}

/// The scenario after a tier run at 90 days, with the old restore point
/// and the cold pack its data moved to.
fn tiered() -> (Scenario, RestorePoint, PackId) {
    let s = scenario();
    run(&s.fx, 90);
    let old_rp = s.fx.restore_point(&s.old.id);
    let cold_pack = s.fx.location(&s.fx.id(&s.old_only[0])).pack;
    (s, old_rp, cold_pack)
}

#[test]
fn old_data_moves_cold_and_metadata_and_shared_data_stay_warm() {
    let s = scenario();
    let fx = &s.fx;
    let old_pack = fx.location(&fx.id(&s.old_only[0])).pack;
    assert_eq!(fx.location(&fx.id(&s.shared)).pack, old_pack);
    assert_eq!(s.old.trees[""], fx.restore_point(&s.old.id).manifest.root);
    assert_eq!(s.old.trees["/lib"], s.young.trees["/lib"], "one tree for both");

    let report = run(fx, 90);
    assert_eq!((report.restore_points_cold, report.restore_points_warm), (1, 1));
    assert_eq!(report.chunks_moved, 2);
    assert_eq!(
        report.bytes_moved,
        (s.old_only[0].len() + s.old_only[1].len()) as u64
    );
    assert_eq!(report.cold_packs_written, 1);
    assert!(report.warm_bytes_freed > 0);

    let cold_packs = stored_packs(fx.cold());
    assert_eq!(cold_packs.len(), 1);
    let cold_pack = *cold_packs.iter().next().unwrap();
    assert_eq!(report.cold_bytes_written, fx.indexed_packs()[&cold_pack].size);
    for bytes in &s.old_only {
        let location = fx.location(&fx.id(bytes));
        assert_eq!((location.tier, location.pack), (Tier::Cold, cold_pack));
    }
    let record = fx.indexed_packs()[&cold_pack];
    assert_eq!((record.tier, record.metadata, record.chunk_count), (Tier::Cold, false, 2));
    // The pack the old data shared with `shared` was rewritten away.
    assert!(!stored_packs(&fx.warm).contains(&old_pack));
    for bytes in [&s.shared, &s.young_only] {
        let id = fx.id(bytes);
        assert_eq!(fx.location(&id).tier, Tier::Warm);
        assert_eq!(&fx.repo.read_chunk(&id).unwrap(), bytes);
    }
    for tree in s.old.tree_ids().union(&s.young.tree_ids()) {
        assert_eq!(fx.location(tree).tier, Tier::Warm);
    }
    let old_rp = fx.restore_point(&s.old.id);
    // Browsing a cold restore point needs no thaw.
    let node = fx.repo.lookup_path(&old_rp, "/old.bin").unwrap().unwrap();
    assert_eq!(node.size, s.old_only[0].len() as u64);

    for bytes in &s.old_only {
        let id = fx.id(bytes);
        assert!(!fx.repo.is_readable(&id).unwrap());
        match fx.repo.read_chunk(&id) {
            Err(Error::Cold { chunk, pack }) => assert_eq!((chunk, pack), (id, cold_pack)),
            other => panic!("expected Error::Cold, got {:?}", other.map(|b| b.len())),
        }
    }
    let status = tier::status(&fx.repo).unwrap();
    assert_eq!((status.cold_packs, status.restore_points_cold), (1, 1));

    // A second run finds nothing more to move.
    let warm = snapshot(&fx.warm);
    let again = run(fx, 90);
    assert_eq!((again.chunks_moved, again.cold_packs_written), (0, 0));
    assert_eq!(stored_packs(fx.cold()), cold_packs);
    assert_eq!(snapshot(&fx.warm), warm);
}

#[test]
fn a_thaw_makes_cold_chunks_readable_byte_exact() {
    let (s, old_rp, cold_pack) = tiered();
    let fx = &s.fx;
    let cold_objects = snapshot(fx.cold());
    let cancel = no_cancel();

    let plan = crate::thaw::thaw(&fx.repo, &old_rp, &thaw_options(2, true), &NoProgress, &cancel).unwrap();
    assert_eq!(plan.packs.keys().cloned().collect::<Vec<_>>(), vec![cold_pack.to_string()]);
    assert_eq!(plan.bytes, fx.indexed_packs()[&cold_pack].size);
    assert_eq!(plan.packs_fetched, 0);
    assert!(fx.warm.size(&thaw_object_name(&cold_pack)).is_err(), "a plan copies nothing");
    assert!(matches!(
        fx.repo.read_chunk(&fx.id(&s.old_only[0])),
        Err(Error::Cold { .. })
    ));

    let thawed = crate::thaw::thaw(&fx.repo, &old_rp, &thaw_options(2, false), &NoProgress, &cancel).unwrap();
    assert_eq!(thawed.packs_fetched, 1);
    assert_eq!(thawed.bytes_fetched, plan.bytes);
    for bytes in &s.old_only {
        let id = fx.id(bytes);
        assert!(fx.repo.is_readable(&id).unwrap());
        assert_eq!(&fx.repo.read_chunk(&id).unwrap(), bytes);
    }
    let until = fx.repo.thaw_table().pack_thawed_until(&cold_pack).unwrap().unwrap();
    assert!((until - (now() + 2 * DAY)).abs() <= 5, "expiry {until}");
    assert_eq!(
        fx.repo.thaw_table().restore_point_thawed_until(&s.old.id).unwrap(),
        Some(until)
    );
    assert_eq!(snapshot(fx.cold()), cold_objects, "a thaw only reads the cold tier");

    let resumed = crate::thaw::thaw(&fx.repo, &old_rp, &thaw_options(2, false), &NoProgress, &cancel).unwrap();
    assert_eq!((resumed.packs_fetched, resumed.packs_already_thawed), (0, 1));

    // The young restore point needs no cold pack.
    let young_rp = fx.restore_point(&s.young.id);
    let plan = crate::thaw::thaw(&fx.repo, &young_rp, &thaw_options(2, true), &NoProgress, &cancel).unwrap();
    assert!(plan.packs.is_empty());
}

#[test]
fn an_expired_thaw_reads_cold_again_and_the_next_run_removes_it() {
    let (s, old_rp, cold_pack) = tiered();
    let fx = &s.fx;
    // Zero days: expires at once.
    crate::thaw::thaw(&fx.repo, &old_rp, &thaw_options(0, false), &NoProgress, &no_cancel()).unwrap();
    assert!(fx.warm.size(&thaw_object_name(&cold_pack)).is_ok());
    assert!(matches!(
        fx.repo.read_chunk(&fx.id(&s.old_only[0])),
        Err(Error::Cold { .. })
    ));
    let report = run(fx, 90);
    assert_eq!(report.thaw_copies_expired, 1);
    assert!(fx.warm.size(&thaw_object_name(&cold_pack)).is_err());
    assert!(fx.warm.size(&crate::thaw_record::pack_thaw_record_name(&cold_pack)).is_err());
    assert!(fx.repo.thaw_table().thaws().unwrap().is_empty());
}

#[test]
fn young_restore_points_stay_warm() {
    let s = scenario();
    let fx = &s.fx;
    let warm = snapshot(&fx.warm);
    let chunks = fx.indexed_chunks();
    // With a year of warm days both restore points are young.
    let report = run(fx, 365);
    assert_eq!((report.restore_points_cold, report.restore_points_warm), (0, 2));
    assert_eq!((report.chunks_moved, report.cold_packs_written), (0, 0));
    assert!(stored_packs(fx.cold()).is_empty());
    assert_eq!(snapshot(&fx.warm), warm);
    assert_eq!(fx.indexed_chunks(), chunks);
}

#[test]
fn a_run_for_some_sources_leaves_the_old_restore_points_of_others_warm() {
    let s = scenario();
    let fx = &s.fx;
    let other_only = noise("other only", 20_000);
    fx.commit_files(
        "other",
        now() - 300 * DAY,
        &dir([("lib", dir([("shared.so", file(&[&s.shared]))])), ("o.bin", file(&[&other_only]))]),
    );
    let report = tier::run(&fx.repo, Some(90), &["host".to_string()], &NoProgress, &no_cancel()).unwrap();
    assert_eq!((report.restore_points_cold, report.restore_points_warm), (1, 2));
    for old in &s.old_only {
        assert_eq!(fx.location(&fx.id(old)).tier, Tier::Cold);
    }
    // The other source's data, and what it shares with the cold one,
    // stay warm.
    assert_eq!(fx.location(&fx.id(&other_only)).tier, Tier::Warm);
    assert_eq!(fx.location(&fx.id(&s.shared)).tier, Tier::Warm);
    // A source no restore point has makes nothing cold.
    let none = tier::run(&fx.repo, Some(90), &["nobody".to_string()], &NoProgress, &no_cancel()).unwrap();
    assert_eq!((none.restore_points_cold, none.chunks_moved), (0, 0));
}

#[test]
fn a_new_backup_of_cold_data_stores_a_warm_copy() {
    let s = scenario();
    let fx = &s.fx;
    run(fx, 90);
    let again = fx.commit_files("host", now(), &dir([("back", file(&[&s.old_only[0]]))]));
    let id = fx.id(&s.old_only[0]);
    assert!(again.data.contains(&id));
    assert_eq!(fx.location(&id).tier, Tier::Warm);
    assert_eq!(fx.repo.read_chunk(&id).unwrap(), s.old_only[0]);
    // The other old chunk is still cold.
    assert_eq!(fx.location(&fx.id(&s.old_only[1])).tier, Tier::Cold);
    let ids: BTreeSet<_> = fx.restore_point_ids();
    assert_eq!(ids.len(), 3);
}

#[test]
fn tiering_needs_a_cold_tier() {
    let fx = Fixture::new();
    fx.commit_files("host", now() - 400 * DAY, &dir([("f", file(&[b"x"]))]));
    let err = tier::run(&fx.repo, Some(1), &[], &NoProgress, &no_cancel()).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

#[test]
fn a_chunk_moved_unchanged_frees_its_warm_pack() {
    let fx = Fixture::with_cold();
    // Incompressible, alone in its pack: the cold pack holds the same bytes.
    let alone = noise("alone", 30_000);
    fx.store_data(&[&alone]);
    let warm_pack = fx.location(&fx.id(&alone)).pack;
    fx.commit_files("host", now() - 200 * DAY, &dir([("f", file(&[&alone]))]));
    let report = run(&fx, 90);
    assert_eq!(report.chunks_moved, 1);
    assert!(
        report.warm_bytes_freed > 0,
        "cold pack {:?}, warm pack {warm_pack:?}",
        fx.location(&fx.id(&alone)).pack
    );
    assert!(!stored_packs(&fx.warm).contains(&warm_pack));
}

/// Every cold pack's tail (trailer and footer) is kept on the warm tier;
/// its entries are the pack's, a damaged tail is refused, and prune
/// removes the tail of a pack that was never committed. (A readable cold
/// pack, as here, is read itself; archived ones are read from their tails
/// in the command-line tests against servers with archive classes.)
#[test]
fn cold_packs_keep_their_tails_warm() {
    let (s, _, cold_pack) = tiered();
    let fx = &s.fx;
    let tail_name = crate::pack::cold_tail_name(&cold_pack);
    let tail = fx.warm.get(&tail_name).unwrap();
    let cold = fx.cold.as_ref().unwrap();
    let pack = cold.get(&crate::pack::object_name(&cold_pack)).unwrap();
    assert!(pack.ends_with(&tail), "the tail is the pack's last bytes");
    assert_eq!(
        fx.repo.packs().cold_tail_trailer(&cold_pack).unwrap(),
        fx.repo.packs().trailer_of_pack_object(Tier::Cold, &cold_pack).unwrap()
    );
    let report = crate::check::check(&fx.repo, false, &NoProgress, &no_cancel()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let mut damaged = tail.clone();
    damaged[3] ^= 0x40;
    fx.warm.put(&tail_name, &damaged).unwrap();
    let refused = fx.repo.packs().cold_tail_trailer(&cold_pack).unwrap_err();
    assert!(matches!(refused, Error::Corrupt { .. }), "{refused}");
    let mut longer = tail.clone();
    longer.resize(pack.len() + 1, 0);
    fx.warm.put(&tail_name, &longer).unwrap();
    let refused = fx.repo.packs().cold_tail_trailer(&cold_pack).unwrap_err();
    assert!(refused.to_string().contains("a tail of"), "{refused}");
    fx.warm.put(&tail_name, &tail).unwrap();

    let orphan = crate::pack::cold_tail_name(&PackId([0x5a; 16]));
    fx.warm.put(&orphan, &tail).unwrap();
    crate::prune::prune(
        &fx.repo,
        &crate::prune::PruneOptions {
            repack_below: 0.0,
            repack_cold: false,
            dry_run: false,
        },
        &NoProgress,
        &no_cancel(),
    )
    .unwrap();
    assert!(fx.warm.get(&orphan).unwrap_err().is_not_found());
    assert_eq!(fx.warm.get(&tail_name).unwrap(), tail);
}
