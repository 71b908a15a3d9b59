//! The operator's word on grants (`[grants]` of `sandboxer.toml`), applied to every
//! extension before its grants are resolved, at start and on every hot reload.
//!
//! A sidecar travels with the package: whoever can write the extensions folder writes
//! it. So what a sidecar may grant itself is bounded here, and the host config can own
//! an extension's grants outright:
//!
//! ```toml
//! [grants]
//! sidecars = "allow"          # or "refuse": a sidecar declaring any grant is skipped
//! sidecar_env = ["E2B_API_KEY", "MODAL_*"]  # the only variables sidecars may read
//! any_host = ["my-proxy"]     # extensions whose sidecar may name a bare * host
//!
//! [grants.extensions.e2b]     # replaces whatever e2b's sidecar grants
//! allowed_outbound_hosts = ["https://api.e2b.app", "https://*.e2b.app"]
//! secrets = { api_key = { env = "E2B_API_KEY" } }
//! ```
//!
//! Without `sidecar_env` a sidecar may read any variable except the host's own: those
//! `sandboxer.toml` reads tokens from, and every `SANDBOXER_*`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::grants::{GrantSpec, HostPattern, SecretFiles, SecretSource};
use super::sidecar::ExtensionSpec;

/// Variables with this prefix are the host's: no sidecar reads them.
pub const HOST_ENV_PREFIX: &str = "SANDBOXER_";

/// Whether a sidecar's own grant keys are honoured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarGrants {
    /// Within the limits of the policy (the default).
    #[default]
    Allow,
    /// Only `[grants.extensions.ID]` grants; a sidecar declaring a grant is skipped.
    Refuse,
}

/// `[grants]` of `sandboxer.toml`, checked; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantPolicy {
    /// Whether sidecars' grant keys apply.
    pub sidecars: SidecarGrants,
    /// When set, the only environment variables a sidecar's `{ env = … }` may name
    /// (`NAME`, or `PREFIX*`).
    pub sidecar_env: Option<Vec<String>>,
    /// Variables the host reads its own tokens from: never a sidecar's.
    pub host_env: BTreeSet<String>,
    /// Extensions whose sidecar may grant a bare `*` host.
    pub any_host: BTreeSet<String>,
    /// Grants the operator gives an extension by id, replacing its sidecar's; their
    /// files are already resolved against the config file's folder.
    pub extensions: BTreeMap<String, GrantSpec>,
}

impl GrantPolicy {
    /// The grants `spec` loads with and where their secret files may be read
    /// (`sidecar_dir`: the sidecar's folder), or why it may not load, naming the key.
    pub fn grants_for<'a>(
        &self,
        spec: &ExtensionSpec,
        sidecar_dir: &'a Path,
    ) -> Result<(GrantSpec, SecretFiles<'a>), String> {
        let declared = spec.grants != GrantSpec::default();
        if let Some(own) = self.extensions.get(&spec.id) {
            if spec.sidecar.is_some() && declared {
                tracing::info!(extension = %spec.id, "sandboxer.toml [grants.extensions] replaces the grants its sidecar declares");
            }
            return Ok((own.clone(), SecretFiles::Anywhere));
        }
        if spec.sidecar.is_none() {
            // A bare component has none; an overlay is the host's own configuration.
            return Ok((spec.grants.clone(), SecretFiles::Anywhere));
        }
        if declared && self.sidecars == SidecarGrants::Refuse {
            return Err(format!(
                "the sidecar declares grants, but sandboxer.toml says [grants] sidecars = \"refuse\": \
                 grant them in [grants.extensions.{}] of sandboxer.toml",
                spec.id
            ));
        }
        for (key, source) in &spec.grants.secrets {
            if let SecretSource::Env { env } = source {
                self.check_env(key, env)?;
            }
        }
        if !self.any_host.contains(&spec.id)
            && let Some(p) = spec
                .grants
                .allowed_outbound_hosts
                .iter()
                .find(|p| HostPattern::names_any_host(p))
        {
            return Err(format!(
                "allowed_outbound_hosts: {p:?}: a bare * host would let the extension reach any \
                 address; name the hosts (or *.domain), or list {:?} in [grants] any_host of \
                 sandboxer.toml",
                spec.id
            ));
        }
        Ok((spec.grants.clone(), SecretFiles::In(sidecar_dir)))
    }

    fn check_env(&self, key: &str, var: &str) -> Result<(), String> {
        if var.starts_with(HOST_ENV_PREFIX) || self.host_env.contains(var) {
            return Err(format!(
                "secrets.{key}: environment variable {var} is the host's own (SANDBOXER_* or a \
                 token sandboxer.toml reads); a sidecar cannot read it"
            ));
        }
        match &self.sidecar_env {
            Some(allowed) if !allowed.iter().any(|a| env_matches(a, var)) => Err(format!(
                "secrets.{key}: environment variable {var} is not in [grants] sidecar_env of \
                 sandboxer.toml; add it there, or grant the secret in [grants.extensions]"
            )),
            _ => Ok(()),
        }
    }
}

