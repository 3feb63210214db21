"""Turns tools/bench's hyperfine results into the README's tables."""
import json
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


def make_tree(root, count):
    """`count` small files of 1 KiB in directories of 1000."""
    for i in range(count):
        d = os.path.join(root, f"d{i // 1000:03}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:06}"), "wb") as f:
            f.write(os.urandom(512) + b"x" * 512)


def main():
    if sys.argv[1] == "make-changes":
        return make_changes(sys.argv[2], sys.argv[3])
    if sys.argv[1] == "make-tree":
        return make_tree(sys.argv[2], int(sys.argv[3]))
    jdir, section = sys.argv[1], sys.argv[2]

    def med(name):
        return statistics.median(json.load(open(os.path.join(jdir, name + ".json")))["results"][0]["times"])

    if section == "files":
        size, files, limits, peak = int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
        cell = lambda name: f"{size / 1e6 / med(name):.0f} MB/s ({med(name):.1f} s)"
        print(f"Data set: {files} files, {size / 1e9:.2f} GB; medians of hyperfine runs; caches dropped unless 'warm'.\n")
        print("Limits on the same data (both cores, warm cache unless noted):\n")
        for line in open(limits):
            print("    " + line.rstrip())
        print("\n| task | strata | restic | borg | reference |")
        print("|---|---|---|---|---|")
        print(f"| first backup | {cell('strata-first')} | {cell('restic-first')} | {cell('borg-first')} | |")
        print(f"| first backup, warm cache | {cell('strata-first-warm')} | | | |")
        print(f"| unchanged second backup | {cell('strata-second')} | {cell('restic-second')} | {cell('borg-second')} | |")
        print(f"| unchanged second backup, warm cache | {cell('strata-second-warm')} | | | |")
        print(f"| restore | {cell('strata-restore')} | {cell('restic-restore')} | {cell('borg-restore')} | cp -a: {cell('cp')} |")
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
