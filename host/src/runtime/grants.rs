//! Per-extension grants beyond plain configuration: outbound HTTP to listed hosts only
//! (`wasi:http`), secrets, an outbound request timeout and a cap on response bodies.
//!
//! In a sidecar:
//!
//! ```toml
//! allowed_outbound_hosts = ["https://api.e2b.app", "http://127.0.0.1:*"]
//! outbound_timeout_ms = 10000      # whole request, from send to the last header byte
//! max_response_bytes = 1048576     # larger answers fail inside the guest
//! [secrets]
//! api_key = { env = "E2B_API_KEY" }    # or { file = "e2b.key" } (relative to the sidecar)
//! ```
//!
//! A secret may also come from OpenBao's KV v2 engine:
//! `api_key = { openbao = "sandboxer/e2b", key = "api_key" }` (the `[openbao]` table of
//! `sandboxer.toml` says where OpenBao is). Such a secret is read when the extension loads
//! (unreachable, sealed or missing: the load fails with a transient error, the registry
//! retries) and read again once its refresh interval has passed, so a rotated key reaches
//! the next instance without a restart; instances built with the old value are retired
//! (see [`Grants::current`]). A re-read that fails keeps the last values and is logged.
//!
//! Nothing is reachable by default. Secrets are resolved when the extension loads,
//! handed to the guest as `wasi:config/store` values beside its `[config]`, never logged
//! (their `Debug` prints `[redacted]`), and scrubbed from every error message the runtime
//! produces for the extension ([`Grants::redact_fault`]). A request to a host not granted
//! fails inside the guest with `error-code::HTTP-request-denied` and is logged (scheme,
//! host and path only).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::types::{BackendError, Fault};
use crate::secrets::{OpenBao, OpenBaoError};

/// Default bound on one outbound request (connect and first byte each, and overall).
pub const DEFAULT_OUTBOUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on one response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// What a secret's value is replaced with in messages.
pub const REDACTED: &str = "[redacted]";

/// Where a secret comes from, as written in the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// `{ env = "NAME" }`: an environment variable of the host process.
    Env {
        /// The variable's name.
        env: String,
    },
    /// `{ file = "path" }`: a file's contents (trailing newline trimmed), relative to the
    /// sidecar's folder.
    File {
        /// The file.
        file: PathBuf,
    },
    /// `{ openbao = "path", key = "field" }`: one field of a KV v2 secret in OpenBao.
    OpenBao {
        /// The secret's path under the configured mount.
        openbao: String,
        /// The field of that secret.
        key: String,
    },
}

/// The grant keys of a sidecar, as written (secret sources, not values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GrantSpec {
    /// `allowed_outbound_hosts`: `scheme://host[:port]` patterns.
    pub allowed_outbound_hosts: Vec<String>,
    /// `[secrets]`: config key → where its value comes from.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `outbound_timeout_ms`.
    pub outbound_timeout_ms: Option<u64>,
    /// `max_response_bytes`.
    pub max_response_bytes: Option<u64>,
    /// `byok`: the `[secrets]` a tenant may replace with its own (stored in OpenBao).
    pub byok: Vec<String>,
    /// `byok_fee_percent`: the platform fee of a BYOK sandbox, percent of the provider's
    /// price (billing reads it; the runtime only carries it).
    pub byok_fee_percent: Option<rust_decimal::Decimal>,
    /// `byok_fee_per_sandbox_hour`: the flat platform fee of a BYOK sandbox per hour.
    pub byok_fee_per_sandbox_hour: Option<rust_decimal::Decimal>,
    /// `outbound_ca_file`: a PEM file (in the sidecar's folder, like secret files) of CA
    /// certificates the extension's TLS connections trust besides the public web roots.
    pub outbound_ca_file: Option<PathBuf>,
}

/// A grant that cannot be honoured; names the key at fault. Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("allowed_outbound_hosts: {pattern:?}: {reason}")]
    Host { pattern: String, reason: String },
    #[error("secrets.{key}: environment variable {var} is not set (or not UTF-8)")]
    MissingEnv { key: String, var: String },
    #[error("secrets.{key}: cannot read {}: {reason}", file.display())]
    File {
        key: String,
        file: PathBuf,
        reason: String,
    },
    #[error("secrets.{key}: the value is empty")]
    Empty { key: String },
    #[error("secrets.{key}: also set in [config]; a key is either plain config or a secret")]
    Clash { key: String },
    #[error("{key}: must be at least 1")]
    Zero { key: &'static str },
    #[error("secrets.{key}: reads OpenBao, but sandboxer.toml has no [openbao] table")]
    NoOpenBao { key: String },
    #[error("secrets.{key}: OpenBao secret {path}: {source}")]
    OpenBao {
        key: String,
        path: String,
        source: OpenBaoError,
    },
    #[error("byok: {key:?} is not one of the [secrets]; a tenant can only replace a secret")]
    Byok { key: String },
    #[error("secrets.{key}: OpenBao secret {path} has no field {field:?}")]
    MissingField {
        key: String,
        path: String,
        field: String,
    },
    #[error("outbound_ca_file: cannot use {}: {reason}", file.display())]
    CaFile { file: PathBuf, reason: String },
}

