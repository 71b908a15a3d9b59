//! The extension's configuration: the operator's sidecar `[config]` table, read through
//! `wasi:config/store`. Every key is optional; a bad value is reported naming the key
//! and the value, never by panicking.

use rust_decimal::Decimal;

use crate::exact;

/// Where the simulated backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A self-hosted pool: finite capacity, quick start.
    SelfHosted,
    /// A metered SaaS provider.
    Saas,
}

/// Every configuration key this extension understands.
pub const KEYS: [&str; 9] = [
    "kind",
    "currency",
    "price_vcpu_second",
    "price_gib_second",
    "price_per_sandbox",
    "capacity",
    "regions",
    "startup_latency_ms",
    "name",
];

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `kind`: `saas` (default) or `self-hosted`.
    pub kind: Kind,
    /// `currency`: the code every amount is in (default `USD`).
    pub currency: String,
    /// `price_vcpu_second` (default 0.000014, E2B's public rate).
    pub price_vcpu_second: Decimal,
    /// `price_gib_second` (default 0.0000045).
    pub price_gib_second: Decimal,
    /// `price_per_sandbox` (default 0: no fee line).
    pub price_per_sandbox: Decimal,
    /// `capacity`: the pool size; `None` (absent) means unlimited.
    pub capacity: Option<u32>,
    /// `regions`: comma-separated; empty means any region.
    pub regions: Vec<String>,
    /// `startup_latency_ms` (default 150 for saas, 20 for self-hosted).
    pub startup_latency_ms: u32,
    /// `name`: human-readable name.
    pub name: String,
}

/// A configuration value (or the store itself) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::defaults_for(Kind::Saas)
    }
}

impl Config {
    fn defaults_for(kind: Kind) -> Self {
        Self {
            kind,
            currency: "USD".to_owned(),
            price_vcpu_second: Decimal::new(14, 6),
            price_gib_second: Decimal::new(45, 7),
            price_per_sandbox: Decimal::ZERO,
            capacity: None,
            regions: Vec::new(),
            startup_latency_ms: match kind {
                Kind::Saas => 150,
                Kind::SelfHosted => 20,
            },
            name: match kind {
                Kind::Saas => "Metered SaaS simulator (saas-stub)".to_owned(),
                Kind::SelfHosted => "Self-hosted pool simulator (saas-stub)".to_owned(),
            },
        }
    }

    /// Parses the key/value pairs of `wasi:config/store.get-all`.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, ConfigError> {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if let Some((key, _)) = pairs.iter().find(|(k, _)| !KEYS.contains(&k.as_str())) {
            return Err(ConfigError(format!(
                "config key {key:?} is unknown (known keys: {})",
                KEYS.join(", ")
            )));
        }
        let kind = match get("kind") {
            None | Some("saas") => Kind::Saas,
            Some("self-hosted") => Kind::SelfHosted,
            Some(other) => return Err(bad("kind", other, "expected \"saas\" or \"self-hosted\"")),
        };
        let mut config = Self::defaults_for(kind);
        if let Some(v) = get("currency") {
            let ok = (3..=8).contains(&v.len())
                && v.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            if !ok {
                return Err(bad(
                    "currency",
                    v,
                    "expected 3 to 8 uppercase letters or digits, e.g. USD",
                ));
            }
            config.currency = v.to_owned();
        }
        for (key, slot) in [
            ("price_vcpu_second", &mut config.price_vcpu_second),
            ("price_gib_second", &mut config.price_gib_second),
            ("price_per_sandbox", &mut config.price_per_sandbox),
        ] {
            if let Some(v) = get(key) {
                *slot = exact::parse(v).map_err(|why| bad(key, v, &why))?;
            }
        }
        if let Some(v) = get("capacity") {
            config.capacity = Some(
                v.parse()
                    .map_err(|_| bad("capacity", v, "expected a whole number of sandboxes"))?,
            );
        }
        if let Some(v) = get("regions") {
            config.regions = v
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("startup_latency_ms") {
            config.startup_latency_ms = v.parse().map_err(|_| {
                bad(
                    "startup_latency_ms",
                    v,
                    "expected a whole number of milliseconds",
                )
            })?;
        }
        if let Some(v) = get("name") {
            config.name = v.to_owned();
        }
        Ok(config)
    }
}

fn bad(key: &str, value: &str, why: &str) -> ConfigError {
    ConfigError(format!("config key {key:?} = {value:?}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_e2b_shaped_saas() {
        let c = Config::from_pairs(&[]).unwrap();
        assert_eq!(c.kind, Kind::Saas);
        assert_eq!(c.currency, "USD");
        assert_eq!(c.price_vcpu_second.to_string(), "0.000014");
        assert_eq!(c.price_gib_second.to_string(), "0.0000045");
        assert_eq!(c.capacity, None);
        assert_eq!(c.startup_latency_ms, 150);
    }

    #[test]
    fn a_self_hosted_pool() {
        let c = Config::from_pairs(&pairs(&[
            ("kind", "self-hosted"),
            ("capacity", "2"),
            ("price_vcpu_second", "0.000002"),
            ("regions", " eu-west, ,us-east "),
        ]))
        .unwrap();
        assert_eq!(c.kind, Kind::SelfHosted);
        assert_eq!(c.capacity, Some(2));
        assert_eq!(c.startup_latency_ms, 20);
        assert_eq!(c.price_vcpu_second.to_string(), "0.000002");
        assert_eq!(c.regions, ["eu-west", "us-east"]);
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        for (key, value) in [
            ("kind", "cloud"),
            ("currency", "usd"),
            ("price_vcpu_second", "1e-5"),
            ("price_gib_second", "-1"),
            ("price_per_sandbox", "abc"),
            ("capacity", "-2"),
            ("startup_latency_ms", "fast"),
        ] {
            let err = Config::from_pairs(&pairs(&[(key, value)])).unwrap_err().0;
            assert!(err.contains(key) && err.contains(value), "{err}");
        }
        let err = Config::from_pairs(&pairs(&[("price_vcpu_secnd", "1")]))
            .unwrap_err()
            .0;
        assert!(
            err.contains("price_vcpu_secnd") && err.contains("unknown"),
            "{err}"
        );
    }
}
