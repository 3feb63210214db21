//! The local backup session: what it stores, when its counters are final,
//! and that its commit is a barrier however often it is called.

use std::sync::atomic::Ordering;

use super::fixture::{files_manifest, Fixture};
use crate::pack::ChunkKind;
use crate::session::{with_local_session, BackupSession};
use crate::tree::Tree;


#[test]
fn counters_are_final_after_flush_and_storing_ends_there() {
    let fx = Fixture::new();
    let data = b"some data worth storing ".repeat(400);
    let late = b"offered after the flush".to_vec();
    with_local_session(&fx.repo, |session| {
        assert!(session.store_chunk(fx.id(&data), ChunkKind::Data, &data)?);
        assert!(!session.store_chunk(fx.id(&data), ChunkKind::Data, &data)?);
        session.flush()?;
        let counters = session.counters();
        assert_eq!(counters.chunks_new.load(Ordering::Relaxed), 1);
        assert_eq!(counters.bytes_new.load(Ordering::Relaxed), data.len() as u64);
        let stored = counters.bytes_stored.load(Ordering::Relaxed);
        assert!(stored > 0 && stored < data.len() as u64, "stored {stored}");
        assert!(session.stored_chunks(&[fx.id(&data)])?[0]);
        // Refused, and neither counted nor remembered as pending.
        assert!(session.store_chunk(fx.id(&late), ChunkKind::Data, &late).is_err());
        assert_eq!(counters.chunks_new.load(Ordering::Relaxed), 1);
        Ok(())
    })
    .unwrap();
    // A later session stores the refused chunk: it was not taken for a
    // duplicate.
    with_local_session(&fx.repo, |session| {
        assert!(session.store_chunk(fx.id(&late), ChunkKind::Data, &late)?);
        session.flush()
    })
    .unwrap();
    assert_eq!(fx.repo.read_chunk(&fx.id(&late)).unwrap(), late);
}

#[test]
fn a_commit_makes_its_chunks_readable_and_a_second_commit_changes_nothing() {
    let fx = Fixture::new();
    let tree = Tree { nodes: vec![] }.encode();
    let root = fx.id(&tree);
    let ids = with_local_session(&fx.repo, |session| {
        session.store_chunk(root, ChunkKind::Tree, &tree)?;
        let first = session.commit(&files_manifest("session-test", 1, root))?;
        let second = session.commit(&files_manifest("session-test", 1, root))?;
        Ok((first, second))
    })
    .unwrap();
    assert_eq!(ids.0, ids.1, "the same manifest, the same restore point");
    assert_eq!(fx.repo.restore_points().unwrap().len(), 1);
    assert_eq!(fx.repo.load_tree(&root).unwrap(), Tree { nodes: vec![] });
}
