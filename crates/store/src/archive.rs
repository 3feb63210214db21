//! Archive classes: objects a provider keeps offline (S3 Glacier Flexible
//! Retrieval and Deep Archive, Azure's Archive tier) until a restore
//! request brings a readable copy back, minutes to hours later.
//!
//! OpenDAL reads and writes objects but knows nothing of archive states,
//! so this module sends the few requests that need: an object's
//! properties (HEAD), S3's RestoreObject and Azure's Set Blob Tier. They
//! are signed by reqsign, the signing library OpenDAL itself uses, with
//! the same credentials as the bucket store's other requests.

use std::fmt;
use std::io;
use std::time::Duration;

use http::{HeaderMap, Method, Request, StatusCode};
use opendal::{Buffer, HttpTransporter};
use reqsign_core::{Context, OsEnv, ProvideCredentialChain, Signer};
use reqsign_file_read_tokio::TokioFileRead;

use crate::bucket::{Access, Location, Retry, RUNTIME};
use crate::error::{Error, Result};
use crate::not_found;

/// Whether an object can be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Readable,
    /// In an archive class: readable only after a restore request.
    Archived,
    /// A restore was requested and the provider is still working on it.
    Restoring,
}

/// How soon the provider should make archived objects readable: each
/// provider's standard retrieval (hours), or its expedited one (minutes,
/// at a higher price; S3 Deep Archive has none, and its objects are then
/// asked for with the standard one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestorePriority {
    #[default]
    Standard,
    Expedited,
}

/// A storage class that new objects of a tier get, checked against what
/// the provider of the tier's location offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageClass(String);

const S3_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
];
/// S3 classes whose objects must be restored before they are read.
const S3_ARCHIVE_CLASSES: &[&str] = &["GLACIER", "DEEP_ARCHIVE"];
const AZURE_TIERS: &[&str] = &["Hot", "Cool", "Cold", "Archive"];
const AZURE_ARCHIVE_TIER: &str = "Archive";
/// GCS's classes are all readable at once; they differ in price only.
const GCS_CLASSES: &[&str] = &["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"];

impl StorageClass {
    /// `text` as a class of `location`'s provider (S3's names, Azure's
    /// access tiers, GCS's classes); a directory has none.
    pub fn parse(location: &Location, text: &str) -> Result<StorageClass> {
        let known: &[&str] = match location {
            Location::S3 { .. } => S3_CLASSES,
            Location::Azure { .. } => AZURE_TIERS,
            Location::Gcs { .. } => GCS_CLASSES,
            Location::Directory(_) => {
                return Err(Error::InvalidInput(format!(
                    "{location} is a directory: storage classes are for buckets"
                )))
            }
        };
        known
            .iter()
            .find(|class| class.eq_ignore_ascii_case(text))
            .map(|class| StorageClass(class.to_string()))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{text:?} is not a storage class of {location} (one of {})",
                    known.join(", ")
                ))
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether objects of this class must be restored before a read.
    pub fn is_archive(&self) -> bool {
        S3_ARCHIVE_CLASSES.contains(&self.0.as_str()) || self.0 == AZURE_ARCHIVE_TIER
    }
}

impl fmt::Display for StorageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

enum ProviderSigner {
    S3(Signer<reqsign_aws_v4::Credential>),
    Azure(Signer<reqsign_azure_storage::Credential>),
}

/// Sends the archive requests of one bucket (or prefix).
pub(crate) struct ArchiveClient {
    location: Location,
    /// The objects' URL up to the prefix, ending in `/`.
    base: String,
    signer: ProviderSigner,
    transport: HttpTransporter,
    retry: Retry,
}

/// The version of Azure's Blob API these requests speak, the one OpenDAL
/// speaks too (Azurite 3 supports it).
const AZURE_API_VERSION: &str = "2022-11-02";