/// `NAME` matches itself; `PREFIX*` every variable starting with `PREFIX`.
fn env_matches(allowed: &str, var: &str) -> bool {
    match allowed.strip_suffix('*') {
        Some(prefix) => var.starts_with(prefix),
        None => allowed == var,
    }
}

/// Checks a `sidecar_env` entry: a variable name, or a prefix ending in `*`.
pub fn check_env_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{pattern:?} is not a variable name (letters, digits, _) or a prefix ending in *"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn sidecar_spec(id: &str, grants: GrantSpec) -> ExtensionSpec {
        let mut spec = ExtensionSpec::from_file(Path::new("/x/misbehave.wasm")).unwrap();
        spec.id = id.into();
        spec.sidecar = Some(PathBuf::from(format!("/x/{id}.toml")));
        spec.grants = grants;
        spec
    }

    fn env_secret(var: &str) -> GrantSpec {
        GrantSpec {
            secrets: [("api_key".to_owned(), SecretSource::Env { env: var.into() })].into(),
            ..GrantSpec::default()
        }
    }

    fn hosts(patterns: &[&str]) -> GrantSpec {
        GrantSpec {
            allowed_outbound_hosts: patterns.iter().map(|p| (*p).to_owned()).collect(),
            ..GrantSpec::default()
        }
    }

    #[test]
    fn a_sidecar_cannot_read_the_hosts_own_variables() {
        let policy = GrantPolicy {
            host_env: ["ADMIN_TOKEN".to_owned()].into(),
            ..GrantPolicy::default()
        };
        let dir = Path::new("/x");
        for var in ["ADMIN_TOKEN", "SANDBOXER_ADMIN"] {
            let err = policy
                .grants_for(&sidecar_spec("e", env_secret(var)), dir)
                .unwrap_err();
            assert!(err.contains(var) && err.contains("host's own"), "{err}");
        }
        assert!(
            policy
                .grants_for(&sidecar_spec("e", env_secret("E2B_API_KEY")), dir)
                .is_ok()
        );
    }

    #[test]
    fn sidecar_env_is_an_allowlist_of_names_and_prefixes() {
        let policy = GrantPolicy {
            sidecar_env: Some(vec!["E2B_API_KEY".into(), "MODAL_*".into()]),
            ..GrantPolicy::default()
        };
        let dir = Path::new("/x");
        for ok in ["E2B_API_KEY", "MODAL_TOKEN_ID"] {
            assert!(
                policy
                    .grants_for(&sidecar_spec("e", env_secret(ok)), dir)
                    .is_ok()
            );
        }
        let err = policy
            .grants_for(&sidecar_spec("e", env_secret("AWS_SECRET_ACCESS_KEY")), dir)
            .unwrap_err();
        assert!(err.contains("sidecar_env"), "{err}");
        assert!(check_env_pattern("MODAL_*").is_ok());
        for bad in ["", "*", "A-B", "1X", "A*B"] {
            assert!(check_env_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bare_star_host_needs_the_operators_opt_in() {
        let spec = sidecar_spec("proxy", hosts(&["*://*:*"]));
        let dir = Path::new("/x");
        let err = GrantPolicy::default().grants_for(&spec, dir).unwrap_err();
        assert!(err.contains("any_host") && err.contains("*://*:*"), "{err}");
        let opted = GrantPolicy {
            any_host: ["proxy".to_owned()].into(),
            ..GrantPolicy::default()
        };
        assert!(opted.grants_for(&spec, dir).is_ok());
    }

    #[test]
    fn the_host_config_owns_grants_when_it_names_the_extension() {
        let own = hosts(&["https://api.e2b.app"]);
        let policy = GrantPolicy {
            sidecars: SidecarGrants::Refuse,
            extensions: [("e2b".to_owned(), own.clone())].into(),
            ..GrantPolicy::default()
        };
        let dir = Path::new("/x");
        // The sidecar's own grants are replaced, not merged.
        let (g, files) = policy
            .grants_for(&sidecar_spec("e2b", hosts(&["https://evil.example"])), dir)
            .unwrap();
        assert_eq!(g, own);
        assert!(matches!(files, SecretFiles::Anywhere));
        let err = policy
            .grants_for(&sidecar_spec("other", hosts(&["https://x.example"])), dir)
            .unwrap_err();
        assert!(err.contains("[grants.extensions.other]"), "{err}");
        // A sidecar granting nothing still loads under "refuse".
        assert!(
            policy
                .grants_for(&sidecar_spec("plain", GrantSpec::default()), dir)
                .is_ok()
        );
    }
}
