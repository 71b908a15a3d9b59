//! From a profile and a caller's [`SandboxSpec`] to the request an extension receives,
//! refusing any override out of the profile's range.

use super::{Profile, bounds};
use crate::domain::{Resources, SandboxRequest, SandboxSpec};

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
        overrides: &SandboxSpec,
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
        if vcpus == 0 || vcpus > self.max_vcpus {
            return Err(err(
                "vcpus",
                format!(
                    "{vcpus} is out of range: expected 1 to {} (the profile's maximum)",
                    self.max_vcpus
                ),
            ));
        }
        let memory_mib = overrides.memory_mib.unwrap_or(self.resources.memory_mib);
        if !(bounds::MIN_MEMORY_MIB..=self.max_memory_mib).contains(&memory_mib) {
            return Err(err(
                "memory_mib",
                format!(
                    "{memory_mib} is out of range: expected {} to {} (the profile's maximum)",
                    bounds::MIN_MEMORY_MIB,
                    self.max_memory_mib
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
            env: overrides
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            metadata: metadata.into_iter().collect(),
            byok: overrides.byok.unwrap_or(self.route.byok),
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
