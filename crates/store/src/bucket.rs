//! Object storage: S3-compatible services, Azure Blob and Google Cloud
//! Storage, all through Apache OpenDAL, one library kept by many hands
//! that speaks each provider's API (signing, multipart uploads, paging)
//! so that this module only maps the seam onto it.
//!
//! Credentials come from the environment each provider's own tools read
//! (`AWS_*`, `AZURE_STORAGE_*`, `GOOGLE_APPLICATION_CREDENTIALS`), never
//! from the location, so they appear in no configuration, message or log.
//! Every request is retried with exponential backoff and jitter on
//! throttling, server errors and timeouts, and fails with the provider's
//! error after a bounded time.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::options::{ListOptions, ReadOptions, WriteOptions};
use opendal::{blocking, services, ErrorKind, HttpTransporter, OperationContext, Operator};

use crate::archive::{ArchiveClient, Availability, RestorePriority, StorageClass};
use crate::error::{Error, IoContext, Result};
use crate::faults::{Faults, FaultyTransport};
use crate::{not_found, short_object, validate_name, ObjectStore, ObjectWriter};

/// Objects at least this large are uploaded in parts of this size, several
/// at once (to S3 and Azure; GCS takes one request, see `upload`).
const PART_SIZE: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;
/// Retries of one request: 8 tries with delays from 0.2 s doubling to at
/// most 10 s, with jitter, give up after about a minute.
const RETRIES: usize = 8;

/// One runtime for every bucket store in the process: OpenDAL is
/// asynchronous, the engine's threads are not.
pub(crate) static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("object-store")
        .enable_all()
        .build()
        .expect("starting the object storage runtime")
});

/// Where a repository's objects are: a directory, or a bucket (container)
/// and a prefix in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Directory(PathBuf),
    S3 { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
    Gcs { bucket: String, prefix: String },
}

