//! `sandboxer.toml`: the optional configuration of `sandboxer-host run`.
//!
//! Every key is optional; with no file at all the host serves the shipped extensions
//! and profiles on [`DEFAULT_LISTEN`] with a generated `local` tenant and admin token
//! (see [`super::tokens`]). Every error names the file, the key and what was expected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::app::HealthConfig;
use crate::domain::TenantId;
use crate::runtime::grant_policy::{self, GrantPolicy, SidecarGrants};
use crate::runtime::grants::SecretSource;
use crate::runtime::sidecar::GrantKeys;

fn parse_local(raw: RawLocal, path: &Path, base: &Path) -> Result<LocalConfig, ConfigError> {
    let mode = match &raw.enabled {
        None => LocalMode::Auto,
        Some(toml::Value::Boolean(true)) => LocalMode::On,
        Some(toml::Value::Boolean(false)) => LocalMode::Off,
        Some(toml::Value::String(s)) if s == "auto" => LocalMode::Auto,
        Some(other) => {
            return Err(ConfigError::new(
                path,
                "local.enabled",
                format!("expected \"auto\", true or false, got {other}"),
            ));
        }
    };
    if raw.slots == Some(0) {
        return Err(ConfigError::new(
            path,
            "local.slots",
            "expected at least 1 sandbox",
        ));
    }
    let agent = raw
        .agent
        .map(|p| if p.is_relative() { base.join(p) } else { p });
    if let Some(a) = &agent
        && !a.is_file()
    {
        return Err(ConfigError::new(
            path,
            "local.agent",
            format!(
                "expected the sandboxer-agent binary, found no file at {}",
                a.display()
            ),
        ));
    }
    Ok(LocalConfig {
        mode,
        agent,
        slots: raw.slots,
    })
}

/// Where the host listens when neither the config, `--listen` nor `SANDBOXER_LISTEN`
/// says otherwise: loopback only, so a fresh install is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7733";

/// A configuration problem: which file, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The file (or `--listen`/environment source) the value came from.
    pub file: String,
    /// Dotted key, e.g. `tenants.acme.token_env`; `(file)` when the file itself is unreadable.
    pub key: String,
    /// What was wrong and what was expected.
    pub message: String,
}

/// `v` when it is in `range`; else an error naming `key` and the range (with its `unit`).
fn within<T: PartialOrd + std::fmt::Display + Copy>(
    path: &Path,
    key: &str,
    v: T,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
) -> Result<T, ConfigError> {
    if range.contains(&v) {
        return Ok(v);
    }
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    Err(ConfigError::new(
        path,
        key,
        format!(
            "expected {} ..= {}{unit}, got {v}",
            range.start(),
            range.end()
        ),
    ))
}

impl ConfigError {
    pub(crate) fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.display().to_string(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Where a secret token comes from: exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// The token itself, in the file (convenient for tests; prefer the other two).
    pub token: Option<String>,
    /// Name of an environment variable holding the token.
    pub token_env: Option<String>,
    /// A file holding the token (surrounding whitespace is trimmed).
    pub token_file: Option<PathBuf>,
}

/// One HTTP event sink (`[[events.http]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where to POST batches of CloudEvents (`application/cloudevents-batch+json`).
    pub url: String,
    /// Events per POST.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Per-request timeout in milliseconds.
    #[serde(default = "default_http_timeout_ms")]
    pub timeout_ms: u64,
    /// Optional bearer token sent to the receiver.
    #[serde(flatten)]
    pub auth: TokenSource,
}