impl GrantError {
    /// Whether loading again later may succeed without the operator editing the sidecar:
    /// OpenBao down or sealed, or the secret (or its field) not written yet.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::OpenBao { source, .. } => source.is_transient(),
            Self::MissingField { .. } => true,
            _ => false,
        }
    }
}

/// Which schemes a pattern allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemeMatch {
    Http,
    Https,
    Any,
}

/// Which hosts a pattern allows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`: any subdomain (not the apex).
    Suffix(String),
    /// A bare `*`: any name, and any public address; only where `sandboxer.toml` opts in
    /// (`[grants] any_host`, checked by [`super::grant_policy`]).
    Any,
}

/// Which ports a pattern allows; `Default` is the scheme's (80 / 443).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortMatch {
    Default,
    Exact(u16),
    Any,
}

/// Where `{ file = … }` secrets may be read from.
#[derive(Debug, Clone, Copy)]
pub enum SecretFiles<'a> {
    /// A sidecar's grants: files in its folder only (relative, no `..`, no link out).
    In(&'a Path),
    /// Grants the host itself configured (the embedded agent's token file).
    Anywhere,
}

/// The public web roots plus the CA certificates in `file` (PEM), read where `files`
/// allows (a sidecar's folder, as for secret files).
fn roots_with_ca(file: &Path, files: SecretFiles<'_>) -> Result<rustls::RootCertStore, GrantError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let fail = |reason: String| GrantError::CaFile {
        file: file.to_path_buf(),
        reason,
    };
    let path = match files {
        SecretFiles::In(dir) => confined(dir, file).map_err(fail)?,
        SecretFiles::Anywhere => file.to_path_buf(),
    };
    let pem = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let mut added = 0usize;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| fail(format!("not a PEM file of certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| fail(format!("not a usable CA certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(fail("it holds no CERTIFICATE block".to_owned()));
    }
    Ok(roots)
}

/// `file` inside `base_dir` (the sidecar's folder): a relative path without `..`, which
/// after following links is still in that folder. A sidecar cannot name the admin token,
/// the ledger or any other file of the host as its "secret".
fn confined(base_dir: &Path, file: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    if !file
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(
            "a file a sidecar grants is named relative to the sidecar's folder, without .. or a leading /"
                .to_owned(),
        );
    }
    let path = base_dir.join(file);
    let real = std::fs::canonicalize(&path).map_err(|e| e.to_string())?;
    let folder = std::fs::canonicalize(base_dir).map_err(|e| e.to_string())?;
    if !real.starts_with(&folder) {
        return Err(format!(
            "it leads out of the sidecar's folder {} (a link?)",
            folder.display()
        ));
    }
    Ok(real)
}

/// One `allowed_outbound_hosts` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: SchemeMatch,
    host: HostMatch,
    port: PortMatch,
}

impl HostPattern {
    /// Parses `scheme://host[:port]` where scheme is `http`, `https` or `*`, host is a name,
    /// an IPv4 address, `[v6]`, `*.domain` or `*`, and port is a number or `*`.
    pub fn parse(pattern: &str) -> Result<Self, GrantError> {
        let fail = |reason: &str| GrantError::Host {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| fail("expected scheme://host[:port]"))?;
        let scheme = match scheme {
            "http" => SchemeMatch::Http,
            "https" => SchemeMatch::Https,
            "*" => SchemeMatch::Any,
            _ => return Err(fail("the scheme must be http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(fail(
                "a pattern names a host and port only, no path, query or user",
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| fail("unclosed [ in an IPv6 host"))?;
            (
                format!("[{}]", h.to_ascii_lowercase()),
                after.strip_prefix(':'),
            )
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (rest.to_ascii_lowercase(), None),
            }
        };
        let port = match port {
            None => PortMatch::Default,
            Some("*") => PortMatch::Any,
            Some(p) => PortMatch::Exact(
                p.parse()
                    .map_err(|_| fail("the port must be a number 0-65535 or *"))?,
            ),
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(fail("a wildcard host looks like *.example.com"));
            }
            HostMatch::Suffix(format!(".{domain}"))
        } else if host.is_empty() || host.contains('*') {
            return Err(fail(
                "the host is empty or has a * that is not a leading *. label",
            ));
        } else {
            HostMatch::Exact(host)
        };
        Ok(Self { scheme, host, port })
    }

    /// Whether `pattern` parses to a bare `*` host (any name).
    pub fn names_any_host(pattern: &str) -> bool {
        Self::parse(pattern).is_ok_and(|p| p.host == HostMatch::Any)
    }

    /// Whether a request to `scheme://host:port` is allowed by this pattern.
    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = match self.scheme {
            SchemeMatch::Http => scheme == "http",
            SchemeMatch::Https => scheme == "https",
            SchemeMatch::Any => scheme == "http" || scheme == "https",
        };
        let host_ok = match &self.host {
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
            // An internal address is reachable only when granted by that very address.
            HostMatch::Any => !host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(super::outbound::is_internal),
        };
        let port_ok = match self.port {
            PortMatch::Any => true,
            PortMatch::Exact(p) => p == port,
            PortMatch::Default => port == default_port(scheme),
        };
        scheme_ok && host_ok && port_ok
    }
}

