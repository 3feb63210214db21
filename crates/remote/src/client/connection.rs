//! One client's connection to a server: HTTPS with the pinned or
//! authority-checked certificate, the token on every request, retries of
//! what may succeed on a second try (a dropped connection, a restarting
//! server, 5xx, 429/503 with their Retry-After), and the server's errors
//! turned into the engine's, naming the server and the cause.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Body, Client, Response};
use reqwest::{Method, StatusCode};

use strata_engine::error::{Error, Result};

use crate::protocol::{ErrorBody, RemoteLocation, PROTOCOL_HEADER, PROTOCOL_VERSION};
use crate::throttle::Throttle;
use crate::tls::Trust;

/// How to reach a server.
#[derive(Clone)]
pub struct ClientOptions {
    /// `NAME:SECRET`, as `strata server token add` printed it.
    pub token: String,
    pub trust: Trust,
    /// Tries of each request; a dead server fails a command after them.
    pub tries: u32,
    /// Most bytes per second this client uploads (all its packs).
    pub limit_upload: Option<u64>,
}

pub const DEFAULT_TRIES: u32 = 10;

pub struct Connection {
    client: Client,
    pub location: RemoteLocation,
    token: String,
    tries: u32,
    throttle: Option<Arc<Throttle>>,
    /// Bytes of request bodies sent (packs, ids, manifests), retries
    /// included: what a backup cost the network.
    pub bytes_sent: AtomicU64,
}