fn default_batch() -> usize {
    100
}
fn default_http_timeout_ms() -> u64 {
    2_000
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    source: Option<String>,
    #[serde(default)]
    http: Vec<HttpSinkConfig>,
    deliver_interval_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeases {
    chunk_secs: Option<u64>,
    grace_secs: Option<u64>,
    renew_before_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReaper {
    interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    failure_threshold: Option<u32>,
    cool_down_secs: Option<u64>,
    max_cool_down_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    enabled: Option<bool>,
    debounce_ms: Option<u64>,
}

/// `[openbao]`: where `{ openbao = … }` secrets are read (and tenants' keys written).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBaoConfig {
    /// `http://host:port` or `https://host:port` of OpenBao.
    pub address: String,
    /// AppRole login instead of a token: the role's id (with a `secret_id_*`).
    pub role_id: Option<String>,
    /// AppRole: an environment variable holding the secret id.
    pub secret_id_env: Option<String>,
    /// AppRole: a file holding the secret id (relative: to sandboxer.toml's folder).
    pub secret_id_file: Option<PathBuf>,
    /// The token (`token`, `token_env` or `token_file`, exactly one), unless `role_id`.
    #[serde(flatten)]
    pub auth: TokenSource,
    /// The KV v2 engine's mount.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// A PEM file of CA certificates (for an `https://` address).
    pub ca_file: Option<PathBuf>,
    /// Seconds a read secret is used before it is read again (rotation picked up).
    pub refresh_secs: Option<u64>,
    /// Seconds between retries of extensions skipped because OpenBao failed.
    pub retry_secs: Option<u64>,
    /// Bound on one request, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Where tenants' own keys are stored under the mount (`PREFIX/TENANT/EXTENSION`).
    pub tenant_prefix: Option<String>,
}

fn default_mount() -> String {
    "secret".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    enabled: Option<toml::Value>,
    agent: Option<PathBuf>,
    slots: Option<u32>,
}

/// Whether `sandboxer-host run` starts its own `sandboxer-agent` for `local` (`[local]
/// enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalMode {
    /// Start it when the machine can run sandboxes; else say why and serve the others.
    Auto,
    /// Start it; a machine that cannot run sandboxes is an error at start.
    On,
    /// Never start it.
    Off,
}

/// `[local]`: the embedded agent (see `server/embedded.rs`, docs/agent.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// `enabled`: `"auto"` (default), `true` or `false`.
    pub mode: LocalMode,
    /// `agent`: the `sandboxer-agent` binary (default: beside this executable, else `PATH`).
    pub agent: Option<PathBuf>,
    /// `slots`: sandboxes at once (default: the agent's, 4 per core).
    pub slots: Option<u32>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            mode: LocalMode::Auto,
            agent: None,
            slots: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    extensions_dir: Option<PathBuf>,
    profiles_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_file_bytes: Option<u64>,
    max_concurrent_writes: Option<usize>,
    header_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    shutdown_grace_ms: Option<u64>,
    #[serde(default)]
    tenants: BTreeMap<String, TokenSource>,
    admin: Option<TokenSource>,
    metrics: Option<TokenSource>,
    #[serde(default)]
    leases: RawLeases,
    #[serde(default)]
    reaper: RawReaper,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    reload: RawReload,
    #[serde(default)]
    health: RawHealth,
    openbao: Option<OpenBaoConfig>,
    #[serde(default)]
    local: RawLocal,
    #[serde(default)]
    grants: RawGrants,
    #[serde(default)]
    database: RawDatabase,
}

/// `[database]`: where the ledger and the sandbox statuses live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
}

/// `[grants]`: see [`crate::runtime::grant_policy`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    #[serde(default)]
    sidecars: SidecarGrants,
    sidecar_env: Option<Vec<String>>,
    #[serde(default)]
    any_host: Vec<String>,
    #[serde(default)]
    extensions: BTreeMap<String, GrantKeys>,
}

/// Lease settings: credits are held one chunk at a time and renewed while a sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How much running time one lease covers.
    pub chunk: Duration,
    /// How long a sandbox whose renewal could not be covered keeps running before it is
    /// destroyed and settled.
    pub grace: Duration,
    /// Renew this long before the current lease runs out.
    pub renew_before: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            chunk: Duration::from_secs(15 * 60),
            grace: Duration::from_secs(60),
            renew_before: Duration::from_secs(60),
        }
    }
}

/// Event delivery settings.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// The CloudEvents `source` of this host; defaults to `urn:sandboxer:host:<hostname>`.
    pub source: Option<String>,
    /// HTTP sinks besides the JSONL file.
    pub http: Vec<HttpSinkConfig>,
    /// How often the outbox is drained when nothing wakes it earlier.
    pub deliver_interval: Duration,
    /// Longest wait between delivery rounds while a sink keeps failing.
    pub max_backoff: Duration,
}