/// Reads every OpenBao-backed secret of an extension (each path once).
fn read_openbao(
    client: &OpenBao,
    fields: &BTreeMap<String, (String, String)>,
) -> Result<BTreeMap<String, Secret>, GrantError> {
    let mut by_path: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (key, (path, field)) in fields {
        if !by_path.contains_key(path.as_str()) {
            let read = client.read(path).map_err(|source| GrantError::OpenBao {
                key: key.clone(),
                path: path.clone(),
                source,
            })?;
            by_path.insert(path, read);
        }
        let value = by_path
            .get(path.as_str())
            .and_then(|f| f.get(field))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| GrantError::MissingField {
                key: key.clone(),
                path: path.clone(),
                field: field.clone(),
            })?;
        out.insert(key.clone(), Secret(value.clone()));
    }
    Ok(out)
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// A secret value: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for handing to the guest.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// One set of an extension's secret values: the operator's (a new `generation` when a
/// re-read from OpenBao finds a changed value) or a tenant's own keys over them. Each set
/// of one extension has its own `generation`: an instance built with a set serves only
/// calls of that set.
#[derive(Debug, Clone, Default)]
pub struct SecretSet {
    /// Which set this is (unique among the extension's sets).
    pub generation: u64,
    /// The tenant whose own keys these are; `None`: the operator's.
    pub tenant: Option<String>,
    /// Config key → value.
    pub values: BTreeMap<String, Secret>,
}

impl SecretSet {
    /// The values as `wasi:config/store` key/value pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.expose()))
    }
}

/// The OpenBao-backed secrets of an extension and when they were last read.
#[derive(Debug)]
struct OpenBaoSecrets {
    client: Arc<OpenBao>,
    /// Config key → (secret path, field).
    fields: BTreeMap<String, (String, String)>,
    refresh: Duration,
    read_at: parking_lot::Mutex<Instant>,
}

/// Tenants' own keys for an extension (its `byok` secrets), read from OpenBao per tenant.
#[derive(Debug)]
struct TenantKeys {
    client: Arc<OpenBao>,
    fields: Vec<String>,
    refresh: Duration,
    cache: parking_lot::Mutex<std::collections::HashMap<String, CachedKeys>>,
}

/// What was last read for one tenant: its set (`None`: it has no key) and when.
#[derive(Debug, Clone)]
struct CachedKeys {
    set: Option<Arc<SecretSet>>,
    read_at: Instant,
    /// Read again on the next call (the tenant just changed its keys).
    stale: bool,
}

/// How many older versions of rotated secrets are still scrubbed from messages (an
/// instance built before a rotation may still be answering with the old key).
const REDACT_PREVIOUS: usize = 4;

/// An extension's resolved grants. Shared by all its instances.
#[derive(Debug)]
pub struct Grants {
    extension: String,
    hosts: Vec<HostPattern>,
    secrets: parking_lot::RwLock<Arc<SecretSet>>,
    /// Values of earlier generations, for redaction only.
    previous: parking_lot::Mutex<Vec<Secret>>,
    openbao: Option<OpenBaoSecrets>,
    tenant_keys: Option<TenantKeys>,
    /// The last `generation` handed out.
    generations: std::sync::atomic::AtomicU64,
    outbound_timeout: Duration,
    max_response_bytes: u64,
    /// HTTP/2 connections for gRPC calls, shared by all instances.
    h2: super::h2::H2Pool,
}

impl Grants {
    /// No network, no secrets: what an extension without grants gets.
    pub fn none(extension: &str) -> Self {
        Self {
            extension: extension.to_owned(),
            hosts: Vec::new(),
            secrets: parking_lot::RwLock::new(Arc::new(SecretSet::default())),
            previous: parking_lot::Mutex::new(Vec::new()),
            openbao: None,
            tenant_keys: None,
            generations: std::sync::atomic::AtomicU64::new(0),
            outbound_timeout: DEFAULT_OUTBOUND_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            h2: super::h2::H2Pool::default(),
        }
    }

