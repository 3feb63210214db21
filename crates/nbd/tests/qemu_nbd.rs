//! The client against qemu-nbd, the server QEMU's own tools use, and
//! against a hostile server that breaks the protocol in each way the
//! client checks.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/pki.rs"]
mod pki;
use pki::pki;

use strata_nbd::{dirty_bitmap_context, Client, ConnectOptions, NbdUri, BASE_ALLOCATION, STATE_DIRTY, STATE_ZERO};

const MIB: u64 = 1 << 20;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// qemu-nbd serving one image on a unix socket, killed on drop.
struct QemuNbd {
    child: Child,
    socket: PathBuf,
}

impl QemuNbd {
    fn start(dir: &Path, image: &Path, extra: &[&str]) -> QemuNbd {
        let socket = dir.join(format!("nbd-{}.sock", rand_suffix()));
        let mut args = vec!["--format=qcow2".to_string(), format!("--socket={}", socket.display()), "--shared=4".into(), "--persistent".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(image.display().to_string());
        let child = Command::new("qemu-nbd").args(&args).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("qemu-nbd");
        let server = QemuNbd { child, socket };
        let started = Instant::now();
        while !server.socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(20), "qemu-nbd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn uri(&self) -> NbdUri {
        NbdUri::parse(&format!("nbd+unix:///?socket={}", self.socket.display())).unwrap()
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn qcow2(dir: &Path, name: &str, size: &str) -> PathBuf {
    let path = dir.join(name);
    run("qemu-img", &["create", "-q", "-f", "qcow2", path.to_str().unwrap(), size]);
    path
}

fn qemu_io(image: &Path, command: &str) {
    run("qemu-io", &["-f", "qcow2", "-c", command, image.to_str().unwrap()]);
}

fn raw_of(dir: &Path, image: &Path) -> Vec<u8> {
    let raw = dir.join(format!("raw-{}", rand_suffix()));
    run("qemu-img", &["convert", "-f", "qcow2", "-O", "raw", image.to_str().unwrap(), raw.to_str().unwrap()]);
    std::fs::read(raw).unwrap()
}

/// Every context's extents over the whole export.
fn all_extents(client: &Client) -> Vec<(String, Vec<strata_nbd::Extent>)> {
    let mut all: Vec<(String, Vec<strata_nbd::Extent>)> = Vec::new();
    client
        .for_each_extent(client.size(), |name, extents| match all.iter_mut().find(|(n, _)| n == name) {
            Some((_, known)) => known.extend_from_slice(extents),
            None => all.push((name.to_string(), extents.to_vec())),
        })
        .unwrap();
    for (name, extents) in &all {
        let covered: u64 = extents.iter().map(|e| e.length).sum();
        assert_eq!(covered, client.size(), "{name} covers the export");
    }
    all
}

fn ranges_with(extents: &[strata_nbd::Extent], pick: impl Fn(u32) -> bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in extents.iter().filter(|e| pick(e.flags)) {
        match out.last_mut() {
            Some(last) if last.1 == e.offset => last.1 += e.length,
            _ => out.push((e.offset, e.offset + e.length)),
        }
    }
    out
}

#[test]
fn reads_and_allocation_match_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = qcow2(dir.path(), "disk.qcow2", "64M");
    qemu_io(&image, "write -P 0xab 1M 2M");
    qemu_io(&image, "write -P 0x17 40M 64k");
    qemu_io(&image, "write -z 41M 1M");
    let expected = raw_of(dir.path(), &image);
    let server = QemuNbd::start(dir.path(), &image, &["--read-only"]);
    let client = Client::connect(&server.uri(), &ConnectOptions { contexts: vec![BASE_ALLOCATION.into()] }).unwrap();
    assert_eq!(client.size(), 64 * MIB);
    assert!(client.export().read_only());

    let extents = all_extents(&client);
    assert_eq!(extents.len(), 1);
    let data = ranges_with(&extents[0].1, |f| f & STATE_ZERO == 0);
    assert_eq!(data, vec![(MIB, 3 * MIB), (40 * MIB, 40 * MIB + 65536)]);

    // Many threads, many requests in flight on the one connection.
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (client, expected) = (&client, &expected);
            s.spawn(move || {
                for i in 0..64u64 {
                    let offset = ((t * 7919 + i * 104_729) * 4096) % (60 * MIB);
                    let len = 4096 + ((t + i) % 16) as usize * 65536;
                    let mut buf = vec![0u8; len];
                    client.read_at(offset, &mut buf).unwrap();
                    assert!(buf == expected[offset as usize..offset as usize + len], "read at {offset}");
                }
            });
        }
    });
    let mut whole = vec![0u8; 64 * MIB as usize];
    client.read_at(0, &mut whole).unwrap();
    assert!(whole == expected);
    let past = client.read_at(64 * MIB - 10, &mut [0u8; 20]).unwrap_err().to_string();
    assert!(past.contains("past the export's end"), "{past}");
    let refused = client.write_at(0, &[1]).unwrap_err().to_string();
    assert!(refused.contains("read-only"), "{refused}");
}