/// The validated configuration of `sandboxer-host run`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The file it came from, if any (for messages).
    pub file: Option<PathBuf>,
    /// Listen address (before `--listen`/`SANDBOXER_LISTEN` are applied).
    pub listen: Option<SocketAddr>,
    /// Folder overrides from the file (relative paths resolved against the file's folder).
    pub extensions_dir: Option<PathBuf>,
    /// See `extensions_dir`.
    pub profiles_dir: Option<PathBuf>,
    /// See `extensions_dir`.
    pub state_dir: Option<PathBuf>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest file written or read in one request (`PUT`/`GET …/files/{path}`).
    pub max_file_bytes: u64,
    /// Credit grants served at once; the rest queue in arrival order. Creates and destroys
    /// are not under it on purpose: they call extensions, and a shared limit would let a
    /// slow extension's requests hold up every tenant's (docs/security.md). Their SQLite
    /// writes queue on the database file's writer gate instead.
    pub max_concurrent_writes: usize,
    /// The listener's limits: header-read timeout, connection cap, shutdown grace.
    pub serve: super::serve::ServeLimits,
    /// Tenant id → where its token comes from. Empty with no config file.
    pub tenants: BTreeMap<TenantId, TokenSource>,
    /// Where the admin token comes from.
    pub admin: Option<TokenSource>,
    /// Where the token `/metrics` wants comes from (`None`: `/metrics` is open).
    pub metrics: Option<TokenSource>,
    /// Leases.
    pub leases: LeaseConfig,
    /// How often the reaper and lease renewer run.
    pub reaper_interval: Duration,
    /// Events.
    pub events: EventsConfig,
    /// Hot reload of the extensions and profiles folders.
    pub reload: bool,
    /// Quiet period after the last file change before a reload.
    pub reload_debounce: Duration,
    /// The circuit breaker routing keeps per extension.
    pub health: HealthConfig,
    /// OpenBao, when configured (token not read yet; see `server::app_options`).
    pub openbao: Option<OpenBaoConfig>,
    /// The embedded agent.
    pub local: LocalConfig,
    /// `[grants]`: what sidecars may grant themselves, grants the host owns.
    pub grants: GrantPolicy,
    /// `[database] url`: a PostgreSQL database in place of the state folder's SQLite file
    /// (before `--database`/`SANDBOXER_DATABASE_URL` are applied).
    pub database_url: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            file: None,
            listen: None,
            extensions_dir: None,
            profiles_dir: None,
            state_dir: None,
            max_body_bytes: 64 * 1024,
            max_file_bytes: crate::app::DEFAULT_MAX_FILE_BYTES,
            max_concurrent_writes: 8,
            serve: super::serve::ServeLimits::default(),
            tenants: BTreeMap::new(),
            admin: None,
            metrics: None,
            leases: LeaseConfig::default(),
            reaper_interval: Duration::from_secs(5),
            events: EventsConfig {
                source: None,
                http: Vec::new(),
                deliver_interval: Duration::from_millis(250),
                max_backoff: Duration::from_secs(30),
            },
            reload: true,
            reload_debounce: Duration::from_millis(250),
            health: HealthConfig::default(),
            openbao: None,
            local: LocalConfig::default(),
            grants: GrantPolicy::default(),
            database_url: None,
        }
    }
}