    /// Resolves `spec` for `extension`: parses the host patterns and reads every secret
    /// now (from the environment, files (in the sidecar's folder, see [`SecretFiles`]), or `openbao`), so a
    /// missing secret fails the load, not a sandbox later. `config` is the plain
    /// `[config]` table: a key may not be both.
    pub fn resolve(
        extension: &str,
        spec: &GrantSpec,
        files: SecretFiles<'_>,
        config: &BTreeMap<String, String>,
        openbao: Option<&Arc<OpenBao>>,
    ) -> Result<Self, GrantError> {
        let hosts = spec
            .allowed_outbound_hosts
            .iter()
            .map(|p| HostPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut secrets = BTreeMap::new();
        let mut bao_fields = BTreeMap::new();
        for (key, source) in &spec.secrets {
            if config.contains_key(key) {
                return Err(GrantError::Clash { key: key.clone() });
            }
            let value = match source {
                SecretSource::Env { env } => {
                    std::env::var(env).map_err(|_| GrantError::MissingEnv {
                        key: key.clone(),
                        var: env.clone(),
                    })?
                }
                SecretSource::File { file } => {
                    let path = match files {
                        SecretFiles::In(dir) => {
                            confined(dir, file).map_err(|reason| GrantError::File {
                                key: key.clone(),
                                file: file.clone(),
                                reason,
                            })?
                        }
                        SecretFiles::Anywhere => file.clone(),
                    };
                    std::fs::read_to_string(&path)
                        .map_err(|e| GrantError::File {
                            key: key.clone(),
                            file: path.clone(),
                            reason: e.to_string(),
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_owned()
                }
                SecretSource::OpenBao {
                    openbao: path,
                    key: field,
                } => {
                    bao_fields.insert(key.clone(), (path.clone(), field.clone()));
                    continue;
                }
            };
            if value.is_empty() {
                return Err(GrantError::Empty { key: key.clone() });
            }
            secrets.insert(key.clone(), Secret(value));
        }
        let bao_secrets = if bao_fields.is_empty() {
            None
        } else {
            let Some(client) = openbao else {
                let key = bao_fields.keys().next().cloned().unwrap_or_default();
                return Err(GrantError::NoOpenBao { key });
            };
            secrets.extend(read_openbao(client, &bao_fields)?);
            Some(OpenBaoSecrets {
                client: Arc::clone(client),
                fields: bao_fields,
                refresh: client.settings().refresh,
                read_at: parking_lot::Mutex::new(Instant::now()),
            })
        };
        if let Some(key) = spec.byok.iter().find(|k| !spec.secrets.contains_key(*k)) {
            return Err(GrantError::Byok { key: key.clone() });
        }
        // Without OpenBao tenants cannot store keys: the extension serves on the
        // operator's alone (the keys API says why).
        let tenant_keys = match openbao {
            Some(client) if !spec.byok.is_empty() => Some(TenantKeys {
                client: Arc::clone(client),
                fields: spec.byok.clone(),
                refresh: client.settings().refresh,
                cache: parking_lot::Mutex::new(std::collections::HashMap::new()),
            }),
            _ => None,
        };
        if spec.outbound_timeout_ms == Some(0) {
            return Err(GrantError::Zero {
                key: "outbound_timeout_ms",
            });
        }
        if spec.max_response_bytes == Some(0) {
            return Err(GrantError::Zero {
                key: "max_response_bytes",
            });
        }
        let h2 = match &spec.outbound_ca_file {
            None => super::h2::H2Pool::default(),
            Some(file) => super::h2::H2Pool::with_roots(roots_with_ca(file, files)?),
        };
        Ok(Self {
            extension: extension.to_owned(),
            hosts,
            secrets: parking_lot::RwLock::new(Arc::new(SecretSet {
                generation: 0,
                tenant: None,
                values: secrets,
            })),
            previous: parking_lot::Mutex::new(Vec::new()),
            openbao: bao_secrets,
            tenant_keys,
            generations: std::sync::atomic::AtomicU64::new(0),
            outbound_timeout: spec
                .outbound_timeout_ms
                .map_or(DEFAULT_OUTBOUND_TIMEOUT, Duration::from_millis),
            max_response_bytes: spec
                .max_response_bytes
                .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            h2,
        })
    }

    /// The secret values to build an instance with, re-read from OpenBao first when the
    /// refresh interval has passed. One caller re-reads while the others go on with the
    /// values they have; a failed re-read keeps the last values (and is tried again after
    /// another interval), so OpenBao going down does not stop an extension that loaded.
    pub fn current(&self) -> Arc<SecretSet> {
        if let Some(bao) = &self.openbao
            && let Some(mut read_at) = bao.read_at.try_lock()
            && read_at.elapsed() >= bao.refresh
        {
            *read_at = Instant::now();
            match read_openbao(&bao.client, &bao.fields) {
                Ok(fresh) => self.install(fresh),
                Err(e) => {
                    tracing::warn!(extension = %self.extension, error = %e, "OpenBao secrets not re-read; the last values stay in use");
                }
            }
        }
        Arc::clone(&self.secrets.read())
    }

    fn next_generation(&self) -> u64 {
        self.generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// The `byok` secrets a tenant may replace with its own (empty: none, or no OpenBao).
    pub fn byok_fields(&self) -> &[String] {
        self.tenant_keys.as_ref().map_or(&[], |t| &t.fields)
    }

    /// The secrets a call on behalf of `tenant` runs with: the tenant's own keys over the
    /// operator's when it stored some (read from OpenBao, kept for the refresh interval),
    /// else the operator's. When OpenBao cannot be read, the last keys read for the
    /// tenant stay in use (a destroy still reaches the tenant's account); with nothing
    /// read yet the call fails as unavailable rather than run on the operator's key.
    pub fn secrets_for(&self, tenant: Option<&str>) -> Result<Arc<SecretSet>, BackendError> {
        let operator = self.current();
        let (Some(keys), Some(tenant)) = (&self.tenant_keys, tenant) else {
            return Ok(operator);
        };
        let cached = keys.cache.lock().get(tenant).cloned();
        if let Some(c) = &cached
            && !c.stale
            && c.read_at.elapsed() < keys.refresh
        {
            return Ok(c.set.clone().unwrap_or(operator));
        }
        let path = keys.client.tenant_key_path(tenant, &self.extension);
        let read = match keys.client.read(&path) {
            Ok(fields) => Some(fields),
            Err(OpenBaoError::NotFound { .. }) => None,
            Err(e) => {
                tracing::warn!(extension = %self.extension, tenant, error = %e, "tenant's own keys not read");
                return match cached {
                    Some(c) => Ok(c.set.unwrap_or(operator)),
                    None => Err(BackendError::Unavailable(format!(
                        "tenant {tenant}'s own keys for {} cannot be read: {e}",
                        self.extension
                    ))),
                };
            }
        };
        let set = read.map(|fields| {
            let mut values = operator.values.clone();
            for f in &keys.fields {
                if let Some(v) = fields.get(f).filter(|v| !v.is_empty()) {
                    values.insert(f.clone(), Secret(v.clone()));
                }
            }
            // The same keys as last time keep their set (and so their warm instances).
            match cached.as_ref().and_then(|c| c.set.clone()) {
                Some(old) if old.values == values => old,
                _ => Arc::new(SecretSet {
                    generation: self.next_generation(),
                    tenant: Some(tenant.to_owned()),
                    values,
                }),
            }
        });
        keys.cache.lock().insert(
            tenant.to_owned(),
            CachedKeys {
                set: set.clone(),
                read_at: Instant::now(),
                stale: false,
            },
        );
        Ok(set.unwrap_or(operator))
    }

    /// Forgets what was read for `tenant` (its keys were just stored or removed): its next
    /// call reads them again.
    pub fn forget_tenant(&self, tenant: &str) {
        if let Some(keys) = &self.tenant_keys
            && let Some(c) = keys.cache.lock().get_mut(tenant)
        {
            // Kept as a fallback should OpenBao fail right now, but stale.
            c.stale = true;
        }
    }

    /// Makes `fresh` (OpenBao's values, merged over the static ones) current if anything
    /// changed.
    fn install(&self, fresh: BTreeMap<String, Secret>) {
        let mut current = self.secrets.write();
        let mut values = current.values.clone();
        let mut changed = Vec::new();
        for (k, v) in fresh {
            if values.get(&k) != Some(&v)
                && let Some(old) = values.insert(k, v)
            {
                changed.push(old);
            }
        }
        if changed.is_empty() {
            return;
        }
        let mut previous = self.previous.lock();
        previous.extend(changed);
        let excess = previous.len().saturating_sub(REDACT_PREVIOUS);
        previous.drain(..excess);
        *current = Arc::new(SecretSet {
            generation: self.next_generation(),
            tenant: None,
            values,
        });
        tracing::info!(extension = %self.extension, generation = current.generation, "rotated secrets read from OpenBao; new instances use them");
    }

    /// The extension these grants belong to.
    pub fn extension(&self) -> &str {
        &self.extension
    }

    /// The bound on one outbound request.
    pub fn outbound_timeout(&self) -> Duration {
        self.outbound_timeout
    }

    /// The cap on one response body.
    pub fn max_response_bytes(&self) -> u64 {
        self.max_response_bytes
    }

    /// Whether a request to `uri` is granted.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return false;
        };
        let scheme = scheme.to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or_else(|| default_port(&scheme));
        self.hosts.iter().any(|p| p.allows(&scheme, &host, port))
    }

    /// Whether there is any secret to scrub: the current set, rotated-away values or a
    /// tenant's own keys (the cheap check before scrubbing every field of an answer).
    pub fn has_secrets(&self) -> bool {
        !self.secrets.read().values.is_empty()
            || !self.previous.lock().is_empty()
            || self
                .tenant_keys
                .as_ref()
                .is_some_and(|k| k.cache.lock().values().any(|c| c.set.is_some()))
    }

    /// `text` with every secret value replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let current = Arc::clone(&self.secrets.read());
        let mut previous = self.previous.lock().clone();
        if let Some(keys) = &self.tenant_keys {
            for c in keys.cache.lock().values() {
                if let Some(set) = &c.set {
                    previous.extend(set.values.values().cloned());
                }
            }
        }
        for secret in current.values.values().chain(previous.iter()) {
            if out.contains(secret.expose()) {
                out = out.replace(secret.expose(), REDACTED);
            }
        }
        out
    }

    /// `fault` with every secret value scrubbed from its messages.
    pub fn redact_fault(&self, fault: Fault) -> Fault {
        // No early return on an empty operator set: rotated-away values and the tenants'
        // own keys are scrubbed too.
        let r = |s: String| self.redact(&s);
        match fault {
            Fault::Backend(e) => Fault::Backend(match e {
                BackendError::InvalidRequest(m) => BackendError::InvalidRequest(r(m)),
                BackendError::Unsupported(m) => BackendError::Unsupported(r(m)),
                BackendError::CapacityExhausted(m) => BackendError::CapacityExhausted(r(m)),
                BackendError::Unavailable(m) => BackendError::Unavailable(r(m)),
                BackendError::NotFound(m) => BackendError::NotFound(r(m)),
                BackendError::Unauthorized(m) => BackendError::Unauthorized(r(m)),
                BackendError::Internal(m) => BackendError::Internal(r(m)),
            }),
            Fault::Trap { message } => Fault::Trap {
                message: r(message),
            },
            Fault::BadAnswer { message } => Fault::BadAnswer {
                message: r(message),
            },
            Fault::Quarantined {
                until_unix_ms,
                reason,
            } => Fault::Quarantined {
                until_unix_ms,
                reason: r(reason),
            },
            other @ (Fault::Timeout { .. } | Fault::OutOfMemory { .. }) => other,
        }
    }

    /// `scheme://host[:port]/path` of a request, secrets scrubbed, for logs (no query).
    fn describe(&self, uri: &http::Uri) -> String {
        let scheme = uri.scheme_str().unwrap_or("?");
        let authority = uri.authority().map_or("?", |a| a.as_str());
        self.redact(&format!("{scheme}://{authority}{}", uri.path()))
    }
}

/// The `wasi:http` hooks of one instance: the grant check, the timeout and the body cap
/// around wasmtime-wasi-http's default sender.
#[derive(Debug, Clone)]
pub struct OutboundHooks {
    grants: Arc<Grants>,
}

impl OutboundHooks {
    /// Hooks enforcing `grants`.
    pub fn new(grants: Arc<Grants>) -> Self {
        Self { grants }
    }
}

type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

fn tighter(guest: Option<Duration>, host: Duration) -> Option<Duration> {
    Some(guest.map_or(host, |g| g.min(host)))
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> SendFuture {
        drop(fut);
        let grants = Arc::clone(&self.grants);
        let target = grants.describe(request.uri());
        if !grants.allows(request.uri()) {
            tracing::warn!(
                extension = %grants.extension,
                method = %request.method(),
                target = %target,
                "outbound request denied: not in allowed_outbound_hosts"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        tracing::debug!(extension = %grants.extension, method = %request.method(), target = %target, "outbound request");
        let limit = grants.outbound_timeout;
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: tighter(options.connect_timeout, limit),
            first_byte_timeout: tighter(options.first_byte_timeout, limit),
            between_bytes_timeout: tighter(options.between_bytes_timeout, limit),
        };
        let cap = grants.max_response_bytes;
        Box::new(async move {
            use http_body_util::BodyExt;
            let h2 = super::h2::wants_h2(&request);
            // HTTP/2 connections are pooled and checked when opened (`h2`); an HTTP/1
            // request is one connection, checked here.
            let request = if h2 {
                request
            } else {
                match pin_to_checked_address(request).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(extension = %grants.extension, target = %target, error = %e, "outbound request denied: internal address");
                        return Err(HttpError::HttpRequestDenied);
                    }
                }
            };
            let send = async {
                if h2 {
                    let connect = options.connect_timeout.unwrap_or(limit);
                    let response = grants.h2.send(request, connect).await?;
                    let io: IoFuture = Box::new(async { Ok(()) });
                    Ok((response, io))
                } else {
                    let (response, io) =
                        wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
                    let io: IoFuture = Box::new(io);
                    Ok((response.map(|b| b.boxed_unsync()), io))
                }
            };
            let sent = tokio::time::timeout(limit, send).await;
            let timeout_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            let (response, io) = match sent {
                Ok(Ok(pair)) => pair,
                Ok(Err(e @ (HttpError::ConnectionTimeout | HttpError::ConnectionReadTimeout))) => {
                    tracing::warn!(extension = %grants.extension, target = %target, timeout_ms, "outbound request timed out");
                    return Err(e);
                }
                Err(_elapsed) => {
                    tracing::warn!(extension = %grants.extension, target = %target, timeout_ms, "outbound request timed out");
                    return Err(HttpError::ConnectionReadTimeout);
                }
                Ok(Err(e)) => {
                    tracing::warn!(extension = %grants.extension, target = %target, error = %grants.redact(&e.to_string()), "outbound request failed");
                    return Err(e);
                }
            };
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > cap) {
                tracing::warn!(extension = %grants.extension, target = %target, max_response_bytes = cap, "outbound response too large");
                return Err(HttpError::HttpResponseBodySize(declared));
            }
            let response = response.map(|body| {
                CappedBody {
                    inner: body.boxed_unsync(),
                    seen: 0,
                    cap,
                }
                .boxed_unsync()
            });
            Ok((response, io))
        })
    }
}

