//! Archive classes against servers that keep them: moto's S3 server
//! (GLACIER and DEEP_ARCHIVE objects refuse reads until restored) and
//! Azurite (Archive tier blobs refuse reads until rehydrated; Azurite
//! checks the SharedKey signature of every request). Each test starts its
//! own server on 127.0.0.1 and the guard stops it, also on failure.

mod common;

use std::io::Write;
use std::path::Path;

use common::{bucket_store, AzuriteServer, MotoServer, AZURITE_KEY};
use strata_store::{Access, Availability, BucketStore, Location, ObjectStore, RestorePriority};

fn moto_store(server: &MotoServer, url: &str, class: Option<&str>, staging: &Path) -> BucketStore {
    bucket_store(url, &server.access(), staging, class)
}

fn azurite_store(server: &AzuriteServer, url: &str, class: Option<&str>, staging: &Path) -> BucketStore {
    bucket_store(url, &server.access(AZURITE_KEY), staging, class)
}

/// 3 MiB streamed in pieces, as a pack is.
fn stream(store: &BucketStore, name: &str) -> Vec<u8> {
    let bytes: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut writer = store.writer().unwrap();
    for piece in bytes.chunks(1 << 20) {
        writer.write_all(piece).unwrap();
    }
    writer.commit(name).unwrap();
    bytes
}

/// The life of an archived object: written archived, unreadable with an
/// error that says to restore it, readable after a restore request.
fn archived_object_is_restored_before_it_is_read(store: &BucketStore) -> Vec<u8> {
    let name = "packs/ab/archived.pack";
    let bytes = stream(store, name);
    assert_eq!(store.availability(name).unwrap(), Availability::Archived);
    // Properties stay readable: listing and sizes need no restore.
    assert_eq!(store.size(name).unwrap(), bytes.len() as u64);
    assert_eq!(
        (store as &dyn ObjectStore).list_all("packs/").unwrap(),
        vec![name.to_string()]
    );
    let refused = store.get(name).unwrap_err().to_string();
    assert!(
        refused.contains("archive class") && refused.contains(name),
        "{refused}"
    );
    let mut buf = vec![0u8; 100];
    assert!(store.read_at(name, 10, &mut buf).is_err());

    store
        .request_restore(name, 1, RestorePriority::Standard)
        .unwrap();
    // A second request while (or after) it is restored is no error.
    store
        .request_restore(name, 1, RestorePriority::Standard)
        .unwrap();
    assert_eq!(store.availability(name).unwrap(), Availability::Readable);
    assert_eq!(store.get(name).unwrap(), bytes);
    store.read_at(name, 1 << 20, &mut buf).unwrap();
    assert_eq!(buf, bytes[1 << 20..(1 << 20) + 100]);
    bytes
}

#[test]
fn s3_glacier_objects_are_restored_before_they_are_read() {
    let Some(server) = MotoServer::start(&["cold"]) else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let store = moto_store(&server, "s3://cold/repo", Some("GLACIER"), staging.path());
    archived_object_is_restored_before_it_is_read(&store);
    // S3's restored copy expires by itself: nothing to send back.
    store.return_to_archive("packs/ab/archived.pack").unwrap();

    // Small objects written whole get the class too; a missing one is
    // NotFound, as for every store.
    store.put("packs/cd/small.pack", b"small").unwrap();
    assert_eq!(
        store.availability("packs/cd/small.pack").unwrap(),
        Availability::Archived
    );
    assert!(store
        .availability("packs/ef/absent.pack")
        .unwrap_err()
        .is_not_found());

    // The same bucket without a class: objects are readable at once.
    let plain = moto_store(&server, "s3://cold/plain", None, staging.path());
    plain.put("packs/01/plain.pack", b"plain").unwrap();
    assert_eq!(
        plain.availability("packs/01/plain.pack").unwrap(),
        Availability::Readable
    );
}

#[test]
fn s3_deep_archive_objects_are_restored_too() {
    let Some(server) = MotoServer::start(&["deep"]) else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let store = moto_store(&server, "s3://deep", Some("deep_archive"), staging.path());
    store.put("packs/aa/x.pack", b"deep").unwrap();
    assert_eq!(
        store.availability("packs/aa/x.pack").unwrap(),
        Availability::Archived
    );
    store
        .request_restore("packs/aa/x.pack", 1, RestorePriority::Expedited)
        .unwrap();
    assert_eq!(store.get("packs/aa/x.pack").unwrap(), b"deep");
}

#[test]
fn azure_archive_blobs_are_rehydrated_before_they_are_read_and_archived_again() {
    let Some(server) = AzuriteServer::start() else {
        return;
    };
    server.create_container("cold");
    let staging = tempfile::tempdir().unwrap();
    let store = azurite_store(
        &server,
        "azblob://cold/repo",
        Some("Archive"),
        staging.path(),
    );
    archived_object_is_restored_before_it_is_read(&store);
    // Azure keeps a rehydrated blob hot: the store sends it back.
    store.return_to_archive("packs/ab/archived.pack").unwrap();
    assert_eq!(
        store.availability("packs/ab/archived.pack").unwrap(),
        Availability::Archived
    );
    assert!(store
        .availability("packs/ef/absent.pack")
        .unwrap_err()
        .is_not_found());

    // A Cool tier is no archive: readable at once, never sent back.
    let cool = azurite_store(&server, "azblob://cold/cool", Some("cool"), staging.path());
    cool.put("packs/01/cool.pack", b"cool").unwrap();
    assert_eq!(
        cool.availability("packs/01/cool.pack").unwrap(),
        Availability::Readable
    );
    cool.return_to_archive("packs/01/cool.pack").unwrap();
    assert_eq!(cool.get("packs/01/cool.pack").unwrap(), b"cool");
}

#[test]
fn a_wrong_azure_key_is_refused_without_showing_it() {
    let Some(server) = AzuriteServer::start() else {
        return;
    };
    server.create_container("cold");
    let staging = tempfile::tempdir().unwrap();
    let good = azurite_store(&server, "azblob://cold", Some("Archive"), staging.path());
    good.put("packs/aa/x.pack", b"x").unwrap();
    // A valid base64 key that is not the account's.
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let wrong = bucket_store("azblob://cold", &server.access(wrong_key), staging.path(), Some("Archive"));
    let refused = wrong
        .request_restore("packs/aa/x.pack", 1, RestorePriority::Standard)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("403"), "{refused}");
    assert!(!refused.contains(wrong_key), "{refused}");
    assert_eq!(
        good.availability("packs/aa/x.pack").unwrap(),
        Availability::Archived
    );
}

#[test]
fn classes_a_provider_lacks_are_refused_when_opening() {
    let staging = tempfile::tempdir().unwrap();
    let access = Access::default();
    for (url, class) in [
        ("s3://b", "Archive"),
        ("azblob://c", "GLACIER"),
        ("gs://b", "GLACIER"),
    ] {
        let Err(refused) = BucketStore::open(
            &Location::parse(url).unwrap(),
            &access,
            staging.path(),
            Some(class),
        ) else {
            panic!("{url} took class {class}");
        };
        assert!(
            refused.to_string().contains("not a storage class"),
            "{refused}"
        );
    }
}
