//! The extension's configuration: the sidecar's `[config]` table and granted secrets, read
//! through `wasi:config/store`. Keys are documented in docs/extensions/local.md; a bad value
//! is reported naming the key and the value (never a secret's value).

use rust_decimal::Decimal;

/// One agent of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Its base URL, e.g. `http://10.0.0.5:7744` (no trailing slash).
    pub url: String,
    /// The bearer token for it.
    pub token: Option<String>,
}

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub agents: Vec<AgentConfig>,
    pub price_cpu_second: Decimal,
    pub price_gib_second: Decimal,
    pub currency: String,
    pub name: String,
    pub startup_latency_ms: u32,
    pub regions: Vec<String>,
    pub templates: Vec<String>,
}

/// The default price of a CPU-second the agent measured (USD).
pub const DEFAULT_PRICE_CPU_SECOND: &str = "0.00001";
/// The default price of a GiB of allocated memory for a second (USD).
pub const DEFAULT_PRICE_GIB_SECOND: &str = "0.0000025";

const KEYS: [&str; 9] = [
    "agents",
    "token",
    "price_cpu_second",
    "price_gib_second",
    "currency",
    "name",
    "startup_latency_ms",
    "regions",
    "templates",
];

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A price: a plain non-negative decimal (`0.00001`, never `1e-5`).
fn price(key: &str, raw: &str) -> Result<Decimal, String> {
    crate::pricing::parse_plain(raw)
        .ok_or_else(|| format!("config {key}: expected a decimal like \"0.00001\", got {raw:?}"))
}

impl Config {
    /// Parses the store's pairs. `agents` is required for anything but `info`.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Config, String> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        for (k, _) in pairs {
            let per_agent = k
                .strip_prefix("token_")
                .is_some_and(|n| n.parse::<usize>().is_ok());
            if !KEYS.contains(&k.as_str()) && !per_agent {
                return Err(format!(
                    "config: unknown key {k:?} (known: {}, token_N)",
                    KEYS.join(", ")
                ));
            }
        }
        let shared_token = get("token").map(str::to_owned);
        let mut agents = Vec::new();
        for (i, url) in list(get("agents").unwrap_or("")).into_iter().enumerate() {
            let url = url.trim_end_matches('/').to_owned();
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.split("://").nth(1).is_none_or(str::is_empty)
            {
                return Err(format!(
                    "config agents: {url:?} is not an http:// or https:// URL"
                ));
            }
            let token = get(&format!("token_{}", i + 1))
                .map(str::to_owned)
                .or_else(|| shared_token.clone());
            agents.push(AgentConfig { url, token });
        }
        let currency = get("currency").unwrap_or("USD").to_owned();
        if !(3..=8).contains(&currency.len())
            || !currency
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "config currency: expected a code like \"USD\", got {currency:?}"
            ));
        }
        let startup_latency_ms = match get("startup_latency_ms") {
            None => 20,
            Some(v) => v.parse().map_err(|_| {
                format!("config startup_latency_ms: expected a whole number, got {v:?}")
            })?,
        };
        let templates = get("templates").map(list).unwrap_or_default();
        Ok(Config {
            agents,
            price_cpu_second: price(
                "price_cpu_second",
                get("price_cpu_second").unwrap_or(DEFAULT_PRICE_CPU_SECOND),
            )?,
            price_gib_second: price(
                "price_gib_second",
                get("price_gib_second").unwrap_or(DEFAULT_PRICE_GIB_SECOND),
            )?,
            currency,
            name: get("name")
                .unwrap_or("Self-hosted pool (sandboxer-agent)")
                .to_owned(),
            startup_latency_ms,
            regions: get("regions").map(list).unwrap_or_default(),
            templates: if templates.is_empty() {
                vec!["base".to_owned()]
            } else {
                templates
            },
        })
    }

    /// The agents, or the error every call but `info` gives without them.
    pub fn require_agents(&self) -> Result<&[AgentConfig], String> {
        if self.agents.is_empty() {
            Err(
                "no agents configured: set `agents` (comma-separated URLs of sandboxer-agent) \
                 in the sidecar's [config]"
                    .into(),
            )
        } else {
            Ok(&self.agents)
        }
    }

    /// The configured agent at `url`.
    pub fn agent(&self, url: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| a.url == url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn agents_tokens_and_defaults() {
        let c = Config::from_pairs(&pairs(&[
            ("agents", "http://10.0.0.1:7744/, http://10.0.0.2:7744"),
            ("token", "shared"),
            ("token_2", "second"),
        ]))
        .unwrap();
        assert_eq!(c.agents.len(), 2);
        assert_eq!(c.agents[0].url, "http://10.0.0.1:7744");
        assert_eq!(c.agents[0].token.as_deref(), Some("shared"));
        assert_eq!(c.agents[1].token.as_deref(), Some("second"));
        assert_eq!(c.price_cpu_second.to_string(), "0.00001");
        assert_eq!(c.templates, ["base"]);
        assert!(c.agent("http://10.0.0.2:7744").is_some());
        let none = Config::from_pairs(&[]).unwrap();
        assert!(none.require_agents().unwrap_err().contains("agents"));
    }

    #[test]
    fn bad_values_name_the_key_and_never_the_token() {
        for (k, v, word) in [
            ("agents", "ftp://x", "agents"),
            ("price_cpu_second", "1e-5", "price_cpu_second"),
            ("price_gib_second", "-1", "price_gib_second"),
            ("currency", "usd", "currency"),
            ("startup_latency_ms", "soon", "startup_latency_ms"),
            ("colour", "red", "colour"),
        ] {
            let e = Config::from_pairs(&pairs(&[(k, v), ("token", "s3cret-token")])).unwrap_err();
            assert!(e.contains(word), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