/// Resolves and checks the request's host ([`super::outbound`]); a plain `http://`
/// request to a name is then sent to the checked address (with its `Host` header), so
/// the connection cannot go where the check did not look.
async fn pin_to_checked_address(
    mut request: http::Request<WasiBody>,
) -> Result<http::Request<WasiBody>, super::outbound::Refused> {
    let uri = request.uri().clone();
    let (Some(host), Some(scheme)) = (uri.host(), uri.scheme_str()) else {
        return Ok(request);
    };
    let port = uri.port_u16().unwrap_or_else(|| default_port(scheme));
    let addr = super::outbound::checked_addr(host, port).await?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok();
    if scheme.eq_ignore_ascii_case("http") && !literal {
        let mut parts = uri.into_parts();
        if let (Ok(authority), Some(original)) = (
            addr.to_string().parse::<http::uri::Authority>(),
            parts.authority.clone(),
        ) {
            parts.authority = Some(authority);
            if let Ok(pinned) = http::Uri::from_parts(parts) {
                if !request.headers().contains_key(http::header::HOST)
                    && let Ok(v) = http::HeaderValue::from_str(original.as_str())
                {
                    request.headers_mut().insert(http::header::HOST, v);
                }
                *request.uri_mut() = pinned;
            }
        }
    }
    Ok(request)
}