impl Location {
    /// `s3://bucket/prefix`, `azblob://container/prefix`,
    /// `gs://bucket/prefix`, or a plain path.
    pub fn parse(text: &str) -> Result<Location> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Location::Directory(PathBuf::from(text)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains(['@', ':', '?', '#']) {
            return Err(Error::InvalidInput(format!(
                "{text:?}: expected {scheme}://BUCKET/PREFIX, without credentials"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            validate_name(prefix)?;
        }
        let (bucket, prefix) = (bucket.to_string(), prefix.to_string());
        match scheme {
            "s3" => Ok(Location::S3 { bucket, prefix }),
            "azblob" => Ok(Location::Azure {
                container: bucket,
                prefix,
            }),
            "gs" => Ok(Location::Gcs { bucket, prefix }),
            _ => Err(Error::InvalidInput(format!(
                "{text:?}: unknown scheme {scheme:?} (s3://, azblob://, gs:// or a path)"
            ))),
        }
    }

    pub fn is_directory(&self) -> bool {
        matches!(self, Location::Directory(_))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, bucket, prefix) = match self {
            Location::Directory(path) => return write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => ("s3", bucket, prefix),
            Location::Azure { container, prefix } => ("azblob", container, prefix),
            Location::Gcs { bucket, prefix } => ("gs", bucket, prefix),
        };
        if prefix.is_empty() {
            write!(f, "{scheme}://{bucket}")
        } else {
            write!(f, "{scheme}://{bucket}/{prefix}")
        }
    }
}

/// An environment variable, unset when empty.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// How to reach a bucket beyond its name: the endpoint and the
/// credentials, never stored with the repository.
#[derive(Clone, Default)]
pub struct Access {
    /// The service's URL, for S3-compatible servers, Azurite or a GCS
    /// emulator; `None` for the provider's own.
    pub endpoint: Option<String>,
    /// S3's region.
    pub region: Option<String>,
    /// S3's access key id, or Azure's account name.
    pub key_id: Option<String>,
    /// S3's secret access key, or Azure's account key.
    pub secret: Option<String>,
    /// S3's session token, with temporary keys.
    pub session_token: Option<String>,
    /// GCS's service account file.
    pub credential_path: Option<String>,
    /// Unsigned requests (a GCS emulator).
    pub anonymous: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("key_id", &self.key_id.as_ref().map(|_| ".."))
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .field("session_token", &self.session_token.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Access {
    /// What each provider's own tools read from the environment:
    /// `AWS_ENDPOINT_URL(_S3)`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` (the S3 client also reads session tokens
    /// and profiles itself); `AZURE_STORAGE_ENDPOINT`,
    /// `AZURE_STORAGE_ACCOUNT`, `AZURE_STORAGE_KEY`;
    /// `GOOGLE_APPLICATION_CREDENTIALS`, `STRATA_GCS_ENDPOINT` and
    /// `STRATA_GCS_ANONYMOUS` (an emulator).
    pub fn from_env(location: &Location) -> Access {
        match location {
            Location::S3 { .. } => Access {
                endpoint: env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")),
                region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
                key_id: env("AWS_ACCESS_KEY_ID"),
                secret: env("AWS_SECRET_ACCESS_KEY"),
                session_token: env("AWS_SESSION_TOKEN"),
                ..Access::default()
            },
            Location::Azure { .. } => Access {
                endpoint: env("AZURE_STORAGE_ENDPOINT"),
                key_id: env("AZURE_STORAGE_ACCOUNT"),
                secret: env("AZURE_STORAGE_KEY"),
                ..Access::default()
            },
            Location::Gcs { .. } => Access {
                endpoint: env("STRATA_GCS_ENDPOINT"),
                credential_path: env("GOOGLE_APPLICATION_CREDENTIALS"),
                anonymous: env("STRATA_GCS_ANONYMOUS").is_some(),
                ..Access::default()
            },
            Location::Directory(_) => Access::default(),
        }
    }
}

/// The OpenDAL operator for `location`, with retries and timeouts.
fn operator(location: &Location, access: &Access, storage_class: Option<&StorageClass>) -> Result<Operator> {
    let built = match location {
        Location::Directory(path) => {
            return Err(Error::InvalidInput(format!(
                "{} is a directory, not a bucket",
                path.display()
            )))
        }
        Location::S3 { bucket, prefix } => {
            let mut s3 = services::S3::default()
                .bucket(bucket)
                .root(&format!("/{prefix}"))
                .region(access.region.as_deref().unwrap_or("us-east-1"));
            if let Some(endpoint) = &access.endpoint {
                s3 = s3.endpoint(endpoint);
            }
            if let (Some(id), Some(secret)) = (&access.key_id, &access.secret) {
                // Explicit keys only: no profile or instance role mixed in.
                s3 = s3.access_key_id(id).secret_access_key(secret).disable_config_load();
                if let Some(token) = &access.session_token {
                    s3 = s3.session_token(token);
                }
            }
            if env("STRATA_S3_VIRTUAL_HOST_STYLE").is_some() {
                s3 = s3.enable_virtual_host_style();
            }
            if let Some(class) = storage_class {
                s3 = s3.default_storage_class(class.as_str());
            }
            Operator::new(s3)
        }
        Location::Azure { container, prefix } => {
            let mut azure = services::Azblob::default()
                .container(container)
                .root(&format!("/{prefix}"));
            if let Some(endpoint) = &access.endpoint {
                azure = azure.endpoint(endpoint);
            }
            if let Some(account) = &access.key_id {
                azure = azure.account_name(account);
            }
            if let Some(key) = &access.secret {
                azure = azure.account_key(key);
            }
            Operator::new(azure)
        }
        Location::Gcs { bucket, prefix } => {
            let mut gcs = services::Gcs::default()
                .bucket(bucket)
                .root(&format!("/{prefix}"));
            if let Some(endpoint) = &access.endpoint {
                gcs = gcs.endpoint(endpoint);
            }
            if let Some(path) = &access.credential_path {
                gcs = gcs.credential_path(path);
            }
            if access.anonymous {
                gcs = gcs.skip_signature().disable_vm_metadata().disable_config_load();
            }
            if let Some(class) = storage_class {
                gcs = gcs.default_storage_class(class.as_str());
            }
            Operator::new(gcs)
        }
    };
    built.map_err(|e| Error::InvalidInput(format!("cannot reach {location}: {}", e.kind())))
}

/// How often a request is retried: with delays from `min_delay` doubling
/// to at most `max_delay`, with jitter, `tries` times in all.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub tries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    /// 8 tries from 0.2 s to 10 s: a request gives up after about a
    /// minute of throttling or server errors.
    fn default() -> Self {
        Retry {
            tries: RETRIES,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// What a bucket store may be opened with besides its location.
#[derive(Clone, Debug, Default)]
pub struct BucketOptions {
    /// The class new objects get (an archive class for a cold tier;
    /// `None` for the provider's default).
    pub storage_class: Option<StorageClass>,
    pub retry: Retry,
    /// Requests answered with errors before they are sent (tests).
    pub faults: Option<Faults>,
}

/// `op` with timeouts and retries, and any injected faults under them.
fn layered(op: Operator, options: &BucketOptions) -> Operator {
    let op = match &options.faults {
        Some(faults) => op.with_context(
            OperationContext::new()
                .with_http_transport(HttpTransporter::new(FaultyTransport::new(faults.clone()))),
        ),
        None => op,
    };
    op.layer(
        TimeoutLayer::new()
            .with_timeout(Duration::from_secs(60))
            .with_io_timeout(Duration::from_secs(30)),
    )
    .layer(
        RetryLayer::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(options.retry.min_delay)
            .with_max_delay(options.retry.max_delay)
            .with_max_times(options.retry.tries)
            // One line per retry, without the request's context and
            // backtrace that OpenDAL's own notice carries.
            .with_notify(|event: opendal::layers::RetryEvent<'_>| {
                tracing::warn!(
                    operation = ?event.op,
                    attempt = event.attempt,
                    after = ?event.retry_after,
                    "retrying a request: {}: {}",
                    event.err.kind(),
                    event.err.message()
                )
            }),
    )
}

/// A bucket (or a prefix in one) holding a repository's objects.
#[derive(Clone)]
pub struct BucketStore {
    location: Location,
    op: blocking::Operator,
    /// Local directory where streamed objects are staged until committed
    /// (on the repository's state directory, never in the bucket).
    staging: PathBuf,
    /// Tries of each request before its error is final.
    tries: usize,
    /// The class new objects get, and the requests that read and change
    /// an object's class (S3 and Azure).
    class: Option<StorageClass>,
    archive: Option<Arc<ArchiveClient>>,
}

impl BucketStore {
    /// The store at `location`, staging streamed objects in `staging`.
    /// `storage_class` is the class new objects get (an archive class for
    /// a cold tier; `None` for the provider's default).
    pub fn open(
        location: &Location,
        access: &Access,
        staging: &Path,
        storage_class: Option<&str>,
    ) -> Result<Self> {
        let options = BucketOptions {
            storage_class: storage_class
                .map(|class| StorageClass::parse(location, class))
                .transpose()?,
            ..BucketOptions::default()
        };
        Self::open_with(location, access, staging, &options)
    }

    /// [`open`](Self::open) with retries and injected faults chosen.
    pub fn open_with(
        location: &Location,
        access: &Access,
        staging: &Path,
        options: &BucketOptions,
    ) -> Result<Self> {
        let op = layered(
            operator(location, access, options.storage_class.as_ref())?,
            options,
        );
        let _runtime = RUNTIME.enter();
        let op = blocking::Operator::new(op).map_err(|e| {
            Error::InvalidInput(format!("cannot reach {location}: {e}"))
        })?;
        Ok(BucketStore {
            location: location.clone(),
            op,
            staging: staging.to_path_buf(),
            tries: options.retry.tries + 1,
            class: options.storage_class.clone(),
            archive: ArchiveClient::new(location, access, options.retry)?.map(Arc::new),
        })
    }

    /// Gives a new object its class where the provider takes it in a
    /// request of its own (Azure's access tier), not with the upload. An
    /// object that cannot get its class is removed again: nothing would
    /// ever collect it, unindexed on the cold tier.
    fn classify(&self, name: &str) -> Result<()> {
        let (Some(archive), Some(class)) = (&self.archive, &self.class) else {
            return Ok(());
        };
        archive.set_tier(name, class).inspect_err(|_| {
            if let Err(e) = self.op.delete(name) {
                tracing::warn!(object = name, error = %e, "could not remove an object left without its class");
            }
        })
    }

    /// An error naming the object and the provider's cause; a missing
    /// object is `NotFound`, as for every store.
    fn error(&self, action: &'static str, name: &str, e: opendal::Error) -> Error {
        if e.kind() == ErrorKind::NotFound {
            return not_found(&self.location.to_string(), name);
        }
        let kind = match e.kind() {
            ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorKind::RateLimited => io::ErrorKind::WouldBlock,
            _ => io::ErrorKind::Other,
        };
        // The provider's answer (an S3 error code, say) is the useful
        // part; OpenDAL's request context would repeat the name.
        let mut detail = format!("{}: {}", e.kind(), e.message());
        if ["InvalidObjectState", "BlobArchived"]
            .iter()
            .any(|code| detail.contains(code))
        {
            // S3's and Azure's answers to reading an archived object.
            detail = "the object is in an archive class and must be restored first \
                      (strata thaw restores a restore point's packs)"
                .into();
        }
        // The root cause (a refused connection, a timeout) says what
        // happened on the wire.
        let mut cause = std::error::Error::source(&e);
        let mut root = None;
        while let Some(next) = cause {
            root = Some(next.to_string());
            cause = next.source();
        }
        if let Some(root) = root.filter(|root| !detail.contains(root.as_str())) {
            detail.push_str(&format!(" ({root})"));
        }
        if e.kind() == ErrorKind::RateLimited {
            // Throttling the retries did not outlast.
            detail.push_str(&format!("; gave up after {} tries", self.tries));
        }
        Error::io(action, format!("{}/{name}", self.location), io::Error::new(kind, detail))
    }

    fn upload(&self, name: &str, staged: &Path) -> Result<()> {
        if matches!(self.location, Location::Gcs { .. }) {
            // One request for GCS: OpenDAL sends its parts through GCS's
            // XML multipart API, which emulators such as fake-gcs-server
            // lack, and one upload takes up to 5 TiB. The object (a pack,
            // 32 MiB by default) is held in memory for it.
            let data = std::fs::read(staged).at("reading staged object", staged)?;
            self.op
                .write(name, data)
                .map_err(|e| self.error("uploading", name, e))?;
            return self.classify(name);
        }
        let mut file = std::fs::File::open(staged).at("reading staged object", staged)?;
        let options = WriteOptions {
            chunk: Some(PART_SIZE),
            concurrent: PARTS_IN_FLIGHT,
            ..WriteOptions::default()
        };
        let mut writer = self
            .op
            .writer_options(name, options)
            .map_err(|e| self.error("uploading", name, e))?;
        loop {
            // Each part is read into a buffer of its own that the upload
            // takes over, rather than copied out of a reused one.
            let mut part = Vec::with_capacity(PART_SIZE);
            (&mut file)
                .take(PART_SIZE as u64)
                .read_to_end(&mut part)
                .at("reading staged object", staged)?;
            if part.is_empty() {
                break;
            }
            writer
                .write(part)
                .map_err(|e| self.error("uploading", name, e))?;
        }
        // Only a completed upload (the last part of a multipart one)
        // makes the object exist: an abort leaves nothing under the name.
        writer
            .close()
            .map_err(|e| self.error("uploading", name, e))?;
        self.classify(name)
    }
}

impl ObjectStore for BucketStore {
    fn location(&self) -> String {
        self.location.to_string()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        validate_name(name)?;
        self.op
            .write(name, data.to_vec())
            .map_err(|e| self.error("writing", name, e))?;
        self.classify(name)
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter>> {
        std::fs::create_dir_all(&self.staging).at("creating", &self.staging)?;
        let path = self.staging.join(crate::local::staging_name("upload"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("staging", &path)?;
        Ok(Box::new(BucketWriter {
            store: self.clone(),
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
            path,
        }))
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        validate_name(name)?;
        self.op
            .read(name)
            .map(|buffer| buffer.to_vec())
            .map_err(|e| self.error("reading", name, e))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        validate_name(name)?;
        let end = offset + buf.len() as u64;
        let options = ReadOptions {
            range: (offset..end).into(),
            ..ReadOptions::default()
        };
        let data = self
            .op
            .read_options(name, options)
            .map_err(|e| self.error("reading", name, e))?
            .to_bytes();
        if data.len() != buf.len() {
            return Err(short_object(&self.location.to_string(), name, end));
        }
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn size(&self, name: &str) -> Result<u64> {
        validate_name(name)?;
        self.op
            .stat(name)
            .map(|meta| meta.content_length())
            .map_err(|e| self.error("reading", name, e))
    }

    fn list_page(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let prefix = crate::directory_prefix(prefix);
        let options = ListOptions {
            recursive: true,
            start_after: start_after.map(str::to_string),
            limit: Some(limit),
            ..ListOptions::default()
        };
        let lister = self
            .op
            .lister_options(&prefix, options)
            .map_err(|e| self.error("listing", &prefix, e))?;
        let mut names = Vec::with_capacity(limit);
        for entry in lister {
            let entry = entry.map_err(|e| self.error("listing", &prefix, e))?;
            let name = entry.path().trim_start_matches('/');
            // Providers without a server-side start_after list from the
            // beginning; the order is the same, so skip what came before.
            if entry.metadata().is_dir() || start_after.is_some_and(|after| name <= after) {
                continue;
            }
            names.push(name.to_string());
            if names.len() == limit {
                break;
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        self.op
            .delete(name)
            .map_err(|e| self.error("deleting", name, e))
    }

    fn clear_staging(&self) -> Result<usize> {
        crate::local::remove_leftovers(&self.staging)
    }

    fn availability(&self, name: &str) -> Result<Availability> {
        match &self.archive {
            Some(archive) => archive.availability(name),
            None => self.size(name).map(|_| Availability::Readable),
        }
    }

    fn request_restore(&self, name: &str, days: u32, priority: RestorePriority) -> Result<()> {
        match &self.archive {
            Some(archive) => archive.request_restore(name, days, priority),
            None => Ok(()),
        }
    }

    fn return_to_archive(&self, name: &str) -> Result<()> {
        match (&self.archive, &self.class) {
            (Some(archive), Some(class)) if class.is_archive() => archive.set_tier(name, class),
            _ => Ok(()),
        }
    }
}

/// An object staged in a local file and uploaded whole at commit.
struct BucketWriter {
    store: BucketStore,
    file: Option<io::BufWriter<std::fs::File>>,
    path: PathBuf,
}

impl Write for BucketWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("open until committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("open until committed").flush()
    }
}

impl ObjectWriter for BucketWriter {
    fn commit(mut self: Box<Self>, name: &str) -> Result<()> {
        validate_name(name)?;
        let file = self.file.take().expect("committed once");
        file.into_inner()
            .map_err(|e| e.into_error())
            .at("staging", &self.path)?;
        self.store.upload(name, &self.path)
    }
}

impl Drop for BucketWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
