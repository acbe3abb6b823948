//! TLS for a test cluster: certificates made with the server's own library
//! (`kvs_server::certs`, as `kvs-server certs` makes them) in the cluster's directory, the
//! server flags that use them, and client options that trust them.
//!
//! ```text
//! <root>/tls/ca.pem, ca-key.pem                 the cluster's CA
//! <root>/tls/node-N.pem, node-N-key.pem         node N (client and peer port; SAN
//!                                               urn:kvs:member:N, 127.0.0.1, localhost, ::1)
//! <root>/tls/client-NAME.pem, client-NAME-key.pem   clients (CN = NAME), `root` first
//! ```
//!
//! The CA stays in memory ([`TlsPki::authority`]), so a test can issue more certificates
//! that the cluster trusts: expired, for another member id, for another client.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kvs_client::TlsOptions;
use kvs_server::certs::{Authority, CertPaths, Issued, LeafSpec, Validity};

/// The client certificate the cluster's own clients present.
pub const TLS_CLIENT: &str = "root";

/// Node certificates made beyond the first nodes, for nodes added later.
pub const TLS_SPARE_NODES: usize = 4;

/// How long the certificates of a test cluster are valid.
const TLS_DAYS: u32 = 30;

/// A test cluster's CA, in memory, and the files it wrote.
#[derive(Debug)]
pub struct TlsPki {
    authority: Authority,
    files: TlsFiles,
}

impl TlsPki {
    /// Makes a new CA and, in `dir`, certificates for nodes `1..=nodes` and for each of
    /// `clients`, as `kvs-server certs` does.
    pub fn generate(dir: &Path, nodes: usize, clients: &[&str]) -> anyhow::Result<TlsPki> {
        let validity = Validity::days_from_now(TLS_DAYS);
        let authority = Authority::new("kvs test CA", validity)?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let files = TlsFiles::at(dir);
        let pki = TlsPki { authority, files };
        pki.write(
            &pki.authority.issued(),
            &pki.files.ca(),
            &pki.files.ca_key(),
        )?;
        for id in 1..=nodes as u64 {
            pki.issue(&LeafSpec::node(id, &[], validity), &format!("node-{id}"))?;
        }
        for client in clients {
            pki.issue(
                &LeafSpec::client(client, validity),
                &format!("client-{client}"),
            )?;
        }
        Ok(pki)
    }

    /// The CA, to issue more certificates with.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Issues a certificate as `leaf` says into `<dir>/<stem>.pem` and `<stem>-key.pem`.
    pub fn issue(&self, leaf: &LeafSpec, stem: &str) -> anyhow::Result<CertPaths> {
        let issued = self.authority.issue(leaf)?;
        let dir = self.files.dir();
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        );
        self.write(&issued, &cert, &key)?;
        Ok(CertPaths { cert, key })
    }

    fn write(&self, issued: &Issued, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let paths = CertPaths {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        issued
            .write(&paths)
            .with_context(|| format!("cannot write {}", cert.display()))
    }
}

/// The certificate files of a directory written as `kvs-server certs` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// The files already in `dir`.
    pub fn at(dir: &Path) -> TlsFiles {
        TlsFiles {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA's private key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// Node `id`'s certificate.
    pub fn node_cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }

    /// Node `id`'s private key.
    pub fn node_key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}-key.pem"))
    }

    /// Client `name`'s certificate.
    pub fn client_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("client-{name}.pem"))
    }

    /// Client `name`'s private key.
    pub fn client_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("client-{name}-key.pem"))
    }

    /// Client options' TLS: trust the CA, present client `name`'s certificate.
    pub fn client_options(&self, name: &str) -> TlsOptions {
        TlsOptions::with_ca_file(self.ca())
            .identity_files(self.client_cert(name), self.client_key(name))
    }

    /// The `kvs-client` flags of the same: `--cacert`, `--cert`, `--key`.
    pub fn client_args(&self, name: &str) -> Vec<OsString> {
        vec![
            "--cacert".into(),
            self.ca().into(),
            "--cert".into(),
            self.client_cert(name).into(),
            "--key".into(),
            self.client_key(name).into(),
        ]
    }

    /// Node `id`'s server flags: TLS on the client port with client certificates required,
    /// and on the peer port (mutual TLS).
    pub fn node_args(&self, id: u64) -> Vec<OsString> {
        vec![
            "--cert-file".into(),
            self.node_cert(id).into(),
            "--key-file".into(),
            self.node_key(id).into(),
            "--trusted-ca-file".into(),
            self.ca().into(),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            self.node_cert(id).into(),
            "--peer-key-file".into(),
            self.node_key(id).into(),
            "--peer-trusted-ca-file".into(),
            self.ca().into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_written_and_the_client_options_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TlsPki::generate(&dir.path().join("tls"), 2, &[TLS_CLIENT]).unwrap();
        let files = pki.files();
        for path in [
            files.ca(),
            files.ca_key(),
            files.node_cert(2),
            files.node_key(2),
            files.client_cert(TLS_CLIENT),
            files.client_key(TLS_CLIENT),
        ] {
            assert!(path.is_file(), "{}", path.display());
        }
        assert!(!files.node_cert(3).exists());
        let options = kvs_client::ClientOptions {
            tls: Some(files.client_options(TLS_CLIENT)),
            ..kvs_client::ClientOptions::default()
        };
        kvs_client::Client::connect(["127.0.0.1:6001"], options).unwrap();
        let extra = pki
            .issue(
                &LeafSpec::client("alice", Validity::expired()),
                "client-alice",
            )
            .unwrap();
        assert_eq!(extra.cert, files.client_cert("alice"));
        assert!(extra.key.is_file());
    }
}
