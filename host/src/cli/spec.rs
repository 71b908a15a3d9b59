//! The flags that describe a sandbox (`--profile`, `--vcpus`, `--memory-mib`,
//! `--max-duration`, `--region`), shared by `sandbox create` and `route explain`, and
//! the domain's [`SandboxSpec`] they build.

use clap::Args;

use crate::domain::{ByokMode, SandboxSpec};

/// A profile and the overrides of its request.
#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// Profile id, e.g. burst-sandbox.
    #[arg(long)]
    pub profile: String,
    /// vCPUs instead of the profile's.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory in MiB instead of the profile's.
    #[arg(long)]
    pub memory_mib: Option<u32>,
    /// Maximum lifetime in seconds (at most the profile's); the estimate covers it.
    #[arg(long = "max-duration")]
    pub max_duration_secs: Option<u64>,
    /// Pin a region (one the profile allows).
    #[arg(long)]
    pub region: Option<String>,
    /// The tenant's own provider key: prefer, require or never (default: the profile's
    /// `[route] byok`, else prefer).
    #[arg(long)]
    pub byok: Option<ByokMode>,
}

impl SpecArgs {
    /// The sandbox these flags ask for.
    pub fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            profile: self.profile.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            max_duration_secs: self.max_duration_secs,
            region: self.region.clone(),
            byok: self.byok,
            ..SandboxSpec::default()
        }
    }
}