impl ArchiveClient {
    /// The client for `location`, or `None` where the provider has no
    /// archive classes that need restore requests (GCS, directories).
    pub fn new(
        location: &Location,
        access: &Access,
        retry: Retry,
    ) -> Result<Option<ArchiveClient>> {
        let context = Context::new()
            .with_file_read(TokioFileRead)
            .with_env(OsEnv)
            .with_http_send(HttpTransporter::default());
        let (base, signer) = match location {
            Location::S3 { bucket, prefix } => {
                let region = access.region.as_deref().unwrap_or("us-east-1");
                let endpoint = access
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
                let base = if crate::bucket::env("STRATA_S3_VIRTUAL_HOST_STYLE").is_some() {
                    let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", &endpoint));
                    format!("{scheme}://{bucket}.{}", host.trim_end_matches('/'))
                } else {
                    format!("{}/{bucket}", endpoint.trim_end_matches('/'))
                };
                let credentials = match (&access.key_id, &access.secret) {
                    (Some(id), Some(secret)) => {
                        let mut keys = reqsign_aws_v4::StaticCredentialProvider::new(id, secret);
                        if let Some(token) = &access.session_token {
                            keys = keys.with_session_token(token);
                        }
                        ProvideCredentialChain::new().push(keys)
                    }
                    _ => ProvideCredentialChain::new()
                        .push(reqsign_aws_v4::DefaultCredentialProvider::new()),
                };
                let signer = Signer::new(
                    context,
                    credentials,
                    reqsign_aws_v4::RequestSigner::new("s3", region),
                );
                (object_base(base, prefix), ProviderSigner::S3(signer))
            }
            Location::Azure { container, prefix } => {
                let endpoint = match (&access.endpoint, &access.key_id) {
                    (Some(endpoint), _) => endpoint.clone(),
                    (None, Some(account)) => format!("https://{account}.blob.core.windows.net"),
                    (None, None) => {
                        return Err(Error::InvalidInput(format!(
                            "{location}: no storage account (set AZURE_STORAGE_ACCOUNT or AZURE_STORAGE_ENDPOINT)"
                        )))
                    }
                };
                let base = format!("{}/{container}", endpoint.trim_end_matches('/'));
                let mut credentials = ProvideCredentialChain::new()
                    .push(reqsign_azure_storage::DefaultCredentialProvider::new());
                if let (Some(account), Some(key)) = (&access.key_id, &access.secret) {
                    credentials = credentials.push_front(
                        reqsign_azure_storage::StaticCredentialProvider::new_shared_key(
                            account, key,
                        ),
                    );
                }
                let signer = Signer::new(
                    context,
                    credentials,
                    reqsign_azure_storage::RequestSigner::new(),
                );
                (object_base(base, prefix), ProviderSigner::Azure(signer))
            }
            Location::Gcs { .. } | Location::Directory(_) => return Ok(None),
        };
        Ok(Some(ArchiveClient {
            location: location.clone(),
            base,
            signer,
            transport: HttpTransporter::default(),
            retry,
        }))
    }

