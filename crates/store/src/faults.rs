//! Faults injected between a bucket store and its provider: an HTTP
//! transport under OpenDAL's retry layer that answers some requests
//! itself, the way a busy provider throttles (`503 SlowDown`) or a failing
//! one errs (`500 InternalError`), without sending them on. With it, tests
//! against a real server show that every kind of request is retried, and
//! that a provider that never recovers fails within a bounded time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opendal::{Buffer, HttpBody, HttpTransport, HttpTransporter};

/// Which requests are answered with an error instead of being sent.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Every `every`-th request (1: all of them).
    pub every: u64,
    /// The HTTP status answered: 503 (throttling) or 500.
    pub status: u16,
    /// How many requests were answered so far.
    pub injected: Arc<AtomicU64>,
}

impl Faults {
    pub fn every(every: u64, status: u16) -> Self {
        Faults {
            every: every.max(1),
            status,
            injected: Arc::default(),
        }
    }

    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }
}

/// The transport that injects [`Faults`] in front of the default one.
pub(crate) struct FaultyTransport {
    inner: HttpTransporter,
    faults: Faults,
    requests: AtomicU64,
}

impl FaultyTransport {
    pub fn new(faults: Faults) -> Self {
        FaultyTransport {
            inner: HttpTransporter::default(),
            faults,
            requests: AtomicU64::new(0),
        }
    }

    fn error_response(&self) -> http::Response<HttpBody> {
        let code = if self.faults.status == 503 {
            "SlowDown"
        } else {
            "InternalError"
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <Error><Code>{code}</Code><Message>injected by a test</Message></Error>"
        );
        let len = body.len() as u64;
        let stream = futures::stream::iter([Ok(Buffer::from(body.into_bytes()))]);
        http::Response::builder()
            .status(self.faults.status)
            .header("content-type", "application/xml")
            .header("content-length", len)
            .body(HttpBody::new(stream, Some(len)))
            .expect("a well-formed response")
    }
}

impl HttpTransport for FaultyTransport {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if n.is_multiple_of(self.faults.every) {
            self.faults.injected.fetch_add(1, Ordering::SeqCst);
            return Ok(self.error_response());
        }
        self.inner.fetch(req).await
    }
}
