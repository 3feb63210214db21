//! Restore-point walking: the walk offers every tree and data chunk of a
//! files restore point at its place, descends into each tree once with a
//! seen-set, and reports an unreadable tree to the visitor.

use std::collections::{BTreeMap, HashSet};

use super::fixture::{dir, file, no_cancel, now, Committed, Fixture};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::walk::{walk, Place, Visitor};

/// What a visit saw, with places as owned values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Tree(String),
    File(String, String),
}

fn seen(place: &Place) -> Seen {
    match place {
        Place::Tree { dir } => Seen::Tree(dir.to_string()),
        Place::File { dir, name } => {
            Seen::File(dir.to_string(), String::from_utf8_lossy(name).into_owned())
        }
        other => panic!("a files restore point has no {other}"),
    }
}

/// Records every chunk offered and descends into each tree once.
#[derive(Default)]
struct Recorder {
    visits: Vec<(ChunkId, Seen)>,
    trees: HashSet<ChunkId>,
    unreadable: Vec<(ChunkId, Seen, String)>,
    /// Whether an unreadable tree ends the walk (the default) or not.
    go_on: bool,
}

impl Visitor for Recorder {
    fn chunk(&mut self, id: &ChunkId, place: &Place) -> Result<bool> {
        self.visits.push((*id, seen(place)));
        Ok(match place {
            Place::Tree { .. } => self.trees.insert(*id),
            _ => true,
        })
    }

    fn unreadable(&mut self, id: &ChunkId, place: &Place, error: Error) -> Result<()> {
        self.unreadable.push((*id, seen(place), error.to_string()));
        if self.go_on {
            Ok(())
        } else {
            Err(error)
        }
    }
}

/// `/a` with two chunks, `/etc/b`, `/etc/sub/c`, and `/copy` an identical
/// copy of `/etc/sub` (one tree, met twice). `x` is used by three files.
fn tree(fx: &Fixture) -> (Committed, BTreeMap<&'static str, ChunkId>) {
    let x = b"chunk x, used three times".to_vec();
    let y = b"chunk y".to_vec();
    let z = b"chunk z".to_vec();
    let sub = dir([("c", file(&[&z, &x]))]);
    let committed = fx.commit_files(
        "host",
        now(),
        &dir([
            ("a", file(&[&x, &y])),
            ("copy", sub.clone()),
            ("etc", dir([("b", file(&[&y])), ("sub", sub)])),
        ]),
    );
    let ids = BTreeMap::from([
        ("x", fx.id(&x)),
        ("y", fx.id(&y)),
        ("z", fx.id(&z)),
    ]);
    (committed, ids)
}

fn walk_all(fx: &Fixture, committed: &Committed, recorder: &mut Recorder) -> Result<()> {
    let rp = fx.restore_point(&committed.id);
    walk(&fx.repo, &rp, recorder, &no_cancel())
}

#[test]
fn every_chunk_is_offered_at_its_place_and_each_tree_read_once() {
    let fx = Fixture::new();
    let (committed, ids) = tree(&fx);
    let t = &committed.trees;
    assert_eq!(t["/copy"], t["/etc/sub"], "identical directories share a tree");

    let mut recorder = Recorder::default();
    walk_all(&fx, &committed, &mut recorder).unwrap();
    let tree = |dir: &str| Seen::Tree(dir.into());
    let in_file = |dir: &str, name: &str| Seen::File(dir.into(), name.into());
    // Depth first from a stack: a tree's files at once, its directories
    // afterwards in reverse order. `/copy` is offered last but, already
    // read as `/etc/sub`, not read again.
    assert_eq!(
        recorder.visits,
        vec![
            (t[""], tree("")),
            (ids["x"], in_file("", "a")),
            (ids["y"], in_file("", "a")),
            (t["/etc"], tree("/etc")),
            (ids["y"], in_file("/etc", "b")),
            (t["/etc/sub"], tree("/etc/sub")),
            (ids["z"], in_file("/etc/sub", "c")),
            (ids["x"], in_file("/etc/sub", "c")),
            (t["/copy"], tree("/copy")),
        ]
    );
    assert!(recorder.unreadable.is_empty());

    // Every tree and data chunk of the restore point, and nothing else.
    let offered: HashSet<ChunkId> = recorder.visits.iter().map(|(id, _)| *id).collect();
    assert_eq!(offered, committed.chunks().into_iter().collect());
    assert_eq!(recorder.trees, committed.tree_ids().into_iter().collect());
}

