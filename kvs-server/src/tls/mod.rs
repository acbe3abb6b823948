//! TLS on the client port and the peer links: rustls with the ring provider, TLS 1.3 (1.2
//! too on the client port when `--tls-min-version 1.2` asks for it).
//!
//! - The client port ([`ClientTlsSettings`]): the replica's certificate and key; with a
//!   CA (`--trusted-ca-file`) a client certificate is verified against it when presented,
//!   and required with `--client-cert-auth`. A client's identity is the subject Common
//!   Name of its verified certificate.
//! - The peer links ([`PeerTlsSettings`]): mutual TLS, always. The accepting replica
//!   requires a certificate chained to the peer CA, and the member id it names must be the
//!   one the hello claims (checked in the handshake, see [`crate::net::peers`]); the
//!   dialing replica verifies the accepting one's chain against the peer CA without a host
//!   name check, and that its certificate names the member it meant to dial
//!   ([`verify`]). A replica's certificate names its member id as a URI SAN
//!   `urn:kvs:member:<id>` ([`identity`]).
//! - Rotation ([`Tls::reload_if_changed`], [`watch`]): every file is read again when it
//!   changes; new connections use the new material, and material that fails to load is
//!   logged and ignored (the old stays in use). Expiry is exposed as a metric, in
//!   `/status`, and warned about when it is near ([`EXPIRY_WARNING`]).

pub mod files;
pub mod identity;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

pub use files::TlsError;
pub use verify::WrongMember;

#[cfg(test)]
mod tests;

/// A TLS handshake record starts with this byte (content type 22, handshake): how a TLS
/// port tells a plain client from a TLS one by its first byte.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// A certificate that expires within this is warned about (at load, and on every check).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often the certificate, key and CA files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(3);

/// The lowest TLS version the client port accepts (`--tls-min-version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only (the default).
    #[default]
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    V1_3,
}

/// TLS 1.3 only.
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&TLS13];
/// TLS 1.3 and 1.2.
static TLS12_AND_13: [&SupportedProtocolVersion; 2] = [&TLS13, &TLS12];

impl TlsVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        match self {
            TlsVersion::V1_2 => &TLS12_AND_13,
            TlsVersion::V1_3 => &TLS13_ONLY,
        }
    }
}

/// The crypto provider of every TLS configuration here: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Build(e.to_string())
}

/// The text of a TLS failure: rustls's own, but for a certificate refused by this
/// replica's checks, whose reason is given as is (rustls would print its debug form).
pub fn describe_io_error(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) = inner {
        return format!("invalid peer certificate: {}", other.0);
    }
    e.to_string()
}

/// Which link a TLS configuration serves (the label of its expiry metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The client port.
    Client,
    /// The peer links.
    Peer,
}

impl Link {
    /// `client` or `peer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Client => "client",
            Link::Peer => "peer",
        }
    }
}

/// TLS settings that can be loaded, and loaded again when their files change.
pub trait Settings: Send + Sync + 'static {
    /// What loading makes.
    type Built: Send + Sync + 'static;
    /// Which link these settings serve.
    const LINK: Link;
    /// Reads every file and builds the configuration, checking everything.
    fn load(&self) -> Result<Self::Built, TlsError>;
    /// Every file the configuration is read from.
    fn files(&self) -> Vec<PathBuf>;
    /// When the built configuration's own certificate expires (seconds since the epoch).
    fn not_after_unix(built: &Self::Built) -> i64;
    /// The file of the configuration's own certificate.
    fn cert_file(&self) -> &std::path::Path;
}

/// TLS on the client port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsSettings {
    /// The replica's certificate chain (`--cert-file`).
    pub cert_file: PathBuf,
    /// Its private key (`--key-file`).
    pub key_file: PathBuf,
    /// The CA that client certificates are verified against (`--trusted-ca-file`).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate (`--client-cert-auth`; needs the CA).
    pub client_cert_auth: bool,
    /// The lowest TLS version accepted (`--tls-min-version`).
    pub min_version: TlsVersion,
}

/// The client port's TLS configuration, as loaded.
#[derive(Debug)]
pub struct ClientTlsConfig {
    /// What the listener accepts with.
    pub server: Arc<ServerConfig>,
    /// When the replica's certificate expires (seconds since the epoch).
    pub not_after_unix: i64,
}

impl Settings for ClientTlsSettings {
    type Built = ClientTlsConfig;
    const LINK: Link = Link::Client;

    fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let provider = provider();
        let pair = files::PairFiles {
            cert_flag: "--cert-file",
            cert: &self.cert_file,
            key_flag: "--key-file",
            key: &self.key_file,
        };
        let own = files::identity(pair, &provider)?;
        let verifier: Arc<dyn ClientCertVerifier> = match &self.trusted_ca_file {
            Some(ca) => {
                let flag = "--trusted-ca-file";
                let roots = files::roots(flag, ca, &files::read(flag, ca)?)?;
                let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                let builder = if self.client_cert_auth {
                    builder
                } else {
                    builder.allow_unauthenticated()
                };
                builder.build().map_err(build_error)?
            }
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(self.min_version.versions())
            .map_err(build_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(own.chain, own.key)
            .map_err(build_error)?;
        Ok(ClientTlsConfig {
            server: Arc::new(server),
            not_after_unix: own.not_after_unix,
        })
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.trusted_ca_file.clone());
        files
    }

    fn not_after_unix(built: &ClientTlsConfig) -> i64 {
        built.not_after_unix
    }

    fn cert_file(&self) -> &std::path::Path {
        &self.cert_file
    }
}

/// TLS on the peer links (mutual, always).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTlsSettings {
    /// The replica's certificate chain (`--peer-cert-file`); it must name `member_id`.
    pub cert_file: PathBuf,
    /// Its private key (`--peer-key-file`).
    pub key_file: PathBuf,
    /// The CA every replica's certificate is verified against (`--peer-trusted-ca-file`).
    pub trusted_ca_file: PathBuf,
    /// This replica's member id (`--id`).
    pub member_id: u64,
}

/// The peer links' TLS configuration, as loaded.
pub struct PeerTlsConfig {
    /// What the peer listener accepts with: a certificate chained to the peer CA required.
    pub server: Arc<ServerConfig>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: Arc<CryptoProvider>,
    /// When the replica's certificate expires (seconds since the epoch).
    pub not_after_unix: i64,
}

impl std::fmt::Debug for PeerTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTlsConfig")
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

impl PeerTlsConfig {
    /// What to dial a replica with: presents this replica's certificate, and accepts the
    /// other's only if it chains to the peer CA and names member `expect` (any one member
    /// when `None`).
    pub fn client(&self, expect: Option<u64>) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = Arc::new(verify::MemberVerifier {
            roots: Arc::clone(&self.roots),
            algorithms: self.provider.signature_verification_algorithms,
            expect,
        });
        let config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&TLS13_ONLY)
            .map_err(build_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(build_error)?;
        Ok(Arc::new(config))
    }
}

impl Settings for PeerTlsSettings {
    type Built = PeerTlsConfig;
    const LINK: Link = Link::Peer;

    fn load(&self) -> Result<PeerTlsConfig, TlsError> {
        let provider = provider();
        let pair = files::PairFiles {
            cert_flag: "--peer-cert-file",
            cert: &self.cert_file,
            key_flag: "--peer-key-file",
            key: &self.key_file,
        };
        let own = files::identity(pair, &provider)?;
        let unusable = |reason: String| TlsError::Unusable {
            flag: "--peer-cert-file",
            path: self.cert_file.clone(),
            reason,
        };
        match identity::member_id(&own.chain[0]) {
            Ok(id) if id == self.member_id => {}
            Ok(id) => {
                return Err(unusable(format!(
                    "the certificate names member {id}, but this replica is --id {}",
                    self.member_id
                )))
            }
            Err(e) => return Err(unusable(e.to_string())),
        }
        let flag = "--peer-trusted-ca-file";
        let ca = &self.trusted_ca_file;
        let roots = files::roots(flag, ca, &files::read(flag, ca)?)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider.clone())
                .build()
                .map_err(build_error)?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&TLS13_ONLY)
            .map_err(build_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(own.chain.clone(), own.key.clone_key())
            .map_err(build_error)?;
        Ok(PeerTlsConfig {
            server: Arc::new(server),
            roots,
            chain: own.chain,
            key: own.key,
            provider,
            not_after_unix: own.not_after_unix,
        })
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![
            self.cert_file.clone(),
            self.key_file.clone(),
            self.trusted_ca_file.clone(),
        ]
    }

    fn not_after_unix(built: &PeerTlsConfig) -> i64 {
        built.not_after_unix
    }

    fn cert_file(&self) -> &std::path::Path {
        &self.cert_file
    }
}

