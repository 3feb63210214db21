//! Command-line arguments. Parsing only: each command lives in its own
//! module beside this one.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Deduplicating backup repository with restorable, mountable restore points"
)]
pub struct Cli {
    /// The repository: a directory, or a bucket as s3://BUCKET/PREFIX,
    /// azblob://CONTAINER/PREFIX or gs://BUCKET/PREFIX (endpoint and
    /// credentials from the provider's usual environment variables).
    #[arg(long, global = true, env = "STRATA_REPO", value_name = "DIR|URL")]
    pub repo: Option<PathBuf>,

    /// This machine's state of a repository in a bucket (index, lock,
    /// staging); default ~/.cache/strata/<repository id>.
    #[arg(long, global = true, env = "STRATA_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,

    /// Most MiB of a bucket's packs this machine keeps in the state
    /// directory for restores and mounts.
    #[arg(long, global = true, env = "STRATA_READ_CACHE_MIB", value_name = "MIB", default_value_t = 2048)]
    pub read_cache_mib: u64,

    /// Read an encrypted repository's password from FILE (one trailing
    /// newline is ignored). Otherwise --password-command, then
    /// STRATA_PASSWORD, then the terminal.
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Take the password from the standard output of CMD, split into
    /// arguments like a shell would but run without one.
    #[arg(long, global = true, value_name = "CMD")]
    pub password_command: Option<String>,

    #[command(flatten)]
    pub remote: RemoteArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// How to reach a repository behind a server (`--repo https://HOST:PORT/NAME`).
#[derive(Args, Clone)]
pub struct RemoteArgs {
    /// Read the server's API token from FILE; otherwise STRATA_TOKEN.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Trust the server whose certificate has this SHA-256 fingerprint
    /// (printed by `strata server` at start).
    #[arg(long, global = true, env = "STRATA_FINGERPRINT", value_name = "SHA256")]
    pub fingerprint: Option<String>,