/// What a request sends.
#[derive(Clone)]
pub enum Payload<'a> {
    None,
    Bytes(&'a [u8]),
    Json(Vec<u8>),
    /// Sent at the upload limit, if one is set.
    Pack(&'a Arc<Vec<u8>>),
}

/// A server's refusal or failure, with its code, for callers that act on
/// particular ones (an unknown session is reopened).
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl Connection {
    pub fn open(location: RemoteLocation, options: &ClientOptions) -> Result<Connection> {
        let tls = crate::tls::client_config(&options.trust)?;
        let client = Client::builder()
            .tls_backend_preconfigured(tls)
            .http2_initial_stream_window_size(8 << 20)
            .http2_initial_connection_window_size(32 << 20)
            // Chunk answers arrive in frames of up to 1 MiB instead of
            // 16 KiB: each frame is one hand-over from the connection's
            // thread to the reader's, and at 16 KiB those dominated the
            // cost of a restore.
            .http2_max_frame_size(1 << 20)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| Error::InvalidInput(format!("setting up the connection to {location}: {e}")))?;
        Ok(Connection {
            client,
            location,
            token: options.token.clone(),
            tries: options.tries.max(1),
            throttle: options.limit_upload.map(|rate| Arc::new(Throttle::new(rate))),
            bytes_sent: AtomicU64::new(0),
        })
    }

    /// Sends a request to `path` below the repository, retrying what may
    /// pass later; returns the body of a success, or the server's
    /// refusal.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        payload: Payload<'_>,
        headers: &[(&str, String)],
    ) -> Result<std::result::Result<Vec<u8>, Refusal>> {
        let url = self.location.url(path);
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.send_once(&method, &url, &payload, headers);
            let (retry, wait, why) = match outcome {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let body = read_body(response, &url)?;
                        return Ok(Ok(body));
                    }
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let refusal = refusal(status, response);
                    let transient = status.is_server_error() && status != StatusCode::INSUFFICIENT_STORAGE
                        || status == StatusCode::TOO_MANY_REQUESTS;
                    if !transient {
                        return Ok(Err(refusal));
                    }
                    let why = format!("{} {}: {}", status.as_u16(), refusal.code, refusal.message);
                    if attempt >= self.tries {
                        return Ok(Err(refusal));
                    }
                    (true, retry_after, why)
                }
                Err(e) => {
                    if is_certificate_error(&e) {
                        return Err(Error::InvalidInput(format!("connecting to {}: {}", self.location, chain(&e))));
                    }
                    (true, None, chain(&e))
                }
            };
            if !retry || attempt >= self.tries {
                return Err(Error::Interrupted(format!(
                    "the server {} did not answer {method} {path} after {attempt} tries: {why}",
                    self.location
                )));
            }
            let wait = wait.unwrap_or(delay).min(Duration::from_secs(30));
            tracing::warn!(server = %self.location, %method, path, attempt, error = %why, "retrying in {:.1} s", wait.as_secs_f64());
            std::thread::sleep(jitter(wait));
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn send_once(
        &self,
        method: &Method,
        url: &str,
        payload: &Payload<'_>,
        headers: &[(&str, String)],
    ) -> reqwest::Result<Response> {
        let mut request = self
            .client
            .request(method.clone(), url)
            .bearer_auth(&self.token)
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let sent = match payload {
            Payload::None => 0,
            Payload::Bytes(bytes) => {
                request = request.header("content-type", "application/octet-stream").body(bytes.to_vec());
                bytes.len()
            }
            Payload::Json(bytes) => {
                request = request.header("content-type", "application/json").body(bytes.clone());
                bytes.len()
            }
            Payload::Pack(bytes) => {
                let len = bytes.len() as u64;
                let body = match &self.throttle {
                    Some(throttle) => Body::sized(
                        Throttled {
                            bytes: Arc::clone(bytes),
                            at: 0,
                            throttle: Arc::clone(throttle),
                        },
                        len,
                    ),
                    None => Body::from(bytes.as_ref().clone()),
                };
                request = request.header("content-type", "application/octet-stream").body(body);
                bytes.len()
            }
        };
        let response = request.send();
        // Counted once the server answered: a refused connection sent
        // nothing.
        if response.is_ok() {
            self.bytes_sent.fetch_add(sent as u64, Ordering::Relaxed);
        }
        response
    }

    /// [`Self::call`], with a refusal turned into an error.
    pub fn expect(&self, method: Method, path: &str, payload: Payload<'_>, headers: &[(&str, String)]) -> Result<Vec<u8>> {
        self.call(method, path, payload, headers)?
            .map_err(|r| self.refused(r))
    }

    /// A refusal as an error that names the server.
    pub fn refused(&self, refusal: Refusal) -> Error {
        let text = format!("the server {} refused: {} ({})", self.location, refusal.message, refusal.code);
        match refusal.status {
            StatusCode::INSUFFICIENT_STORAGE | StatusCode::INTERNAL_SERVER_ERROR | StatusCode::SERVICE_UNAVAILABLE => {
                Error::Interrupted(text)
            }
            _ => Error::InvalidInput(text),
        }
    }
}

fn read_body(mut response: Response, url: &str) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    response
        .read_to_end(&mut body)
        .map_err(|e| Error::Interrupted(format!("reading the answer to {url}: {e}")))?;
    Ok(body)
}

fn refusal(status: StatusCode, response: Response) -> Refusal {
    let mut body = Vec::new();
    let _ = response.take(64 << 10).read_to_end(&mut body);
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(parsed) => Refusal {
            status,
            code: parsed.error.code,
            message: parsed.error.message,
        },
        Err(_) => Refusal {
            status,
            code: "http".into(),
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
        },
    }
}

/// The error and its causes on one line: reqwest's own message says only
/// "error sending request".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A certificate that does not match is refused at once: retrying cannot
/// change it.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let text = chain(e);
    text.contains("certificate") || text.contains("fingerprint")
}

fn jitter(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    wait + wait / 4 * (nanos % 100) / 100
}

/// A pack's bytes read out at the throttle's pace.
struct Throttled {
    bytes: Arc<Vec<u8>>,
    at: usize,
    throttle: Arc<Throttle>,
}

impl Read for Throttled {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.bytes.len() - self.at).min(64 << 10);
        if n == 0 {
            return Ok(0);
        }
        let wait = self.throttle.reserve(n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
