//! Profiles: `profiles/*.toml`, each a sandbox's requirements plus a route spec.
//!
//! Loading is strict: unknown keys, wrong types and out-of-range values are errors that
//! name the file, the key and what was expected. Every file of a folder is checked and all
//! errors are reported together; a folder with any bad file loads nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{Currency, parse_decimal};
use crate::runtime::types::{Resources, SandboxRequest};

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

/// How the router orders the candidates that survive the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Self-hosted candidates with capacity first (cheapest first), then SaaS by cost.
    PreferSelfHosted,
    /// Estimate ascending; ties by latency, then id.
    LowestCost,
    /// Observed create latency (EWMA; declared startup latency until measured); ties by
    /// cost, then id.
    LowestLatency,
    /// Only the named extension (plus the listed candidates when `fallback` is on).
    Explicit,
}

impl Strategy {
    /// The name used in profiles.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::PreferSelfHosted => "prefer-self-hosted",
            Strategy::LowestCost => "lowest-cost",
            Strategy::LowestLatency => "lowest-latency",
            Strategy::Explicit => "explicit",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Longest a sandbox may live; requests may only lower it.
    pub max_duration_secs: u64,
    /// Regions a sandbox may run in; empty means any.
    pub regions: Vec<String>,
    /// Labels passed to the backend (requests may add to them).
    pub metadata: BTreeMap<String, String>,
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

/// Loads every `*.toml` in `dir` (sorted by name). All errors of all files are returned
/// together; on any error nothing is loaded.
pub fn load_profiles(dir: &Path) -> Result<ProfileSet, Vec<ProfileError>> {
    let loaded = reload_profiles(dir, &ProfileSet::default());
    if loaded.errors.is_empty() {
        Ok(loaded.set)
    } else {
        Err(loaded.errors)
    }
}

/// What [`reload_profiles`] produced: the profiles to serve now, and the files that did
/// not load (each keeps its previous version, if it had one).
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The profiles to serve.
    pub set: ProfileSet,
    /// Files that did not load, with why.
    pub errors: Vec<ProfileError>,
    /// Profiles kept at their previous version because their file no longer loads.
    pub kept: Vec<String>,
}

/// Re-reads `dir` while the host serves, file by file: a file that loads replaces what it
/// defined before, a removed file takes its profiles away, and a file that no longer loads
/// (or now clashes with another file's id) keeps its previous version serving and is
/// reported. One broken file never holds back the other files' changes. A folder that
/// cannot be read keeps `previous` whole.
pub fn reload_profiles(dir: &Path, previous: &ProfileSet) -> Reloaded {
    let files = match profile_files(dir) {
        Ok(f) => f,
        Err(errors) => {
            return Reloaded {
                set: previous.clone(),
                kept: previous.profiles.keys().cloned().collect(),
                errors,
            };
        }
    };
    let mut out = Reloaded::default();
    for file in files {
        let loaded = load_profile_file(&file).and_then(|p| match out.set.profiles.get(&p.id) {
            Some(first) => Err(ProfileError {
                file: file.clone(),
                key: Some("id".into()),
                line: None,
                message: format!(
                    "duplicate profile id {:?}: already defined in {}",
                    p.id,
                    first.file.display()
                ),
            }),
            None => Ok(p),
        });
        match loaded {
            Ok(p) => {
                out.set.profiles.insert(p.id.clone(), p);
            }
            Err(e) => {
                for old in previous.profiles.values().filter(|p| p.file == file) {
                    if !out.set.profiles.contains_key(&old.id) {
                        out.kept.push(old.id.clone());
                        out.set.profiles.insert(old.id.clone(), old.clone());
                    }
                }
                out.errors.push(e);
            }
        }
    }
    out
}

