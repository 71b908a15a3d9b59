//! The extension's configuration, read from `wasi:config/store` on every call (the
//! extension keeps no state). Keys and defaults are documented in docs/extensions/e2b.md.

use crate::decimal::Dec;
use guest_kit::http::BaseUrl;
use std::collections::BTreeMap;

/// E2B's public list price per vCPU-second (USD).
pub const DEFAULT_PRICE_VCPU_SECOND: &str = "0.000014";
/// E2B's public list price per GiB-second of memory (USD).
pub const DEFAULT_PRICE_GIB_SECOND: &str = "0.0000045";

/// Everything the extension reads from its configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// All raw values (for the optional keys read lazily).
    raw: BTreeMap<String, String>,
}

/// E2B's envd listens on this port of every sandbox.
pub const ENVD_PORT: u16 = 49983;

/// Where E2B's SDK reaches a sandbox's envd.
pub const DEFAULT_ENVD_URL: &str = "https://{port}-{sandbox_id}.{domain}";

impl Config {
    /// Reads every granted value; an unreadable store counts as empty (info must not fail).
    pub fn load() -> Config {
        Config::from_pairs(crate::wasi::config::store::get_all().unwrap_or_default())
    }

    /// From key/value pairs (what `wasi:config/store.get-all` returns).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Config {
        Config {
            raw: pairs.into_iter().collect(),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.raw
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// `base_url`, default `https://api.e2b.app`.
    pub fn base_url_str(&self) -> &str {
        self.get("base_url").unwrap_or("https://api.e2b.app")
    }

    /// `base_url`, parsed.
    pub fn base_url(&self) -> Result<BaseUrl, String> {
        BaseUrl::parse(self.base_url_str(), "base_url")
    }

    /// `envd_url`: where a sandbox's envd is, with `{port}`, `{sandbox_id}` and `{domain}`
    /// filled in; default E2B's `https://{port}-{sandbox_id}.{domain}`.
    pub fn envd_url(&self) -> &str {
        self.get("envd_url").unwrap_or(DEFAULT_ENVD_URL)
    }

    /// `envd_port`, default 49983.
    pub fn envd_port(&self) -> Result<u16, String> {
        match self.get("envd_port") {
            None => Ok(ENVD_PORT),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("config envd_port: expected a port number, got {v:?}")),
        }
    }

    /// `domain`: the sandbox domain when E2B's answer names none; default `e2b.app`.
    pub fn domain(&self) -> &str {
        self.get("domain").unwrap_or("e2b.app")
    }

    /// `envd_user`: the sandbox user commands and files act as (empty: the template's).
    pub fn envd_user(&self) -> Option<&str> {
        self.get("envd_user")
    }

    /// `secure`: ask E2B for a secured envd (an access token on every envd call); default
    /// true.
    pub fn secure(&self) -> Result<bool, String> {
        match self.get("secure").map(str::trim) {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(format!("config secure: expected true or false, got {v:?}")),
        }
    }

    /// `envd_keepalive_secs`: how often envd sends a keep-alive on a quiet command's
    /// stream (keep it under the host's `outbound_timeout_ms`); default 5.
    pub fn envd_keepalive_secs(&self) -> Result<u32, String> {
        self.uint("envd_keepalive_secs", 5)
    }

    /// `api_key` (a secret granted by the host); never echoed anywhere.
    pub fn api_key(&self) -> Option<&str> {
        self.get("api_key")
    }

    /// `template`: used when the request names none. Default `base`.
    pub fn default_template(&self) -> &str {
        self.get("template").unwrap_or("base")
    }

    /// `kind`: `saas` (default) or `self-hosted`.
    pub fn self_hosted(&self) -> bool {
        matches!(self.get("kind"), Some("self-hosted") | Some("self_hosted"))
    }

    /// `id`, default `e2b`.
    pub fn id(&self) -> &str {
        self.get("id").unwrap_or("e2b")
    }

    /// `name`, default "E2B (<host>)".
    pub fn name(&self) -> String {
        match self.get("name") {
            Some(n) => n.to_owned(),
            None => {
                let host = self
                    .base_url_str()
                    .split("://")
                    .nth(1)
                    .unwrap_or("")
                    .split('/')
                    .next()
                    .unwrap_or("");
                format!("E2B ({host})")
            }
        }
    }

    /// `currency`, default `USD`.
    pub fn currency(&self) -> &str {
        self.get("currency").unwrap_or("USD")
    }

    /// `regions`: comma-separated; empty means any.
    pub fn regions(&self) -> Vec<String> {
        self.get("regions")
            .map(|r| {
                r.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `startup_latency_ms`, default 400.
    pub fn startup_latency_ms(&self) -> u32 {
        self.get("startup_latency_ms")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(400)
    }

    /// `max_sandboxes`: a finite pool (useful for a self-hosted deployment); none by default.
    pub fn max_sandboxes(&self) -> Result<Option<u32>, String> {
        match self.get("max_sandboxes") {
            None => Ok(None),
            Some(v) => {
                v.trim().parse().map(Some).map_err(|_| {
                    format!("config max_sandboxes: expected a whole number, got {v:?}")
                })
            }
        }
    }

    fn uint(&self, key: &str, default: u32) -> Result<u32, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "config {key}: expected a whole number above 0, got {v:?}"
                )),
            },
        }
    }

    /// `template_vcpus`: the vCPUs the template gives (E2B sizes sandboxes by template).
    /// Default 2, E2B's default template size.
    pub fn template_vcpus(&self) -> Result<u32, String> {
        self.uint("template_vcpus", 2)
    }

    /// `template_memory_mib`: the memory the template gives. Default 512.
    pub fn template_memory_mib(&self) -> Result<u32, String> {
        self.uint("template_memory_mib", 512)
    }

    fn price(&self, key: &str, default: &str) -> Result<Dec, String> {
        let raw = self.get(key).unwrap_or(default).trim();
        Dec::parse(raw).ok_or_else(|| {
            format!("config {key}: expected a decimal like \"0.000014\", got {raw:?}")
        })
    }

    /// `price_vcpu_second`, default E2B's list price.
    pub fn price_vcpu_second(&self) -> Result<Dec, String> {
        self.price("price_vcpu_second", DEFAULT_PRICE_VCPU_SECOND)
    }

    /// `price_gib_second`, default E2B's list price.
    pub fn price_gib_second(&self) -> Result<Dec, String> {
        self.price("price_gib_second", DEFAULT_PRICE_GIB_SECOND)
    }
}