/// A response body that fails once more than `cap` bytes have come through.
struct CappedBody {
    inner: WasiBody,
    seen: u64,
    cap: u64,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.cap {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            this.seen,
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(hosts: &[&str]) -> Grants {
        let spec = GrantSpec {
            allowed_outbound_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        };
        Grants::resolve(
            "x",
            &spec,
            SecretFiles::In(Path::new(".")),
            &BTreeMap::new(),
            None,
        )
        .unwrap()
    }

    fn allows(g: &Grants, url: &str) -> bool {
        g.allows(&url.parse().unwrap())
    }

    #[test]
    fn nothing_is_reachable_by_default() {
        let g = Grants::none("x");
        assert!(!allows(&g, "https://api.e2b.app/sandboxes"));
        assert!(!allows(&g, "http://127.0.0.1:8080/"));
    }

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let g = grants(&[
            "https://api.e2b.app",
            "http://127.0.0.1:*",
            "https://*.example.com:8443",
        ]);
        assert!(allows(&g, "https://api.e2b.app/sandboxes"));
        assert!(allows(&g, "https://API.E2B.APP:443/x"));
        assert!(
            !allows(&g, "http://api.e2b.app/sandboxes"),
            "scheme must match"
        );
        assert!(
            !allows(&g, "https://api.e2b.app:8443/"),
            "default port only"
        );
        assert!(!allows(&g, "https://evil.e2b.app/"));
        assert!(allows(&g, "http://127.0.0.1:41234/x"));
        assert!(!allows(&g, "http://127.0.0.2:41234/x"));
        assert!(!allows(&g, "https://127.0.0.1:41234/x"));
        assert!(allows(&g, "https://a.example.com:8443/"));
        assert!(
            !allows(&g, "https://example.com:8443/"),
            "wildcard is for subdomains"
        );
        assert!(!allows(&g, "https://a.example.com.evil.net:8443/"));
    }

