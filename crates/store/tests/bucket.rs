//! The bucket store against real servers started here (guards in
//! `common`): s3s-fs (an S3-compatible server that checks request
//! signatures) and Azurite (Microsoft's Azure Blob emulator). Each test
//! starts its own server on 127.0.0.1 with a temporary data directory,
//! and the guard stops it, also when the test fails.

use std::io::Write;
use std::path::Path;

mod common;

use common::{bucket_store, AzuriteServer, S3Server, AZURITE_KEY};
use strata_store::{conformance, Access, BucketOptions, BucketStore, Faults, Location, ObjectStore};

fn s3_store(server: &S3Server, url: &str, staging: &Path) -> BucketStore {
    bucket_store(url, &server.access(), staging, None)
}

#[test]
fn an_s3_bucket_behaves_like_every_store() {
    let Some(server) = S3Server::start("conformance") else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    conformance::check_all(&s3_store(&server, "s3://conformance/repo", staging.path()));
    // The prefix is the store's root: nothing landed outside it.
    let root = server.objects_dir("conformance", "");
    let top: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, ["repo"], "objects outside the prefix");
    assert!(std::fs::read_dir(staging.path()).unwrap().next().is_none(), "staging left behind");
}

#[test]
fn an_azure_container_behaves_like_every_store() {
    let Some(server) = AzuriteServer::start() else {
        return;
    };
    server.create_container("conformance");
    let staging = tempfile::tempdir().unwrap();
    let location = Location::parse("azblob://conformance/repo").unwrap();
    let store = BucketStore::open(&location, &server.access(AZURITE_KEY), staging.path(), None).unwrap();
    conformance::check_all(&store);
    let outside = BucketStore::open(
        &Location::parse("azblob://conformance").unwrap(),
        &server.access(AZURITE_KEY),
        staging.path(),
        None,
    )
    .unwrap();
    assert!(
        (&outside as &dyn ObjectStore)
            .list_all("")
            .unwrap()
            .iter()
            .all(|n| n.starts_with("repo/")),
        "objects outside the prefix"
    );
}

#[test]
fn a_large_streamed_object_is_uploaded_in_parts_and_read_back_by_range() {
    let Some(server) = S3Server::start("large") else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let store = s3_store(&server, "s3://large", staging.path());
    let bytes: Vec<u8> = (0..40u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut writer = store.writer().unwrap();
    for piece in bytes.chunks(3 << 20) {
        writer.write_all(piece).unwrap();
    }
    writer.commit("packs/ab/big.pack").unwrap();
    assert_eq!(store.size("packs/ab/big.pack").unwrap(), bytes.len() as u64);
    let mut buf = vec![0u8; 1 << 20];
    store.read_at("packs/ab/big.pack", 33 << 20, &mut buf).unwrap();
    assert_eq!(buf, bytes[33 << 20..34 << 20]);
    assert_eq!(store.get("packs/ab/big.pack").unwrap(), bytes);
}

#[test]
fn wrong_credentials_and_a_missing_bucket_are_clear_errors() {
    let Some(server) = S3Server::start("present") else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let wrong = Access {
        secret: Some("not the secret".into()),
        ..server.access()
    };
    let store = BucketStore::open(&Location::parse("s3://present").unwrap(), &wrong, staging.path(), None).unwrap();
    let err = store.put("config.json", b"{}").unwrap_err().to_string();
    assert!(err.contains("s3://present/config.json"), "{err}");
    assert!(!err.contains("not the secret"), "a secret in a message: {err}");
    let missing = s3_store(&server, "s3://absent", staging.path());
    let err = missing.get("config.json").unwrap_err().to_string();
    assert!(err.contains("s3://absent"), "{err}");
}

#[test]
fn locations_parse_and_print_without_credentials() {
    let parsed = Location::parse("s3://bucket/some/prefix/").unwrap();
    assert_eq!(
        parsed,
        Location::S3 {
            bucket: "bucket".into(),
            prefix: "some/prefix".into()
        }
    );
    assert_eq!(parsed.to_string(), "s3://bucket/some/prefix");
    assert_eq!(Location::parse("azblob://c").unwrap().to_string(), "azblob://c");
    assert_eq!(Location::parse("gs://b/p").unwrap().to_string(), "gs://b/p");
    assert!(Location::parse("/srv/repo").unwrap().is_directory());
    for bad in ["s3://key:secret@bucket/p", "ftp://x/y", "s3:///p", "s3://b/../p"] {
        assert!(Location::parse(bad).is_err(), "{bad}");
    }
}

/// Retries short enough for a test: the same policy, scaled down.
fn quick_retries(tries: usize) -> strata_store::Retry {
    strata_store::Retry {
        tries,
        min_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(50),
    }
}

fn faulty_store(server: &S3Server, url: &str, staging: &Path, faults: &Faults, tries: usize) -> BucketStore {
    let options = BucketOptions {
        retry: quick_retries(tries),
        faults: Some(faults.clone()),
        ..BucketOptions::default()
    };
    BucketStore::open_with(&Location::parse(url).unwrap(), &server.access(), staging, &options).unwrap()
}

#[test]
fn throttling_and_server_errors_are_retried_until_requests_succeed() {
    let Some(server) = S3Server::start("busy") else {
        return;
    };
    for (every, status, prefix) in [(3, 503, "throttled"), (4, 500, "failing")] {
        let staging = tempfile::tempdir().unwrap();
        let faults = Faults::every(every, status);
        let store = faulty_store(&server, &format!("s3://busy/{prefix}"), staging.path(), &faults, 8);
        // Every kind of request, under a fault every few requests.
        conformance::check_all(&store);
        let bytes: Vec<u8> = (0..(20u32 << 20)).map(|i| (i >> 7) as u8).collect();
        let mut writer = store.writer().unwrap();
        writer.write_all(&bytes).unwrap();
        writer.commit("packs/cd/multipart.pack").unwrap();
        assert_eq!(store.get("packs/cd/multipart.pack").unwrap(), bytes);
        assert!(faults.injected() > 10, "only {} faults injected", faults.injected());
    }
}

#[test]
fn a_provider_that_never_recovers_fails_within_a_bounded_time() {
    let Some(server) = S3Server::start("down") else {
        return;
    };
    let staging = tempfile::tempdir().unwrap();
    let faults = Faults::every(1, 503);
    let store = faulty_store(&server, "s3://down/repo", staging.path(), &faults, 3);
    let started = std::time::Instant::now();
    let err = store.put("config.json", b"{}").unwrap_err().to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(err.contains("s3://down/repo/config.json"), "{err}");
    // The first try and every retry, then the error.
    assert_eq!(faults.injected(), 4, "{err}");
    assert!(err.contains("gave up after 4 tries"), "{err}");
}
