//! A cold tier in an archive class, end to end through the command line:
//! `init --cold-storage-class`, `tier run` writing archived packs, `check`
//! and `repair index` reading their entries without a restore, and `thaw`
//! requesting the provider's restores, copying the packs and notifying.
//! Against moto's S3 server (GLACIER) and Azurite (the Archive tier), each
//! started by its test on 127.0.0.1 and stopped by its guard.

use std::io::BufRead;

use strata::storage::{Availability, BucketStore, ObjectStore};

use crate::servers::{bucket_store, AzuriteServer, MotoServer, AZURITE_KEY};
use crate::util::*;

/// The cold packs in `cold`, which every test here expects archived.
fn cold_packs(cold: &dyn ObjectStore) -> Vec<String> {
    cold.list_all("packs/").unwrap()
}

fn availability_of_all(cold: &dyn ObjectStore) -> Vec<Availability> {
    cold_packs(cold)
        .iter()
        .map(|name| cold.availability(name).unwrap())
        .collect()
}

/// The whole life of an archived restore point in repository `t`, whose
/// cold tier `cold` keeps packs in an archive class. `rearchived`: whether
/// the provider's restored objects go back to the archive after the thaw
/// copied them (Azure), or keep a restored copy that expires (S3).
fn archived_restore_points_thaw_through_restore_requests(
    t: &TestRepo,
    cold: &dyn ObjectStore,
    rearchived: bool,
    seed: u64,
) {
    let (src, old, old_data) = crate::object_storage::old_and_young_backups(t, seed);

    let report = t.json(&["tier", "run"]);
    assert_eq!(report["restore_points_cold"], 1, "{report}");
    let status = t.ok(&["tier", "status"]);
    assert!(status.contains("(storage class "), "{status}");
    let archived = availability_of_all(cold);
    assert!(!archived.is_empty(), "no pack in the cold bucket");
    assert!(
        archived.iter().all(|a| *a == Availability::Archived),
        "{archived:?}"
    );

    // Browsing and checking need no restore: trees stay warm, and cold
    // packs' entries are read from their tails on the warm tier.
    let ls = t.ok(&["ls", &old, src.to_str().unwrap()]);
    assert!(ls.contains("old-only"), "{ls}");
    let check = t.json(&["check"]);
    assert_eq!(check["errors"].as_array().map(Vec::len), Some(0), "{check}");
    let out = t.run(&[
        "restore",
        "files",
        &old,
        "--to",
        t.path("before").to_str().unwrap(),
    ]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "an archived restore point restored without a thaw"
    );
    assert!(
        stderr_of(&out).contains("strata thaw"),
        "{}",
        stderr_of(&out)
    );

    // The plan counts the restore requests and makes none.
    let plan = t.json(&["thaw", &old, "--plan"]);
    let needed = plan["packs"].as_object().unwrap().len() as u64;
    assert!(needed >= 1, "{plan}");
    assert_eq!(plan["restore_requests"], needed, "{plan}");
    assert_eq!(plan["restore_request_bytes"], plan["bytes"], "{plan}");
    assert_eq!(plan["complete"], false, "{plan}");
    assert!(availability_of_all(cold)
        .iter()
        .all(|a| *a == Availability::Archived));
    let text = t.ok(&["thaw", &old, "--plan"]);
    assert!(
        text.contains(&format!("{needed} of them are archived")),
        "{text}"
    );

    // The thaw requests the restores, copies the packs once readable
    // (these servers restore at once) and then notifies.
    let hook_out = t.path("hook.txt");
    let hook = write_script(
        &t.path("hook.sh"),
        "echo \"$STRATA_RESTORE_POINT $STRATA_THAW_RESULT\" > \"$1\"\n",
    );
    let thawed = t.json(&[
        "thaw",
        &old,
        "--notify",
        &hook,
        "--notify-arg",
        hook_out.to_str().unwrap(),
    ]);
    assert_eq!(thawed["complete"], true, "{thawed}");
    assert_eq!(thawed["restore_requests"], needed, "{thawed}");
    assert_eq!(thawed["packs_fetched"], needed, "{thawed}");
    assert_eq!(thawed["restoring_packs"], 0, "{thawed}");
    let hook = std::fs::read_to_string(&hook_out).unwrap();
    assert!(hook.starts_with(&old) && hook.contains(" ok"), "{hook}");
    let after = availability_of_all(cold);
    let expected = if rearchived {
        Availability::Archived
    } else {
        Availability::Readable
    };
    assert!(after.iter().all(|a| *a == expected), "{after:?}");

    let target = t.path("thawed");
    t.restore(&old, &target);
    assert_eq!(
        std::fs::read(under(&target, &src).join("old-only")).unwrap(),
        old_data
    );

    // A new machine: the index rebuilt from the buckets alone knows the
    // cold packs (from their tails) and the thaw (from its records).
    std::fs::remove_dir_all(t.state()).unwrap();
    t.ok(&["repair", "index"]);
    let target = t.path("after-repair");
    t.restore(&old, &target);
    assert_eq!(
        std::fs::read(under(&target, &src).join("old-only")).unwrap(),
        old_data
    );
    t.ok(&["check"]);
}

