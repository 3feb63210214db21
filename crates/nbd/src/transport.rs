//! The byte streams under a connection: a TCP or unix socket, with TLS
//! over it for `nbds` URIs (NBD_OPT_STARTTLS, then rustls).
//!
//! The reply thread reads and the callers write at the same time. A
//! plain socket is simply cloned; a TLS session is one state machine, so
//! both sides go through it under a lock, and only the socket's blocking
//! read happens outside it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConnection;

use crate::error::{Error, Result};
use crate::uri::{Address, NbdUri};

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }

    pub fn set_write_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_write_timeout(Some(timeout)),
        }
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A TLS session shared by the reply thread and the callers. Records are
/// made under the session's lock and queued, in order, for a writer
/// thread: no one holds the lock while the socket blocks, so a server
/// slow to read never stops replies from being read.
pub(crate) struct TlsSession {
    connection: Mutex<ClientConnection>,
    records: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl TlsSession {
    pub fn new(connection: ClientConnection, mut socket: Stream) -> std::io::Result<Arc<TlsSession>> {
        let (records, queue) = mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new().name("nbd-tls-writer".into()).spawn(move || {
            for bytes in queue {
                if socket.write_all(&bytes).is_err() {
                    // The reply thread then sees the connection end.
                    socket.shutdown();
                    return;
                }
            }
        })?;
        Ok(Arc::new(TlsSession {
            connection: Mutex::new(connection),
            records: Mutex::new(Some(records)),
            writer: Mutex::new(Some(writer)),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClientConnection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues whatever TLS records the session has ready (called with
    /// its lock held, which keeps them in order).
    fn flush_records(&self, connection: &mut ClientConnection) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        while connection.wants_write() {
            connection.write_tls(&mut bytes)?;
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        match records.as_ref().map(|r| r.send(bytes)) {
            Some(Ok(())) => Ok(()),
            _ => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Sends TLS's close_notify, then waits for the writer thread to
    /// write what is queued and end.
    pub fn close(&self) {
        {
            let mut connection = self.lock();
            connection.send_close_notify();
            let _ = self.flush_records(&mut connection);
            self.records.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

/// The callers' side of a connection.
pub(crate) enum Writer {
    Plain(Stream),
    Tls(Arc<TlsSession>),
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Plain(s) => s.write_all(buf),
            Writer::Tls(session) => {
                // The session takes a bounded amount of plaintext at a
                // time: encrypt and send what it took, then go on.
                let mut connection = session.lock();
                let mut rest = buf;
                let mut stalled = false;
                while !rest.is_empty() {
                    let taken = connection.writer().write(rest)?;
                    session.flush_records(&mut connection)?;
                    if taken == 0 && std::mem::replace(&mut stalled, true) {
                        // No room even with every record sent.
                        return Err(std::io::ErrorKind::WriteZero.into());
                    }
                    stalled &= taken == 0;
                    rest = &rest[taken..];
                }
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reply thread's side of a connection.
pub(crate) enum Reader {
    Plain(Stream),
    Tls(TlsReader),
}

/// Reads TLS records from the socket and hands out their plaintext. The
/// session takes records only as fast as its plaintext is read (its
/// buffer is bounded), so records read ahead wait in `records`.
pub(crate) struct TlsReader {
    session: Arc<TlsSession>,
    socket: Stream,
    records: Vec<u8>,
    /// `records[fed..filled]` are read from the socket, not yet given to
    /// the session.
    fed: usize,
    filled: usize,
}

impl TlsReader {
    pub fn new(session: Arc<TlsSession>, socket: Stream) -> TlsReader {
        TlsReader { session, socket, records: vec![0u8; 64 << 10], fed: 0, filled: 0 }
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let tls = match self {
            Reader::Plain(s) => return s.read(buf),
            Reader::Tls(tls) => tls,
        };
        loop {
            {
                let mut connection = tls.session.lock();
                match connection.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if tls.fed < tls.filled {
                    let mut unfed = &tls.records[tls.fed..tls.filled];
                    tls.fed += connection.read_tls(&mut unfed)?;
                    connection
                        .process_new_packets()
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                    tls.session.flush_records(&mut connection)?;
                    continue;
                }
            }
            // Nothing buffered: wait for records without holding the lock.
            let n = tls.socket.read(&mut tls.records)?;
            if n == 0 {
                return Ok(0);
            }
            (tls.fed, tls.filled) = (0, n);
        }
    }
}

/// The TLS client configuration of an `nbds` URI: trust in
/// `tls-certificates=DIR/ca-cert.pem` (else the system's authorities),
/// and the client identity `client-cert.pem` + `client-key.pem` there when
/// present (qemu's and libnbd's layout; a server started with
/// `verify-peer=on` asks for it).
pub(crate) fn client_config(uri: &NbdUri) -> Result<Arc<rustls::ClientConfig>> {
    let bad = |what: &Path, e: &dyn std::fmt::Display| {
        Error::InvalidInput(format!("NBD URI {uri}: TLS: {}: {e}", what.display()))
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidInput(format!("NBD URI {uri}: TLS: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let authorities = match &uri.tls_certificates {
        Some(dir) => dir.join("ca-cert.pem"),
        None => system.to_path_buf(),
    };
    for cert in CertificateDer::pem_file_iter(&authorities).map_err(|e| bad(&authorities, &e))? {
        let cert = cert.map_err(|e| bad(&authorities, &e))?;
        roots.add(cert).map_err(|e| bad(&authorities, &e))?;
    }
    let builder = builder.with_root_certificates(roots);
    let identity = match &uri.tls_certificates {
        None => None,
        Some(dir) => {
            let (cert, key) = (dir.join("client-cert.pem"), dir.join("client-key.pem"));
            match (cert.exists(), key.exists()) {
                (true, true) => Some((cert, key)),
                (false, false) => None,
                (true, false) => return Err(bad(&key, &"missing, while client-cert.pem is there")),
                (false, true) => return Err(bad(&cert, &"missing, while client-key.pem is there")),
            }
        }
    };
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)
                .map_err(|e| bad(&cert, &e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(&cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| bad(&key, &e))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| bad(&cert, &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry: the URI's host, or
/// `tls-hostname=` (for a unix socket, `localhost` unless given).
pub(crate) fn server_name(uri: &NbdUri) -> Result<ServerName<'static>> {
    let name = match (&uri.tls_hostname, &uri.address) {
        (Some(name), _) => name.clone(),
        (None, Address::Tcp { host, .. }) => host.clone(),
        (None, Address::Unix(_)) => "localhost".into(),
    };
    ServerName::try_from(name.clone())
        .map_err(|e| Error::InvalidInput(format!("NBD URI {uri}: TLS server name {name:?}: {e}")))
}