    #[test]
    fn a_bare_star_reaches_public_names_and_addresses_but_no_internal_address() {
        let g = grants(&["*://*:*"]);
        assert!(allows(&g, "https://api.e2b.app/x"));
        assert!(allows(&g, "http://93.184.216.34:8080/"));
        for internal in [
            "http://127.0.0.1:7733/",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/",
            "http://[::1]:80/",
        ] {
            assert!(!allows(&g, internal), "{internal}");
        }
        assert!(HostPattern::names_any_host("*://*:*"));
        assert!(!HostPattern::names_any_host("https://*.example.com"));
    }

    #[test]
    fn bad_patterns_name_the_pattern() {
        for bad in [
            "api.e2b.app",
            "ftp://x",
            "https://x/path",
            "https://x:port",
            "https://a*b",
            "https://*.",
            "https://*x",
        ] {
            let err = HostPattern::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn secret_files_stay_in_the_sidecars_folder() {
        let root = tempfile::tempdir().unwrap();
        let ext = root.path().join("extensions");
        std::fs::create_dir_all(&ext).unwrap();
        std::fs::write(root.path().join("admin.token"), "the-admin-token").unwrap();
        std::os::unix::fs::symlink(root.path().join("admin.token"), ext.join("link.key")).unwrap();
        for file in ["../admin.token", "/etc/passwd", "link.key"] {
            let spec = GrantSpec {
                secrets: [(
                    "api_key".to_owned(),
                    SecretSource::File { file: file.into() },
                )]
                .into(),
                ..GrantSpec::default()
            };
            let err = Grants::resolve("x", &spec, SecretFiles::In(&ext), &BTreeMap::new(), None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("secrets.api_key") && err.contains(file),
                "{err}"
            );
            assert!(!err.contains("the-admin-token"), "{err}");
        }
    }

    /// A self-signed CA certificate (openssl, EC P-256, valid for a century).
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBjzCCATWgAwIBAgIUaGFKBy6qQo/aDFa6zwb/apRh5uYwCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRc2FuZGJveGVyIHRlc3QgQ0EwIBcNMjYxMjAzMTcyMjA5WhgP\nMjEyNjExMDkxNzIyMDlaMBwxGjAYBgNVBAMMEXNhbmRib3hlciB0ZXN0IENBMFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYjsaFuuI42KFrzmIiTOMYtgYTGEeSXPv\nijiRPgbPHAFmxWsTPtOurh2wj4gPTPhdhFKbMOwxKQpYNreQGuu/DaNTMFEwHQYD\nVR0OBBYEFLx5wjDVtcT1ESdOhpSWKH14uvG+MB8GA1UdIwQYMBaAFLx5wjDVtcT1\nESdOhpSWKH14uvG+MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIh\nAJCHBVR5GXOpWYip3KoHFaLun8KL/fGrma8NUSV8sA3fAiAeJ458OkVZP5xlauMj\nNoe5EHoyjUIRoR/Q+Dc68CJLKA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_outbound_ca_file_is_read_from_the_sidecars_folder_and_must_hold_certificates() {
        let root = tempfile::tempdir().unwrap();
        let ext = root.path().join("extensions");
        std::fs::create_dir_all(&ext).unwrap();
        std::fs::write(ext.join("ca.pem"), TEST_CA).unwrap();
        std::fs::write(root.path().join("outside.pem"), TEST_CA).unwrap();
        std::fs::write(ext.join("empty.pem"), "not a certificate\n").unwrap();
        let resolve = |file: &str| {
            let spec = GrantSpec {
                outbound_ca_file: Some(file.into()),
                ..GrantSpec::default()
            };
            Grants::resolve("x", &spec, SecretFiles::In(&ext), &BTreeMap::new(), None)
        };
        assert!(resolve("ca.pem").is_ok());
        for (file, why) in [
            ("../outside.pem", "relative to the sidecar's folder"),
            ("/etc/ssl/certs/ca.pem", "relative to the sidecar's folder"),
            ("missing.pem", "No such file"),
            ("empty.pem", "no CERTIFICATE"),
        ] {
            let err = resolve(file).unwrap_err().to_string();
            assert!(
                err.starts_with("outbound_ca_file: ") && err.contains(file) && err.contains(why),
                "{err}"
            );
        }
    }

    #[test]
    fn secrets_resolve_from_files_and_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "e2b_s3cr3t_value\n").unwrap();
        let spec = GrantSpec {
            secrets: [(
                "api_key".to_owned(),
                SecretSource::File { file: "key".into() },
            )]
            .into(),
            ..Default::default()
        };
        let g = Grants::resolve(
            "x",
            &spec,
            SecretFiles::In(dir.path()),
            &BTreeMap::new(),
            None,
        )
        .unwrap();
        assert_eq!(
            g.current().pairs().collect::<Vec<_>>(),
            [("api_key", "e2b_s3cr3t_value")]
        );
        assert!(!format!("{g:?}").contains("s3cr3t"));
        let fault = g.redact_fault(Fault::Backend(BackendError::Unauthorized(
            "key e2b_s3cr3t_value refused".into(),
        )));
        assert_eq!(fault.to_string(), "unauthorized: key [redacted] refused");
        let fault = g.redact_fault(Fault::Trap {
            message: "panicked at e2b_s3cr3t_value".into(),
        });
        assert!(!fault.to_string().contains("s3cr3t"));
    }

