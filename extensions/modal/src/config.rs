//! The extension's configuration: the sidecar's `[config]` and `[secrets]`, read from
//! `wasi:config/store`. Keys and defaults are documented in docs/extensions/modal.md.

use std::collections::BTreeMap;

use guest_kit::http::BaseUrl;
use rust_decimal::Decimal;

/// Modal's public price per physical-core-second of a sandbox (USD, 1 core = 2 vCPU).
pub const DEFAULT_PRICE_CORE_SECOND: &str = "0.00003942";
/// Modal's public price per GiB-second of sandbox memory (USD).
pub const DEFAULT_PRICE_GIB_SECOND: &str = "0.00000672";
/// Modal's API.
pub const DEFAULT_SERVER_URL: &str = "https://api.modal.com";

/// Every value the operator granted.
#[derive(Debug, Clone, Default)]
pub struct Config {
    raw: BTreeMap<String, String>,
}

impl Config {
    /// From key/value pairs (what `wasi:config/store.get-all` returns).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Config {
        Config {
            raw: pairs.into_iter().collect(),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.raw
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn text<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    fn number(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "config {key}: expected a whole number in {min}..={max}, got {v:?}"
                )),
            },
        }
    }

    fn decimal(&self, key: &str, default: &str) -> Result<Decimal, String> {
        let raw = self.text(key, default);
        parse_decimal(raw).ok_or_else(|| {
            format!("config {key}: expected a decimal like \"0.00003942\", got {raw:?}")
        })
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(format!("config {key}: expected true or false, got {v:?}")),
        }
    }

    /// `token_id` (grant it under `[secrets]`).
    pub fn token_id(&self) -> Option<&str> {
        self.get("token_id")
    }

    /// `token_secret` (a secret; never echoed).
    pub fn token_secret(&self) -> Option<&str> {
        self.get("token_secret")
    }

    /// `server_url`, default Modal's API.
    pub fn server_url(&self) -> Result<BaseUrl, String> {
        BaseUrl::parse(
            self.text("server_url", DEFAULT_SERVER_URL),
            "config server_url",
        )
    }

    /// `environment`: the Modal environment (empty: the workspace's default).
    pub fn environment(&self) -> &str {
        self.text("environment", "")
    }

    /// `app_name`: the app every sandbox of this extension belongs to.
    pub fn app_name(&self) -> &str {
        self.text("app_name", "sandboxer")
    }

    /// `image`: the registry image for the `base` template and for requests naming none.
    pub fn default_image(&self) -> &str {
        self.text("image", "python:3.13-slim")
    }

    /// `templates`: `name=image` pairs, comma-separated.
    pub fn templates(&self) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        let Some(raw) = self.get("templates") else {
            return Ok(out);
        };
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                    out.insert(k.trim().to_owned(), v.trim().to_owned());
                }
                _ => {
                    return Err(format!(
                        "config templates: expected name=image pairs separated by commas, got {pair:?}"
                    ));
                }
            }
        }
        Ok(out)
    }

    /// `image_builder_version` (empty: Modal's default for the workspace).
    pub fn image_builder_version(&self) -> &str {
        self.text("image_builder_version", "")
    }

    /// `workdir`: the sandbox's working folder, where relative paths and commands start.
    pub fn workdir(&self) -> Result<String, String> {
        let w = self.text("workdir", "/root");
        if !w.starts_with('/') || w.split('/').any(|c| c == "..") {
            return Err(format!(
                "config workdir: expected an absolute path, got {w:?}"
            ));
        }
        let w = w.trim_end_matches('/');
        Ok(if w.is_empty() {
            "/".to_owned()
        } else {
            w.to_owned()
        })
    }

    /// `vcpus_per_core`: vCPUs in one of Modal's physical cores (default 2).
    pub fn vcpus_per_core(&self) -> Result<u32, String> {
        self.number("vcpus_per_core", 2, 1, 8).map(|n| n as u32)
    }

    /// `max_vcpus`: the largest request served.
    pub fn max_vcpus(&self) -> Result<u32, String> {
        self.number("max_vcpus", 64, 1, 1024).map(|n| n as u32)
    }

    /// `max_memory_mib`: the largest memory request served.
    pub fn max_memory_mib(&self) -> Result<u32, String> {
        self.number("max_memory_mib", 65_536, 1, 4_194_304)
            .map(|n| n as u32)
    }

    /// `cap_to_request`: set Modal's CPU and memory limits to the request, so a sandbox never
    /// bursts above what was estimated and held (default true).
    pub fn cap_to_request(&self) -> Result<bool, String> {
        self.flag("cap_to_request", true)
    }

    /// `price_core_second`.
    pub fn price_core_second(&self) -> Result<Decimal, String> {
        self.decimal("price_core_second", DEFAULT_PRICE_CORE_SECOND)
    }

    /// `price_gib_second`.
    pub fn price_gib_second(&self) -> Result<Decimal, String> {
        self.decimal("price_gib_second", DEFAULT_PRICE_GIB_SECOND)
    }

    /// `region_multiplier`: the factor on both prices when a request pins a region.
    pub fn region_multiplier(&self) -> Result<Decimal, String> {
        self.decimal("region_multiplier", "1")
    }

    /// `currency`, default `USD`.
    pub fn currency(&self) -> &str {
        self.text("currency", "USD")
    }

    /// `terminate_wait_secs`: how long `destroy` waits for the sandbox to end before it
    /// reads the resource usage.
    pub fn terminate_wait_secs(&self) -> Result<u32, String> {
        self.number("terminate_wait_secs", 5, 0, 55)
            .map(|n| n as u32)
    }

    /// `stream_slice_ms`: the longest one output stream stays open while `exec` waits on a
    /// quiet command (keep it under the host's `outbound_timeout_ms`).
    pub fn stream_slice_ms(&self) -> Result<u64, String> {
        self.number("stream_slice_ms", 5_000, 100, 600_000)
    }

    /// `client_type` and `client_version`: what the extension reports in
    /// `x-modal-client-type`/`x-modal-client-version` (default: as Modal's Go SDK).
    pub fn client_type(&self) -> &str {
        self.text("client_type", "9")
    }

    /// See [`Config::client_type`].
    pub fn client_version(&self) -> &str {
        self.text("client_version", "1.0.0")
    }

    /// `id`, default `modal`.
    pub fn id(&self) -> &str {
        self.text("id", "modal")
    }

    /// `name`, default `Modal`.
    pub fn name(&self) -> &str {
        self.text("name", "Modal")
    }

    /// `kind`: `saas` (default) or `self-hosted`.
    pub fn self_hosted(&self) -> bool {
        matches!(self.get("kind"), Some("self-hosted") | Some("self_hosted"))
    }

    /// `regions`: comma-separated (empty: any).
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

    /// `startup_latency_ms`, default 1500.
    pub fn startup_latency_ms(&self) -> u32 {
        self.get("startup_latency_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500)
    }

    /// `max_sandboxes`: a finite pool; none by default.
    pub fn max_sandboxes(&self) -> Result<Option<u32>, String> {
        match self.get("max_sandboxes") {
            None => Ok(None),
            Some(_) => self
                .number("max_sandboxes", 0, 1, u64::from(u32::MAX))
                .map(|n| Some(n as u32)),
        }
    }
}