/// The `*.toml` files in `dir`, sorted by name.
fn profile_files(dir: &Path) -> Result<Vec<PathBuf>, Vec<ProfileError>> {
    let dir_error = |message: String| {
        vec![ProfileError {
            file: dir.to_path_buf(),
            key: None,
            line: None,
            message,
        }]
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| dir_error(format!("cannot read the profiles folder: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| dir_error(format!("cannot read the profiles folder: {e}")))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads and validates one profile file.
pub fn load_profile_file(file: &Path) -> Result<Profile, ProfileError> {
    let text = std::fs::read_to_string(file).map_err(|e| ProfileError {
        file: file.to_path_buf(),
        key: None,
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse_profile(&text, file)
}

/// Parses and validates profile text; `file` names it in errors (and defaults the id).
pub fn parse_profile(text: &str, file: &Path) -> Result<Profile, ProfileError> {
    let raw: RawProfile = toml::from_str(text).map_err(|e| {
        let start = e.span().map(|s| s.start.min(text.len()));
        let line = start.map(|s| text[..s].matches('\n').count() + 1);
        ProfileError {
            file: file.to_path_buf(),
            key: start.and_then(|s| key_at(text, s)),
            line,
            message: e.message().trim().to_owned(),
        }
    })?;
    raw.validate(file)
}

/// The dotted key whose line holds byte `offset` (`table.key` for `key = value` under a
/// `[table]` header), so parse errors name the key as well as the line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    if !text.is_char_boundary(offset) {
        return None;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(['[', ']']).trim().to_owned());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

// ---- the file format -------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    id: Option<String>,
    #[serde(default)]
    description: String,
    template: String,
    resources: RawResources,
    max_duration_secs: u64,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    route: RawRoute,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    vcpus: u32,
    memory_mib: u32,
    #[serde(default)]
    disk_mib: u32,
    gpu: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    strategy: Strategy,
    candidates: Option<Vec<String>>,
    #[serde(default = "default_true")]
    fallback: bool,
    max_attempts: Option<u32>,
    max_cost_per_hour: Option<String>,
    currency: Option<String>,
    explicit: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Default number of attempts when fallback is on.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
}

impl RawProfile {
    fn validate(self, file: &Path) -> Result<Profile, ProfileError> {
        let err = |key: &str, message: String| ProfileError {
            file: file.to_path_buf(),
            key: Some(key.to_owned()),
            line: None,
            message,
        };
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = self.id.unwrap_or(stem);
        if !is_id(&id) {
            return Err(err(
                "id",
                format!("{id:?} is not a profile id: expected lowercase a-z, 0-9 and '-'"),
            ));
        }
        if self.template.trim().is_empty() {
            return Err(err(
                "template",
                "expected a non-empty template name, e.g. \"base\"".into(),
            ));
        }
        let r = &self.resources;
        if r.vcpus == 0 || r.vcpus > bounds::MAX_VCPUS {
            return Err(err(
                "resources.vcpus",
                format!(
                    "{} is out of range: expected 1 to {}",
                    r.vcpus,
                    bounds::MAX_VCPUS
                ),
            ));
        }
        if !(bounds::MIN_MEMORY_MIB..=bounds::MAX_MEMORY_MIB).contains(&r.memory_mib) {
            return Err(err(
                "resources.memory_mib",
                format!(
                    "{} is out of range: expected {} to {}",
                    r.memory_mib,
                    bounds::MIN_MEMORY_MIB,
                    bounds::MAX_MEMORY_MIB
                ),
            ));
        }
        if r.gpu.as_deref().is_some_and(|g| g.trim().is_empty()) {
            return Err(err(
                "resources.gpu",
                "expected a GPU model name (e.g. \"a10g\") or no key".into(),
            ));
        }
        if self.max_duration_secs == 0 || self.max_duration_secs > bounds::MAX_DURATION_SECS {
            return Err(err(
                "max_duration_secs",
                format!(
                    "{} is out of range: expected 1 to {}",
                    self.max_duration_secs,
                    bounds::MAX_DURATION_SECS
                ),
            ));
        }
        if let Some(bad) = self.regions.iter().find(|r| r.trim().is_empty()) {
            return Err(err("regions", format!("{bad:?} is not a region name")));
        }

        let route = self.route;
        let explicit = route.strategy == Strategy::Explicit;
        let candidates = match route.candidates {
            // `explicit` falls back only to what the profile lists.
            None if explicit => Candidates::List(Vec::new()),
            None => Candidates::All,
            Some(list) if list.is_empty() && explicit => Candidates::List(list),
            Some(list) if list.len() == 1 && list[0] == "*" => Candidates::All,
            Some(list) => {
                if list.is_empty() {
                    return Err(err(
                        "route.candidates",
                        "expected at least one extension id, or [\"*\"]".into(),
                    ));
                }
                for (i, c) in list.iter().enumerate() {
                    if c == "*" {
                        return Err(err(
                            "route.candidates",
                            "\"*\" must be the only entry when used".into(),
                        ));
                    }
                    if !is_id(c) {
                        return Err(err(
                            "route.candidates",
                            format!(
                                "{c:?} is not an extension id: expected lowercase a-z, 0-9 and '-'"
                            ),
                        ));
                    }
                    if list[..i].contains(c) {
                        return Err(err("route.candidates", format!("{c:?} is listed twice")));
                    }
                }
                Candidates::List(list)
            }
        };
        match (route.strategy, &route.explicit) {
            (Strategy::Explicit, None) => {
                return Err(err(
                    "route.explicit",
                    "strategy \"explicit\" needs `explicit = \"<extension id>\"`".into(),
                ));
            }
            (Strategy::Explicit, Some(target)) if !is_id(target) => {
                return Err(err(
                    "route.explicit",
                    format!("{target:?} is not an extension id"),
                ));
            }
            (s, Some(_)) if s != Strategy::Explicit => {
                return Err(err(
                    "route.explicit",
                    format!(
                        "only meaningful with strategy \"explicit\" (this route is {s:?})",
                        s = s.as_str()
                    ),
                ));
            }
            _ => {}
        }
        let max_attempts = route.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 || max_attempts > bounds::MAX_ATTEMPTS {
            return Err(err(
                "route.max_attempts",
                format!(
                    "{max_attempts} is out of range: expected 1 to {}",
                    bounds::MAX_ATTEMPTS
                ),
            ));
        }
        let max_cost_per_hour = match route.max_cost_per_hour {
            None => None,
            Some(s) => Some(parse_decimal(&s).map_err(|e| {
                err(
                    "route.max_cost_per_hour",
                    format!("{e}; expected a decimal string like \"0.50\""),
                )
            })?),
        };
        let currency = match route.currency {
            None => Currency::new("USD").map_err(|e| err("route.currency", e.to_string()))?,
            Some(c) => Currency::new(&c).map_err(|e| err("route.currency", e.to_string()))?,
        };
        Ok(Profile {
            id,
            description: self.description,
            template: self.template,
            resources: Resources {
                vcpus: self.resources.vcpus,
                memory_mib: self.resources.memory_mib,
                disk_mib: self.resources.disk_mib,
                gpu: self.resources.gpu,
            },
            max_duration_secs: self.max_duration_secs,
            regions: self.regions,
            metadata: self.metadata,
            route: RouteSpec {
                strategy: route.strategy,
                candidates,
                fallback: route.fallback,
                max_attempts,
                max_cost_per_hour,
                currency,
                explicit: route.explicit,
            },
            file: file.to_path_buf(),
        })
    }
}

// ---- requests ------------------------------------------------------------------

/// What a caller may change about a profile's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOverrides {
    /// vCPUs instead of the profile's.
    pub vcpus: Option<u32>,
    /// Memory (MiB) instead of the profile's.
    pub memory_mib: Option<u32>,
    /// A shorter maximum duration (never longer than the profile's).
    pub max_duration_secs: Option<u64>,
    /// Pin a region (one of the profile's, when it lists any).
    pub region: Option<String>,
    /// Environment variables for the sandbox.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Extra labels (override the profile's on the same key).
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
}

/// A request override out of range for the profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {profile:?}: {field} {message}")]
pub struct RequestError {
    /// The profile id.
    pub profile: String,
    /// The overridden field, e.g. `vcpus`.
    pub field: &'static str,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Profile {
    /// Builds the request for a sandbox from this profile and the caller's overrides,
    /// refusing anything out of range.
    pub fn request(
        &self,
        tenant: &str,
        sandbox_id: &str,
        overrides: &RequestOverrides,
    ) -> Result<SandboxRequest, RequestError> {
        let err = |field: &'static str, message: String| RequestError {
            profile: self.id.clone(),
            field,
            message,
        };
        if tenant.trim().is_empty() {
            return Err(err("tenant", "is empty: expected a tenant id".into()));
        }
        let vcpus = overrides.vcpus.unwrap_or(self.resources.vcpus);
        if vcpus == 0 || vcpus > bounds::MAX_VCPUS {
            return Err(err(
                "vcpus",
                format!(
                    "{vcpus} is out of range: expected 1 to {}",
                    bounds::MAX_VCPUS
                ),
            ));
        }
        let memory_mib = overrides.memory_mib.unwrap_or(self.resources.memory_mib);
        if !(bounds::MIN_MEMORY_MIB..=bounds::MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(err(
                "memory_mib",
                format!(
                    "{memory_mib} is out of range: expected {} to {}",
                    bounds::MIN_MEMORY_MIB,
                    bounds::MAX_MEMORY_MIB
                ),
            ));
        }
        let max_duration_secs = overrides
            .max_duration_secs
            .unwrap_or(self.max_duration_secs);
        if max_duration_secs == 0 || max_duration_secs > self.max_duration_secs {
            return Err(err(
                "max_duration_secs",
                format!(
                    "{max_duration_secs} is out of range: expected 1 to {} (the profile's maximum)",
                    self.max_duration_secs
                ),
            ));
        }
        let region = match &overrides.region {
            None => None,
            Some(r) if r.trim().is_empty() => {
                return Err(err("region", "is empty: expected a region name".into()));
            }
            Some(r) if !self.regions.is_empty() && !self.regions.contains(r) => {
                return Err(err(
                    "region",
                    format!(
                        "{r:?} is not allowed: expected one of {}",
                        self.regions.join(", ")
                    ),
                ));
            }
            Some(r) => Some(r.clone()),
        };
        if let Some((k, _)) = overrides
            .env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains('='))
        {
            return Err(err("env", format!("{k:?} is not a variable name")));
        }
        let mut metadata = self.metadata.clone();
        for (k, v) in &overrides.metadata {
            if k.is_empty() {
                return Err(err("metadata", "has an empty key".into()));
            }
            metadata.insert(k.clone(), v.clone());
        }
        Ok(SandboxRequest {
            sandbox_id: sandbox_id.to_owned(),
            tenant: tenant.to_owned(),
            profile: self.id.clone(),
            template: self.template.clone(),
            resources: Resources {
                vcpus,
                memory_mib,
                ..self.resources.clone()
            },
            max_duration_secs,
            region,
            env: overrides.env.clone(),
            metadata: metadata.into_iter().collect(),
        })
    }

    /// Regions a candidate must serve for `req`: the request's pin, else the profile's
    /// list (any of them), else none.
    pub fn wanted_regions(&self, req: &SandboxRequest) -> Vec<String> {
        match &req.region {
            Some(r) => vec![r.clone()],
            None => self.regions.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(p.route.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(p.route.fallback);
        assert_eq!(p.route.currency.as_str(), "USD");
        assert_eq!(p.route.max_cost_per_hour, Some(Decimal::new(15, 1)));
    }

    #[test]
    fn request_applies_and_checks_overrides() {
        let p = parse_profile(GOOD, Path::new("good.toml")).unwrap();
        let o = RequestOverrides {
            vcpus: Some(4),
            region: Some("eu-west".into()),
            ..Default::default()
        };
        let r = p.request("t", "sb-1", &o).unwrap();
        assert_eq!(r.resources.vcpus, 4);
        assert_eq!(r.resources.memory_mib, 2048);
        assert_eq!(r.metadata, vec![("team".to_string(), "ml".to_string())]);
        let bad = RequestOverrides {
            vcpus: Some(0),
            ..Default::default()
        };
        assert_eq!(p.request("t", "s", &bad).unwrap_err().field, "vcpus");
        let bad = RequestOverrides {
            max_duration_secs: Some(3601),
            ..Default::default()
        };
        assert!(
            p.request("t", "s", &bad)
                .unwrap_err()
                .to_string()
                .contains("3601 is out of range")
        );
        let bad = RequestOverrides {
            region: Some("mars".into()),
            ..Default::default()
        };
        assert!(
            p.request("t", "s", &bad)
                .unwrap_err()
                .to_string()
                .contains("eu-west, us-east")
        );
        let bad = RequestOverrides {
            memory_mib: Some(1),
            ..Default::default()
        };
        assert_eq!(p.request("t", "s", &bad).unwrap_err().field, "memory_mib");
    }
}
