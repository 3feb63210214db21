//! Repositories in buckets of more real servers than s3s-fs: Garage (a
//! production S3-compatible store), Azurite (Azure Blob) and
//! fake-gcs-server (Google Cloud Storage). Each test starts its own
//! servers on 127.0.0.1, and their guards stop them, also when the test
//! fails. The guards for Garage and fake-gcs-server are the store's
//! (`crates/store/tests/common`); a test whose server is not installed is
//! skipped with a line on stderr.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use strata::storage::{BucketStore, ObjectStore};

use crate::object_storage::{backs_up_restores_and_checks, mount_reads_the_latest_backup};
use crate::util::*;

use crate::servers::{bucket_store, AzuriteServer, GarageServer, GcsServer, GARAGE_SECRET};

/// A test repository at `url`, reached through `env` (a server's
/// endpoint and credentials), its state in the test's temporary directory.
fn repo_in(env: Vec<(String, String)>, url: &str, init: &[&str]) -> TestRepo {
    TestRepo::in_bucket(env, url, init)
}

/// The Garage store at `url`, for a test that looks at objects directly.
fn garage_store(server: &GarageServer, url: &str, staging: &Path) -> BucketStore {
    bucket_store(url, &server.access(GARAGE_SECRET), staging, None)
}

fn pack_count(store: &BucketStore) -> usize {
    (store as &dyn ObjectStore)
        .list_all("packs/")
        .unwrap()
        .len()
}

#[test]
fn a_garage_repository_backs_up_restores_checks_and_mounts() {
    let Some(server) = GarageServer::start(&["backups"]) else {
        return;
    };
    let t = repo_in(server.env(GARAGE_SECRET), "s3://backups/site-a", &[]);
    let src = backs_up_restores_and_checks(&t, 51, 3 << 20);
    assert!(t.state().join("index").is_dir(), "the index lives in the state directory");
    mount_reads_the_latest_backup(&t, &src);
}

#[test]
fn old_restore_points_go_to_a_cold_garage_bucket_and_thaw_back() {
    let Some(server) = GarageServer::start(&["backups", "archive"]) else {
        return;
    };
    let t = repo_in(
        server.env(GARAGE_SECRET),
        "s3://backups/warm",
        &["--cold", "s3://archive/cold"],
    );
    let cold = garage_store(&server, "s3://archive/cold", &t.path("probe-staging"));
    crate::object_storage::old_restore_points_go_cold_and_thaw_back(&t, &cold, 52);
}

/// The Garage node dies while a backup uploads its packs: the backup fails
/// with an error naming the bucket, no restore point refers to what did
/// not arrive, the restore point made before survives, and after a
/// restart the next backup completes.
#[test]
fn a_garage_node_killed_during_a_backup_loses_nothing_and_the_next_run_completes() {
    let Some(mut server) = GarageServer::start(&["backups"]) else {
        return;
    };
    let t = repo_in(server.env(GARAGE_SECRET), "s3://backups/faults", &[]);
    let store = garage_store(&server, "s3://backups/faults", &t.path("probe-staging"));
    // The smallest packs, so that a few MiB make many uploads and the
    // node dies with most of them still to come.
    let mut config: serde_json::Value =
        serde_json::from_slice(&store.get("config.json").unwrap()).unwrap();
    config["pack_target_size"] = serde_json::json!(1 << 20);
    store
        .put("config.json", &serde_json::to_vec_pretty(&config).unwrap())
        .unwrap();

    let first = t.path("first");
    std::fs::create_dir_all(&first).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(53);
    std::fs::write(first.join("kept"), random_bytes(&mut rng, 2 << 20)).unwrap();
    std::fs::write(first.join("small.txt"), b"made before the fault").unwrap();
    t.backup(&first, "first");
    let packs_before = pack_count(&store);

    let src = t.path("big");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        std::fs::write(src.join(format!("f{i}")), random_bytes(&mut rng, 3 << 20)).unwrap();
    }
    let backup = spawn_with_one_retry(&t, &["backup", "files", src.to_str().unwrap(), "--source", "big"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while pack_count(&store) == packs_before {
        assert!(Instant::now() < deadline, "no pack was uploaded");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let out = backup.wait_with_output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "the backup succeeded without its server"
    );
    let err = stderr_of(&out);
    assert!(err.contains("s3://backups/faults"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    server.restart();
    crate::object_storage::nothing_committed_was_lost_and_a_retry_completes(&t, &first, &src);
}

#[test]
fn an_azure_container_repository_backs_up_restores_and_checks() {
    let Some(server) = AzuriteServer::start() else {
        return;
    };
    server.create_container("backups");
    let t = repo_in(server.env(), "azblob://backups/site-b", &[]);
    backs_up_restores_and_checks(&t, 54, 1 << 20);
}

/// Through the CLI, with a pack above the size other providers upload in
/// parts: GCS takes it in one request.
#[test]
fn a_gcs_bucket_repository_backs_up_restores_and_checks() {
    let Some(server) = GcsServer::start(&["backups"]) else {
        return;
    };
    let t = repo_in(server.env(), "gs://backups/site-c", &[]);
    backs_up_restores_and_checks(&t, 55, 18 << 20);
}

