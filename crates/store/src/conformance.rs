//! The behaviour every [`ObjectStore`] must have, as checks that panic
//! with a message on the first deviation. Each backend's tests call
//! [`check_all`] on a fresh, empty store.

use std::io::Write;

use super::ObjectStore;

/// Runs every check against `store`, which must start empty.
pub fn check_all(store: &dyn ObjectStore) {
    puts_replace_and_read_back(store);
    ranged_reads_are_exact(store);
    missing_objects_are_not_found(store);
    unsafe_names_are_refused(store);
    streamed_objects_appear_only_on_commit(store);
    listing_is_paged_and_ordered(store);
    deletes_are_idempotent(store);
}

fn puts_replace_and_read_back(store: &dyn ObjectStore) {
    store.put("conf/put/a", b"first").unwrap();
    store.put("conf/put/a", b"second, longer").unwrap();
    assert_eq!(store.get("conf/put/a").unwrap(), b"second, longer");
    assert_eq!(store.size("conf/put/a").unwrap(), 14);
    store.put("conf/put/empty", b"").unwrap();
    assert_eq!(store.get("conf/put/empty").unwrap(), b"");
}

fn ranged_reads_are_exact(store: &dyn ObjectStore) {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put("conf/range/x", &bytes).unwrap();
    let mut buf = vec![0u8; 100];
    store.read_at("conf/range/x", 5_000, &mut buf).unwrap();
    assert_eq!(buf, bytes[5_000..5_100]);
    store.read_at("conf/range/x", 9_900, &mut buf).unwrap();
    assert_eq!(buf, bytes[9_900..]);
    let past_end = store.read_at("conf/range/x", 9_950, &mut buf);
    assert!(
        past_end.is_err(),
        "a read past the end must fail, not return short"
    );
}

fn missing_objects_are_not_found(store: &dyn ObjectStore) {
    for result in [
        store.get("conf/missing/x").map(|_| ()),
        store.size("conf/missing/x").map(|_| ()),
        store.read_at("conf/missing/x", 0, &mut [0u8; 1]),
    ] {
        let err = result.expect_err("a missing object must be an error");
        assert!(err.is_not_found(), "not a not-found error: {err}");
    }
}

fn unsafe_names_are_refused(store: &dyn ObjectStore) {
    for name in ["", "/abs", "a//b", "a/../b", "./a", "a/."] {
        assert!(store.put(name, b"x").is_err(), "accepted name {name:?}");
        assert!(store.get(name).is_err(), "read name {name:?}");
    }
}

fn streamed_objects_appear_only_on_commit(store: &dyn ObjectStore) {
    let mut writer = store.writer().unwrap();
    writer.write_all(b"part one, ").unwrap();
    writer.write_all(b"part two").unwrap();
    assert!(store.get("conf/stream/x").is_err(), "visible before commit");
    writer.commit("conf/stream/x").unwrap();
    assert_eq!(store.get("conf/stream/x").unwrap(), b"part one, part two");

    let mut abandoned = store.writer().unwrap();
    abandoned.write_all(b"never committed").unwrap();
    drop(abandoned);
    assert!(store.list_all("conf/stream/").unwrap() == ["conf/stream/x"]);
}

fn listing_is_paged_and_ordered(store: &dyn ObjectStore) {
    let mut names: Vec<String> = (0..60)
        .map(|i| format!("conf/list/{:02x}/{i:05}", i % 7))
        .collect();
    // A file and a directory whose names differ only before '/'.
    names.push("conf/list/ab-c".into());
    names.push("conf/list/ab/x".into());
    for name in &names {
        store.put(name, name.as_bytes()).unwrap();
    }
    store
        .put("conf/listing-sibling", b"outside the prefix")
        .unwrap();
    names.sort();
    assert_eq!(store.list_all("conf/list/").unwrap(), names);
    assert_eq!(store.list_all("conf/list").unwrap(), names);
    let paged: Vec<String> = store
        .list_in_pages("conf/list/", 7)
        .collect::<crate::error::Result<_>>()
        .unwrap();
    assert_eq!(paged, names, "listing in pages of 7");

    let page = store.list_page("conf/list/", None, 10).unwrap();
    assert_eq!(page, names[..10]);
    let next = store.list_page("conf/list/", Some(&page[9]), 10).unwrap();
    assert_eq!(next, names[10..20]);
    let tail = store
        .list_page("conf/list/", Some(&names[names.len() - 3]), 10)
        .unwrap();
    assert_eq!(tail, names[names.len() - 2..]);
    assert!(store.list_all("conf/nothing-here/").unwrap().is_empty());
}

fn deletes_are_idempotent(store: &dyn ObjectStore) {
    store.put("conf/delete/x", b"x").unwrap();
    store.delete("conf/delete/x").unwrap();
    assert!(store.get("conf/delete/x").unwrap_err().is_not_found());
    store.delete("conf/delete/x").unwrap();
    assert!(store.list_all("conf/delete/").unwrap().is_empty());
}
