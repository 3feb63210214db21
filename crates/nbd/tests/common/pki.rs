//! Certificates for TLS tests, made by openssl: shared by the NBD
//! client's tests and the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for `localhost` and a client certificate,
/// by openssl, in qemu's layout: `server/` for qemu-nbd, `client/` for
/// the client (and `stranger/`, trusting another CA).
pub fn pki(dir: &Path) -> PathBuf {
    let root = dir.join("pki");
    for sub in ["server", "client", "stranger", "ca", "other"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let p = |rel: &str| root.join(rel).to_str().unwrap().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for (ca, cn) in [("ca", "Test CA"), ("other", "Other CA")] {
        let mut args = vec!["req", "-x509", "-days", "2", "-subj"];
        let subject = format!("/CN={cn}");
        let (key, cert) = (p(&format!("{ca}/key.pem")), p(&format!("{ca}/cert.pem")));
        args.extend([subject.as_str()]);
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &cert]);
        run("openssl", &args);
    }
    for (who, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let ext = root.join(format!("{who}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        let (key, csr, cert) = (p(&format!("{who}/{who}-key.pem")), p(&format!("{who}.csr")), p(&format!("{who}/{who}-cert.pem")));
        let mut args = vec!["req", "-subj", "/CN=localhost"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        run("openssl", &args);
        let (ca_cert, ca_key) = (p("ca/cert.pem"), p("ca/key.pem"));
        run(
            "openssl",
            &["x509", "-req", "-days", "2", "-in", &csr, "-CA", &ca_cert, "-CAkey", &ca_key, "-CAcreateserial", "-out", &cert, "-extfile", ext.to_str().unwrap()],
        );
        std::fs::copy(root.join("ca/cert.pem"), root.join(who).join("ca-cert.pem")).unwrap();
    }
    std::fs::copy(root.join("other/cert.pem"), root.join("stranger/ca-cert.pem")).unwrap();
    root
}