/// The outcome of [`Tls::reload_if_changed`].
#[derive(Debug)]
pub enum Reload {
    /// No file changed.
    Unchanged,
    /// Files changed and the new material is in use for new connections.
    Reloaded,
    /// Files changed but do not load (logged at warn); the old material stays in use.
    Failed(TlsError),
}

/// A TLS configuration in use, loaded again when its files change.
pub struct Tls<S: Settings> {
    settings: S,
    current: RwLock<Arc<S::Built>>,
    /// The files' contents when last looked at (`None`: unreadable).
    seen: Mutex<Vec<Option<Vec<u8>>>>,
    not_after_unix: AtomicI64,
    /// Whether the near expiry of the current certificate was warned about.
    warned: AtomicBool,
}

/// TLS on the client port, reloadable.
pub type ClientTls = Tls<ClientTlsSettings>;
/// TLS on the peer links, reloadable.
pub type PeerTls = Tls<PeerTlsSettings>;

impl<S: Settings> std::fmt::Debug for Tls<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("link", &S::LINK)
            .field("not_after_unix", &self.not_after_unix())
            .finish_non_exhaustive()
    }
}

fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl<S: Settings> Tls<S> {
    /// Loads `settings`: every file read and checked (see [`TlsError`]).
    pub fn new(settings: S) -> Result<Tls<S>, TlsError> {
        let seen = contents(&settings.files());
        let built = settings.load()?;
        let not_after = S::not_after_unix(&built);
        let tls = Tls {
            settings,
            current: RwLock::new(Arc::new(built)),
            seen: Mutex::new(seen),
            not_after_unix: AtomicI64::new(not_after),
            warned: AtomicBool::new(false),
        };
        tls.warn_if_expiring();
        Ok(tls)
    }

    /// The settings.
    pub fn settings(&self) -> &S {
        &self.settings
    }

    /// The configuration new connections use now.
    pub fn current(&self) -> Arc<S::Built> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&current)
    }

    /// When the certificate in use expires, in seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix.load(Ordering::Relaxed)
    }

    /// Reads the files again; if any changed, loads them and, if that works, uses the new
    /// material for new connections. Material that fails to load is logged at warn with
    /// the file at fault, once per change, and the old material stays in use.
    pub fn reload_if_changed(&self) -> Reload {
        let now = contents(&self.settings.files());
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        let link = S::LINK.as_str();
        match self.settings.load() {
            Ok(built) => {
                let not_after = S::not_after_unix(&built);
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(built);
                self.not_after_unix.store(not_after, Ordering::Relaxed);
                self.warned.store(false, Ordering::Relaxed);
                tracing::info!(
                    link,
                    cert = %self.settings.cert_file().display(),
                    not_after_unix = not_after,
                    "TLS certificate files changed: new connections use the new material"
                );
                self.warn_if_expiring();
                Reload::Reloaded
            }
            Err(e) => {
                tracing::warn!(
                    link,
                    error = %e,
                    "TLS certificate files changed but cannot be used; the previous material stays in use"
                );
                Reload::Failed(e)
            }
        }
    }

    /// Warns (once per certificate) when the certificate in use expires within
    /// [`EXPIRY_WARNING`] or has expired.
    pub fn warn_if_expiring(&self) {
        let left = self.not_after_unix() - now_unix();
        let warning = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
        if left > warning || self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        let cert = self.settings.cert_file().display().to_string();
        let link = S::LINK.as_str();
        if left <= 0 {
            tracing::warn!(link, %cert, "the TLS certificate has expired: replace it");
        } else {
            let days = left as f64 / 86_400.0;
            tracing::warn!(
                link,
                %cert,
                days_left = format!("{days:.1}"),
                "the TLS certificate expires within 7 days: replace it"
            );
        }
    }
}

/// Checks `tls`'s files every `every` until `shutdown`, reloading them when they change
/// and warning when the certificate nears its expiry; `expiry` is told the expiry of the
/// certificate in use after every check.
pub async fn watch<S: Settings>(
    tls: Arc<Tls<S>>,
    every: Duration,
    shutdown: CancellationToken,
    expiry: impl Fn(i64) + Send + 'static,
) {
    expiry(tls.not_after_unix());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let checked = Arc::clone(&tls);
        // File reads: off the runtime's worker threads.
        match tokio::task::spawn_blocking(move || checked.reload_if_changed()).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checking the TLS files failed"),
        }
        tls.warn_if_expiring();
        expiry(tls.not_after_unix());
    }
}