/// A repository in moto's bucket `backups` whose cold tier is in GLACIER
/// in bucket `archive`, and that cold bucket for a look at its objects.
fn glacier_repo(server: &MotoServer) -> (TestRepo, BucketStore) {
    let t = TestRepo::in_bucket(
        server.env(),
        "s3://backups/warm",
        &["--cold", "s3://archive/cold", "--cold-storage-class", "GLACIER"],
    );
    let cold = moto_store(server, "s3://archive/cold", &t.path("probe"));
    (t, cold)
}

/// The moto store at `url`, for a look at its objects.
fn moto_store(server: &MotoServer, url: &str, staging: &std::path::Path) -> BucketStore {
    bucket_store(url, &server.access(), staging, None)
}

#[test]
fn glacier_packs_on_s3_are_restored_by_thaw() {
    let Some(server) = MotoServer::start(&["backups", "archive"]) else {
        return;
    };
    let (t, cold) = glacier_repo(&server);
    archived_restore_points_thaw_through_restore_requests(&t, &cold, false, 71);
}

/// Restores that take time, as S3's take hours: `--no-wait` requests them
/// and returns without notifying; a second run requests nothing again; a
/// waiting run releases the writer lock between its checks (a backup runs
/// meanwhile), copies the packs once the provider has restored them, and
/// then notifies once.
#[test]
fn a_thaw_waits_for_slow_restores_without_holding_the_lock_and_resumes_across_runs() {
    let Some(server) = MotoServer::start(&["backups", "archive"]) else {
        return;
    };
    let (t, cold) = glacier_repo(&server);
    let (src, old, old_data) = crate::object_storage::old_and_young_backups(&t, 73);
    server.set_restore_time(10);
    t.ok(&["tier", "run"]);
    std::thread::sleep(std::time::Duration::from_millis(10_500));

    let hook_out = t.path("hook.txt");
    let hook = write_script(&t.path("hook.sh"), "echo \"$STRATA_THAW_RESULT\" >> \"$1\"\n");
    let notify = ["--notify", hook.as_str(), "--notify-arg", hook_out.to_str().unwrap()];
    let mut args = vec!["thaw", old.as_str(), "--no-wait"];
    args.extend(notify);
    let requested = t.json(&args);
    let needed = requested["packs"].as_object().unwrap().len() as u64;
    assert_eq!(requested["complete"], false, "{requested}");
    assert_eq!(requested["restore_requests"], needed, "{requested}");
    assert_eq!(requested["restoring_packs"], needed, "{requested}");
    assert_eq!(requested["packs_fetched"], 0, "{requested}");
    assert!(!hook_out.exists(), "notified before the thaw was done");
    assert!(availability_of_all(&cold).contains(&Availability::Restoring));
    let text = t.ok(&["thaw", old.as_str(), "--no-wait"]);
    assert!(text.contains("run `strata thaw") && text.contains("still being restored"), "{text}");
    let out = t.run(&["restore", "files", &old, "--to", t.path("early").to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "restored before the thaw was done");
    let again = t.json(&["thaw", &old, "--plan"]);
    assert_eq!(again["restore_requests"], 0, "requested twice: {again}");

    let mut args = vec!["thaw", old.as_str(), "--poll-seconds", "1"];
    args.extend(notify);
    let mut waiting = t
        .command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(waiting.stdout.take().unwrap()).lines();
    let first = said.next().unwrap().unwrap();
    assert!(first.contains("being restored by the storage provider; checking again"), "{first}");
    // It waits without the writer lock: a backup runs meanwhile (retried
    // over the moments the thaw holds the lock to check), and a check
    // that finds the repository busy waits for the next.
    std::fs::write(src.join("during-thaw"), b"backed up while a thaw waits").unwrap();
    let mut backed_up = false;
    for _ in 0..8 {
        let backup = t.run(&["backup", "files", src.to_str().unwrap(), "--source", "during"]);
        if backup.status.success() {
            backed_up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let rest: Vec<String> = said.map(Result::unwrap).collect();
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(backed_up, "no backup could run while the thaw waited");
    let last = rest.last().cloned().unwrap_or_default();
    assert!(last.starts_with(&format!("thawed {}", &old[..8])) && last.contains("fetched 1 packs"), "{rest:?}");
    assert_eq!(std::fs::read_to_string(&hook_out).unwrap(), "ok\n", "notified more than once");
    let target = t.path("thawed");
    t.restore(&old, &target);
    assert_eq!(std::fs::read(under(&target, &src).join("old-only")).unwrap(), old_data);
}

#[test]
fn archive_tier_blobs_on_azure_are_rehydrated_by_thaw_and_archived_again() {
    let Some(server) = AzuriteServer::start() else {
        return;
    };
    server.create_container("backups");
    server.create_container("archive");
    let t = TestRepo::in_bucket(
        server.env(),
        "azblob://backups/warm",
        &[
            "--cold",
            "azblob://archive/cold",
            "--cold-storage-class",
            "archive",
        ],
    );
    let cold = bucket_store("azblob://archive/cold", &server.access(AZURITE_KEY), &t.path("probe"), None);
    archived_restore_points_thaw_through_restore_requests(&t, &cold, true, 72);
}

#[test]
fn a_storage_class_needs_a_bucket_the_provider_knows_it_for() {
    let t = TestRepo::uninitialized();
    let cold = t.path("cold");
    let out = t.run(&[
        "init",
        "--encryption",
        "none",
        "--cold",
        cold.to_str().unwrap(),
        "--cold-storage-class",
        "GLACIER",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr_of(&out).contains("storage classes are for buckets"),
        "{}",
        stderr_of(&out)
    );
    let out = t.run(&[
        "init",
        "--encryption",
        "none",
        "--cold",
        "azblob://c/p",
        "--cold-storage-class",
        "GLACIER",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr_of(&out);
    assert!(
        err.contains("not a storage class") && err.contains("Archive"),
        "{err}"
    );
    let out = t.run(&[
        "init",
        "--encryption",
        "none",
        "--cold-storage-class",
        "GLACIER",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!t.repo.exists(), "a refused init left a repository behind");
}

/// Prune never reads an archived pack: a cold pack that forgetting left
/// mostly dead stays as it is (rewriting it would need a restore), and
/// goes, with its tail, once no restore point uses any of it.
#[test]
fn prune_leaves_archived_packs_until_they_are_wholly_dead() {
    let Some(server) = MotoServer::start(&["backups", "archive"]) else {
        return;
    };
    let (t, cold) = glacier_repo(&server);
    let mut rng: rand::rngs::SmallRng = rand::SeedableRng::seed_from_u64(74);
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("small"), random_bytes(&mut rng, 100_000)).unwrap();
    std::fs::write(src.join("large"), random_bytes(&mut rng, 3_000_000)).unwrap();
    t.backup_at(&src, "s", &time_days_ago(300));
    std::fs::remove_file(src.join("large")).unwrap();
    t.backup_at(&src, "s", &time_days_ago(200));
    t.ok(&["tier", "run"]);
    let packs = cold_packs(&cold);
    assert_eq!(packs.len(), 1, "{packs:?}");

    // The older restore point goes, and with it the large file's data.
    t.ok(&["forget", "--source", "s", "--keep-last", "1"]);
    let pruned = t.json(&["prune"]);
    assert_eq!(pruned["packs_repacked"], 0, "{pruned}");
    assert_eq!(cold_packs(&cold), packs, "an archived pack was rewritten");
    assert!(availability_of_all(&cold).iter().all(|a| *a == Availability::Archived));
    t.ok(&["check"]);

    // A young backup without the small file; the old one goes too.
    std::fs::remove_file(src.join("small")).unwrap();
    std::fs::write(src.join("young"), b"young").unwrap();
    t.backup(&src, "s");
    t.ok(&["forget", "--source", "s", "--keep-last", "1"]);
    t.ok(&["prune"]);
    assert!(cold_packs(&cold).is_empty(), "a dead archived pack was kept");
    let warm = moto_store(&server, "s3://backups/warm", &t.path("probe"));
    let tails = (&warm as &dyn ObjectStore).list_all("cold-tails/").unwrap();
    assert!(tails.is_empty(), "{tails:?}");
}