    /// Whether `name` can be read now, from its properties.
    pub fn availability(&self, name: &str) -> Result<Availability> {
        let response = self.send(
            name,
            Method::HEAD,
            "",
            &[],
            Vec::new(),
            "reading properties of",
        )?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(not_found(&self.location.to_string(), name));
        }
        let status = response.status();
        if !status.is_success() {
            return Err(self.refused("reading properties of", name, status, &[]));
        }
        let headers = response.headers();
        Ok(match self.signer {
            ProviderSigner::S3(_) => s3_availability(headers),
            ProviderSigner::Azure(_) => azure_availability(headers),
        })
    }

    /// Asks the provider for a readable copy of archived `name`, kept for
    /// `days` days (S3; Azure rehydrates the object itself). A request
    /// already under way is not an error.
    pub fn request_restore(&self, name: &str, days: u32, priority: RestorePriority) -> Result<()> {
        let action = "requesting the restore of";
        let response = match self.signer {
            ProviderSigner::S3(_) => {
                let tier = match priority {
                    RestorePriority::Expedited if !self.is_deep_archive(name)? => "Expedited",
                    // Deep Archive has no expedited retrieval.
                    _ => "Standard",
                };
                let body = format!(
                    "<RestoreRequest xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                     <Days>{}</Days><GlacierJobParameters><Tier>{tier}</Tier>\
                     </GlacierJobParameters></RestoreRequest>",
                    days.max(1)
                );
                self.send(name, Method::POST, "restore", &[], body.into_bytes(), action)?
            }
            ProviderSigner::Azure(_) => {
                let priority = match priority {
                    RestorePriority::Standard => "Standard",
                    RestorePriority::Expedited => "High",
                };
                self.send(
                    name,
                    Method::PUT,
                    "comp=tier",
                    &[
                        ("x-ms-access-tier", "Hot"),
                        ("x-ms-rehydrate-priority", priority),
                    ],
                    Vec::new(),
                    action,
                )?
            }
        };
        match response.status() {
            status if status.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(not_found(&self.location.to_string(), name)),
            // S3's RestoreAlreadyInProgress; Azure's BlobBeingRehydrated.
            StatusCode::CONFLICT => Ok(()),
            status => Err(self.refused(action, name, status, &response.body().to_vec())),
        }
    }

    /// Whether S3 object `name` is in Deep Archive.
    fn is_deep_archive(&self, name: &str) -> Result<bool> {
        let response = self.send(name, Method::HEAD, "", &[], Vec::new(), "reading properties of")?;
        Ok(header(response.headers(), "x-amz-storage-class") == Some("DEEP_ARCHIVE"))
    }

    /// Moves `name` to `class` (Azure's Set Blob Tier; S3 objects get
    /// their class when they are written).
    pub fn set_tier(&self, name: &str, class: &StorageClass) -> Result<()> {
        if let ProviderSigner::S3(_) = self.signer {
            return Ok(());
        }
        let action = "setting the access tier of";
        let response = self.send(
            name,
            Method::PUT,
            "comp=tier",
            &[("x-ms-access-tier", class.as_str())],
            Vec::new(),
            action,
        )?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(self.refused(action, name, status, response.body().to_vec().as_slice()))
    }

    /// Sends one signed request for object `name`, retried on throttling,
    /// server errors and failures to connect.
    fn send(
        &self,
        name: &str,
        method: Method,
        query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        action: &'static str,
    ) -> Result<http::Response<Buffer>> {
        crate::validate_name(name)?;
        let mut url = format!("{}{}", self.base, encode_path(name));
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        let mut delay = self.retry.min_delay;
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = RUNTIME.block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, self.send_once(&url, &method, headers, &body))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))
            });
            let retry_because = match &outcome {
                Ok(response) => {
                    let status = response.status();
                    (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
                        .then(|| format!("the server answered {status}"))
                }
                Err(e) => Some(e.clone()),
            };
            // As many tries as the store's other requests: the first and
            // `retry.tries` more.
            let Some(cause) = retry_because.filter(|_| tries <= self.retry.tries) else {
                return outcome.map_err(|e| {
                    Error::io(
                        action,
                        format!("{}/{name}", self.location),
                        io::Error::other(format!("{e} (after {tries} tries)")),
                    )
                });
            };
            tracing::warn!(object = name, attempt = tries, "retrying a request: {action}: {cause}");
            std::thread::sleep(with_jitter(delay));
            delay = (delay * 2).min(self.retry.max_delay);
        }
    }

    async fn send_once(
        &self,
        url: &str,
        method: &Method,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::result::Result<http::Response<Buffer>, String> {
        let mut request = Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request = request.header(http::header::CONTENT_LENGTH, body.len());
        match self.signer {
            ProviderSigner::S3(_) => {
                request =
                    request.header("x-amz-content-sha256", reqsign_core::hash::hex_sha256(body));
            }
            ProviderSigner::Azure(_) => {
                request = request.header("x-ms-version", AZURE_API_VERSION);
            }
        }
        let request = request
            .body(Buffer::from(body.to_vec()))
            .map_err(|e| format!("building the request: {e}"))?;
        let (mut parts, body) = request.into_parts();
        let signed = match &self.signer {
            ProviderSigner::S3(signer) => signer.sign(&mut parts, None).await,
            ProviderSigner::Azure(signer) => signer.sign(&mut parts, None).await,
        };
        // The signer's error names the credential source, never a secret.
        signed.map_err(|e| format!("signing the request: {e}"))?;
        // A signature in the query (a SAS token) must not reach a message:
        // errors that quote the URL get it without its query.
        let signed_uri = parts.uri.to_string();
        self.transport
            .send(Request::from_parts(parts, body))
            .await
            .map_err(|e| {
                let mut text = format!("{}: {}", e.kind(), e.message());
                let mut cause = std::error::Error::source(&e);
                while let Some(next) = cause {
                    text = format!("{text} ({next})");
                    cause = next.source();
                }
                text.replace(&signed_uri, url.split('?').next().unwrap_or_default())
            })
    }

    fn refused(&self, action: &'static str, name: &str, status: StatusCode, body: &[u8]) -> Error {
        let code = error_code(body)
            .map(|code| format!(" {code}"))
            .unwrap_or_default();
        let kind = match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        Error::io(
            action,
            format!("{}/{name}", self.location),
            io::Error::new(kind, format!("the server answered {status}{code}")),
        )
    }
}

/// How long one request may wait for its answer before it is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `delay` scaled by a factor between 0.5 and 1.5, so that many clients
/// throttled at once do not retry in step.
fn with_jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    delay.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

/// `base` joined with the prefix, ending in `/`.
fn object_base(base: String, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{base}/")
    } else {
        format!("{base}/{}/", encode_path(prefix))
    }
}

