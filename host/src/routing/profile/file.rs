//! One profile file: the TOML format, parsed strictly and validated, every error naming
//! the file, the key (and line when known) and what was expected.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{Candidates, Profile, ProfileError, RouteSpec, Strategy, bounds};
use crate::domain::{ByokMode, Capability, Currency, Resources, parse_decimal};

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
    #[serde(default)]
    requires: Vec<Capability>,
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
    /// The most vCPUs a request may ask for (default: the host-wide bound).
    max_vcpus: Option<u32>,
    /// The most memory a request may ask for (default: the host-wide bound).
    max_memory_mib: Option<u32>,
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
    #[serde(default)]
    byok: ByokMode,
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
        if let Some(max) = r.max_vcpus
            && !(r.vcpus..=bounds::MAX_VCPUS).contains(&max)
        {
            return Err(err(
                "resources.max_vcpus",
                format!(
                    "{max} is out of range: expected {} (resources.vcpus) to {}",
                    r.vcpus,
                    bounds::MAX_VCPUS
                ),
            ));
        }
        if let Some(max) = r.max_memory_mib
            && !(r.memory_mib..=bounds::MAX_MEMORY_MIB).contains(&max)
        {
            return Err(err(
                "resources.max_memory_mib",
                format!(
                    "{max} is out of range: expected {} (resources.memory_mib) to {}",
                    r.memory_mib,
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
            max_vcpus: self.resources.max_vcpus.unwrap_or(bounds::MAX_VCPUS),
            max_memory_mib: self
                .resources
                .max_memory_mib
                .unwrap_or(bounds::MAX_MEMORY_MIB),
            max_duration_secs: self.max_duration_secs,
            regions: self.regions,
            metadata: self.metadata,
            requires: {
                let mut r = self.requires;
                r.dedup();
                r
            },
            route: RouteSpec {
                strategy: route.strategy,
                candidates,
                fallback: route.fallback,
                max_attempts,
                max_cost_per_hour,
                currency,
                explicit: route.explicit,
                byok: route.byok,
            },
            file: file.to_path_buf(),
        })
    }
}
