//! NBD transport: backups of disks exported by qemu-storage-daemon,
//! qemu-nbd and nbdkit (started here on unix sockets and 127.0.0.1),
//! incrementals from QEMU dirty bitmaps rotated by `tools/qemu-bitmaps`,
//! restores into NBD exports, and servers that fail or die mid-backup.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;
use crate::vm::{ext4_image, qemu_img};

const MIB: u64 = 1 << 20;
/// The repositories' disk chunk size (config.json's default).
const CHUNK: u64 = MIB;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (tools/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(path: &Path, child: &mut Child, what: &str) {
    let started = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before creating {}", path.display());
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process stopped by PID when dropped, also on a failed test.
pub struct Server {
    child: Child,
}

impl Server {
    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait: QEMU closes its images cleanly (persistent
    /// bitmaps are written then).
    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// qemu-storage-daemon holding a qcow2 image as node `disk0`, with QMP on
/// `qmp.sock` and an NBD server on `nbd.sock` that exports the node
/// writable as `w` (the running VM's writes go there).
struct StorageDaemon {
    server: Server,
    dir: PathBuf,
}

impl StorageDaemon {
    fn start(dir: &Path, image: &Path) -> StorageDaemon {
        let (qmp, nbd) = (dir.join("qmp.sock"), dir.join("nbd.sock"));
        let _ = std::fs::remove_file(&qmp);
        let _ = std::fs::remove_file(&nbd);
        let mut child = Command::new("qemu-storage-daemon")
            .arg("--chardev")
            .arg(format!("socket,path={},server=on,wait=off,id=qmp0", qmp.display()))
            .args(["--monitor", "chardev=qmp0"])
            .arg("--blockdev")
            .arg(format!("driver=file,filename={},node-name=file0", image.display()))
            .args(["--blockdev", "driver=qcow2,file=file0,node-name=disk0"])
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
            .args(["--export", "type=nbd,id=w,node-name=disk0,name=w,writable=on"])
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (qemu-utils)");
        wait_for(&qmp, &mut child, "qemu-storage-daemon");
        wait_for(&nbd, &mut child, "qemu-storage-daemon");
        StorageDaemon { server: Server { child }, dir: dir.to_path_buf() }
    }

    fn writable_uri(&self) -> String {
        format!("nbd+unix:///w?socket={}", self.dir.join("nbd.sock").display())
    }

    /// `tools/qemu-bitmaps ARGS…` against this daemon's node.
    fn bitmaps(&self, args: &[&str]) -> serde_json::Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/qemu-bitmaps");
        let qmp = self.dir.join("qmp.sock");
        let mut all = vec![args[0], "--qmp", qmp.to_str().unwrap(), "--node", "disk0"];
        let socket = self.dir.join("nbd.sock");
        if args[0] == "begin" {
            all.extend(["--socket", socket.to_str().unwrap()]);
        }
        all.extend(&args[1..]);
        serde_json::from_str(run(script.to_str().unwrap(), &all).trim()).unwrap()
    }

    /// Writes through the running VM's export.
    fn write(&self, command: &str) {
        run("qemu-io", &["-f", "raw", "-c", command, &self.writable_uri()]);
    }

    /// The disk's bytes as the VM sees them now.
    fn raw(&self, to: &Path) -> Vec<u8> {
        run("qemu-img", &["convert", "-f", "raw", "-O", "raw", &self.writable_uri(), to.to_str().unwrap()]);
        std::fs::read(to).unwrap()
    }
}

/// qemu-nbd serving `image` on a unix socket.
pub fn qemu_nbd(dir: &Path, image: &Path, format: &str, extra: &[&str]) -> (Server, String) {
    let socket = dir.join(format!(
        "qemu-nbd-{}.sock",
        image.file_name().unwrap().to_string_lossy()
    ));
    let mut child = Command::new("qemu-nbd")
        .arg(format!("--format={format}"))
        .arg(format!("--socket={}", socket.display()))
        .args(["--persistent", "--shared=8"])
        .args(extra)
        .arg(image)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-nbd (qemu-utils)");
    wait_for(&socket, &mut child, "qemu-nbd");
    (Server { child }, format!("nbd+unix:///?socket={}", socket.display()))
}

/// nbdkit serving `plugin_and_filters` on a unix socket (its own log of
/// the failures it is told to make is left out).
fn nbdkit(socket: &Path, plugin_and_filters: &[&str]) -> Server {
    let mut child = Command::new("nbdkit")
        .args(["--foreground", "--exit-with-parent", "--unix"])
        .arg(socket)
        .args(plugin_and_filters)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nbdkit (tools/setup)");
    wait_for(socket, &mut child, "nbdkit");
    Server { child }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// qemu-nbd on 127.0.0.1; waits until it accepts connections.
fn qemu_nbd_tcp(image: &Path, format: &str) -> (Server, String) {
    let port = free_port();
    let child = Command::new("qemu-nbd")
        .arg(format!("--format={format}"))
        .args(["--bind=127.0.0.1", &format!("--port={port}"), "--persistent", "--shared=8", "--read-only"])
        .arg(image)
        .stdout(Stdio::null())
        // Each probe below is a connection without a handshake, which it
        // reports.
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd (qemu-utils)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "qemu-nbd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server { child }, format!("nbd://127.0.0.1:{port}/"))
}

/// `nbdinfo --map` of a context: `(offset, length, flags)` per extent.
fn map(uri: &str, context: &str) -> Vec<(u64, u64, u64)> {
    let out = run("nbdinfo", &["--json", &format!("--map={context}"), uri]);
    let extents: serde_json::Value = serde_json::from_str(&out).unwrap();
    extents
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap(), e["type"].as_u64().unwrap()))
        .collect()
}

/// The bytes a disk backup reads when it reads the chunks that touch
/// `wanted` extents, each only where the export has data.
fn bytes_read_for(wanted: &[(u64, u64, u64)], allocation: &[(u64, u64, u64)]) -> u64 {
    let mut chunks = std::collections::BTreeSet::new();
    for &(offset, length, _) in wanted {
        chunks.extend(offset / CHUNK..(offset + length).div_ceil(CHUNK));
    }
    allocation
        .iter()
        .filter(|(_, _, flags)| flags & 2 == 0) // not reading as zeros
        .map(|&(offset, length, _)| {
            chunks
                .iter()
                .map(|c| {
                    let (a, b) = (c * CHUNK, (c + 1) * CHUNK);
                    (offset + length).min(b).saturating_sub(offset.max(a))
                })
                .sum::<u64>()
        })
        .sum()
}

/// The bytes of `dirty` extents that the export holds data in.
fn dirty_data_bytes(dirty: &[(u64, u64, u64)], allocation: &[(u64, u64, u64)]) -> u64 {
    let data: Vec<_> = allocation.iter().filter(|e| e.2 & 2 == 0).collect();
    dirty
        .iter()
        .flat_map(|&(d, dl, _)| data.iter().map(move |&&(a, al, _)| (d + dl).min(a + al).saturating_sub(d.max(a))))
        .sum()
}

fn dirty(extents: Vec<(u64, u64, u64)>) -> Vec<(u64, u64, u64)> {
    extents.into_iter().filter(|e| e.2 & 1 != 0).collect()
}

/// A qcow2 disk whose first part is an ext4 file system with files.
pub fn qcow2_with_ext4(dir: &Path, name: &str) -> PathBuf {
    let raw = ext4_image(dir, name, 48, 7);
    let image = dir.join(format!("{name}.qcow2"));
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), image.to_str().unwrap()]);
    qemu_img(&["resize", "-q", image.to_str().unwrap(), "256M"]);
    image
}