    /// Trust a server certificate signed by the authorities in FILE (PEM)
    /// instead of the system's.
    #[arg(long, global = true, env = "STRATA_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Upload at most this many bytes per second to the server (e.g. 50M);
    /// for `strata server`, take in at most this many from all movers
    /// together.
    #[arg(long, global = true, env = "STRATA_LIMIT_UPLOAD", value_name = "BYTES", value_parser = parse_size)]
    pub limit_upload: Option<u64>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve repositories to remote data movers, restores and mounts over
    /// HTTPS, or manage the server's API tokens.
    Server(ServerArgs),
    /// Run the coordinator of a pool of data movers (one is active; more
    /// stand by and take over when it dies).
    Coordinator(CoordinatorArgs),
    /// Run a data mover of the pool (backups go to --repo), or list them.
    Mover(MoverArgs),
    /// The sources the coordinator backs up.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Queue a backup of sources now: it runs as soon as a mover that
    /// reaches each one has a free stream.
    BackupNow {
        #[arg(required = true)]
        sources: Vec<String>,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// The coordinator's jobs: list, show, cancel, queue a restore.
    #[command(subcommand)]
    Job(JobCommand),
    /// Policies: when the coordinator backs up which sources.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// What the pool did in one day: successes, failures, skips, volumes.
    Report {
        /// The UTC day, YYYY-MM-DD (default: today).
        #[arg(long)]
        day: Option<String>,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Most running tasks per datastore or per host.
    Limit {
        #[arg(value_parser = ["datastore", "host"])]
        scope: String,
        /// The datastore or host, or '*' for the default.
        name: String,
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        max_tasks: i32,
        #[command(flatten)]
        db: DbArg,
    },
    /// Create a new, empty repository.
    Init {
        /// The cold (archival) tier: a directory, e.g. on another disk, or
        /// a bucket URL.
        #[arg(long, value_name = "DIR|URL")]
        cold: Option<PathBuf>,
        /// The storage class of cold packs in a bucket: an archive class
        /// (S3 GLACIER or DEEP_ARCHIVE, Azure Archive) is cheapest and must
        /// be restored by `thaw` before a read; also STANDARD_IA, Cool, …
        #[arg(long, value_name = "CLASS", requires = "cold")]
        cold_storage_class: Option<String>,
        /// Restore points older than this many days become cold on `tier run`.
        #[arg(long, default_value_t = 90)]
        warm_days: u32,
        /// Zstd level of new chunks: 1 is fastest, higher levels trade
        /// backup speed for space (see the README's performance section).
        #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
        compression_level: Option<i32>,
        /// Encrypt everything the repository stores (the default), or
        /// `none` for an unencrypted repository.
        #[arg(long, value_enum, default_value_t = Encryption::Aes256Gcm)]
        encryption: Encryption,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Break the writer lock of a repository in a bucket whose holder is
    /// gone (a stale lock is reported with its holder).
    Unlock,
    /// Manage the passwords (key slots) of an encrypted repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Back up a source.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// List restore points.
    List(JsonFlag),
    /// Show one restore point: metadata, statistics, missed files.
    Show {
        /// Restore point: id (prefix), SOURCE@latest or SOURCE@TIME.
        restore_point: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List the entries of a directory in a restore point.
    Ls {
        restore_point: String,
        /// Path inside the restore point (default: /); for a VM,
        /// `<disk>/<volume>/<path inside>` lists the guest's files.
        path: Option<String>,
        /// Descend into subdirectories.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Repository statistics: sizes, deduplication, compression.
    Stats(JsonFlag),
    /// Verify the repository's structure, and with --read-data its data.
    Check {
        /// Also read, decompress and re-hash every chunk.
        #[arg(long)]
        read_data: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Repair derived state.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Restore from a restore point.
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// Warm and cold tiers: status, and moving old restore points to cold.
    #[command(subcommand)]
    Tier(TierCommand),
    /// Make a cold restore point readable for some days.
    Thaw {
        restore_point: String,
        /// Keep the thawed copy this many days.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Only print the packs and bytes that would be fetched, and how
        /// many archived packs the storage provider would be asked to
        /// restore.
        #[arg(long)]
        plan: bool,
        /// Request the restores of archived packs and return instead of
        /// waiting for them; running thaw again finishes the thaw.
        #[arg(long)]
        no_wait: bool,
        /// Seconds between checks of packs the provider is restoring.
        #[arg(long, default_value_t = 300, value_name = "SECONDS",
              value_parser = clap::value_parser!(u64).range(1..))]
        poll_seconds: u64,
        /// Ask for the provider's expedited restore (minutes instead of
        /// hours, at a higher price; S3 Expedited, Azure High priority).
        #[arg(long)]
        expedited: bool,
        /// Run PROGRAM when the thaw has finished, told the outcome in
        /// STRATA_RESTORE_POINT, STRATA_THAW_RESULT and STRATA_THAW_UNTIL;
        /// instead of the configuration's tiers.notify_command.
        #[arg(long, value_name = "PROGRAM")]
        notify: Option<String>,
        /// An argument for --notify's PROGRAM (repeat for more).
        #[arg(long, value_name = "ARG", requires = "notify")]
        notify_arg: Vec<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove restore points outside a retention policy (data is freed by prune).
    Forget(ForgetArgs),
    /// Delete data no restore point references; repack mostly-empty packs.
    Prune {
        /// Rewrite packs whose live data is below this fraction of their size.
        #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
        repack_below: f64,
        /// Report what would be freed without changing anything.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Mount the repository read-only: files/<source>/<time>/…, vms/<vm>/<time>/….
    Mount {
        mountpoint: PathBuf,
        /// Let other users in (the backed-up permissions then apply).
        #[arg(long)]
        allow_other: bool,
        /// Memory for decompressed chunks, e.g. 256M or 2G.
        #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_size)]
        cache_size: u64,
        /// Hide extended attributes (and ACLs). Rarely needed for speed: a
        /// name no file of the mount has is answered "unsupported" anyway,
        /// so `ls -l` needs no round trip per file for it.
        #[arg(long)]
        no_xattrs: bool,
        /// Stay in the foreground (the default; unmount with Ctrl-C or `strata umount`).
        #[arg(long)]
        foreground: bool,
    },
    /// Unmount a Strata mount, also a stale one left by a killed process.
    Umount { mountpoint: PathBuf },
}

#[derive(Args)]
pub struct ForgetArgs {
    /// Apply the policy to this source only (repeatable).
    #[arg(long = "source", value_name = "SOURCE")]
    pub sources: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub keep_last: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: usize,
    /// Print what would be removed and why each restore point stays.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 256M"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{text:?} has an unknown unit")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Back up file trees.
    Files {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Source name; restore points of one source are incrementals of each other (default: host name).
        #[arg(long)]
        source: Option<String>,
        /// Tag to record (repeatable).
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// Time to record instead of now, RFC 3339 (e.g. 2026-01-31T22:00:00Z).
        #[arg(long, value_name = "TIME")]
        time: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Back up a VM folder in VMware's layout (or its .vmx file).
    Vm {
        #[arg(value_name = "VM")]
        vm: PathBuf,
        #[command(flatten)]
        args: DiskBackupArgs,
    },
    /// Back up one disk image (VMDK or raw) as a VM with one disk.
    Image {
        #[arg(value_name = "DISK")]
        disk: PathBuf,
        /// Name of the VM (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Read the image as this format (default: a .vmdk name must be a
        /// VMDK, a .img/.raw name or block device raw data; other names
        /// are read as VMDK or raw by content). Content that contradicts
        /// the format is refused.
        #[arg(long, value_enum, value_name = "FORMAT")]
        format: Option<ImageFormatArg>,
        #[command(flatten)]
        args: DiskBackupArgs,
    },
    /// Back up disks exported over NBD (a running VM's disks served by
    /// QEMU, qemu-storage-daemon, qemu-nbd or nbdkit) as a VM.
    Nbd {
        /// The export of a one-disk VM: nbd://HOST[:PORT]/EXPORT or
        /// nbd+unix:///EXPORT?socket=PATH.
        #[arg(value_name = "URI", required_unless_present = "disks", conflicts_with = "disks")]
        uri: Option<String>,
        /// Name of the VM.
        #[arg(long)]
        name: String,
        /// Name of the disk read from URI (its file name in restores and
        /// the mount is NAME.vmdk).
        #[arg(long, value_name = "NAME", default_value = "disk", conflicts_with = "disks")]
        disk_name: String,
        /// One disk of a multi-disk VM (repeatable), instead of URI.
        #[arg(long = "disk", value_name = "NAME=URI")]
        disks: Vec<String>,
        /// The QEMU dirty bitmap that holds the writes since the VM's latest
        /// restore point: only the extents it marks dirty are read. A bitmap
        /// the server does not offer, or a disk whose size changed, is read
        /// in full, and the output says why.
        #[arg(long, value_name = "NAME")]
        bitmap: Option<String>,
        /// The QEMU dirty bitmap that began recording when this backup's
        /// view of the disks was taken (the one added in the transaction
        /// that froze --bitmap). It is recorded: the next backup's --bitmap
        /// must be it, or that backup reads in full.
        #[arg(long, value_name = "NAME")]
        next_bitmap: Option<String>,
        #[command(flatten)]
        args: DiskBackupArgs,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFormatArg {
    /// The bytes as they are, whatever they hold.
    Raw,
    /// A VMDK: sparse, stream-optimized, or a descriptor with extents.
    Vmdk,
}

impl From<ImageFormatArg> for strata::vmdk::ImageFormat {
    fn from(arg: ImageFormatArg) -> Self {
        match arg {
            ImageFormatArg::Raw => Self::Raw,
            ImageFormatArg::Vmdk => Self::Vmdk,
        }
    }
}

#[derive(Args)]
pub struct DiskBackupArgs {
    /// Time to record instead of now, RFC 3339.
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Read every allocated block even when an earlier restore point exists.
    #[arg(long)]
    pub full: bool,
    /// Tag the restore point (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Changed-block list of a disk (slot, file name or name without .vmdk)
    /// as JSON [{"start": bytes, "length": bytes}, …], as VMware's
    /// QueryChangedDiskAreas returns it (repeatable).
    #[arg(long = "changed-extents", value_name = "DISK=FILE")]
    pub changed_extents: Vec<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Subcommand)]
pub enum TierCommand {
    /// Bytes, packs and restore points per tier.
    Status(JsonFlag),
    /// Move data only old restore points use to the cold tier; expire thaws.
    Run {
        /// Age in days after which restore points become cold (default: the config's).
        #[arg(long)]
        warm_days: Option<u32>,
        /// Make only this source's old restore points cold (repeatable):
        /// the others count as warm, and the data they share stays warm.
        #[arg(long = "source", value_name = "SOURCE")]
        sources: Vec<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand)]
pub enum RepairCommand {
    /// Rebuild the RocksDB index from packs and manifests.
    Index(JsonFlag),
}

#[derive(Subcommand)]
pub enum RestoreCommand {
    /// Restore a file tree, or selected paths of it (of a VM: files inside
    /// its disks), under a directory.
    Files {
        restore_point: String,
        /// Paths inside the restore point (default: everything); for a VM,
        /// `<disk>/<volume>/<path inside>` (see `strata show`).
        paths: Vec<String>,
        /// Target directory; the restore point's absolute paths are
        /// recreated below it (`--to /` restores to the original location).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Restore a whole VM as a new VM folder DIR/<name>_<counter>.
    Vm {
        restore_point: String,
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Base name of the new VM (default: the backed-up VM's name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "vmdk")]
        disk_format: DiskFormatArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Restore one disk as a new minimal VM, or its raw contents to a file or device.
    Disk {
        restore_point: String,
        /// Disk slot (scsi0:1), file name, or file name without .vmdk.
        disk: String,
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present_any = ["raw_to", "to_nbd"],
            conflicts_with = "raw_to"
        )]
        to: Option<PathBuf>,
        /// Write the disk's raw contents to this file or block device.
        #[arg(long, value_name = "PATH", conflicts_with = "to_nbd")]
        raw_to: Option<PathBuf>,
        /// Write the disk into this writable NBD export (at least the
        /// disk's size): its data chunks are written, its holes zeroed
        /// where the export does not already read zeros there.
        #[arg(long, value_name = "URI", conflicts_with = "to")]
        to_nbd: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "vmdk")]
        disk_format: DiskFormatArg,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskFormatArg {
    /// monolithicSparse VMDK, holes kept sparse.
    Vmdk,
    /// monolithicFlat: descriptor plus a sparse raw -flat.vmdk.
    Raw,
}

#[derive(Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print a machine-readable JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encryption {
    /// AES-256-GCM with keyed BLAKE3 ids; keys wrapped by Argon2id.
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// No encryption (format version 1).
    None,
}

/// Argon2id's cost for a new key slot.
#[derive(Args, Clone, Copy)]
pub struct KdfArgs {
    /// Memory Argon2id uses to derive a key from the password, in MiB.
    #[arg(long, default_value_t = 128, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub kdf_memory_mib: u32,
    /// Argon2id passes over that memory.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub kdf_passes: u32,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List the key slots.
    List(JsonFlag),
    /// Add a key slot: another password that opens the repository.
    Add(NewPasswordArgs),
    /// Remove a key slot. The last one is never removed.
    Remove {
        /// The slot's id (or a unique prefix), as `key list` shows it.
        id: String,
        /// Remove the slot of the password given, too.
        #[arg(long)]
        force: bool,
    },
    /// Change the password: a new slot replaces the one in use (no data is
    /// re-encrypted).
    Passwd(NewPasswordArgs),
}

/// A new key slot's password and cost.
#[derive(Args)]
pub struct NewPasswordArgs {
    /// Read the new password from FILE (else STRATA_NEW_PASSWORD, else the
    /// terminal, twice).
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,

    /// Address and port to listen on; port 0 picks a free one.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,

    /// The server's own state: API tokens, its certificate, what it knows
    /// of each repository.
    #[arg(long, value_name = "DIR", env = "STRATA_SERVER_DIR", default_value = "/var/lib/strata-server")]
    pub dir: PathBuf,

    /// A repository to serve, as NAME=LOCATION (a directory or a bucket
    /// URL); clients use https://HOST:PORT/NAME. Repeat for more.
    #[arg(long = "serve", value_name = "NAME=LOCATION")]
    pub serve: Vec<String>,

    /// The server's certificate chain (PEM); with --tls-key. Without
    /// them a self-signed certificate is made in --dir and its
    /// fingerprint printed for clients to pin.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Backup sessions served at once; more wait for a free slot.
    #[arg(long, default_value_t = 16)]
    pub max_sessions: usize,

    /// A backup session whose mover is silent this many seconds ends, and
    /// nothing of it is committed.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_timeout: u64,
}

#[derive(Subcommand)]
pub enum ServerCommand {
    /// API tokens: who may back up, restore or administer.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (once).
    Add {
        name: String,
        /// backup: write restore points of its sources and read them;
        /// restore: read them; admin: everything.
        #[arg(long, value_parser = ["backup", "restore", "admin"])]
        role: String,
        /// Glob of the source names it may touch ('*' for all); repeat
        /// for more.
        #[arg(long = "sources", value_name = "GLOB", required = true)]
        sources: Vec<String>,
        #[arg(long, value_name = "DIR", env = "STRATA_SERVER_DIR", default_value = "/var/lib/strata-server")]
        dir: PathBuf,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long, value_name = "DIR", env = "STRATA_SERVER_DIR", default_value = "/var/lib/strata-server")]
        dir: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove a token: it is refused from the next request on.
    Remove {
        name: String,
        #[arg(long, value_name = "DIR", env = "STRATA_SERVER_DIR", default_value = "/var/lib/strata-server")]
        dir: PathBuf,
    },
}

/// The coordinator's database.
#[derive(Args, Clone)]
pub struct DbArg {
    /// PostgreSQL URL of the coordinator's database
    /// (postgres://USER[:PASSWORD]@HOST:PORT/DB).
    #[arg(long = "db", alias = "coordinator", env = "STRATA_DB", value_name = "URL")]
    pub url: String,
}

/// A listing from the coordinator's database.
#[derive(Args)]
pub struct DbListArgs {
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// A mover silent this many seconds is lost; its tasks run elsewhere
    /// once their leases expire.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub mover_timeout: u64,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MoverArgs {
    #[command(subcommand)]
    pub command: Option<MoverCommand>,
    #[command(flatten)]
    pub run: MoverRunArgs,
}

#[derive(Args)]
pub struct MoverRunArgs {
    /// PostgreSQL URL of the coordinator's database.
    #[arg(long = "db", alias = "coordinator", env = "STRATA_DB", value_name = "URL")]
    pub db: Option<String>,
    /// This mover's name in the pool (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The host it runs on (default: this machine's host name).
    #[arg(long)]
    pub host: Option<String>,
    /// A datastore it reaches; repeat for more.
    #[arg(long = "datastore", value_name = "NAME")]
    pub datastores: Vec<String>,
    /// Cores to count for its streams (default: this machine's).
    #[arg(long)]
    pub cores: Option<i32>,
    /// Memory to count for its streams, in MiB (default: this machine's).
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<i64>,
    /// Tasks run at once (default: one per core, at most one per 2 GiB).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub streams: Option<i32>,
    /// Seconds a task stays this mover's without a heartbeat.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..))]
    pub lease: u64,
    /// Run the policies' retention (forget, prune) and tiering: the
    /// repository credentials this mover has must be an admin's.
    #[arg(long)]
    pub maintenance: bool,
}

#[derive(Subcommand)]
pub enum MoverCommand {
    /// The movers: streams in use, last heartbeat.
    List(DbListArgs),
}

#[derive(Subcommand)]
pub enum SourceCommand {
    /// Add a source (or change one).
    Add {
        name: String,
        #[arg(long, value_parser = ["files", "vm", "image", "nbd"])]
        kind: String,
        /// The file tree, the VM folder (its .vmx), the disk image, or the
        /// NBD URI of the disk (nbd kind).
        #[arg(long)]
        path: String,
        /// The host it is on.
        #[arg(long)]
        host: String,
        /// The datastore it is on.
        #[arg(long)]
        datastore: String,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Its size in bytes, if known: larger sources go first among
        /// those of equal priority.
        #[arg(long, default_value_t = 0)]
        size_hint: i64,
        #[command(flatten)]
        db: DbArg,
    },
    /// List the sources.
    List(DbListArgs),
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Every job, with its tasks' states.
    List(DbListArgs),
    /// A job and each of its tasks: mover, times, bytes, result.
    Show {
        id: i64,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Cancel a job: queued tasks never start, running ones stop.
    Cancel {
        id: i64,
        #[command(flatten)]
        db: DbArg,
    },
    /// Queue a restore, run by a mover on HOST (or reaching DATASTORE)
    /// once one has a free stream; it waits while none is up.
    Restore {
        restore_point: String,
        /// Where to restore: a directory on that host.
        #[arg(long, value_name = "DIR")]
        to: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        datastore: Option<String>,
        /// Restore a whole VM (a new VM folder) instead of a file tree.
        #[arg(long)]
        vm: bool,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Add a policy (or change one).
    Add {
        name: String,
        /// Cron expression in UTC, e.g. "0 2 * * *" (five fields, or six
        /// with seconds first).
        #[arg(long)]
        schedule: String,
        /// Glob of the source names it backs up.
        #[arg(long)]
        sources: String,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// A task that has not started this long after its run's time
        /// is skipped and reported (e.g. 6h, 90m, 30s).
        #[arg(long, default_value = "6h", value_parser = parse_duration_secs)]
        window: i64,
        #[command(flatten)]
        keep: PolicyKeepArgs,
        /// Move the policy's restore points older than this many days
        /// (e.g. 90d) to the cold tier after each run.
        #[arg(long, value_name = "DAYS", value_parser = parse_days)]
        tier_after: Option<i32>,
        #[command(flatten)]
        db: DbArg,
    },
    /// List the policies and when each runs next.
    List(DbListArgs),
    /// Remove a policy (its past jobs stay).
    Remove {
        name: String,
        #[command(flatten)]
        db: DbArg,
    },
}

/// A policy's retention: after each run, its sources' restore points
/// these rules do not keep are forgotten and their data pruned.
#[derive(Args)]
pub struct PolicyKeepArgs {
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    pub keep_last: i32,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    pub keep_hourly: i32,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    pub keep_daily: i32,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    pub keep_weekly: i32,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    pub keep_monthly: i32,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    pub keep_yearly: i32,
}

/// `90d` (or bare days) as days, at least one.
fn parse_days(text: &str) -> std::result::Result<i32, String> {
    let days: i32 = text
        .strip_suffix('d')
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("{text:?} is not a number of days like 90d"))?;
    if days < 1 {
        return Err(format!("{text:?}: at least 1 day"));
    }
    Ok(days)
}

/// `30s`, `90m`, `6h`, `2d` (or bare seconds) as seconds.
fn parse_duration_secs(text: &str) -> std::result::Result<i64, String> {
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let number: i64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30s, 90m, 6h or 2d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    match number.checked_mul(unit) {
        Some(secs) if secs > 0 => Ok(secs),
        _ => Err(format!("{text:?} is not a positive duration")),
    }
}