#[test]
fn a_dirty_bitmap_reports_the_writes_since_it_was_added() {
    let dir = tempfile::tempdir().unwrap();
    let image = qcow2(dir.path(), "disk.qcow2", "64M");
    qemu_io(&image, "write -P 0x01 0 8M");
    run("qemu-img", &["bitmap", "--add", image.to_str().unwrap(), "b0"]);
    qemu_io(&image, "write -P 0x02 5M 64k");
    qemu_io(&image, "write -P 0x03 20M 1M");
    let server = QemuNbd::start(dir.path(), &image, &["--read-only", "--bitmap=b0"]);
    let contexts = vec![BASE_ALLOCATION.to_string(), dirty_bitmap_context("b0")];
    let client = Client::connect(&server.uri(), &ConnectOptions { contexts }).unwrap();
    let extents = all_extents(&client);
    let names: Vec<_> = extents.iter().map(|(n, _)| n.clone()).collect();
    let (_, bitmap) = extents.iter().find(|(n, _)| n == "qemu:dirty-bitmap:b0").unwrap_or_else(|| panic!("{names:?} {:?}", client.export()));
    assert_eq!(
        ranges_with(bitmap, |f| f & STATE_DIRTY != 0),
        vec![(5 * MIB, 5 * MIB + 65536), (20 * MIB, 21 * MIB)]
    );
    drop(client);

    // A bitmap the server does not export is missing, and the client
    // says which ones it does.
    let contexts = vec![BASE_ALLOCATION.to_string(), dirty_bitmap_context("nope")];
    let client = Client::connect(&server.uri(), &ConnectOptions { contexts }).unwrap();
    assert_eq!(client.export().context_id("qemu:dirty-bitmap:nope"), None);
    assert_eq!(client.export().offered_bitmaps, vec!["b0".to_string()]);
}

#[test]
fn writes_and_write_zeroes_reach_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = qcow2(dir.path(), "target.qcow2", "16M");
    qemu_io(&image, "write -P 0x55 0 16M");
    {
        let server = QemuNbd::start(dir.path(), &image, &[]);
        let client = Client::connect(&server.uri(), &ConnectOptions::default()).unwrap();
        assert!(client.can_write_zeroes());
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let client = &client;
                s.spawn(move || client.write_at(t * MIB, &vec![t as u8 + 1; MIB as usize]).unwrap());
            }
        });
        client.write_zeroes(4 * MIB, 4 * MIB, true).unwrap();
        client.write_zeroes(8 * MIB, MIB, false).unwrap();
        client.flush().unwrap();
    }
    let raw = raw_of(dir.path(), &image);
    for t in 0..4 {
        assert!(raw[(t * MIB) as usize..((t + 1) * MIB) as usize].iter().all(|b| *b == t as u8 + 1));
    }
    assert!(raw[(4 * MIB) as usize..(9 * MIB) as usize].iter().all(|b| *b == 0));
    assert!(raw[(9 * MIB) as usize..].iter().all(|b| *b == 0x55));
}

