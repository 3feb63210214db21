"""Turns tools/bench's hyperfine results into the README's tables."""
import json
import subprocess
import os
import random
import statistics
import sys


def make_changes(path, out):
    """64 scattered 1 MiB writes, and their changed-extents list."""
    random.seed(7)
    size = os.path.getsize(path)
    extents = []
    with open(path, "r+b") as f:
        for _ in range(64):
            start = random.randrange(0, size - (1 << 20)) // 4096 * 4096
            f.seek(start)
            f.write(os.urandom(1 << 20))
            extents.append({"start": start, "length": 1 << 20})
    json.dump(extents, open(out, "w"))


def make_changes_qemu(image):
    """The same 64 scattered 1 MiB writes, through qemu-io into a qcow2
    image, so that its persistent dirty bitmaps record them."""
    random.seed(7)
    size = int(json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], check=True,
                                         capture_output=True).stdout)["virtual-size"])
    commands = []
    for _ in range(64):
        start = random.randrange(0, size - (1 << 20)) // 4096 * 4096
        commands += ["-c", f"write -P {random.randrange(1, 256)} {start} 1M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, image], check=True, capture_output=True)


def make_tree(root, count):
    """`count` small files of 1 KiB in directories of 1000."""
    for i in range(count):
        d = os.path.join(root, f"d{i // 1000:03}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:06}"), "wb") as f:
            f.write(os.urandom(512) + b"x" * 512)