fn disk_read(summary: &serde_json::Value) -> &serde_json::Value {
    &summary["disks"][0]
}

#[test]
fn a_bitmap_incremental_reads_exactly_the_dirty_bytes_and_restores_identical() {
    let t = TestRepo::new();
    let image = qcow2_with_ext4(t.dir.path(), "web01");
    // Two map pages (512 chunks each), so reads span pages.
    qemu_img(&["resize", "-q", image.to_str().unwrap(), "768M"]);
    let daemon = StorageDaemon::start(t.dir.path(), &image);

    // Full: no bitmap yet; the first one starts recording.
    let begin = daemon.bitmaps(&["begin"]);
    assert_eq!(begin["mode"], "full", "{begin}");
    let uri = begin["uri"].as_str().unwrap().to_string();
    let next = begin["next"].as_str().unwrap().to_string();
    let allocation = map(&uri, "base:allocation");
    let full = t.json(&["backup", "nbd", &uri, "--name", "web01", "--disk-name", "sda", "--next-bitmap", &next]);
    assert_eq!(disk_read(&full)["mode"], "full");
    let everything = [(0, 768 * MIB, 0)];
    assert_eq!(full["bytes_read"].as_u64().unwrap(), bytes_read_for(&everything, &allocation));
    daemon.bitmaps(&["end", "--result", "ok"]);

    // The VM writes: into its file system's area (a whole chunk, and
    // 64 KiB inside a chunk the parent holds), past it, and zeros.
    daemon.write("write -P 0x5a 20M 1M");
    daemon.write("write -P 0x66 5373952 64k");
    daemon.write("write -P 0x77 100M 64k");
    daemon.write("write -P 0x78 150M 3M");
    daemon.write("write -z 152M 512k");
    daemon.write("write -P 0x7a 629276672 64k"); // inside a chunk of the second page

    let begin = daemon.bitmaps(&["begin"]);
    assert_eq!(begin["mode"], "incremental", "{begin}");
    let bitmap = begin["bitmap"].as_str().unwrap();
    assert_eq!(bitmap, next, "{begin}");
    let next = begin["next"].as_str().unwrap();
    let uri = begin["uri"].as_str().unwrap().to_string();
    let dirty_extents = dirty(map(&uri, &format!("qemu:dirty-bitmap:{bitmap}")));
    assert!(!dirty_extents.is_empty());
    let allocation = map(&uri, "base:allocation");
    let started = Instant::now();
    let incremental = t.json(&[
        "backup", "nbd", &uri, "--name", "web01", "--disk-name", "sda", "--bitmap", bitmap, "--next-bitmap", next,
    ]);
    eprintln!("incremental backup took {:?}", started.elapsed());
    assert_eq!(disk_read(&incremental)["mode"], "dirty-bitmap", "{incremental}");
    assert_eq!(disk_read(&incremental)["full_because"], serde_json::Value::Null);
    // Exactly the dirty bytes that hold data cross the socket: a chunk
    // only partly dirty takes the rest from its parent's chunk.
    let expected = dirty_data_bytes(&dirty_extents, &allocation);
    assert_eq!(incremental["bytes_read"].as_u64().unwrap(), expected, "{incremental}");
    assert!(expected < bytes_read_for(&dirty_extents, &allocation), "{expected}");
    daemon.bitmaps(&["end", "--result", "ok"]);

    // Restored, it is the disk the VM sees, byte for byte.
    let source = daemon.raw(&t.path("source.raw"));
    let out = t.path("restored.raw");
    t.ok(&["restore", "disk", "web01@latest", "sda", "--raw-to", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == source, "restored disk differs from the source");

    // Into a fresh qcow2 served by qemu-nbd: qemu-img compares them.
    let target = t.path("target.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", target.to_str().unwrap(), "768M"]);
    {
        let (_server, target_uri) = qemu_nbd(t.dir.path(), &target, "qcow2", &[]);
        let summary = t.json(&["restore", "disk", "web01@latest", "sda", "--to-nbd", &target_uri]);
        assert!(summary["bytes_written"].as_u64().unwrap() > 0, "{summary}");
    }
    let compared = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", target.to_str().unwrap(), t.path("source.raw").to_str().unwrap()]);
    assert!(compared.contains("Images are identical"), "{compared}");
    // Holes stayed holes: the target holds about the data, not 256 MiB.
    let info = qemu_img(&["info", "--output=json", target.to_str().unwrap()]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(info["actual-size"].as_u64().unwrap() < 64 * MIB, "{info}");

    // The guest's files are there too.
    let listing = t.ok(&["ls", "web01@latest", "sda/whole/etc"]);
    assert!(listing.contains("file3.txt"), "{listing}");

    // A backup outside the cycle (no bitmaps) becomes the latest restore
    // point: the bitmap did not start with it, so the next one is full.
    daemon.write("write -P 0x79 60M 1M");
    let begin = daemon.bitmaps(&["begin"]);
    let uri = begin["uri"].as_str().unwrap().to_string();
    t.json(&["backup", "nbd", &uri, "--name", "web01", "--disk-name", "sda"]);
    let (bitmap, next) = (begin["bitmap"].as_str().unwrap(), begin["next"].as_str().unwrap());
    let summary = t.json(&[
        "backup", "nbd", &uri, "--name", "web01", "--disk-name", "sda", "--bitmap", bitmap, "--next-bitmap", next,
    ]);
    assert_eq!(disk_read(&summary)["mode"], "full", "{summary}");
    assert!(
        disk_read(&summary)["full_because"].as_str().unwrap().contains("records no bitmap that started with it"),
        "{summary}"
    );
    daemon.bitmaps(&["end", "--result", "ok"]);
    t.ok(&["check", "--read-data"]);
}

#[test]
fn an_inconsistent_bitmap_gives_a_full_backup_with_a_warning() {
    let t = TestRepo::new();
    let image = qcow2_with_ext4(t.dir.path(), "db01");
    let mut daemon = StorageDaemon::start(t.dir.path(), &image);
    let begin = daemon.bitmaps(&["begin"]);
    let next = begin["next"].as_str().unwrap();
    t.json(&["backup", "nbd", begin["uri"].as_str().unwrap(), "--name", "db01", "--next-bitmap", next]);
    daemon.bitmaps(&["end", "--result", "ok"]);
    // A clean stop saves the bitmap in the image; the next daemon loads
    // it (marking it in use) and dies without saving it.
    daemon.server.terminate();
    let mut daemon = StorageDaemon::start(t.dir.path(), &image);
    daemon.write("write -P 0x33 30M 2M");
    daemon.server.kill_9();
    let daemon = StorageDaemon::start(t.dir.path(), &image);

    let listed = daemon.bitmaps(&["list"]);
    assert!(listed.to_string().contains("\"inconsistent\":true"), "{listed}");
    let begin = daemon.bitmaps(&["begin"]);
    assert_eq!(begin["mode"], "full", "{begin}");
    let bitmap = begin["bitmap"].as_str().expect("the bitmap that was inconsistent");
    let uri = begin["uri"].as_str().unwrap().to_string();
    let allocation = map(&uri, "base:allocation");

    let out = t.run(&["backup", "nbd", &uri, "--name", "db01", "--bitmap", bitmap]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let warning = stderr_of(&out);
    assert!(
        warning.contains("read in full") && warning.contains(&format!("does not offer dirty bitmap \"{bitmap}\"")),
        "{warning}"
    );
    let summary = t.json(&["backup", "nbd", &uri, "--name", "db01", "--bitmap", bitmap]);
    assert_eq!(disk_read(&summary)["mode"], "full");
    assert!(disk_read(&summary)["full_because"].as_str().unwrap().contains("inconsistent"), "{summary}");
    assert_eq!(summary["bytes_read"].as_u64().unwrap(), bytes_read_for(&[(0, 256 * MIB, 0)], &allocation));
    daemon.bitmaps(&["end", "--result", "ok"]);

    let source = daemon.raw(&t.path("source.raw"));
    let out = t.path("restored.raw");
    t.ok(&["restore", "disk", "db01@latest", "disk", "--raw-to", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == source);
}

#[test]
fn the_example_bitmap_script_passes_its_own_test() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/test-qemu-bitmaps");
    let out = Command::new(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_two_disk_vm_over_tcp_and_a_unix_socket_restores_whole_and_by_disk() {
    let t = TestRepo::new();
    let system = qcow2_with_ext4(t.dir.path(), "sys");
    let data = t.path("data.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", data.to_str().unwrap(), "64M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x42 8M 5M", data.to_str().unwrap()]);
    let (_tcp, tcp_uri) = qemu_nbd_tcp(&system, "qcow2");
    let (_unix, unix_uri) = qemu_nbd(t.dir.path(), &data, "qcow2", &["--read-only"]);
    let summary = t.json(&[
        "backup", "nbd", "--name", "app01",
        "--disk", &format!("sda={tcp_uri}"),
        "--disk", &format!("sdb={unix_uri}"),
    ]);
    assert_eq!(summary["files"], 2, "{summary}");
    let expected = bytes_read_for(&[(0, 256 * MIB, 0)], &map(&tcp_uri, "base:allocation"))
        + bytes_read_for(&[(0, 64 * MIB, 0)], &map(&unix_uri, "base:allocation"));
    assert_eq!(summary["bytes_read"].as_u64().unwrap(), expected, "{summary}");
    let shown = t.ok(&["show", "app01@latest"]);
    assert!(shown.contains("sda.vmdk") && shown.contains("sdb.vmdk"), "{shown}");

    let restored = t.path("restored");
    t.json(&["restore", "vm", "app01@latest", "--to", restored.to_str().unwrap()]);
    // Disks are named after the new VM, in order, and its .vmx has both.
    let vmx = std::fs::read_to_string(restored.join("app01_1/app01_1.vmx")).unwrap();
    assert!(vmx.contains("scsi0:0.fileName = \"app01_1.vmdk\"") && vmx.contains("scsi0:1.fileName = \"app01_1_1.vmdk\""), "{vmx}");
    for (disk, image) in [("app01_1", &system), ("app01_1_1", &data)] {
        let vmdk = restored.join("app01_1").join(format!("{disk}.vmdk"));
        let compared = qemu_img(&["compare", "-f", "vmdk", "-F", "qcow2", vmdk.to_str().unwrap(), image.to_str().unwrap()]);
        assert!(compared.contains("Images are identical"), "{disk}: {compared}");
    }
    let raw = t.path("sdb.raw");
    t.ok(&["restore", "disk", "app01@latest", "sdb", "--raw-to", raw.to_str().unwrap()]);
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(bytes.len() as u64, 64 * MIB);
    assert!(bytes[8 << 20..13 << 20].iter().all(|b| *b == 0x42));

    // A disk whose size changed is read in full, and the output says why.
    let grown = t.path("grown.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", grown.to_str().unwrap(), "96M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x43 8M 5M", grown.to_str().unwrap()]);
    qemu_img(&["bitmap", "--add", grown.to_str().unwrap(), "b0"]);
    let (_grown, grown_uri) = qemu_nbd(t.dir.path(), &grown, "qcow2", &["--read-only", "--bitmap=b0"]);
    let summary = t.json(&[
        "backup", "nbd", "--name", "app01", "--bitmap", "b0",
        "--disk", &format!("sda={tcp_uri}"),
        "--disk", &format!("sdb={grown_uri}"),
    ]);
    let disks = summary["disks"].as_array().unwrap();
    assert_eq!(disks[0]["mode"], "full", "{summary}");
    assert!(disks[0]["full_because"].as_str().unwrap().contains("does not offer dirty bitmap \"b0\""), "{summary}");
    assert!(
        disks[1]["full_because"].as_str().unwrap().contains("size changed from 67108864 to 100663296"),
        "{summary}"
    );
}

#[test]
fn a_server_killed_mid_backup_fails_it_and_commits_nothing() {
    let t = TestRepo::new();
    let socket = t.path("slow.sock");
    // 256 MiB of random data, each read delayed: the backup is still
    // reading when the server dies.
    let mut server = nbdkit(&socket, &["--filter=delay", "random", "size=256M", "rdelay=200ms"]);
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let backup = t.command(&["backup", "nbd", &uri, "--name", "slow01"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    server.kill_9();
    let out = backup.wait_with_output().unwrap();
    assert!(!out.status.success(), "the backup succeeded without its server");
    let stderr = stderr_of(&out);
    assert!(stderr.contains("NBD server") && stderr.contains(&uri), "{stderr}");
    assert!(t.ok(&["list"]).lines().all(|l| !l.contains("slow01")));
    t.ok(&["check"]);
}

#[test]
fn read_errors_of_the_server_fail_the_backup_and_commit_nothing() {
    let t = TestRepo::new();
    let socket = t.path("failing.sock");
    let _server = nbdkit(&socket, &["--filter=error", "pattern", "size=64M", "error-pread=EIO", "error-pread-rate=100%"]);
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let out = t.run(&["backup", "nbd", &uri, "--name", "eio01"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("Input/output error") && stderr.contains("read"), "{stderr}");
    assert!(t.ok(&["list"]).lines().all(|l| !l.contains("eio01")));
}

#[test]
fn bad_uris_absent_servers_and_misplaced_options_get_clear_errors() {
    let t = TestRepo::new();
    let missing = format!("nbd+unix:///?socket={}", t.path("absent.sock").display());
    for (args, why) in [
        (vec!["backup", "nbd", "http://x/y", "--name", "a"], "unknown scheme"),
        (vec!["backup", "nbd", "nbd+unix:///x", "--name", "a"], "missing ?socket"),
        (vec!["backup", "nbd", &missing, "--name", "a"], "connecting to NBD server"),
        (vec!["backup", "nbd", "nbd://127.0.0.1:1/x", "--name", "a"], "connecting to NBD server"),
        (vec!["backup", "nbd", "--name", "a", "--disk", "x"], "expected NAME=URI"),
        (vec!["backup", "nbd", "--name", "a", "--disk", &format!("../x={missing}")], "disk name"),
        (vec!["backup", "nbd", "--name", "a/b", "--disk", &format!("x={missing}")], "may not be empty or contain"),
        (vec!["restore", "disk", "a@latest", "x", "--to-nbd", "nbd://"], "missing host"),
        (vec!["backup", "nbd", &missing, "--name", "a", "--bitmap", ""], "bitmap name"),
    ] {
        let out = t.run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = stderr_of(&out);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // An export by the wrong name, a read-only or too small restore target.
    let image = t.path("small.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "8M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 1M", image.to_str().unwrap()]);
    let (_server, uri) = qemu_nbd(t.dir.path(), &image, "qcow2", &["--read-only", "--export-name=vm"]);
    let wrong = uri.replace(":///", ":///other");
    let stderr = stderr_of(&t.run(&["backup", "nbd", &wrong, "--name", "a"]));
    assert!(stderr.contains("no such export"), "{stderr}");
    let right = uri.replace(":///", ":///vm");
    t.json(&["backup", "nbd", &right, "--name", "small"]);
    let stderr = stderr_of(&t.run(&["restore", "disk", "small@latest", "disk", "--to-nbd", &right]));
    assert!(stderr.contains("read-only"), "{stderr}");
    let tiny = t.path("tiny.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", tiny.to_str().unwrap(), "4M"]);
    let (_tiny, tiny_uri) = qemu_nbd(t.dir.path(), &tiny, "qcow2", &[]);
    let stderr = stderr_of(&t.run(&["restore", "disk", "small@latest", "disk", "--to-nbd", &tiny_uri]));
    assert!(stderr.contains("less than the disk's 8388608"), "{stderr}");
    // A larger export: the disk, then zeros where it held other bytes.
    let large = t.path("large.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", large.to_str().unwrap(), "16M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x55 0 16M", large.to_str().unwrap()]);
    {
        let (_large_server, large_uri) = qemu_nbd(t.dir.path(), &large, "qcow2", &[]);
        let summary = t.json(&["restore", "disk", "small@latest", "disk", "--to-nbd", &large_uri]);
        assert!(summary["files"][0].as_str().unwrap().contains("8388608 bytes past the disk now read as zeros"), "{summary}");
    }
    let restored = t.path("large.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", large.to_str().unwrap(), restored.to_str().unwrap()]);
    let bytes = std::fs::read(&restored).unwrap();
    assert!(bytes[..1 << 20].iter().all(|b| *b == 1) && bytes[1 << 20..].iter().all(|b| *b == 0));

    let stderr = stderr_of(&t.run(&["backup", "nbd", &right, "--name", "small", "--changed-extents", "disk=/x.json"]));
    assert!(stderr.contains("its changes come from --bitmap"), "{stderr}");
    // A server claiming a disk larger than any disk may be.
    let socket = t.path("huge.sock");
    let _huge = nbdkit(&socket, &["null", "size=1P"]);
    let huge = format!("nbd+unix:///?socket={}", socket.display());
    let stderr = stderr_of(&t.run(&["backup", "nbd", &huge, "--name", "huge"]));
    assert!(stderr.contains("larger than the 562949953421312 bytes a disk may be"), "{stderr}");
}

#[test]
fn tls_exports_are_backed_up_and_restored_into_with_certificates() {
    let t = TestRepo::new();
    let pki = crate::pki::pki(t.dir.path());
    let source = qcow2_with_ext4(t.dir.path(), "tls01");
    let target = t.path("target.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", target.to_str().unwrap(), "256M"]);
    let creds = format!("tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer=on", pki.join("server").display());
    let tls = ["--object", creds.as_str(), "--tls-creds=tls0"];
    let (_source_server, source_uri) = qemu_nbd(t.dir.path(), &source, "qcow2", &[&["--read-only"][..], &tls].concat());
    let (target_server, target_uri) = qemu_nbd(t.dir.path(), &target, "qcow2", &tls);
    let secure = |uri: &str| {
        format!("{}&tls-certificates={}", uri.replacen("nbd+unix", "nbds+unix", 1), pki.join("client").display())
    };
    // The server will not talk in the clear.
    let stderr = stderr_of(&t.run(&["backup", "nbd", &source_uri, "--name", "tls01"]));
    assert!(stderr.contains("requires TLS"), "{stderr}");

    let summary = t.json(&["backup", "nbd", &secure(&source_uri), "--name", "tls01"]);
    assert_eq!(disk_read(&summary)["mode"], "full");
    t.json(&["restore", "disk", "tls01@latest", "disk", "--to-nbd", &secure(&target_uri)]);
    drop(target_server);
    let compared = qemu_img(&["compare", "-U", "-f", "qcow2", "-F", "qcow2", target.to_str().unwrap(), source.to_str().unwrap()]);
    assert!(compared.contains("Images are identical"), "{compared}");
}