#[test]
fn reachability_visits_each_chunk_with_its_class() {
    let fx = Fixture::new();
    let (committed, _) = tree(&fx);
    let rp = fx.restore_point(&committed.id);
    let mut visited = HashSet::new();
    let mut classes: BTreeMap<ChunkId, Vec<bool>> = BTreeMap::new();
    crate::reachability::for_each_chunk(&fx.repo, &rp, &mut visited, &no_cancel(), &mut |id, is_data| {
        classes.entry(*id).or_default().push(is_data);
        Ok(())
    })
    .unwrap();
    for tree in committed.tree_ids() {
        assert!(classes[&tree].iter().all(|d| !d), "tree {tree:?}");
    }
    for data in &committed.data {
        assert!(classes[data].iter().all(|d| *d), "data {data:?}");
    }
    assert_eq!(classes.len(), committed.chunks().len());
    // A second restore point's walk with the same set skips what was seen.
    let mut again = 0;
    crate::reachability::for_each_chunk(&fx.repo, &rp, &mut visited, &no_cancel(), &mut |_, _| {
        again += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(again, 1, "only the root is offered; it is not read again");
}

#[test]
fn an_unreadable_tree_is_reported_at_its_place() {
    let fx = Fixture::new();
    let (committed, ids) = tree(&fx);
    let etc = committed.trees["/etc"];
    fx.damage_chunk(&etc);

    // A visitor that goes on: the rest of the restore point is walked.
    let mut recorder = Recorder {
        go_on: true,
        ..Default::default()
    };
    walk_all(&fx, &committed, &mut recorder).unwrap();
    assert_eq!(recorder.unreadable.len(), 1);
    let (id, place, message) = &recorder.unreadable[0];
    assert_eq!((id, place), (&etc, &Seen::Tree("/etc".into())));
    assert!(message.contains("damaged"), "{message}");
    let offered: Vec<Seen> = recorder.visits.iter().map(|(_, s)| s.clone()).collect();
    assert!(!offered.contains(&Seen::File("/etc".into(), "b".into())));
    assert!(!offered.contains(&Seen::Tree("/etc/sub".into())));
    assert!(recorder
        .visits
        .contains(&(ids["z"], Seen::File("/copy".into(), "c".into()))));

    // The default: the walk ends with the damage.
    let mut recorder = Recorder::default();
    let err = walk_all(&fx, &committed, &mut recorder).unwrap_err();
    assert!(matches!(err, Error::ChunkDamaged { id, .. } if id == etc), "{err}");
}

#[test]
fn a_missing_tree_is_reported_too() {
    let fx = Fixture::new();
    let (committed, _) = tree(&fx);
    let sub = committed.trees["/copy"];
    let location = fx.location(&sub);
    fx.repo.pack_table().remove_pack(&location.pack, &[sub]).unwrap();
    let mut recorder = Recorder {
        go_on: true,
        ..Default::default()
    };
    walk_all(&fx, &committed, &mut recorder).unwrap();
    let unreadable: Vec<_> = recorder.unreadable.iter().map(|(id, s, _)| (*id, s.clone())).collect();
    // Offered first as /etc/sub (the stack pops /etc first), it fails there
    // and is not offered for reading again as /copy.
    assert_eq!(unreadable, vec![(sub, Seen::Tree("/etc/sub".into()))]);
}

#[test]
fn a_cancelled_walk_stops() {
    let fx = Fixture::new();
    let (committed, _) = tree(&fx);
    let rp = fx.restore_point(&committed.id);
    let cancel = no_cancel();
    cancel.cancel();
    let mut recorder = Recorder::default();
    let err = walk(&fx.repo, &rp, &mut recorder, &cancel).unwrap_err();
    assert!(matches!(err, Error::Interrupted(_)));
    assert!(recorder.visits.is_empty());
}