    #[test]
    fn missing_secrets_and_clashes_fail_the_load() {
        let spec = GrantSpec {
            secrets: [(
                "api_key".to_owned(),
                SecretSource::Env {
                    env: "SANDBOXER_TEST_UNSET_VAR_7731".into(),
                },
            )]
            .into(),
            ..Default::default()
        };
        let err = Grants::resolve(
            "x",
            &spec,
            SecretFiles::In(Path::new(".")),
            &BTreeMap::new(),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("SANDBOXER_TEST_UNSET_VAR_7731"),
            "{err}"
        );
        let config = [("api_key".to_owned(), "plain".to_owned())].into();
        let err = Grants::resolve("x", &spec, SecretFiles::In(Path::new(".")), &config, None)
            .unwrap_err();
        assert!(matches!(err, GrantError::Clash { .. }), "{err}");
        let spec = GrantSpec {
            secrets: [(
                "k".to_owned(),
                SecretSource::File {
                    file: "/nonexistent/sandboxer/key".into(),
                },
            )]
            .into(),
            ..Default::default()
        };
        let err = Grants::resolve(
            "x",
            &spec,
            SecretFiles::In(Path::new(".")),
            &BTreeMap::new(),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/sandboxer/key"),
            "{err}"
        );
    }

    #[test]
    fn openbao_secrets_need_openbao_and_byok_names_a_secret() {
        let spec = GrantSpec {
            secrets: [(
                "api_key".to_owned(),
                SecretSource::OpenBao {
                    openbao: "sandboxer/e2b".into(),
                    key: "api_key".into(),
                },
            )]
            .into(),
            ..Default::default()
        };
        let err = Grants::resolve(
            "x",
            &spec,
            SecretFiles::In(Path::new(".")),
            &BTreeMap::new(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, GrantError::NoOpenBao { .. }), "{err}");
        assert!(!err.is_transient());
        let spec = GrantSpec {
            byok: vec!["token".into()],
            ..Default::default()
        };
        let err = Grants::resolve(
            "x",
            &spec,
            SecretFiles::In(Path::new(".")),
            &BTreeMap::new(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("byok: \"token\""), "{err}");
        let parsed: BTreeMap<String, SecretSource> =
            toml::from_str("k = { openbao = \"a/b\", key = \"f\" }").unwrap();
        assert_eq!(
            parsed["k"],
            SecretSource::OpenBao {
                openbao: "a/b".into(),
                key: "f".into()
            }
        );
    }
}