/// The contract's strict decimal: digits with at most one `.`, no sign, no exponent.
pub fn parse_decimal(s: &str) -> Option<Decimal> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || s.len() > 30
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::from_pairs(pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())))
    }

    #[test]
    fn defaults_are_modals_and_bad_values_name_their_key() {
        let c = cfg(&[]);
        assert_eq!(c.price_core_second().unwrap().to_string(), "0.00003942");
        assert_eq!(c.price_gib_second().unwrap().to_string(), "0.00000672");
        assert_eq!(c.server_url().unwrap().origin(), "https://api.modal.com");
        assert_eq!(c.workdir().unwrap(), "/root");
        assert_eq!(c.vcpus_per_core().unwrap(), 2);
        assert!(c.cap_to_request().unwrap());
        let bad = cfg(&[
            ("price_core_second", "-1"),
            ("vcpus_per_core", "0"),
            ("workdir", "relative"),
            ("templates", "base"),
            ("cap_to_request", "yes"),
            ("server_url", "ftp://x"),
        ]);
        assert!(
            bad.price_core_second()
                .unwrap_err()
                .contains("price_core_second")
        );
        assert!(bad.vcpus_per_core().unwrap_err().contains("vcpus_per_core"));
        assert!(bad.workdir().unwrap_err().contains("workdir"));
        assert!(bad.templates().unwrap_err().contains("templates"));
        assert!(bad.cap_to_request().unwrap_err().contains("cap_to_request"));
        assert!(bad.server_url().unwrap_err().contains("server_url"));
        let t = cfg(&[("templates", " base = python:3.12 , node=node:22 ")]);
        let map = t.templates().unwrap();
        assert_eq!(map.get("base").map(String::as_str), Some("python:3.12"));
        assert_eq!(map.get("node").map(String::as_str), Some("node:22"));
    }

    #[test]
    fn decimals_are_the_contracts_strict_format() {
        assert_eq!(parse_decimal("0.5").unwrap().to_string(), "0.5");
        for bad in ["", ".", "1e-5", "-1", "+1", "1,5", " 1"] {
            assert!(parse_decimal(bad).is_none(), "{bad}");
        }
    }
}
