//! The bucket store against more real servers: Garage (a production
//! S3-compatible store) and fake-gcs-server (a Google Cloud Storage
//! emulator, reached without signatures). Each test starts its own server
//! on 127.0.0.1 with temporary data, and the guard stops it, also when
//! the test fails.

mod common;

use std::io::Write;
use std::path::Path;

use common::{bucket_store, GarageServer, GcsServer, GARAGE_SECRET};
use strata_store::{conformance, Access, BucketStore, Location, ObjectStore};

fn garage_store(server: &GarageServer, url: &str, staging: &Path) -> BucketStore {
    bucket_store(url, &server.access(GARAGE_SECRET), staging, None)
}

fn gcs_store(server: &GcsServer, url: &str, staging: &Path) -> BucketStore {
    bucket_store(url, &server.access(), staging, None)
}

/// Every object of the store at the bucket's root, for a check that
/// nothing landed outside a prefix.
fn all_names(store: &BucketStore) -> Vec<String> {
    (store as &dyn ObjectStore).list_all("").unwrap()
}

/// 40 MiB that no two parts share, so a part put in the wrong place shows.
fn large_object() -> Vec<u8> {
    (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Streams `bytes` into `name` in pieces that do not line up with the
/// store's parts, then reads it back whole and by range.
fn stream_and_read_back(store: &BucketStore, name: &str, bytes: &[u8]) {
    let mut writer = store.writer().unwrap();
    for piece in bytes.chunks(3 << 20) {
        writer.write_all(piece).unwrap();
    }
    writer.commit(name).unwrap();
    assert_eq!(store.size(name).unwrap(), bytes.len() as u64);
    let mut buf = vec![0u8; 1 << 20];
    let at = bytes.len() - (7 << 20);
    store.read_at(name, at as u64, &mut buf).unwrap();
    assert!(
        buf == bytes[at..at + (1 << 20)],
        "a ranged read returned other bytes"
    );
    assert!(
        store.get(name).unwrap() == bytes,
        "the object read back differs"
    );
}

#[test]
fn a_garage_bucket_behaves_like_every_store() {
    let Some(server) = GarageServer::start(&["conformance"]) else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let store = garage_store(&server, "s3://conformance/repo", staging.path());
    let whole_bucket = garage_store(&server, "s3://conformance", staging.path());
    behaves_like_every_store(&store, &whole_bucket, staging.path());
}

#[test]
fn a_fake_gcs_bucket_behaves_like_every_store() {
    let Some(server) = GcsServer::start(&["conformance"]) else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let store = gcs_store(&server, "gs://conformance/repo", staging.path());
    let whole_bucket = gcs_store(&server, "gs://conformance", staging.path());
    behaves_like_every_store(&store, &whole_bucket, staging.path());
}

/// The store contract on `store` (a prefix of the bucket `whole_bucket`
/// opens), with nothing written outside its prefix and no staging left.
fn behaves_like_every_store(store: &BucketStore, whole_bucket: &BucketStore, staging: &Path) {
    conformance::check_all(store);
    let names = all_names(whole_bucket);
    assert!(
        !names.is_empty() && names.iter().all(|n| n.starts_with("repo/")),
        "objects outside the prefix: {names:?}"
    );
    assert!(
        std::fs::read_dir(staging).unwrap().next().is_none(),
        "staging left behind"
    );
}

#[test]
fn a_large_streamed_object_goes_to_garage_in_parts_and_reads_back_by_range() {
    let Some(server) = GarageServer::start(&["large"]) else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let store = garage_store(&server, "s3://large/repo", staging.path());
    stream_and_read_back(&store, "packs/ab/big.pack", &large_object());
}

/// Objects above the part size, which other providers take in parts, go
/// to GCS in one request (fake-gcs-server has no multipart uploads).
#[test]
fn a_large_streamed_object_goes_to_fake_gcs_and_reads_back_by_range() {
    let Some(server) = GcsServer::start(&["large"]) else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let store = gcs_store(&server, "gs://large/repo", staging.path());
    stream_and_read_back(&store, "packs/ab/big.pack", &large_object());
}

#[test]
fn wrong_credentials_and_a_missing_bucket_are_clear_errors_on_garage() {
    let Some(server) = GarageServer::start(&["present"]) else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let wrong_secret = "not-the-secret-at-all-0123456789";
    let wrong = server.access(wrong_secret);
    let store = BucketStore::open(
        &Location::parse("s3://present/repo").unwrap(),
        &wrong,
        staging.path(),
        None,
    )
    .unwrap();
    for err in [
        store.put("config.json", b"{}").unwrap_err(),
        store.get("config.json").unwrap_err(),
    ] {
        assert!(
            !err.is_not_found(),
            "a refused request read as a missing object: {err}"
        );
        let err = err.to_string();
        assert!(err.contains("s3://present/repo/config.json"), "{err}");
        assert!(
            err.contains("PermissionDenied") || err.contains("AccessDenied"),
            "{err}"
        );
        assert!(!err.contains(wrong_secret), "a secret in a message: {err}");
    }
    let unknown_key = Access {
        key_id: Some("GK000000000000000000000000".into()),
        ..server.access(GARAGE_SECRET)
    };
    let store = BucketStore::open(
        &Location::parse("s3://present").unwrap(),
        &unknown_key,
        staging.path(),
        None,
    )
    .unwrap();
    let err = store.put("config.json", b"{}").unwrap_err().to_string();
    assert!(err.contains("s3://present/config.json"), "{err}");

    let missing = garage_store(&server, "s3://absent", staging.path());
    let err = missing.get("config.json").unwrap_err().to_string();
    assert!(err.contains("s3://absent"), "{err}");
    assert!(
        missing.put("config.json", b"{}").is_err(),
        "a put into a missing bucket succeeded"
    );
}
