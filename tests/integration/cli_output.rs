//! What commands print: times that name their restore point, VM details
//! in `--json`, names made safe for a terminal, a reader that goes away.

use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;

use crate::util::*;

/// Every time `list` and `show` print selects its own restore point, also
/// for restore points in the same second; `--json` has full precision.
#[test]
fn printed_times_select_their_restore_point() {
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for (i, time) in [
        "2026-11-27T14:22:58.100Z",
        "2026-11-27T14:22:58.700Z",
        "2026-11-27T14:22:59Z",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(src.join("f"), format!("version {i}")).unwrap();
        t.backup_at(&src, "s", time);
    }
    // One at the current time, stored with nanoseconds.
    t.backup(&src, "now");

    let listed = t.json(&["list"]);
    let times: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|rp| rp["time"].as_str().unwrap())
        .collect();
    assert_eq!(
        &times[..3],
        [
            "2026-11-27T14:22:58.100Z",
            "2026-11-27T14:22:58.700Z",
            "2026-11-27T14:22:59Z"
        ]
    );

    let text = t.ok(&["list"]);
    let mut checked = 0;
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (short_id, time, source) = (fields[0], fields[1], fields[2]);
        let shown = t.json(&["show", &format!("{source}@{time}")]);
        assert!(
            shown["id"].as_str().unwrap().starts_with(short_id),
            "{source}@{time} selected {} instead of {short_id}",
            shown["id"]
        );
        // `show` prints the same time, and `ls` accepts it too.
        let show_text = t.ok(&["show", &format!("{source}@{time}")]);
        assert!(
            show_text.contains(&format!("time         {time}")),
            "{show_text}"
        );
        t.ok(&["ls", &format!("{source}@{time}"), "/"]);
        checked += 1;
    }
    assert_eq!(checked, 4);
    // The 58.100 one needs its milliseconds; the last of that second not.
    assert!(text.contains("2026-11-27T14:22:58.100Z"), "{text}");
    assert!(text.contains("2026-11-27T14:22:58Z"), "{text}");
}

#[test]
fn show_json_lists_a_vms_disks() {
    let t = TestRepo::new();
    let image = t.path("db.img");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"boot sector", 0).unwrap();
    t.ok(&["backup", "image", image.to_str().unwrap(), "--name", "db"]);
    let shown = t.json(&["show", "db@latest"]);
    let disks = shown["vm"]["disks"]
        .as_array()
        .expect("disks in show --json");
    assert_eq!(disks.len(), 1, "{shown}");
    assert_eq!(disks[0]["capacity"], 4 << 20);
    assert!(
        disks[0]["slot"].as_str().is_some_and(|s| !s.is_empty()),
        "{shown}"
    );
    assert!(disks[0]["file_name"].as_str().is_some(), "{shown}");
    assert!(disks[0]["source_format"].as_str().is_some(), "{shown}");
    assert_eq!(shown["vm"]["name"], "db");
}

#[test]
fn ls_escapes_hostile_names() {
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let hostile = std::ffi::OsStr::from_bytes(b"evil\x1b[2J\x1b]0;owned\x07name\nnext\\line\xff");
    std::fs::write(src.join(hostile), b"x").unwrap();
    std::os::unix::fs::symlink(hostile, src.join("link")).unwrap();
    t.backup(&src, "s");
    let out = t.run(&["ls", "s@latest", src.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        !out.stdout.iter().any(|b| *b == 0x1b || *b == 0x07),
        "raw control characters in ls output"
    );
    let text = String::from_utf8(out.stdout).expect("ls output is UTF-8");
    assert_eq!(text.lines().count(), 2, "a name broke the line: {text}");
    assert!(
        text.contains("evil\\033[2J\\033]0;owned\\007name\\nnext\\\\line\\377"),
        "{text}"
    );
}

/// `strata list --json | true`: the reader is gone before the first write.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    t.backup(&src, "s");
    for args in [
        &["list", "--json"][..],
        &["list"][..],
        &["ls", "-R", "s@latest"][..],
    ] {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        drop(read_end);
        let out = t
            .command(args)
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
    }
}

fn uninitialized() -> TestRepo {
    TestRepo::uninitialized()
}

#[test]
fn init_takes_a_compression_level_and_refuses_one_out_of_range() {
    let t = uninitialized();
    let level = |t: &TestRepo| {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.repo.join("config.json")).unwrap()).unwrap();
        config["compression_level"].clone()
    };
    assert_eq!(level(&TestRepo::new()), 1, "the default");
    t.ok(&["init", "--compression-level", "6"]);
    assert_eq!(level(&t), 6);
    let src = t.path("src");
    make_full_tree(&src, 31);
    t.backup(&src, "s");
    let target = t.path("restored");
    t.restore("s@latest", &target);
    assert_same_tree(&src, &under(&target, &src));

    let other = uninitialized();
    let out = other.run(&["init", "--compression-level", "20"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(!other.repo.join("config.json").exists());
}
