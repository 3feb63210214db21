//! NBD URIs, as libnbd and qemu take them (the NBD project's URI
//! specification): `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`,
//! and the same with `nbds` for TLS.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The NBD port of IANA, used when a TCP URI names none.
pub const DEFAULT_PORT: u16 = 10809;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub address: Address,
    /// The export name (the URI's path without its leading `/`, decoded).
    pub export: String,
    /// `nbds`: the connection must be TLS, or it fails.
    pub tls: bool,
    /// `tls-certificates=DIR`: `ca-cert.pem` to trust, and the client's
    /// `client-cert.pem` and `client-key.pem` when present (qemu's and
    /// libnbd's layout).
    pub tls_certificates: Option<PathBuf>,
    /// `tls-hostname=NAME`: the name the server's certificate must carry
    /// (default: the host, or `localhost` for a unix socket).
    pub tls_hostname: Option<String>,
    text: String,
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl NbdUri {
    pub fn parse(text: &str) -> Result<NbdUri> {
        let bad = |why: &str| Error::InvalidInput(format!("NBD URI {text:?}: {why}"));
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH"))?;
        let (tls, unix) = match scheme {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            "nbd+vsock" | "nbds+vsock" => return Err(bad("vsock transports are not supported")),
            _ => return Err(bad(&format!("unknown scheme {scheme:?} (nbd, nbds, nbd+unix or nbds+unix)"))),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains('#') {
            return Err(bad("a fragment (#…) is not part of an NBD URI"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let export = decode(path.strip_prefix('/').unwrap_or(path)).map_err(|e| bad(&e))?;
        if export.len() > 4096 {
            return Err(bad("the export name is longer than NBD's 4096 bytes"));
        }
        let mut socket = None;
        let mut tls_certificates = None;
        let mut tls_hostname = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value).map_err(|e| bad(&e))?;
            match key {
                "socket" if unix => socket = Some(PathBuf::from(value)),
                "socket" => return Err(bad("socket= belongs to nbd+unix:// URIs")),
                "tls-certificates" if tls => tls_certificates = Some(PathBuf::from(value)),
                "tls-certificates" => return Err(bad("tls-certificates= needs an nbds URI")),
                "tls-hostname" if tls => tls_hostname = Some(value),
                "tls-hostname" => return Err(bad("tls-hostname= needs an nbds URI")),
                _ => {
                    return Err(bad(&format!(
                        "query parameter {key:?} is not supported (socket, tls-certificates, tls-hostname)"
                    )))
                }
            }
        }
        let address = if unix {
            if !authority.is_empty() {
                return Err(bad("a unix-socket URI has no host: write nbd+unix:///EXPORT?socket=PATH"));
            }
            Address::Unix(socket.ok_or_else(|| bad("missing ?socket=PATH"))?)
        } else {
            let (host, port) = host_and_port(authority).map_err(|e| bad(&e))?;
            Address::Tcp { host, port }
        };
        Ok(NbdUri {
            address,
            export,
            tls,
            tls_certificates,
            tls_hostname,
            text: text.to_string(),
        })
    }
}

fn host_and_port(authority: &str) -> std::result::Result<(String, u16), String> {
    if authority.contains('@') {
        return Err("user names in NBD URIs are not supported".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err("an IPv6 address must be in brackets: nbd://[::1]:10809/EXPORT".into())
            }
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| format!("port {p:?} is not a number from 0 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

/// Percent-decoding, into UTF-8 (NBD's strings are UTF-8).
fn decode(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            if hex == 0 {
                return Err("%00: NBD strings hold no NUL".into());
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a percent escape does not decode to UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_of_every_transport_parse() {
        let u = NbdUri::parse("nbd://example.org:10900/disk%201").unwrap();
        assert_eq!(u.address, Address::Tcp { host: "example.org".into(), port: 10900 });
        assert_eq!(u.export, "disk 1");
        assert!(!u.tls);
        let u = NbdUri::parse("nbd://[::1]/").unwrap();
        assert_eq!(u.address, Address::Tcp { host: "::1".into(), port: DEFAULT_PORT });
        assert_eq!(u.export, "");
        let u = NbdUri::parse("nbds+unix:///sda?socket=/run/x%20y.sock&tls-certificates=/etc/pki").unwrap();
        assert_eq!(u.address, Address::Unix("/run/x y.sock".into()));
        assert_eq!(u.export, "sda");
        assert!(u.tls);
        assert_eq!(u.tls_certificates, Some("/etc/pki".into()));
        let u = NbdUri::parse("nbds://10.0.0.5/vda?tls-hostname=host.example").unwrap();
        assert_eq!(u.tls_hostname.as_deref(), Some("host.example"));
    }

    #[test]
    fn malformed_uris_are_refused_with_the_reason() {
        for (uri, why) in [
            ("/dev/nbd0", "expected"),
            ("http://x/y", "unknown scheme"),
            ("nbd+unix:///x", "missing ?socket"),
            ("nbd+unix://host/x?socket=/s", "no host"),
            ("nbd://h:99999/x", "port"),
            ("nbd://h/x?socket=/s", "socket= belongs"),
            ("nbd://h/x?tls-certificates=/d", "needs an nbds"),
            ("nbd://h/x?tls-psk-file=/k", "not supported"),
            ("nbd://h/x?tls-hostname=a", "needs an nbds"),
            ("nbd://h/%zz", "percent"),
            ("nbd://h/%+a", "percent"),
            ("nbd://h/a%00", "NUL"),
            ("nbd://::1/x", "brackets"),
            ("nbd://h/%ff", "UTF-8"),
            ("nbd+vsock://1:2/x", "vsock"),
        ] {
            let e = NbdUri::parse(uri).unwrap_err().to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
    }
}
