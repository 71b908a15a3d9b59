//! Profiles: `profiles/*.toml`, each a sandbox's requirements plus a route spec.
//!
//! Loading is strict: unknown keys, wrong types and out-of-range values are errors that
//! name the file, the key and what was expected. By concern: this file holds the
//! validated profile and its route spec; [`file`] reads one file (the TOML format and
//! its checks), [`folder`] loads and hot-reloads a folder of them, [`request`] builds a
//! sandbox's request from a profile and a [`SandboxSpec`](crate::domain::SandboxSpec).

mod file;
mod folder;
mod request;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use rust_decimal::Decimal;
use serde::Serialize;

pub use crate::domain::Strategy;
use crate::domain::{ByokMode, Capability, Currency, Resources};
pub use file::{load_profile_file, parse_profile};
pub use folder::{load_profiles, reload_profiles};
pub use request::RequestError;

/// Bounds every request must respect, whatever the profile says.
pub mod bounds {
    /// Most vCPUs a sandbox may ask for.
    pub const MAX_VCPUS: u32 = 256;
    /// Least memory a sandbox may ask for, in MiB.
    pub const MIN_MEMORY_MIB: u32 = 128;
    /// Most memory a sandbox may ask for, in MiB (1 TiB).
    pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
    /// Longest maximum duration a profile may set (30 days).
    pub const MAX_DURATION_SECS: u64 = 30 * 24 * 3600;
    /// Most attempts a route may make.
    pub const MAX_ATTEMPTS: u32 = 20;
}

/// Which extensions may serve a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "ids")]
pub enum Candidates {
    /// `*`: every loaded extension.
    All,
    /// These ids, in this order.
    List(Vec<String>),
}

/// The `[route]` table of a profile, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteSpec {
    /// How survivors are ordered.
    pub strategy: Strategy,
    /// Who may serve (for `explicit`: the fallbacks after the target).
    pub candidates: Candidates,
    /// Whether the manager may fail over to the next candidate on a retryable failure.
    pub fallback: bool,
    /// Most candidates tried for one create (1 when `fallback` is off).
    pub max_attempts: u32,
    /// Candidates whose estimate, per hour of the request's maximum duration, exceeds this
    /// are dropped.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub max_cost_per_hour: Option<Decimal>,
    /// The currency the profile pays in; candidates pricing in another are dropped.
    pub currency: Currency,
    /// The target of the `explicit` strategy.
    pub explicit: Option<String>,
    /// `byok`: whether tenants' own keys are preferred, required or never used (a
    /// request may say otherwise; default `prefer`).
    pub byok: ByokMode,
}

impl RouteSpec {
    /// How many ordered candidates become attempts.
    pub fn attempt_limit(&self) -> usize {
        if self.fallback {
            self.max_attempts as usize
        } else {
            1
        }
    }
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Profile id, e.g. `burst-sandbox`.
    pub id: String,
    /// One line for humans.
    pub description: String,
    /// Image or template to start.
    pub template: String,
    /// Default resources (requests may override vCPUs and memory).
    pub resources: Resources,
    /// The most vCPUs a request may ask for (`resources.max_vcpus`, else the host-wide
    /// bound).
    pub max_vcpus: u32,
    /// The most memory a request may ask for (`resources.max_memory_mib`, else the
    /// host-wide bound).
    pub max_memory_mib: u32,
    /// Longest a sandbox may live; requests may only lower it.
    pub max_duration_secs: u64,
    /// Regions a sandbox may run in; empty means any.
    pub regions: Vec<String>,
    /// Labels passed to the backend (requests may add to them).
    pub metadata: BTreeMap<String, String>,
    /// What a backend must be able to do (`requires = ["exec", "files"]`): candidates
    /// without every one are dropped (`exec`, `exec-stream`, `files`, `capacity`, `status`).
    pub requires: Vec<Capability>,
    /// The route spec.
    pub route: RouteSpec,
    /// The file it came from.
    pub file: PathBuf,
}

/// A profile file that could not be loaded: the file, the key when known, and what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProfileError {
    /// The file.
    pub file: PathBuf,
    /// Dotted key path, e.g. `route.strategy`, when the error is about one key.
    pub key: Option<String>,
    /// Line number (1-based) when known.
    pub line: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Something worth an operator's attention that does not stop loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileWarning {
    /// The profile id.
    pub profile: String,
    /// The file.
    pub file: PathBuf,
    /// What is odd.
    pub message: String,
}

impl fmt::Display for ProfileWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (profile {}): {}",
            self.file.display(),
            self.profile,
            self.message
        )
    }
}

/// Loaded profiles by id.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Profile>,
}

