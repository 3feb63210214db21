//! Passwords and key slots of an encrypted repository through the real
//! binary: from a file, a command or the environment, refused when wrong
//! or missing without writing anything, asked once per command; slots
//! added, removed and replaced without touching data.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::encryption::*;
use crate::mount::{fuse_available, MountGuard};
use crate::util::*;

// ---------------------------------------------------------------------
// Passwords

/// Every file below the repository (objects, index, file cache, lock)
/// with its size and modification time.
fn repository_listing(t: &TestRepo) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out: Vec<_> = files_under(&t.repo)
        .into_iter()
        .map(|file| {
            let meta = std::fs::metadata(&file).unwrap();
            (file, meta.len(), meta.modified().unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_wrong_password_is_refused_and_nothing_is_written() {
    let (t, src) = backed_up(1203);
    std::fs::write(src.join("new.txt"), b"only in the refused backup").unwrap();
    let before = repository_listing(&t);
    for args in [
        &["backup", "files", src.to_str().unwrap(), "--source", "s"][..],
        &["list"][..],
        &["check"][..],
        &["prune"][..],
        &["key", "list"][..],
    ] {
        let text = refused_with(&t.repo, Some("not the password"), args);
        assert!(text.contains("wrong password"), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
    assert_eq!(
        repository_listing(&t),
        before,
        "a refused command wrote to the repository"
    );
    assert_eq!(t.json(&["list"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_missing_password_without_a_terminal_is_refused_naming_strata_password() {
    let (t, src) = backed_up(1204);
    let before = repository_listing(&t);
    for args in [
        &["list"][..],
        &["backup", "files", src.to_str().unwrap(), "--source", "s"][..],
    ] {
        let text = refused_with(&t.repo, None, args);
        assert!(text.contains("STRATA_PASSWORD"), "{args:?}: {text}");
    }
    assert_eq!(
        repository_listing(&t),
        before,
        "a refused command wrote to the repository"
    );
    // init too has nothing to take a password from.
    let other = t.path("other");
    let mut args = vec!["init"];
    args.extend_from_slice(&FAST_KDF);
    let text = refused_with(&other, None, &args);
    assert!(text.contains("STRATA_PASSWORD"), "{text}");
    assert!(!other.join("config.json").exists());
}

#[test]
fn passwords_come_from_a_file_a_command_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let secret = "pass word with spaces";
    // A path with a space, quoted inside the command line.
    let file = write_password(&dir.path().join("my password.txt"), secret);
    let file_arg = file.to_str().unwrap();
    let mut args = vec!["--password-file", file_arg, "init"];
    args.extend_from_slice(&FAST_KDF);
    ok_with(&repo, None, &args);
    let list = |pre: &[&str], env: Option<&str>| {
        let mut args = pre.to_vec();
        args.extend(["list", "--json"]);
        ok_with(&repo, env, &args)
    };
    // One trailing newline is stripped from the file and the command.
    list(&[], Some(secret));
    list(&["--password-file", file_arg], None);
    let quoted = format!("cat '{file_arg}'");
    list(&["--password-command", &quoted], None);
    let escaped = format!("cat {}", file_arg.replace(' ', "\\ "));
    list(&["--password-command", &escaped], None);
    let echo = format!("printf '%s\\n' \"{secret}\"");
    list(&["--password-command", &echo], None);
    // The first source given wins: file, then command, then environment.
    list(&["--password-file", file_arg], Some("wrong"));
    list(&["--password-command", &quoted], Some("wrong"));
    list(
        &["--password-file", file_arg, "--password-command", "false"],
        None,
    );
    let wrong_file = write_password(&dir.path().join("wrong"), "wrong");
    let text = refused_with(
        &repo,
        Some(secret),
        &["--password-file", wrong_file.to_str().unwrap(), "list"],
    );
    assert!(text.contains("wrong password"), "{text}");
    // The command runs without a shell: shell syntax is not interpreted.
    let piped = format!("cat '{file_arg}' | cat");
    refused_with(&repo, None, &["--password-command", &piped, "list"]);
    // A failing command is an error, not an empty password.
    refused_with(&repo, None, &["--password-command", "false", "list"]);
}

/// Each command asks for the password once, however many steps it takes
/// (and derives the key once); so does a mount for all its reads.
#[test]
fn the_password_is_asked_once_per_command() {
    let (t, src) = backed_up(1211);
    let password = write_password(&t.path("pw"), PASSWORD);
    let counter = t.path("asked");
    let command = format!(
        "sh -c 'echo asked >> {}; cat {}'",
        counter.display(),
        password.display()
    );
    let asked = || {
        let n = std::fs::read_to_string(&counter).unwrap().lines().count();
        std::fs::remove_file(&counter).unwrap();
        n
    };
    let (src, target) = (src.to_str().unwrap(), t.path("restored"));
    for args in [
        &["backup", "files", src, "--source", "s"][..],
        &["list"][..],
        &["show", "s@latest"][..],
        &["ls", "s@latest", "-R"][..],
        &[
            "restore",
            "files",
            "s@latest",
            "--to",
            target.to_str().unwrap(),
        ][..],
        &["check", "--read-data"][..],
        &["forget", "--keep-last", "1"][..],
        &["prune"][..],
        &["repair", "index"][..],
        &["stats"][..],
        &["key", "list"][..],
    ] {
        let mut all = vec!["--password-command", &command];
        all.extend_from_slice(args);
        ok_with(&t.repo, None, &all);
        assert_eq!(asked(), 1, "{args:?}");
    }
    if fuse_available() {
        let mnt = t.path("mnt");
        let mut guard = MountGuard::mount_with(&t, &mnt, &["--password-command", &command]);
        let mounted = under(&mnt.join("files/s/latest"), Path::new(src));
        for name in ["a.txt", "sub/b.bin"] {
            assert!(
                std::fs::read(mounted.join(name)).unwrap()
                    == std::fs::read(Path::new(src).join(name)).unwrap()
            );
        }
        guard.stop();
        assert_eq!(asked(), 1, "mount");
    }
}

#[test]
fn an_unencrypted_repository_never_asks_for_a_password() {
    let t = unencrypted_repo();
    let src = small_source(&t, "src", 1205);
    let cfg = config(&t);
    assert_eq!(cfg["format_version"], 1, "{cfg}");
    assert!(cfg.get("encryption").is_none(), "{cfg}");
    assert!(!t.repo.join("keys").exists());
    let summary = ok_with(
        &t.repo,
        None,
        &["backup", "files", src.to_str().unwrap(), "--source", "s"],
    );
    assert!(!summary.is_empty());
    ok_with(&t.repo, None, &["list"]);
    ok_with(&t.repo, None, &["check", "--read-data"]);
    restores_whole(&t, None, &src);
    // A password given anyway changes nothing.
    ok_with(&t.repo, Some("anything"), &["list"]);
}

// ---------------------------------------------------------------------
// Key slots

fn key_list(repo: &Path, password: &str) -> Vec<serde_json::Value> {
    let text = ok_with(repo, Some(password), &["key", "list", "--json"]);
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The id of the slot `password` opens, checking that exactly one is in use.
fn slot_in_use(repo: &Path, password: &str) -> String {
    let slots = key_list(repo, password);
    let in_use: Vec<_> = slots.iter().filter(|s| s["in_use"] == true).collect();
    assert_eq!(in_use.len(), 1, "{slots:?}");
    in_use[0]["id"].as_str().unwrap().to_string()
}

fn slot_ids(repo: &Path, password: &str) -> Vec<String> {
    let mut ids: Vec<String> = key_list(repo, password)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// `strata key add` or `passwd` (`command`) for the new password `new`
/// (from a file), opened with `password`; returns the new slot's id.
fn new_slot(t: &TestRepo, command: &str, password: &str, new: &str) -> String {
    let file = write_password(&t.path("new-password"), new);
    let mut args = vec![
        "key",
        command,
        "--new-password-file",
        file.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(&FAST_KDF);
    let out = ok_with(&t.repo, Some(password), &args);
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(t.repo.join("keys").join(&id).is_file(), "{id}");
    id
}

fn assert_wrong_password(repo: &Path, password: &str) {
    let text = refused_with(repo, Some(password), &["list"]);
    assert!(text.contains("wrong password"), "{text}");
}

#[test]
fn two_key_slots_both_open_the_repository_and_slots_are_removed_safely() {
    let (t, src) = backed_up(1206);
    let first = slot_in_use(&t.repo, PASSWORD);
    assert_eq!(first.len(), 16, "{first}");
    assert!(t.repo.join("keys").join(&first).is_file());
    let second = new_slot(&t, "add", PASSWORD, "second password");

    // Each password opens the repository and is told its own slot.
    for (password, id) in [(PASSWORD, &first), ("second password", &second)] {
        let listed = ok_with(&t.repo, Some(password), &["list", "--json"]);
        assert!(listed.contains("\"s\""), "{listed}");
        let slots = key_list(&t.repo, password);
        assert_eq!(slots.len(), 2, "{slots:?}");
        for slot in &slots {
            assert_eq!(
                slot["in_use"] == true,
                slot["id"] == id.as_str(),
                "{slots:?}"
            );
            assert_eq!(slot["memory_kib"], 8192, "{slot}");
            assert_eq!(slot["passes"], 1, "{slot}");
            assert!(
                !slot["created"].is_null() && slot["host"].is_string(),
                "{slot}"
            );
        }
        restores_whole(&t, Some(password), &src);
    }

    // The slot in use goes only with --force; another one by id prefix.
    let text = refused_with(&t.repo, Some(PASSWORD), &["key", "remove", &first]);
    assert!(text.contains("--force"), "{text}");
    assert_eq!(slot_ids(&t.repo, PASSWORD).len(), 2);
    ok_with(&t.repo, Some(PASSWORD), &["key", "remove", &second[..8]]);
    assert_eq!(slot_ids(&t.repo, PASSWORD), vec![first.clone()]);
    assert!(!t.repo.join("keys").join(&second).exists());
    assert_wrong_password(&t.repo, "second password");

    // The last slot stays, even with --force.
    refused_with(
        &t.repo,
        Some(PASSWORD),
        &["key", "remove", &first, "--force"],
    );
    assert_eq!(slot_ids(&t.repo, PASSWORD), vec![first.clone()]);

    // With another slot, the one in use goes with --force, and its
    // password with it. The new password here comes from the environment.
    let mut cmd = strata(&t.repo, Some(PASSWORD), &["key", "add", "--json"]);
    cmd.args(FAST_KDF)
        .env("STRATA_NEW_PASSWORD", "third password");
    let out = output(cmd);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let third: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let third = third["id"].as_str().unwrap().to_string();
    ok_with(
        &t.repo,
        Some(PASSWORD),
        &["key", "remove", &first, "--force"],
    );
    assert_eq!(slot_ids(&t.repo, "third password"), vec![third]);
    assert_wrong_password(&t.repo, PASSWORD);
    restores_whole(&t, Some("third password"), &src);
}

/// A key slot copied from another repository (same kind of object, its
/// own password) opens nothing here.
#[test]
fn a_key_slot_from_another_repository_does_not_open_this_one() {
    let (t, _) = backed_up(1210);
    let other = t.path("other");
    let mut args = vec!["init"];
    args.extend_from_slice(&FAST_KDF);
    ok_with(&other, Some("other password"), &args);
    let slots = files_under(&other.join("keys"));
    assert_eq!(slots.len(), 1);
    let foreign = t.repo.join("keys").join(slots[0].file_name().unwrap());
    std::fs::copy(&slots[0], &foreign).unwrap();
    let text = refused_with(&t.repo, Some("other password"), &["list"]);
    assert!(
        text.contains("wrong password") || text.contains("damaged"),
        "{text}"
    );
    // In place of the repository's own slot, too.
    let own = slot_in_use(&t.repo, PASSWORD);
    std::fs::rename(&foreign, t.repo.join("keys").join(&own)).unwrap();
    let text = refused_with(&t.repo, Some("other password"), &["list"]);
    assert!(
        text.contains("wrong password") || text.contains("damaged"),
        "{text}"
    );
    refused_with(&t.repo, Some(PASSWORD), &["list"]);
}

/// Every pack's path and bytes.
fn packs(t: &TestRepo) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = files_under(&t.repo.join("packs"))
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn passwd_replaces_the_password_without_touching_data() {
    let (t, src) = backed_up(1207);
    let before = packs(&t);
    let manifests_before = files_under(&t.repo.join("manifests"));
    let old_slot = slot_in_use(&t.repo, PASSWORD);
    let spare = new_slot(&t, "add", PASSWORD, "spare password");

    let new_slot = new_slot(&t, "passwd", PASSWORD, "new password");
    assert_ne!(new_slot, old_slot);

    // Only the slot in use is replaced.
    assert_wrong_password(&t.repo, PASSWORD);
    let mut expected = vec![new_slot.clone(), spare.clone()];
    expected.sort();
    assert_eq!(slot_ids(&t.repo, "new password"), expected);
    assert_eq!(slot_in_use(&t.repo, "new password"), new_slot);
    assert_eq!(slot_in_use(&t.repo, "spare password"), spare);
    assert!(!t.repo.join("keys").join(&old_slot).exists());
    assert!(packs(&t) == before, "passwd changed packs");
    assert_eq!(files_under(&t.repo.join("manifests")), manifests_before);

    restores_whole(&t, Some("new password"), &src);
    ok_with(&t.repo, Some("new password"), &["check", "--read-data"]);
    // New backups go on using the file cache and deduplicating against
    // the old data (only trees with the sources' new access times are new).
    let summary: serde_json::Value = serde_json::from_str(&ok_with(
        &t.repo,
        Some("new password"),
        &[
            "backup",
            "files",
            src.to_str().unwrap(),
            "--source",
            "s",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(summary["bytes_read"], 0, "{summary}");
    assert!(summary["bytes_new"].as_u64().unwrap() < 10_000, "{summary}");
}