def make_small_tree(root, count, dirs):
    """`count` files of 1-200 bytes spread over `dirs` directories."""
    rng = random.Random(11)
    pool = rng.randbytes(1 << 16)
    per_dir = count // dirs
    for d in range(dirs):
        path = os.path.join(root, f"d{d:04}")
        os.makedirs(path)
        for i in range(per_dir):
            size = rng.randint(1, 200)
            at = rng.randrange(len(pool) - size)
            fd = os.open(os.path.join(path, f"f{i:05}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, pool[at:at + size])
            os.close(fd)


def hyperfine_medians(jdir, name):
    """Median seconds of each command of a hyperfine export, by name
    (`-n`), or None if that measurement was never made."""
    path = os.path.join(jdir, name + ".json")
    if not os.path.exists(path):
        return None
    results = json.load(open(path))["results"]
    return {r["command"]: statistics.median(r["times"]) for r in results}


def targets(jdir, mount_jdir):
    """Every row of the performance targets: its figure in the last run
    that measured it, and whether the target is met."""
    def one(name):
        m = hyperfine_medians(jdir, name)
        return None if m is None else next(iter(m.values()))

    def named(directory, name, command):
        m = hyperfine_medians(directory, name)
        return None if m is None else m.get(command)

    rows = []

    def row(figure, target, value, text, ok):
        if value is None:
            rows.append((figure, "not measured", target, "-"))
        else:
            rows.append((figure, text, target, "met" if ok else "NOT met"))

    first, restic_first = one("strata-first"), one("restic-first")
    ratio = restic_first / first if first and restic_first else None
    row("first file backup vs restic, cold", ">= 2x", ratio,
        ratio and f"{ratio:.2f}x (strata {first:.1f} s, restic {restic_first:.1f} s)", ratio and ratio >= 2)
    second = one("strata-second")
    ratio = second / first if first and second else None
    row("unchanged second backup / first backup, cold", "<= 0.10", ratio,
        ratio and f"{ratio:.3f} ({second:.2f} s / {first:.2f} s)", ratio is not None and ratio <= 0.10)
    vm = hyperfine_medians(jdir, "vm2g-restore")
    # A restore fsyncs what it wrote; plain cp leaves it in the page cache,
    # so `cp && sync` is the reference that has its copy on disk too.
    for command, what in (("strata-raw", "raw disk restore"), ("strata-vm", "whole-VM restore (sparse VMDK)")):
        for reference, label in (("cp", "cp --sparse=always"), ("cp-sync", "cp --sparse=always && sync")):
            t = vm and vm.get(command)
            ref = vm and vm.get(reference)
            ratio = ref / t if t and ref else None
            row(f"{what} vs {label}, 2 GiB disk, cold", ">= 0.7x", ratio,
                ratio and f"{ratio:.2f}x ({t:.2f} s vs {ref:.2f} s)", ratio and ratio >= 0.7)
    # Both trees hold 100,000 entries; the mount rows' script is preferred.
    per_100k = named(mount_jdir, "ls-lR", "new") or one("mount-lsR")
    row("ls -lR through the mount, default options, cold", "<= 3 s per 100,000 entries", per_100k,
        per_100k and f"{per_100k:.2f} s per 100,000 entries", per_100k is not None and per_100k <= 3)
    mount, restic_mount = named(mount_jdir, "seq-read", "mount-new"), named(mount_jdir, "seq-read", "restic-mount")
    restore = named(mount_jdir, "seq-read", "strata-restore")
    if mount is None:  # only tools/bench's own mount section ran
        mount, restore = one("mount-seq-cold"), one("mount-restore")
    ratio = restic_mount / mount if mount and restic_mount else None
    row("mount sequential read of 1 GiB vs restic's mount, cold", ">= 3x", ratio,
        ratio and f"{ratio:.2f}x ({mount:.2f} s vs {restic_mount:.2f} s)", ratio and ratio >= 3)
    ratio = restore / mount if mount and restore else None
    row("mount sequential read vs strata restore of the same file", ">= 0.7x", ratio,
        ratio and f"{ratio:.2f}x ({mount:.2f} s vs {restore:.2f} s)", ratio and ratio >= 0.7)
    local, nbd, incremental = one("nbd-local-first"), one("nbd-first"), one("nbd-incremental")
    ratio = local / nbd if local and nbd else None
    row("full NBD backup (unix socket) vs the same disk as a local file", ">= 0.8x", ratio,
        ratio and f"{ratio:.2f}x ({nbd:.2f} s vs {local:.2f} s)", ratio and ratio >= 0.8)
    row("NBD incremental, 64 MiB dirty (QEMU dirty bitmap)", "< 1 s", incremental,
        incremental and f"{incremental:.2f} s", incremental is not None and incremental < 1)
    small_first, small_second = one("small-strata-first"), one("small-strata-second")
    ratio = small_second / small_first if small_first and small_second else None
    count_file = os.path.join(jdir, "small-files.count")
    count = int(open(count_file).read()) if os.path.exists(count_file) else 1000000
    row(f"{count:,} small files (1-200 B, 1,000 directories): unchanged second backup, cold", "<= 10 % of the first, and <= 5 s", ratio,
        ratio and f"{small_second:.1f} s, {100 * ratio:.1f} % of the first ({small_first:.0f} s)",
        ratio is not None and ratio <= 0.10 and small_second <= 5)
    for ours, theirs, what, goal in (("strata-first", "bupstash-first", "first backup", 1.5),
                                      ("strata-second", "bupstash-second", "unchanged second backup", 2),
                                      ("strata-restore", "bupstash-restore", "restore", 1.5)):
        a, b = one(ours), one(theirs)
        ratio = b / a if a and b else None
        row(f"{what} vs bupstash, cold", f">= {goal}x", ratio,
            ratio and f"{ratio:.2f}x (strata {a:.2f} s, bupstash {b:.2f} s)", ratio and ratio >= goal)
    print("\nPerformance targets (medians of the last run of each row):\n")
    print("| figure | now | target | |")
    print("|---|---|---|---|")
    for figure, text, target, verdict in rows:
        print(f"| {figure} | {text} | {target} | {verdict} |")


def main():
    if sys.argv[1] == "make-changes":
        return make_changes(sys.argv[2], sys.argv[3])
    if sys.argv[1] == "make-changes-qemu":
        return make_changes_qemu(sys.argv[2])
    if sys.argv[1] == "make-tree":
        return make_tree(sys.argv[2], int(sys.argv[3]))
    if sys.argv[1] == "make-small-tree":
        return make_small_tree(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    jdir, section = sys.argv[1], sys.argv[2]
    if section == "targets":
        return targets(jdir, sys.argv[3])

    def med(name):
        return statistics.median(json.load(open(os.path.join(jdir, name + ".json")))["results"][0]["times"])

    if section == "files":
        size, files, limits, peak = int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
        cell = lambda name: f"{size / 1e6 / med(name):.0f} MB/s ({med(name):.1f} s)"
        print(f"Data set: {files} files, {size / 1e9:.2f} GB; medians of hyperfine runs; caches dropped unless 'warm'.\n")
        print("Limits on the same data (both cores, warm cache unless noted):\n")
        for line in open(limits):
            print("    " + line.rstrip())
        print("\n| task | strata | restic | borg | bupstash | reference |")
        print("|---|---|---|---|---|---|")
        print(f"| first backup | {cell('strata-first')} | {cell('restic-first')} | {cell('borg-first')} | {cell('bupstash-first')} | |")
        print(f"| first backup, warm cache | {cell('strata-first-warm')} | | | | |")
        print(f"| unchanged second backup | {cell('strata-second')} | {cell('restic-second')} | {cell('borg-second')} | {cell('bupstash-second')} | |")
        print(f"| unchanged second backup, warm cache | {cell('strata-second-warm')} | | | | |")
        print(f"| restore | {cell('strata-restore')} | {cell('restic-restore')} | {cell('borg-restore')} | {cell('bupstash-restore')} | cp -a: {cell('cp')} |")
        print(f"\nSecond/first backup time (strata): {med('strata-second') / med('strata-first'):.3f} cold, "
              f"{med('strata-second-warm') / med('strata-first-warm'):.3f} warm. Peak RSS of a strata backup: {int(peak) / 1024:.0f} MiB.")
    elif section == "tier":
        logical = int(sys.argv[3])
        load = lambda name: json.load(open(os.path.join(jdir, name + ".json")))
        timing = lambda name: [float(x) for x in open(os.path.join(jdir, name + ".time")).read().split()]
        run, thaw, prune = load("tier-run"), load("thaw"), load("prune")
        (t_run, m_run), (t_thaw, m_thaw), (t_prune, m_prune) = timing("tier-run"), timing("thaw"), timing("prune")
        print(f"\nTiering: {logical / 1e9:.1f} GB of logical data in 14 restore points, one every 30 days; single runs, caches dropped.\n")
        print("| operation | data | time | throughput | peak RSS |")
        print("|---|---|---|---|---|")
        print(f"| tier run ({run['restore_points_cold']} restore points go cold) | {run['bytes_moved'] / 1e6:.0f} MB moved, {run['cold_bytes_written'] / 1e6:.0f} MB written cold | {t_run:.1f} s | {run['bytes_moved'] / 1e6 / t_run:.0f} MB/s | {m_run / 1024:.0f} MiB |")
        print(f"| thaw of the oldest restore point | {thaw['bytes_fetched'] / 1e6:.0f} MB fetched | {t_thaw:.1f} s | {thaw['bytes_fetched'] / 1e6 / max(t_thaw, 0.001):.0f} MB/s | {m_thaw / 1024:.0f} MiB |")
        print(f"| prune after forget --keep-last 3 | {prune['bytes_freed'] / 1e6:.0f} MB freed of {prune['bytes_before'] / 1e6:.0f} MB | {t_prune:.1f} s | {prune['bytes_before'] / 1e6 / t_prune:.0f} MB/s swept | {m_prune / 1024:.0f} MiB (mark filter {prune['mark_filter_bytes'] / 1024:.0f} KiB) |")
    elif section == "mount":
        big, disk, rss = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        mbs = lambda name, size: f"{size / 1e6 / med(name):.0f} MB/s ({med(name):.2f} s)"
        print(f"\nMount: 2 GiB incompressible file, 4 GiB VM disk, 100,000-file restore point; medians, caches dropped unless 'warm'.\n")
        print("| read | MB/s |")
        print("|---|---|")
        print(f"| 2 GiB file through the mount, cold | {mbs('mount-seq-cold', big)} |")
        print(f"| 2 GiB file through the mount, warm (kernel page cache) | {mbs('mount-seq-warm', big)} |")
        print(f"| 2 GiB file through the mount, repository in page cache, mount cold | {mbs('mount-seq-repo-warm', big)} |")
        print(f"| strata restore of the 2 GiB file, repository in page cache | {mbs('mount-restore-repo-warm', big)} |")
        print(f"| 4 GiB VM disk (-flat.vmdk), cold | {mbs('mount-disk-cold', disk)} |")
        print(f"| strata restore of the 2 GiB file | {mbs('mount-restore', big)} |")
        print(f"| FUSE ceiling: zeros from a trivial in-memory FUSE file system | {mbs('mount-ceiling', big)} |")
        print("\n| random 4 KiB reads | IOPS | p99 latency |")
        print("|---|---|---|")
        for jobs in (1, 4):
            r = json.load(open(os.path.join(jdir, f"fio-{jobs}.json")))["jobs"][0]["read"]
            p99 = r["clat_ns"]["percentile"]["99.000000"] / 1e6
            print(f"| {jobs} thread{'s' if jobs > 1 else ''} | {r['iops']:.0f} | {p99:.2f} ms |")
        print(f"\n`find` over 100,000 files: {med('mount-find'):.2f} s; `ls -lR`: {med('mount-lsR'):.2f} s. "
              f"Mount process RSS after the runs: {rss / 1024:.0f} MiB with --cache-size 256M.")
    elif section == "smallfiles":
        files = int(sys.argv[3])
        have = lambda name: hyperfine_medians(jdir, name) is not None
        print(f"\nSmall files: {files:,} files of 1-200 bytes in 1,000 directories; medians, caches dropped unless 'warm'.\n")
        print("| task | strata | bupstash |")
        print("|---|---|---|")
        for label, ours, theirs in (("first backup (1 run)", "small-strata-first", "small-bupstash-first"),
                                    ("unchanged second backup", "small-strata-second", "small-bupstash-second"),
                                    ("unchanged second backup, warm cache", "small-strata-second-warm", None)):
            theirs_cell = f"{med(theirs):.1f} s" if theirs and have(theirs) else ""
            print(f"| {label} | {med(ours):.1f} s | {theirs_cell} |")
        print(f"\nSecond/first backup time (strata): {med('small-strata-second') / med('small-strata-first'):.3f} cold, "
              f"{med('small-strata-second-warm') / med('small-strata-first'):.3f} warm.")
    elif section == "objects":
        print("\nObject storage: a repository in a bucket of a local s3s-fs server against one in a directory on the same disk, same hyperfine run, medians, caches dropped.\n")
        print("| job | directory | s3s-fs bucket | bucket speed vs directory |")
        print("|---|---|---|---|")
        for name, label in (("objects-files-backup", "first file backup"), ("objects-disk-backup", "disk backup (2 GiB image)"),
                            ("objects-restore", "file restore, read cache empty"),
                            ("objects-mount-read", "mount sequential read (2 GiB file), read cache empty")):
            m = hyperfine_medians(jdir, name)
            if m:
                print(f"| {label} | {m['local']:.2f} s | {m['s3']:.2f} s | {m['local'] / m['s3']:.0%} |")
        m = hyperfine_medians(jdir, "objects-server-ceiling")
        if m and len(sys.argv) > 4:
            packs, big = int(sys.argv[3]), int(sys.argv[4])
            one, eight = packs / 1e6 / m["one-stream"], packs / 1e6 / m["eight-streams"]
            print(f"\nThe server's own ceiling (every pack of the bucket, {packs / 1e6:.0f} MB, fetched whole by curl, no client work): "
                  f"{one:.0f} MB/s one stream, {eight:.0f} MB/s eight streams; at that rate the 2 GiB file alone takes "
                  f"{big / 1e6 / eight:.1f} s.")
            mount = hyperfine_medians(jdir, "objects-mount-read")
            if mount:
                print(f"The mount's read from the bucket: {big / 1e6 / mount['s3']:.0f} MB/s, "
                      f"{big / 1e6 / mount['s3'] / eight:.0%} of the server's eight-stream ceiling.")
    elif section == "remote":
        size, rss_kib, failed = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        print(f"\nRepository server on loopback (HTTPS, HTTP/2) against the repository in a directory, same hyperfine run, medians, caches dropped; {size / 1e6:.0f} MB of files.\n")
        print("| job | local | through the server | server speed vs local |")
        print("|---|---|---|---|")
        for name, label in (("remote-files-backup", "first file backup"), ("remote-restore", "file restore")):
            m = hyperfine_medians(jdir, name)
            if m:
                print(f"| {label} | {m['local']:.2f} s | {m['remote']:.2f} s | {m['local'] / m['remote']:.0%} |")
        first, second = hyperfine_medians(jdir, "remote-files-backup"), hyperfine_medians(jdir, "remote-second-mover")
        if first and second:
            print(f"\nA second mover backing up the same data (no file cache, every chunk already stored): {second['second']:.2f} s, "
                  f"{first['remote'] / second['second']:.1f}x faster than the first mover's {first['remote']:.2f} s.")
        print(f"\nEight backups at once (same data, eight sources): server peak resident memory {rss_kib / 1024:.0f} MiB"
              f"{'' if failed == '0' else ' (a backup FAILED)'}.")
    elif section == "encryption":
        files, disk, big = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        print("\nEncryption: the same job on an unencrypted and an encrypted repository, same hyperfine run, medians, caches dropped.\n")
        print("| job | unencrypted | encrypted | encrypted throughput vs unencrypted |")
        print("|---|---|---|---|")
        for name, label, size in (("enc-files-backup", "first file backup", files), ("enc-disk-backup", "disk backup (2 GiB image)", disk),
                                  ("enc-restore", "file restore", files), ("enc-mount-read", "mount sequential read (2 GiB file)", big)):
            m = hyperfine_medians(jdir, name)
            if m:
                print(f"| {label} | {m['plain']:.2f} s ({size / 1e6 / m['plain']:.0f} MB/s) | {m['encrypted']:.2f} s ({size / 1e6 / m['encrypted']:.0f} MB/s) | {m['plain'] / m['encrypted']:.2f}x |")
        m = hyperfine_medians(jdir, "enc-open")
        if m:
            print(f"\nOpening (`strata list` of a small repository): {m['plain'] * 1000:.0f} ms unencrypted, "
                  f"{m['encrypted-default-kdf'] * 1000:.0f} ms encrypted with the default Argon2id cost.")
    elif section == "nbd":
        allocated = int(sys.argv[3])
        local, nbd, inc = med("nbd-local-first"), med("nbd-first"), med("nbd-incremental")
        summary = json.load(open(os.path.join(jdir, "nbd-incremental-summary.json")))
        print(f"\nNBD transport: the 4 GiB disk ({allocated / 1e9:.2f} GB allocated); medians, caches dropped before each run, same run.\n")
        print("| task | time | MB/s allocated | vs local file |")
        print("|---|---|---|---|")
        print(f"| full backup, local file (`backup image`) | {local:.2f} s | {allocated / 1e6 / local:.0f} | 1.00x |")
        print(f"| full backup over NBD, unix socket (`backup nbd`) | {nbd:.2f} s | {allocated / 1e6 / nbd:.0f} | {local / nbd:.2f}x |")
        print(f"| incremental over NBD, 64 MiB dirty (`--bitmap`) | {inc:.2f} s | | |")
        copy = med("nbd-nbdcopy")
        print(f"| reference: `nbdcopy --allocated … null:` (the transport alone) | {copy:.2f} s | {allocated / 1e6 / copy:.0f} | |")
        print(f"\nThe incremental read {summary['bytes_read'] / 2**20:.0f} MiB ({summary['disks'][0]['mode']}).")
    elif section == "vm-restore":
        logical, allocated = int(sys.argv[3]), int(sys.argv[4])
        m = hyperfine_medians(jdir, "vm2g-restore")
        print(f"\nDisk restore: {logical / 2**30:.0f} GiB raw disk with ext4, {allocated / 1e9:.2f} GB allocated; medians, caches dropped before each run, same run.\n")
        print("| task | time | MB/s allocated | vs cp --sparse=always | vs cp && sync |")
        print("|---|---|---|---|---|")
        for command, label in (("strata-raw", "strata restore disk --raw-to"), ("strata-vm", "strata restore vm (sparse VMDK)"),
                               ("cp", "cp --sparse=always"), ("cp-sync", "cp --sparse=always && sync")):
            if command in m:
                sync_ratio = f"{m['cp-sync'] / m[command]:.2f}x" if "cp-sync" in m else "–"
                print(f"| {label} | {m[command]:.2f} s | {allocated / 1e6 / m[command]:.0f} | {m['cp'] / m[command]:.2f}x | {sync_ratio} |")
    else:
        logical, allocated, limits = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        cell = lambda name: f"{logical / 1e6 / med(name):.0f} MB/s logical, {allocated / 1e6 / med(name):.0f} MB/s allocated ({med(name):.1f} s)"
        print(f"\nDisk image: {logical / 2**30:.0f} GiB raw with ext4, {allocated / 1e9:.2f} GB allocated; medians, caches dropped before each run.\n")
        print("Limits on the files inside the image (both cores, warm cache):\n")
        for line in open(limits):
            print("    " + line.rstrip())
        print("\n| task | strata | restic | borg | reference |")
        print("|---|---|---|---|---|")
        print(f"| first backup | {cell('vm-strata-first')} | {cell('vm-restic-first')} | {cell('vm-borg-first')} | |")
        print(f"| incremental, 64 MiB changed (CBT) | {med('vm-strata-incremental'):.2f} s | | | |")
        print(f"| restore whole VM (sparse VMDK) | {cell('vm-strata-restore')} | {cell('vm-restic-restore')} | {cell('vm-borg-restore')} | cp --sparse=always: {cell('vm-cp')} |")
        print(f"| restore disk raw | {cell('vm-strata-restore-raw')} | | | |")


main()