/// Percent-encodes each segment of an object name, keeping the `/`s.
fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An S3 object's availability: an archive class (or an Intelligent-
/// Tiering archive tier) is readable only while a restored copy exists,
/// which `x-amz-restore` describes.
fn s3_availability(headers: &HeaderMap) -> Availability {
    let class = header(headers, "x-amz-storage-class").unwrap_or("STANDARD");
    let archived =
        S3_ARCHIVE_CLASSES.contains(&class) || header(headers, "x-amz-archive-status").is_some();
    if !archived {
        return Availability::Readable;
    }
    match header(headers, "x-amz-restore") {
        Some(restore) if restore.contains("ongoing-request=\"true\"") => Availability::Restoring,
        Some(restore) if restore.contains("ongoing-request=\"false\"") => Availability::Readable,
        _ => Availability::Archived,
    }
}

/// An Azure blob's availability: the Archive tier is offline, and
/// `x-ms-archive-status` says a rehydration is under way.
fn azure_availability(headers: &HeaderMap) -> Availability {
    if header(headers, "x-ms-access-tier") != Some(AZURE_ARCHIVE_TIER) {
        return Availability::Readable;
    }
    match header(headers, "x-ms-archive-status") {
        Some(status) if status.starts_with("rehydrate-pending") => Availability::Restoring,
        _ => Availability::Archived,
    }
}

/// The error code in a provider's XML error body (`<Code>…</Code>`).
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    let code = &text[start..end];
    code.chars()
        .all(|c| c.is_ascii_alphanumeric())
        .then(|| code.to_string())
}


#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn s3_archive_states_follow_class_and_restore_headers() {
        assert_eq!(s3_availability(&headers(&[])), Availability::Readable);
        assert_eq!(
            s3_availability(&headers(&[("x-amz-storage-class", "GLACIER_IR")])),
            Availability::Readable
        );
        assert_eq!(
            s3_availability(&headers(&[("x-amz-storage-class", "DEEP_ARCHIVE")])),
            Availability::Archived
        );
        assert_eq!(
            s3_availability(&headers(&[
                ("x-amz-storage-class", "GLACIER"),
                ("x-amz-restore", "ongoing-request=\"true\"")
            ])),
            Availability::Restoring
        );
        assert_eq!(
            s3_availability(&headers(&[
                ("x-amz-storage-class", "GLACIER"),
                (
                    "x-amz-restore",
                    "ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\""
                )
            ])),
            Availability::Readable
        );
        assert_eq!(
            s3_availability(&headers(&[
                ("x-amz-storage-class", "INTELLIGENT_TIERING"),
                ("x-amz-archive-status", "DEEP_ARCHIVE_ACCESS")
            ])),
            Availability::Archived
        );
    }

    #[test]
    fn azure_archive_states_follow_tier_and_archive_status() {
        assert_eq!(
            azure_availability(&headers(&[("x-ms-access-tier", "Hot")])),
            Availability::Readable
        );
        assert_eq!(
            azure_availability(&headers(&[("x-ms-access-tier", "Archive")])),
            Availability::Archived
        );
        assert_eq!(
            azure_availability(&headers(&[
                ("x-ms-access-tier", "Archive"),
                ("x-ms-archive-status", "rehydrate-pending-to-hot")
            ])),
            Availability::Restoring
        );
    }

    #[test]
    fn classes_are_checked_against_the_provider() {
        let s3 = Location::parse("s3://b/p").unwrap();
        let azure = Location::parse("azblob://c/p").unwrap();
        assert_eq!(
            StorageClass::parse(&s3, "glacier").unwrap().as_str(),
            "GLACIER"
        );
        assert!(StorageClass::parse(&s3, "DEEP_ARCHIVE")
            .unwrap()
            .is_archive());
        assert!(!StorageClass::parse(&s3, "STANDARD_IA")
            .unwrap()
            .is_archive());
        assert!(StorageClass::parse(&azure, "archive").unwrap().is_archive());
        let wrong = StorageClass::parse(&azure, "GLACIER")
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("Archive"), "{wrong}");
        assert!(StorageClass::parse(&Location::parse("/tmp/x").unwrap(), "GLACIER").is_err());
    }

    #[test]
    fn names_are_encoded_per_segment_and_error_codes_read_safely() {
        assert_eq!(encode_path("packs/ab/ab c.pack"), "packs/ab/ab%20c.pack");
        assert_eq!(
            error_code(b"<Error><Code>InvalidObjectState</Code></Error>").as_deref(),
            Some("InvalidObjectState")
        );
        assert_eq!(error_code(b"<Code><script></Code>"), None);
        assert_eq!(error_code(b"\xff"), None);
    }
}