#[test]
fn a_killed_server_fails_every_request_in_flight_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let image = qcow2(dir.path(), "disk.qcow2", "256M");
    qemu_io(&image, "write -P 0x09 0 256M");
    let mut server = QemuNbd::start(dir.path(), &image, &["--read-only"]);
    let client = Client::connect(&server.uri(), &ConnectOptions::default()).unwrap();
    let failures = std::thread::scope(|s| {
        let readers: Vec<_> = (0..4u64)
            .map(|t| {
                let client = &client;
                s.spawn(move || {
                    let mut buf = vec![0u8; 4 << 20];
                    for i in 0.. {
                        if let Err(e) = client.read_at(((t * 16 + i) % 60) * (4 << 20), &mut buf) {
                            return e.to_string();
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        server.child.kill().unwrap();
        readers.into_iter().map(|r| r.join().unwrap()).collect::<Vec<_>>()
    });
    for e in failures {
        assert!(e.contains("NBD server"), "{e}");
    }
    let after = client.read_at(0, &mut [0u8; 512]).unwrap_err().to_string();
    assert!(after.contains("closed the connection") || after.contains("failed"), "{after}");
}

/// What a hostile server answers a request with, given its cookie.
type Reply = fn(u64) -> Vec<u8>;

/// A server that negotiates properly, then answers the first request with
/// `reply(cookie)`.
fn hostile_server(dir: &Path, reply: Reply) -> (NbdUri, std::thread::JoinHandle<()>) {
    let socket = dir.join(format!("hostile-{}.sock", rand_suffix()));
    let listener = UnixListener::bind(&socket).unwrap();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"NBDMAGICIHAVEOPT\x00\x03").unwrap();
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).unwrap();
        loop {
            let mut head = [0u8; 16];
            s.read_exact(&mut head).unwrap();
            let option = u32::from_be_bytes(head[8..12].try_into().unwrap());
            let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).unwrap();
            let answer = |s: &mut std::os::unix::net::UnixStream, kind: u32, payload: &[u8]| {
                let mut r = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
                r.extend_from_slice(&option.to_be_bytes());
                r.extend_from_slice(&kind.to_be_bytes());
                r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                r.extend_from_slice(payload);
                s.write_all(&r).unwrap();
            };
            if option == 7 {
                let mut info = 0u16.to_be_bytes().to_vec();
                info.extend_from_slice(&(MIB).to_be_bytes());
                info.extend_from_slice(&1u16.to_be_bytes());
                answer(&mut s, 3, &info);
                answer(&mut s, 1, &[]);
                break;
            }
            answer(&mut s, 1, &[]);
        }
        let mut request = [0u8; 28];
        s.read_exact(&mut request).unwrap();
        let cookie = u64::from_be_bytes(request[8..16].try_into().unwrap());
        s.write_all(&reply(cookie)).unwrap();
        // Hold the connection open: the client must not wait for more.
        let _ = s.read(&mut [0u8; 64]);
    });
    (NbdUri::parse(&format!("nbd+unix:///?socket={}", socket.display())).unwrap(), handle)
}

fn simple(cookie: u64, error: u32, data: &[u8]) -> Vec<u8> {
    let mut r = 0x6744_6698u32.to_be_bytes().to_vec();
    r.extend_from_slice(&error.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(data);
    r
}

fn structured(cookie: u64, flags: u16, kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut r = 0x668e_33efu32.to_be_bytes().to_vec();
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    r.extend_from_slice(payload);
    r
}

#[test]
fn replies_that_break_the_protocol_are_errors_not_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(Reply, &str); 11] = [
        // Data placed before the read's offset.
        (|c| structured(c, 1, 1, &[0, 0, 0, 0, 0, 0, 0, 0, 1, 2]), "before the read"),
        // Done after half the bytes.
        (|c| [structured(c, 1, 1, &[&4096u64.to_be_bytes()[..], &[7u8; 256][..]].concat())].concat(), "having sent 256 bytes"),
        // The same bytes twice.
        (
            |c| {
                let piece = [&4096u64.to_be_bytes()[..], &[7u8; 256][..]].concat();
                [structured(c, 0, 1, &piece), structured(c, 1, 1, &piece)].concat()
            },
            "both cover",
        ),
        // A reply to a request never made.
        (|c| structured(c + 99, 1, 0, &[]), "no request in flight"),
        // A chunk claiming 4 GiB.
        (|c| { let mut r = structured(c, 1, 1, &[]); r[16..20].copy_from_slice(&u32::MAX.to_be_bytes()); r }, "data chunk"),
        // Not NBD at all.
        (|_| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(), "not NBD"),
        // A simple reply to a read, after structured replies were agreed.
        (|c| simple(c, 0, &[7u8; 512]), "simple reply to a read"),
        // Chunks begun, then a simple reply claiming success.
        (
            |c| [structured(c, 0, 1, &[&4096u64.to_be_bytes()[..], &[7u8; 256][..]].concat()), simple(c, 0, &[])].concat(),
            "had begun",
        ),
        // NONE must end a reply.
        (|c| structured(c, 0, 0, &[]), "without NBD_REPLY_FLAG_DONE"),
        // An error chunk: the read fails with the server's reason.
        (|c| structured(c, 1, 0x8001, &[&5u32.to_be_bytes()[..], &4u16.to_be_bytes()[..], b"disk"].concat()), "failed a read"),
        // A read in hundreds of one-byte holes.
        (
            |c| {
                (0..512u64)
                    .flat_map(|i| structured(c, u16::from(i == 511), 2, &[&(4096 + i).to_be_bytes()[..], &1u32.to_be_bytes()[..]].concat()))
                    .collect()
            },
            "chunks",
        ),
    ];
    for (reply, why) in cases {
        let (uri, server) = hostile_server(dir.path(), reply);
        let client = Client::connect(&uri, &ConnectOptions::default()).unwrap();
        let mut buf = vec![0u8; 512];
        let e = client.read_at(4096, &mut buf).unwrap_err().to_string();
        assert!(e.contains(why), "expected {why:?} in: {e}");
        drop(client);
        server.join().unwrap();
    }
}

