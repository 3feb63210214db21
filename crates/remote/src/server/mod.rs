//! `strata server`: serves repositories to remote data movers, restores
//! and mounts over HTTPS (HTTP/2 over rustls).
//!
//! ```text
//!  TCP ─▶ TLS (rustls) ─▶ HTTP/2 (hyper) ─▶ routes (axum) ─▶ auth ─▶ spawn_blocking ─▶ Repository<Exclusive>
//!                                                             └─ sessions and claims (Arbiter)
//! ```
//! Each repository is opened once, as its writer, without its key: the
//! server stores and indexes what movers seal, and hands sealed objects
//! to clients that hold the key. The reaper ends sessions whose movers
//! went silent; SIGTERM stops accepting, lets running requests finish,
//! and closes every repository cleanly.

pub mod auth;
pub mod error;
pub mod admin;
pub mod maintenance;
pub mod tiers;
pub mod routes;
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt as _;

use strata_engine::error::{Error, Result};
use strata_engine::repository::{OpenOptions, Repository};

use crate::tls::ServerIdentity;
use routes::Peer;
use state::{Arbiter, Served, ServerState, SourceBook};

/// How to run a server.
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The server's own state: tokens, certificate, source books.
    pub state: PathBuf,
    /// Repositories by the name clients use, and where they are.
    pub repositories: Vec<(String, PathBuf)>,
    /// The operator's certificate and key; self-signed in the state
    /// directory when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_sessions: usize,
    pub session_timeout: Duration,
    /// Most bytes per second the server takes in pack uploads, all
    /// sessions together.
    pub limit_upload: Option<u64>,
    /// How each repository is opened (state directories, bucket access);
    /// the key is always withheld.
    pub open: OpenOptions,
}

/// Pack bodies held in memory at once.
const PACK_PERMITS: usize = 4;
/// A pack may exceed the target size by its last chunk and its trailer.
const PACK_EXTRA_BYTES: u64 = 80 << 20;

/// Opens the repositories and the listener, then calls `on_listening`
/// with the bound address and the certificate's fingerprint, and serves
/// until `stop` resolves (SIGTERM or Ctrl-C from the command line).
pub fn serve(
    config: ServerConfig,
    on_listening: impl FnOnce(SocketAddr, &str),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let identity = match &config.tls {
        Some((cert, key)) => ServerIdentity::from_files(cert, key)?,
        None => ServerIdentity::self_signed(&config.state.join("tls"), &certificate_names(&config.listen))?,
    };
    let fingerprint = identity.fingerprint();
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config()?));
    let state = Arc::new(open_repositories(&config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()
        .map_err(|e| Error::io("starting the server's runtime", &config.state, e))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .map_err(|e| Error::io("listening on", Path::new(&config.listen.to_string()), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("listening on", Path::new(&config.listen.to_string()), e))?;
    on_listening(bound, &fingerprint);
    let result = runtime.block_on(accept_loop(listener, tls, Arc::clone(&state), stop));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let open = state.live_sessions();
    if open > 0 {
        tracing::info!(sessions = open, "stopping with open backup sessions: they are abandoned, nothing of them is committed, and prune reclaims what they stored");
    }
    // Dropping the state closes every repository and releases its lock.
    drop(state);
    result
}

/// The names a self-signed certificate is made for.
fn certificate_names(listen: &SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    if let Ok(host) = nix::unistd::gethostname() {
        if let Some(host) = host.to_str() {
            names.push(host.to_string());
        }
    }
    names.sort();
    names.dedup();
    names
}

fn open_repositories(config: &ServerConfig) -> Result<ServerState> {
    let mut repos = HashMap::new();
    let mut options = config.open.clone();
    options.key_withheld = true;
    for (name, path) in &config.repositories {
        if !crate::protocol::is_repository_name(name) {
            return Err(Error::InvalidInput(format!(
                "repository name {name:?}: use letters, digits, '-', '_' or '.'"
            )));
        }
        let repo = Repository::open_exclusive_with(path, "strata server", &options)?;
        let sources = SourceBook::open(&config.state.join("repos").join(name))?;
        tracing::info!(repository = %name, location = %repo.location(), encrypted = repo.protection().is_encrypted(), "serving");
        let served = Served {
            name: name.clone(),
            repo,
            arbiter: Mutex::new(Arbiter::default()),
            sources,
        };
        if repos.insert(name.clone(), Arc::new(served)).is_some() {
            return Err(Error::InvalidInput(format!("repository name {name:?} given twice")));
        }
    }
    if repos.is_empty() {
        return Err(Error::InvalidInput("serve at least one repository: --repo NAME=PATH".into()));
    }
    Ok(ServerState {
        repos,
        tokens: crate::tokens::Tokens::in_state(&config.state),
        failures: Default::default(),
        max_sessions: config.max_sessions.max(1),
        session_timeout: config.session_timeout,
        pack_permits: tokio::sync::Semaphore::new(PACK_PERMITS),
        max_pack_bytes_extra: PACK_EXTRA_BYTES,
        upload_limit: config.limit_upload.map(crate::throttle::Throttle::new),
    })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<ServerState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let router = routes::router(Arc::clone(&state));
    let reaper = tokio::spawn(reap(Arc::clone(&state)));
    let connections = Arc::new(AtomicUsize::new(0));
    let (closing, _) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (tls, router, connections) = (tls.clone(), router.clone(), Arc::clone(&connections));
        let mut closing = closing.subscribe();
        connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(Duration::from_secs(30), tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(Peer(peer));
                        router.clone().oneshot(request)
                    });
                    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder
                        .http2()
                        .initial_stream_window_size(8 << 20)
                        .initial_connection_window_size(32 << 20)
                        .max_frame_size(1 << 20)
                        .max_concurrent_streams(256);
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        result = connection.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        }
                        _ = closing.changed() => {
                            // Finish the requests in flight, refuse new ones.
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
            connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
    tracing::info!("stopping: no new connections; finishing requests in flight");
    let _ = closing.send(true);
    reaper.abort();
    for _ in 0..300 {
        if connections.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Ends sessions whose movers went silent, so their claims stop holding
/// back other sessions. What they stored stays indexed but unreferenced,
/// for prune.
async fn reap(state: Arc<ServerState>) {
    let period = (state.session_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::time::sleep(period).await;
        for served in state.repos.values() {
            let (expired, maintenance) = {
                let mut arbiter = served.arbiter.lock().expect("arbiter lock");
                (arbiter.expire(state.session_timeout), arbiter.expire_maintenance(state.session_timeout))
            };
            if let Some(id) = maintenance {
                tracing::warn!(maintenance = %id, repository = %served.name, "maintenance lease timed out; backups may open again");
            }
            for (id, session) in expired {
                tracing::warn!(session = %id, token = %session.token, host = %session.host, repository = %served.name, "backup session timed out; its claims are released and nothing of it is committed");
            }
        }
    }
}

/// Sleeps on the server's runtime (for a caller's stop future, which has
/// no runtime of its own to name).
pub async fn pause(duration: Duration) {
    tokio::time::sleep(duration).await;
}