impl ProfileSet {
    /// The profile with this id.
    pub fn get(&self, id: &str) -> Option<&Profile> {
        self.profiles.get(id)
    }

    /// All profiles, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    /// Number of profiles.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Warnings about candidates that no loaded extension provides (they will be dropped
    /// at routing time as "not loaded").
    pub fn check_candidates(&self, loaded: &[String]) -> Vec<ProfileWarning> {
        let mut warnings = Vec::new();
        for p in self.profiles.values() {
            let mut named: Vec<&String> = p.route.explicit.iter().collect();
            if let Candidates::List(ids) = &p.route.candidates {
                named.extend(ids);
            }
            for id in named {
                if !loaded.iter().any(|l| l == id) {
                    warnings.push(ProfileWarning {
                        profile: p.id.clone(),
                        file: p.file.clone(),
                        message: format!(
                            "candidate {id:?} is not provided by any loaded extension"
                        ),
                    });
                }
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SandboxSpec;
    use std::path::Path;

    const GOOD: &str = r#"
description = "d"
template = "base"
max_duration_secs = 3600
regions = ["eu-west", "us-east"]
[resources]
vcpus = 2
memory_mib = 2048
[metadata]
team = "ml"
[route]
strategy = "lowest-cost"
candidates = ["a", "b"]
max_cost_per_hour = "1.5"
"#;

    #[test]
    fn parses_a_good_profile_with_defaults() {
        let p = parse_profile(GOOD, Path::new("profiles/good.toml")).unwrap();
        assert_eq!(p.id, "good");
        assert_eq!(p.route.max_attempts, file::DEFAULT_MAX_ATTEMPTS);
        assert!(p.route.fallback);
        assert_eq!(p.route.currency.as_str(), "USD");
        assert_eq!(p.route.max_cost_per_hour, Some(Decimal::new(15, 1)));
    }

    #[test]
    fn a_profile_caps_the_resources_a_request_may_ask_for() {
        let capped = GOOD.replace(
            "memory_mib = 2048",
            "memory_mib = 2048\nmax_vcpus = 4\nmax_memory_mib = 4096",
        );
        let p = parse_profile(&capped, Path::new("capped.toml")).unwrap();
        let ask = |vcpus, memory_mib| SandboxSpec {
            vcpus,
            memory_mib,
            ..Default::default()
        };
        assert!(p.request("t", "sb", &ask(Some(4), Some(4096))).is_ok());
        let e = p.request("t", "sb", &ask(Some(5), None)).unwrap_err();
        assert_eq!(e.field, "vcpus");
        assert!(e.message.contains("1 to 4 (the profile's maximum)"), "{e}");
        let e = p.request("t", "sb", &ask(None, Some(4097))).unwrap_err();
        assert_eq!(e.field, "memory_mib");
        // Without caps, the host-wide bounds apply.
        let open = parse_profile(GOOD, Path::new("good.toml")).unwrap();
        assert_eq!(open.max_vcpus, bounds::MAX_VCPUS);
        assert!(open.request("t", "sb", &ask(Some(64), None)).is_ok());
        // A cap below the profile's own default is a mistake in the file.
        let low = GOOD.replace("memory_mib = 2048", "memory_mib = 2048\nmax_vcpus = 1");
        let e = parse_profile(&low, Path::new("low.toml")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resources.max_vcpus"), "{e}");
    }

    #[test]
    fn request_applies_and_checks_overrides() {
        let p = parse_profile(GOOD, Path::new("good.toml")).unwrap();
        let o = SandboxSpec {
            vcpus: Some(4),
            region: Some("eu-west".into()),
            ..Default::default()
        };
        let r = p.request("t", "sb-1", &o).unwrap();
        assert_eq!(r.resources.vcpus, 4);
        assert_eq!(r.resources.memory_mib, 2048);
        assert_eq!(r.metadata, vec![("team".to_string(), "ml".to_string())]);
        let bad = SandboxSpec {
            vcpus: Some(0),
            ..Default::default()
        };
        assert_eq!(p.request("t", "s", &bad).unwrap_err().field, "vcpus");
        let bad = SandboxSpec {
            max_duration_secs: Some(3601),
            ..Default::default()
        };
        assert!(
            p.request("t", "s", &bad)
                .unwrap_err()
                .to_string()
                .contains("3601 is out of range")
        );
        let bad = SandboxSpec {
            region: Some("mars".into()),
            ..Default::default()
        };
        assert!(
            p.request("t", "s", &bad)
                .unwrap_err()
                .to_string()
                .contains("eu-west, us-east")
        );
        let bad = SandboxSpec {
            memory_mib: Some(1),
            ..Default::default()
        };
        assert_eq!(p.request("t", "s", &bad).unwrap_err().field, "memory_mib");
    }
}