impl ServiceConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parses and validates the text of a config file named `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| ConfigError::new(path, "(syntax)", toml_message(&e, text)))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_owned()
            } else {
                key
            };
            ConfigError::new(path, key, toml_message(e.inner(), text))
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let mut cfg = ServiceConfig {
            file: Some(path.to_owned()),
            ..Default::default()
        };
        if let Some(l) = raw.listen {
            cfg.listen = Some(parse_listen(&l).map_err(|m| ConfigError::new(path, "listen", m))?);
        }
        cfg.extensions_dir = raw.extensions_dir.map(rel);
        cfg.profiles_dir = raw.profiles_dir.map(rel);
        cfg.state_dir = raw.state_dir.map(rel);
        if let Some(url) = raw.database.url {
            super::check_database_url(&url)
                .map_err(|m| ConfigError::new(path, "database.url", m))?;
            cfg.database_url = Some(url);
        }
        if let Some(n) = raw.max_body_bytes {
            if !(256..=16 * 1024 * 1024).contains(&n) {
                return Err(ConfigError::new(
                    path,
                    "max_body_bytes",
                    "expected 256 ..= 16777216 bytes",
                ));
            }
            cfg.max_body_bytes = n;
        }
        if let Some(n) = raw.max_file_bytes {
            if !(1..=1 << 30).contains(&n) {
                return Err(ConfigError::new(
                    path,
                    "max_file_bytes",
                    "expected 1 ..= 1073741824 bytes",
                ));
            }
            cfg.max_file_bytes = n;
        }
        if let Some(n) = raw.max_concurrent_writes {
            if !(1..=1024).contains(&n) {
                return Err(ConfigError::new(
                    path,
                    "max_concurrent_writes",
                    "expected 1 ..= 1024",
                ));
            }
            cfg.max_concurrent_writes = n;
        }
        let ms = |key: &str, v: Option<u64>, range: std::ops::RangeInclusive<u64>| {
            v.map(|v| within(path, key, v, range, "milliseconds").map(Duration::from_millis))
                .transpose()
        };
        if let Some(d) = ms("header_timeout_ms", raw.header_timeout_ms, 100..=600_000)? {
            cfg.serve.header_timeout = d;
        }
        if let Some(d) = ms("shutdown_grace_ms", raw.shutdown_grace_ms, 0..=3_600_000)? {
            cfg.serve.shutdown_grace = d;
        }
        if let Some(n) = raw.max_connections {
            cfg.serve.max_connections = within(path, "max_connections", n, 1..=1_000_000, "")?;
        }
        for (tenant, src) in raw.tenants {
            let Ok(id) = TenantId::parse(&tenant) else {
                return Err(ConfigError::new(
                    path,
                    format!("tenants.{tenant}"),
                    "expected a tenant id of lowercase letters, digits, '-' and '_' (at most 64, starting with a letter or digit)",
                ));
            };
            check_source(&src, path, &format!("tenants.{tenant}"), base)?;
            cfg.tenants.insert(id, resolve_file(src, base));
        }
        if let Some(src) = raw.admin {
            check_source(&src, path, "admin", base)?;
            cfg.admin = Some(resolve_file(src, base));
        }
        if let Some(src) = raw.metrics {
            check_source(&src, path, "metrics", base)?;
            cfg.metrics = Some(resolve_file(src, base));
        }
        if !cfg.tenants.is_empty() && cfg.admin.is_none() {
            // Not an error: credits can still be added with `sandboxer credits add`.
            tracing::info!(file = %path.display(), "no [admin] token configured: POST /v1/tenants/{{tenant}}/credits is disabled");
        }
        let l = raw.leases;
        let secs =
            |v: Option<u64>, key: &str, min: u64, def: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(def),
                    Some(s) if s >= min => Ok(Duration::from_secs(s)),
                    Some(_) => Err(ConfigError::new(
                        path,
                        key,
                        format!("expected a whole number of seconds ≥ {min}"),
                    )),
                }
            };
        cfg.leases.chunk = secs(l.chunk_secs, "leases.chunk_secs", 1, cfg.leases.chunk)?;
        cfg.leases.grace = secs(l.grace_secs, "leases.grace_secs", 0, cfg.leases.grace)?;
        cfg.leases.renew_before = secs(
            l.renew_before_secs,
            "leases.renew_before_secs",
            0,
            cfg.leases.renew_before,
        )?;
        if cfg.leases.renew_before >= cfg.leases.chunk {
            return Err(ConfigError::new(
                path,
                "leases.renew_before_secs",
                "expected less than leases.chunk_secs",
            ));
        }
        if let Some(ms) = raw.reaper.interval_ms {
            if !(10..=3_600_000).contains(&ms) {
                return Err(ConfigError::new(
                    path,
                    "reaper.interval_ms",
                    "expected 10 ..= 3600000 milliseconds",
                ));
            }
            cfg.reaper_interval = Duration::from_millis(ms);
        }
        let ev = raw.events;
        cfg.events.source = ev.source;
        if let Some(s) = &cfg.events.source
            && s.trim().is_empty()
        {
            return Err(ConfigError::new(
                path,
                "events.source",
                "expected a non-empty URI reference",
            ));
        }
        for (i, h) in ev.http.into_iter().enumerate() {
            let key = format!("events.http[{i}]");
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return Err(ConfigError::new(
                    path,
                    format!("{key}.url"),
                    "expected an http:// or https:// URL",
                ));
            }
            if h.batch_size == 0 || h.batch_size > 10_000 {
                return Err(ConfigError::new(
                    path,
                    format!("{key}.batch_size"),
                    "expected 1 ..= 10000",
                ));
            }
            if h.timeout_ms == 0 {
                return Err(ConfigError::new(
                    path,
                    format!("{key}.timeout_ms"),
                    "expected a positive number of milliseconds",
                ));
            }
            let has_auth =
                h.auth.token.is_some() || h.auth.token_env.is_some() || h.auth.token_file.is_some();
            if has_auth {
                check_source(&h.auth, path, &key, base)?;
            }
            let auth = resolve_file(h.auth.clone(), base);
            cfg.events.http.push(HttpSinkConfig { auth, ..h });
        }
        if let Some(ms) = ev.deliver_interval_ms {
            if ms == 0 {
                return Err(ConfigError::new(
                    path,
                    "events.deliver_interval_ms",
                    "expected a positive number of milliseconds",
                ));
            }
            cfg.events.deliver_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = ev.max_backoff_ms {
            if ms == 0 {
                return Err(ConfigError::new(
                    path,
                    "events.max_backoff_ms",
                    "expected a positive number of milliseconds",
                ));
            }
            cfg.events.max_backoff = Duration::from_millis(ms);
        }
        if let Some(b) = raw.reload.enabled {
            cfg.reload = b;
        }
        if let Some(ms) = raw.reload.debounce_ms {
            cfg.reload_debounce = Duration::from_millis(ms);
        }
        cfg.local = parse_local(raw.local, path, base)?;
        let h = raw.health;
        if let Some(n) = h.failure_threshold {
            if !(1..=1000).contains(&n) {
                return Err(ConfigError::new(
                    path,
                    "health.failure_threshold",
                    "expected 1 ..= 1000 consecutive failures",
                ));
            }
            cfg.health.failure_threshold = n;
        }
        cfg.health.cool_down = secs(
            h.cool_down_secs,
            "health.cool_down_secs",
            1,
            cfg.health.cool_down,
        )?;
        cfg.health.max_cool_down = secs(
            h.max_cool_down_secs,
            "health.max_cool_down_secs",
            1,
            cfg.health.max_cool_down,
        )?;
        if cfg.health.max_cool_down < cfg.health.cool_down {
            return Err(ConfigError::new(
                path,
                "health.max_cool_down_secs",
                "expected at least health.cool_down_secs",
            ));
        }
        if let Some(b) = raw.openbao {
            cfg.openbao = Some(check_openbao(b, path, base)?);
        }
        cfg.grants = parse_grants(raw.grants, path, base)?;
        cfg.grants.host_env = host_env(&cfg);
        Ok(cfg)
    }
}

fn parse_grants(raw: RawGrants, path: &Path, base: &Path) -> Result<GrantPolicy, ConfigError> {
    let mut policy = GrantPolicy {
        sidecars: raw.sidecars,
        ..GrantPolicy::default()
    };
    if let Some(list) = raw.sidecar_env {
        for (i, p) in list.iter().enumerate() {
            grant_policy::check_env_pattern(p)
                .map_err(|m| ConfigError::new(path, format!("grants.sidecar_env[{i}]"), m))?;
        }
        policy.sidecar_env = Some(list);
    }
    for (i, id) in raw.any_host.into_iter().enumerate() {
        crate::runtime::sidecar::validate_id(&id)
            .map_err(|m| ConfigError::new(path, format!("grants.any_host[{i}]"), m))?;
        policy.any_host.insert(id);
    }
    for (id, keys) in raw.extensions {
        let key = format!("grants.extensions.{id}");
        crate::runtime::sidecar::validate_id(&id)
            .map_err(|m| ConfigError::new(path, key.as_str(), m))?;
        let mut spec = keys
            .into_spec()
            .map_err(|m| ConfigError::new(path, key.as_str(), m))?;
        // The operator's files: relative to sandboxer.toml's folder, anywhere it says.
        for source in spec.secrets.values_mut() {
            if let SecretSource::File { file } = source {
                *file = under(base, std::mem::take(file));
            }
        }
        spec.outbound_ca_file = spec.outbound_ca_file.map(|f| under(base, f));
        policy.extensions.insert(id, spec);
    }
    Ok(policy)
}

/// The variables this config reads tokens from: no sidecar may read them.
fn host_env(cfg: &ServiceConfig) -> std::collections::BTreeSet<String> {
    let sources = cfg
        .tenants
        .values()
        .chain(cfg.admin.as_ref())
        .chain(cfg.metrics.as_ref())
        .chain(cfg.events.http.iter().map(|h| &h.auth))
        .chain(cfg.openbao.as_ref().map(|b| &b.auth));
    let mut vars: std::collections::BTreeSet<String> =
        sources.filter_map(|s| s.token_env.clone()).collect();
    vars.extend(cfg.openbao.as_ref().and_then(|b| b.secret_id_env.clone()));
    vars
}

/// Parses a listen address such as `127.0.0.1:7733` or `[::1]:8080`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse::<SocketAddr>().map_err(|_| {
        format!("expected an address with a port such as 127.0.0.1:7733 or [::]:7733, got {s:?}")
    })
}

fn check_source(src: &TokenSource, file: &Path, key: &str, base: &Path) -> Result<(), ConfigError> {
    let n = usize::from(src.token.is_some())
        + usize::from(src.token_env.is_some())
        + usize::from(src.token_file.is_some());
    if n != 1 {
        return Err(ConfigError::new(
            file,
            key,
            "expected exactly one of token, token_env, token_file",
        ));
    }
    if let Some(t) = &src.token
        && t.trim().len() < 16
    {
        return Err(ConfigError::new(
            file,
            format!("{key}.token"),
            "expected a token of at least 16 characters",
        ));
    }
    if let Some(v) = &src.token_env
        && v.is_empty()
    {
        return Err(ConfigError::new(
            file,
            format!("{key}.token_env"),
            "expected an environment variable name",
        ));
    }
    let _ = base;
    Ok(())
}

fn check_openbao(
    mut b: OpenBaoConfig,
    path: &Path,
    base: &Path,
) -> Result<OpenBaoConfig, ConfigError> {
    let a = b.address.trim_end_matches('/');
    let rest = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"));
    if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
        return Err(ConfigError::new(
            path,
            "openbao.address",
            "expected http://host:port or https://host:port, with no path",
        ));
    }
    b.address = a.to_owned();
    if let Some(role_id) = &b.role_id {
        let tokens =
            b.auth.token.is_some() || b.auth.token_env.is_some() || b.auth.token_file.is_some();
        if tokens {
            return Err(ConfigError::new(
                path,
                "openbao.role_id",
                "expected either role_id (AppRole) or one of token, token_env, token_file, not both",
            ));
        }
        if role_id.trim().is_empty() {
            return Err(ConfigError::new(
                path,
                "openbao.role_id",
                "expected the AppRole's role id",
            ));
        }
        if usize::from(b.secret_id_env.is_some()) + usize::from(b.secret_id_file.is_some()) != 1 {
            return Err(ConfigError::new(
                path,
                "openbao.role_id",
                "expected exactly one of secret_id_env, secret_id_file with role_id",
            ));
        }
        b.secret_id_file = b.secret_id_file.map(|p| under(base, p));
    } else {
        if b.secret_id_env.is_some() || b.secret_id_file.is_some() {
            return Err(ConfigError::new(
                path,
                "openbao.role_id",
                "a secret_id needs the AppRole's role_id",
            ));
        }
        check_source(&b.auth, path, "openbao", base)?;
        b.auth = resolve_file(b.auth, base);
    }
    if b.mount.is_empty()
        || b.mount.starts_with('/')
        || b.mount.ends_with('/')
        || b.mount.split('/').any(|s| s.is_empty() || s == "..")
    {
        return Err(ConfigError::new(
            path,
            "openbao.mount",
            "expected a mount path such as \"secret\"",
        ));
    }
    if let Some(p) = &b.tenant_prefix
        && crate::secrets::openbao::check_path(p).is_err()
    {
        return Err(ConfigError::new(
            path,
            "openbao.tenant_prefix",
            "expected a path such as \"sandboxer/tenants\" (letters, digits, `.`, `_`, `-` and `/`)",
        ));
    }
    b.ca_file = b.ca_file.map(|p| under(base, p));
    if b.ca_file.is_some() && !b.address.starts_with("https://") {
        return Err(ConfigError::new(
            path,
            "openbao.ca_file",
            "expected an https:// address with a ca_file",
        ));
    }
    for (key, v) in [
        ("openbao.refresh_secs", b.refresh_secs),
        ("openbao.retry_secs", b.retry_secs),
        ("openbao.timeout_ms", b.timeout_ms),
    ] {
        if v == Some(0) {
            return Err(ConfigError::new(path, key, "expected a positive number"));
        }
    }
    Ok(b)
}

/// `p`, relative to `base` (the config file's folder) unless absolute.
fn under(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() { base.join(p) } else { p }
}

fn resolve_file(mut src: TokenSource, base: &Path) -> TokenSource {
    if let Some(p) = src.token_file.take() {
        src.token_file = Some(if p.is_relative() { base.join(p) } else { p });
    }
    src
}

/// toml's message, without its multi-line source excerpt, plus the line number.
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{msg} (line {line})")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::parse(text, Path::new("/etc/sandboxer/sandboxer.toml"))
    }

    #[test]
    fn local_section() {
        assert_eq!(parse("").unwrap().local, LocalConfig::default());
        let c = parse("[local]\nenabled = false\nslots = 3\n").unwrap();
        assert_eq!(c.local.mode, LocalMode::Off);
        assert_eq!(c.local.slots, Some(3));
        assert_eq!(
            parse("[local]\nenabled = true\n").unwrap().local.mode,
            LocalMode::On
        );
        let e = parse("[local]\nenabled = \"yes\"\n").unwrap_err();
        assert_eq!(e.key, "local.enabled");
        assert!(
            e.to_string().contains("/etc/sandboxer/sandboxer.toml"),
            "{e}"
        );
        assert_eq!(
            parse("[local]\nslots = 0\n").unwrap_err().key,
            "local.slots"
        );
        assert_eq!(
            parse("[local]\nslots = \"x\"\n").unwrap_err().key,
            "local.slots"
        );
        assert_eq!(
            parse("[local]\nagent = \"/nonexistent/agent\"\n")
                .unwrap_err()
                .key,
            "local.agent"
        );
        assert_eq!(
            parse("[local]\nbwrap = 1\n").unwrap_err().key,
            "local.bwrap"
        );
    }

    #[test]
    fn grants_are_checked_and_the_hosts_own_variables_collected() {
        let c = parse(
            "[tenants.a]\ntoken_env = \"A_TOKEN\"\n[admin]\ntoken_env = \"OPS_ADMIN\"\n\
             [grants]\nsidecars = \"refuse\"\nsidecar_env = [\"E2B_*\"]\nany_host = [\"proxy\"]\n\
             [grants.extensions.e2b]\nsecrets = { api_key = { file = \"keys/e2b\" } }\n",
        )
        .unwrap();
        let g = &c.grants;
        assert_eq!(g.sidecars, SidecarGrants::Refuse);
        assert_eq!(g.sidecar_env.as_deref(), Some(&["E2B_*".to_owned()][..]));
        assert!(g.any_host.contains("proxy"));
        assert!(g.host_env.contains("A_TOKEN") && g.host_env.contains("OPS_ADMIN"));
        assert_eq!(
            g.extensions["e2b"].secrets["api_key"],
            SecretSource::File {
                file: PathBuf::from("/etc/sandboxer/keys/e2b")
            },
            "relative to the config file's folder"
        );
        for (text, key) in [
            ("[grants]\nsidecars = \"maybe\"\n", "grants.sidecars"),
            (
                "[grants]\nsidecar_env = [\"A-B\"]\n",
                "grants.sidecar_env[0]",
            ),
            ("[grants]\nany_host = [\"Bad Id\"]\n", "grants.any_host[0]"),
            (
                "[grants.extensions.e2b]\nsecrts = {}\n",
                "grants.extensions.e2b.secrts",
            ),
            (
                "[grants.extensions.e2b]\nbyok_fee_percent = \"-1\"\n",
                "grants.extensions.e2b",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert!(c.tenants.is_empty());
        assert_eq!(c.leases, LeaseConfig::default());
        assert!(c.reload);
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
            listen = "0.0.0.0:9000"
            state_dir = "state"
            [tenants.acme]
            token_env = "ACME_TOKEN"
            [tenants.beta]
            token_file = "beta.token"
            [admin]
            token = "0123456789abcdef0123"
            [leases]
            chunk_secs = 2
            grace_secs = 1
            renew_before_secs = 1
            [[events.http]]
            url = "http://127.0.0.1:9/hub"
            batch_size = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.unwrap().port(), 9000);
        assert_eq!(c.state_dir.unwrap(), PathBuf::from("/etc/sandboxer/state"));
        assert_eq!(
            c.tenants[&TenantId::parse("beta").unwrap()]
                .token_file
                .as_deref(),
            Some(Path::new("/etc/sandboxer/beta.token"))
        );
        assert_eq!(c.leases.chunk, Duration::from_secs(2));
        assert_eq!(c.events.http[0].batch_size, 10);
    }

    #[test]
    fn a_database_url_is_a_postgres_url_and_errors_hide_its_password() {
        let c = parse("[database]\nurl = \"postgres://u:pw@db:5432/sandboxer\"\n").unwrap();
        assert_eq!(
            c.database_url.as_deref(),
            Some("postgres://u:pw@db:5432/sandboxer")
        );
        assert_eq!(parse("").unwrap().database_url, None);
        let e = parse("[database]\nurl = \"mysql://u:secret@db/x\"\n").unwrap_err();
        assert_eq!(e.key, "database.url");
        assert!(e.to_string().contains("PostgreSQL"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = parse("[database]\nurl = \"postgres://u:secret@db:notaport/x\"\n").unwrap_err();
        assert_eq!(e.key, "database.url");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("u:***@"), "{e}");
        let e = parse("[database]\nhost = \"db\"\n").unwrap_err();
        assert!(e.key.contains("database"), "{e}");
    }

    #[test]
    fn errors_name_file_key_and_expectation() {
        let e = parse("[tenants.acme]\ntoken_env = \"A\"\ncolour = 1\n").unwrap_err();
        assert_eq!(e.file, "/etc/sandboxer/sandboxer.toml");
        assert!(e.message.contains("colour"), "{e}");
        let e = parse("[leases]\nchunk_secs = \"ten\"\n").unwrap_err();
        assert_eq!(e.key, "leases.chunk_secs", "{e}");
        let e = parse("listen = \"localhost\"\n").unwrap_err();
        assert_eq!(e.key, "listen");
        let e =
            parse("[tenants.acme]\ntoken_env = \"A\"\ntoken = \"0123456789abcdef\"\n").unwrap_err();
        assert_eq!(e.key, "tenants.acme");
        assert!(e.message.contains("exactly one"));
        let e = parse("[tenants.Acme]\ntoken_env = \"A\"\n").unwrap_err();
        assert_eq!(e.key, "tenants.Acme");
        let e = parse("[[events.http]]\nurl = \"ftp://x\"\n").unwrap_err();
        assert_eq!(e.key, "events.http[0].url");
        let e = parse("[leases]\nchunk_secs = 5\nrenew_before_secs = 5\n").unwrap_err();
        assert_eq!(e.key, "leases.renew_before_secs");
        let e = parse("[health]\nfailure_threshold = 0\n").unwrap_err();
        assert_eq!(e.key, "health.failure_threshold");
        let e = parse("[health]\ncool_down_secs = 60\nmax_cool_down_secs = 30\n").unwrap_err();
        assert_eq!(e.key, "health.max_cool_down_secs");
        let e = parse("[health]\ncooldown = 60\n").unwrap_err();
        assert!(e.message.contains("cooldown"), "{e}");
    }

    #[test]
    fn openbao_settings_are_checked_and_relative_files_resolved() {
        let c = parse(
            "[openbao]\naddress = \"http://127.0.0.1:8200/\"\ntoken_file = \"bao.token\"\nrefresh_secs = 5\n",
        )
        .unwrap();
        let b = c.openbao.unwrap();
        assert_eq!(b.address, "http://127.0.0.1:8200");
        assert_eq!(b.mount, "secret");
        assert_eq!(b.refresh_secs, Some(5));
        assert_eq!(
            b.auth.token_file.as_deref(),
            Some(Path::new("/etc/sandboxer/bao.token"))
        );
        let c = parse(
            "[openbao]\naddress = \"https://bao:8200\"\nrole_id = \"r-1\"\nsecret_id_file = \"sid\"\nca_file = \"ca.pem\"\n",
        )
        .unwrap();
        let b = c.openbao.unwrap();
        assert_eq!(b.role_id.as_deref(), Some("r-1"));
        assert_eq!(
            b.secret_id_file.as_deref(),
            Some(Path::new("/etc/sandboxer/sid"))
        );
        assert_eq!(
            b.ca_file.as_deref(),
            Some(Path::new("/etc/sandboxer/ca.pem"))
        );
        for (text, key) in [
            (
                "address = \"127.0.0.1:8200\"\ntoken_env = \"T\"",
                "openbao.address",
            ),
            (
                "address = \"http://b:1/v1\"\ntoken_env = \"T\"",
                "openbao.address",
            ),
            ("address = \"http://b:1\"", "openbao"),
            (
                "address = \"http://b:1\"\ntoken_env = \"T\"\nmount = \"../x\"",
                "openbao.mount",
            ),
            (
                "address = \"http://b:1\"\ntoken_env = \"T\"\nrefresh_secs = 0",
                "openbao.refresh_secs",
            ),
            (
                "address = \"http://b:1\"\ntoken_env = \"T\"\ntenant_prefix = \"a/../b\"",
                "openbao.tenant_prefix",
            ),
            (
                "address = \"http://b:1\"\ntoken_env = \"T\"\nrole = \"x\"",
                "openbao",
            ),
            (
                "address = \"http://b:1\"\ntoken_env = \"T\"\nrole_id = \"r\"\nsecret_id_env = \"S\"",
                "openbao.role_id",
            ),
            (
                "address = \"http://b:1\"\nrole_id = \"r\"",
                "openbao.role_id",
            ),
            (
                "address = \"http://b:1\"\ntoken_env = \"T\"\nsecret_id_env = \"S\"",
                "openbao.role_id",
            ),
            (
                "address = \"http://b:1\"\ntoken_env = \"T\"\nca_file = \"ca.pem\"",
                "openbao.ca_file",
            ),
        ] {
            let e = parse(&format!("[openbao]\n{text}\n")).unwrap_err();
            assert!(e.key.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn health_settings_reach_the_circuit_breaker_config() {
        let c = parse("[health]\nfailure_threshold = 5\ncool_down_secs = 10\n").unwrap();
        assert_eq!(c.health.failure_threshold, 5);
        assert_eq!(c.health.cool_down, Duration::from_secs(10));
        assert_eq!(c.health.max_cool_down, Duration::from_secs(600));
        assert_eq!(parse("").unwrap().health.failure_threshold, 3);
    }
}
