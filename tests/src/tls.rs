//! Certificates for tests, made with `openssl` (as `scripts/control-plane.sh` makes the API
//! server's): a CA, and a serving certificate it signs for the given names and IPs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a certificate it signed, as PEM files in a directory.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// `ca.crt`.
    pub ca: PathBuf,
    /// `tls.crt`.
    pub cert: PathBuf,
    /// `tls.key`.
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCerts {
    /// Makes a CA and a certificate for `dns` names and `ips` in `dir`.
    pub fn make(dir: &Path, dns: &[&str], ips: &[&str]) -> TestCerts {
        std::fs::create_dir_all(dir).unwrap();
        let san: Vec<String> = dns
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(ips.iter().map(|i| format!("IP:{i}")))
            .collect();
        std::fs::write(
            dir.join("ext.cnf"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                san.join(",")
            ),
        )
        .unwrap();
        let subj = "/CN=fleetmirror-test-ca";
        openssl(
            dir,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", subj,
                "-keyout", "ca.key", "-out", "ca.crt",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=fleetmirror-aggregator",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "tls.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                "tls.crt",
            ],
        );
        TestCerts {
            ca: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }
}