#[test]
fn a_server_that_is_not_nbd_or_lacks_the_export_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let image = qcow2(dir.path(), "disk.qcow2", "1M");
    let server = QemuNbd::start(dir.path(), &image, &["--read-only", "--export-name=vm"]);
    let uri = NbdUri::parse(&format!("nbd+unix:///other?socket={}", server.socket.display())).unwrap();
    let e = Client::connect(&uri, &ConnectOptions::default()).err().unwrap().to_string();
    assert!(e.contains("no such export") && e.contains("\"other\""), "{e}");
    let uri = NbdUri::parse(&format!("nbd+unix:///vm?socket={}", dir.path().join("absent.sock").display())).unwrap();
    let e = Client::connect(&uri, &ConnectOptions::default()).err().unwrap().to_string();
    assert!(e.contains("connecting to NBD server"), "{e}");
}

#[test]
fn tls_exports_are_read_with_certificates_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let image = qcow2(dir.path(), "disk.qcow2", "16M");
    qemu_io(&image, "write -P 0x6c 1M 3M");
    let expected = raw_of(dir.path(), &image);
    let creds = format!("tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer=on", pki.join("server").display());
    let server = QemuNbd::start(dir.path(), &image, &["--read-only", "--object", &creds, "--tls-creds=tls0"]);
    let uri = |scheme: &str, certs: &str| {
        NbdUri::parse(&format!(
            "{scheme}:///?socket={}&tls-certificates={}",
            server.socket.display(),
            pki.join(certs).display()
        ))
        .unwrap()
    };
    let options = ConnectOptions { contexts: vec![BASE_ALLOCATION.into()] };
    let client = Client::connect(&uri("nbds+unix", "client"), &options).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (client, expected) = (&client, &expected);
            s.spawn(move || {
                let mut buf = vec![0u8; 4 * MIB as usize];
                client.read_at(t * MIB, &mut buf).unwrap();
                assert!(buf == expected[(t * MIB) as usize..((t + 4) * MIB) as usize]);
            });
        }
    });
    let extents = all_extents(&client);
    assert_eq!(ranges_with(&extents[0].1, |f| f & STATE_ZERO == 0), vec![(MIB, 4 * MIB)]);
    drop(client);

    let plain = NbdUri::parse(&format!("nbd+unix:///?socket={}", server.socket.display())).unwrap();
    let e = Client::connect(&plain, &options).err().unwrap().to_string();
    assert!(e.contains("requires TLS"), "{e}");
    let e = Client::connect(&uri("nbds+unix", "stranger"), &options).err().unwrap().to_string();
    assert!(e.contains("TLS handshake") && e.contains("certificate"), "{e}");
    // The server asks for a client certificate (verify-peer=on).
    std::fs::remove_file(pki.join("client/client-key.pem")).unwrap();
    assert!(Client::connect(&uri("nbds+unix", "client"), &options).is_err());
}

#[test]
fn requests_keep_to_a_strict_servers_block_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("strict.sock");
    // Requests not aligned to 4 KiB or larger than 64 KiB fail with EINVAL.
    let server = Killed(Command::new("nbdkit")
        .args(["--foreground", "--exit-with-parent", "--unix"])
        .arg(&socket)
        .args([
            "--filter=blocksize-policy",
            "memory",
            "size=8M",
            "blocksize-minimum=4096",
            "blocksize-preferred=65536",
            "blocksize-maximum=65536",
            "blocksize-error-policy=error",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("nbdkit (tools/setup)"));
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "nbdkit did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = NbdUri::parse(&format!("nbd+unix:///?socket={}", socket.display())).unwrap();
    let client = Client::connect(&uri, &ConnectOptions::default()).unwrap();
    assert_eq!((client.export().min_block, client.export().max_payload), (4096, 65536));
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    client.write_at(1 << 20, &data).unwrap();
    client.write_zeroes(3 << 20, 1 << 20, true).unwrap();
    // Unaligned reads are read as the aligned range around them.
    let mut piece = vec![0u8; 100_000];
    client.read_at((1 << 20) + 12_345, &mut piece).unwrap();
    assert!(piece == data[12_345..112_345]);
    let e = client.write_at(100, &[1, 2, 3]).unwrap_err().to_string();
    assert!(e.contains("minimum block size of 4096"), "{e}");
    drop(client);
    drop(server);
}

/// A child process killed (and reaped) when dropped, also on a failure.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
