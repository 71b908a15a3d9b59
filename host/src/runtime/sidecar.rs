//! Discovery of extensions in a folder: every `*.wasm`, and every sidecar `*.toml`.
//!
//! - `saas-stub.wasm` alone is loaded with id `saas-stub` and no configuration.
//! - `saas-stub.toml` beside it configures it (its `id` may rename it).
//! - `local-pool.toml` with `component = "saas-stub.wasm"` loads that component a second
//!   time, as `local-pool` (or its `id`), with its own kind, configuration and limits.
//!
//! Sidecar keys: `component`, `id`, `kind` (`"self-hosted"` | `"saas"`), `[config]`
//! (string values, handed to the guest through `wasi:config/store`), `memory_limit_mib`,
//! `call_timeout_ms`, and the grants `allowed_outbound_hosts`, `[secrets]`,
//! `outbound_timeout_ms`, `max_response_bytes`, `byok`, `byok_fee_percent`,
//! `byok_fee_per_sandbox_hour`, `outbound_ca_file` (see [`super::grants`], docs/secrets.md and
//! docs/extensions.md). Any other key is an error naming the file and the key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::grants::{GrantSpec, SecretSource};
use super::types::Kind;

/// One extension to load: a component plus what its sidecar (if any) says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtensionSpec {
    /// The extension id (file stem or sidecar `id`).
    pub id: String,
    /// The `.wasm` component file.
    pub component: PathBuf,
    /// The sidecar it came from, if any.
    pub sidecar: Option<PathBuf>,
    /// Overrides the kind the extension reports in `info`.
    pub kind: Option<Kind>,
    /// Exactly what the guest sees through `wasi:config/store`.
    pub config: BTreeMap<String, String>,
    /// Memory cap per instance, in MiB (the runtime's default when `None`).
    pub memory_limit_mib: Option<u64>,
    /// Time budget per call, in milliseconds (the runtime's default when `None`).
    pub call_timeout_ms: Option<u64>,
    /// Outbound HTTP hosts, secrets (their sources, never values), outbound timeout and
    /// response cap; resolved at load by [`super::grants::Grants::resolve`].
    pub grants: GrantSpec,
}

impl ExtensionSpec {
    /// A component with no sidecar: id from the file name (`saas-stub.wasm` → `saas-stub`).
    pub fn from_file(component: &Path) -> Result<Self, SpecError> {
        let stem = file_stem(component);
        validate_id(&stem).map_err(|reason| SpecError {
            file: component.to_path_buf(),
            reason,
        })?;
        Ok(Self {
            id: stem,
            component: component.to_path_buf(),
            sidecar: None,
            kind: None,
            config: BTreeMap::new(),
            memory_limit_mib: None,
            call_timeout_ms: None,
            grants: GrantSpec::default(),
        })
    }

    /// Reads a sidecar file. `component` is resolved relative to the sidecar's folder;
    /// without it, the sidecar configures the `.wasm` of the same name beside it.
    pub fn from_sidecar(sidecar: &Path) -> Result<Self, SpecError> {
        let fail = |reason: String| SpecError {
            file: sidecar.to_path_buf(),
            reason,
        };
        let text =
            std::fs::read_to_string(sidecar).map_err(|e| fail(format!("cannot read: {e}")))?;
        let parsed: SidecarFile =
            toml::from_str(&text).map_err(|e| fail(describe_toml_error(&text, &e)))?;
        let stem = file_stem(sidecar);
        let folder = sidecar.parent().unwrap_or(Path::new("."));
        let component = match &parsed.component {
            Some(name) => {
                let path = folder.join(name);
                if !path.is_file() {
                    return Err(fail(format!(
                        "component = {name:?}: no such file {}",
                        path.display()
                    )));
                }
                path
            }
            None => {
                let path = folder.join(format!("{stem}.wasm"));
                if !path.is_file() {
                    return Err(fail(format!(
                        "no component: add `component = \"FILE.wasm\"` or put {stem}.wasm beside it"
                    )));
                }
                path
            }
        };
        let id = parsed.id.clone().unwrap_or(stem);
        validate_id(&id).map_err(|reason| fail(format!("id: {reason}")))?;
        if parsed.memory_limit_mib == Some(0) {
            return Err(fail("memory_limit_mib: must be at least 1".into()));
        }
        if parsed.call_timeout_ms == Some(0) {
            return Err(fail("call_timeout_ms: must be at least 1".into()));
        }
        let grants = GrantKeys {
            allowed_outbound_hosts: parsed.allowed_outbound_hosts,
            secrets: parsed.secrets,
            outbound_timeout_ms: parsed.outbound_timeout_ms,
            max_response_bytes: parsed.max_response_bytes,
            byok: parsed.byok,
            byok_fee_percent: parsed.byok_fee_percent,
            byok_fee_per_sandbox_hour: parsed.byok_fee_per_sandbox_hour,
            outbound_ca_file: parsed.outbound_ca_file,
        }
        .into_spec()
        .map_err(fail)?;
        Ok(Self {
            id,
            component,
            sidecar: Some(sidecar.to_path_buf()),
            kind: parsed.kind,
            config: parsed.config,
            memory_limit_mib: parsed.memory_limit_mib,
            call_timeout_ms: parsed.call_timeout_ms,
            grants,
        })
    }

    /// The file that defines this extension: the sidecar if any, else the component.
    pub fn defining_file(&self) -> &Path {
        self.sidecar.as_deref().unwrap_or(&self.component)
    }
}

/// A sidecar or file name that cannot become an extension.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct SpecError {
    pub file: PathBuf,
    pub reason: String,
}

/// A file in the extensions folder that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The `.wasm` or sidecar `.toml` at fault.
    pub file: PathBuf,
    /// The id it would have had, when known.
    pub id: Option<String>,
    /// Why it was skipped, for operators.
    pub reason: String,
    /// Whether the host tries it again by itself (a secret that could not be read yet).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// The extensions a folder describes, before any component is compiled.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub specs: Vec<ExtensionSpec>,
    pub skipped: Vec<Skipped>,
}

/// The sidecar format; unknown keys are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarFile {
    component: Option<String>,
    id: Option<String>,
    kind: Option<Kind>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    memory_limit_mib: Option<u64>,
    call_timeout_ms: Option<u64>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretSource>,
    outbound_timeout_ms: Option<u64>,
    max_response_bytes: Option<u64>,
    #[serde(default)]
    byok: Vec<String>,
    byok_fee_percent: Option<String>,
    byok_fee_per_sandbox_hour: Option<String>,
    outbound_ca_file: Option<PathBuf>,
}

/// The grant keys as written, in a sidecar or in `[grants.extensions.ID]` of
/// `sandboxer.toml`; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantKeys {
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretSource>,
    outbound_timeout_ms: Option<u64>,
    max_response_bytes: Option<u64>,
    #[serde(default)]
    byok: Vec<String>,
    byok_fee_percent: Option<String>,
    byok_fee_per_sandbox_hour: Option<String>,
    outbound_ca_file: Option<PathBuf>,
}

impl GrantKeys {
    /// Checks the fees and gives the grants to resolve; the error names the key.
    pub fn into_spec(self) -> Result<GrantSpec, String> {
        let fee = |v: Option<String>, key: &str| -> Result<Option<rust_decimal::Decimal>, String> {
            let Some(v) = v else { return Ok(None) };
            match v.parse::<rust_decimal::Decimal>() {
                Ok(d) if !d.is_sign_negative() => Ok(Some(d)),
                _ => Err(format!(
                    "{key}: expected a decimal string of at least 0 such as \"5\" or \"0.02\", got {v:?}"
                )),
            }
        };
        Ok(GrantSpec {
            allowed_outbound_hosts: self.allowed_outbound_hosts,
            secrets: self.secrets,
            outbound_timeout_ms: self.outbound_timeout_ms,
            max_response_bytes: self.max_response_bytes,
            byok: self.byok,
            byok_fee_percent: fee(self.byok_fee_percent, "byok_fee_percent")?,
            byok_fee_per_sandbox_hour: fee(
                self.byok_fee_per_sandbox_hour,
                "byok_fee_per_sandbox_hour",
            )?,
            outbound_ca_file: self.outbound_ca_file,
        })
    }
}

/// Lists the extensions in `dir` (sorted by file name, so ids are assigned
/// deterministically: on a duplicate id the first file wins).
pub fn discover(dir: &Path) -> std::io::Result<Discovery> {
    let mut wasm = Vec::new();
    let mut sidecars = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden || !path.is_file() {
            continue;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("wasm") => wasm.push(path),
            Some("toml") => sidecars.push(path),
            _ => {}
        }
    }
    wasm.sort();
    sidecars.sort();

    let sidecar_stems: Vec<String> = sidecars.iter().map(|p| file_stem(p)).collect();
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for path in &wasm {
        // A same-named sidecar decides how this component is loaded.
        if sidecar_stems.contains(&file_stem(path)) {
            continue;
        }
        match ExtensionSpec::from_file(path) {
            Ok(spec) => found.push(spec),
            Err(e) => skipped.push(Skipped {
                file: e.file,
                id: None,
                reason: e.reason,
                retry: false,
            }),
        }
    }
    for path in &sidecars {
        match ExtensionSpec::from_sidecar(path) {
            Ok(spec) => found.push(spec),
            Err(e) => skipped.push(Skipped {
                file: e.file,
                id: Some(file_stem(path)),
                reason: e.reason,
                retry: false,
            }),
        }
    }
    found.sort_by(|a, b| a.defining_file().cmp(b.defining_file()));

    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let mut specs = Vec::new();
    for spec in found {
        if let Some(first) = seen.get(&spec.id) {
            skipped.push(Skipped {
                file: spec.defining_file().to_path_buf(),
                id: Some(spec.id.clone()),
                reason: format!("id {:?} is already used by {}", spec.id, first.display()),
                retry: false,
            });
            continue;
        }
        seen.insert(spec.id.clone(), spec.defining_file().to_path_buf());
        specs.push(spec);
    }
    Ok(Discovery { specs, skipped })
}

/// An extension the host itself configures in place of a sidecar file (the embedded
/// agent's `local`, see `server/embedded.rs`). It applies only to a component loaded
/// bare: an operator's own sidecar defining the same id wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// Load the bare component of `spec.id` as `spec` says (config, kind, grants, limits).
    Configure(Box<ExtensionSpec>),
    /// Do not load the bare component `id`; report it skipped with `reason`.
    Skip {
        /// The extension id.
        id: String,
        /// Why, for operators (what is missing and how to fix it).
        reason: String,
    },
}

impl Overlay {
    fn id(&self) -> &str {
        match self {
            Overlay::Configure(spec) => &spec.id,
            Overlay::Skip { id, .. } => id,
        }
    }
}

impl Discovery {
    /// Applies `overlays` to what a folder describes: each replaces (or skips) the spec of
    /// its id when that spec comes from a bare component, and does nothing when a sidecar
    /// defines the id or the component is not in the folder.
    pub fn apply(&mut self, overlays: &[Overlay]) {
        for overlay in overlays {
            let Some(at) = self
                .specs
                .iter()
                .position(|s| s.id == overlay.id() && s.sidecar.is_none())
            else {
                continue;
            };
            match overlay {
                Overlay::Configure(spec) => self.specs[at] = (**spec).clone(),
                Overlay::Skip { id, reason } => {
                    let spec = self.specs.remove(at);
                    self.skipped.push(Skipped {
                        file: spec.component,
                        id: Some(id.clone()),
                        reason: reason.clone(),
                        // Missing bubblewrap or cgroups needs the operator, not a retry.
                        retry: false,
                    });
                }
            }
        }
    }
}

/// Extension ids: 1 to 64 of `a-z`, `0-9`, `-`, starting with a letter or digit.
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid extension id (1-64 of a-z, 0-9, '-'); rename the file or set `id` in a sidecar"
        ))
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One line: `line N: message` (toml's own rendering spans several lines).
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        dir
    }

    #[test]
    fn ids_come_from_file_names_and_sidecars() {
        let dir = folder(&[
            ("saas-stub.wasm", "x"),
            (
                "local-pool.toml",
                "component = \"saas-stub.wasm\"\nkind = \"self-hosted\"\n[config]\ncapacity = \"2\"\n",
            ),
        ]);
        let found = discover(dir.path()).unwrap();
        assert!(found.skipped.is_empty(), "{:?}", found.skipped);
        let ids: Vec<_> = found.specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["local-pool", "saas-stub"]);
        let pool = &found.specs[0];
        assert_eq!(pool.kind, Some(Kind::SelfHosted));
        assert_eq!(pool.config.get("capacity").map(String::as_str), Some("2"));
        assert_eq!(pool.component, dir.path().join("saas-stub.wasm"));
    }

    #[test]
    fn overlays_replace_or_skip_bare_components_only() {
        let dir = folder(&[("local.wasm", "x"), ("saas-stub.wasm", "x")]);
        let mut configured = ExtensionSpec::from_file(&dir.path().join("local.wasm")).unwrap();
        configured
            .config
            .insert("agents".into(), "http://127.0.0.1:9".into());
        let mut found = discover(dir.path()).unwrap();
        found.apply(&[Overlay::Configure(Box::new(configured.clone()))]);
        assert_eq!(found.specs[0], configured);

        let mut found = discover(dir.path()).unwrap();
        found.apply(&[Overlay::Skip {
            id: "local".into(),
            reason: "bubblewrap: not installed".into(),
        }]);
        let ids: Vec<_> = found.specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["saas-stub"]);
        assert_eq!(found.skipped[0].id.as_deref(), Some("local"));
        assert_eq!(found.skipped[0].reason, "bubblewrap: not installed");

        // The operator's own sidecar wins over both.
        std::fs::write(dir.path().join("local.toml"), "[config]\nagents = \"x\"\n").unwrap();
        let mut found = discover(dir.path()).unwrap();
        found.apply(&[Overlay::Skip {
            id: "local".into(),
            reason: "off".into(),
        }]);
        assert!(found.skipped.is_empty());
        assert!(
            found
                .specs
                .iter()
                .any(|s| s.id == "local" && s.sidecar.is_some())
        );
    }

    #[test]
    fn a_same_named_sidecar_configures_its_wasm() {
        let dir = folder(&[
            ("saas-stub.wasm", "x"),
            (
                "saas-stub.toml",
                "id = \"stub\"\n[config]\ncurrency = \"EUR\"\n",
            ),
        ]);
        let found = discover(dir.path()).unwrap();
        let ids: Vec<_> = found.specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["stub"]);
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let dir = folder(&[
            ("saas-stub.wasm", "x"),
            ("saas-stub.toml", "kind = \"saas\"\nmemory_mib = 3\n"),
        ]);
        let found = discover(dir.path()).unwrap();
        assert!(found.specs.is_empty());
        let skipped = &found.skipped[0];
        assert!(skipped.file.ends_with("saas-stub.toml"));
        assert!(skipped.reason.contains("line 2"), "{}", skipped.reason);
        assert!(skipped.reason.contains("memory_mib"), "{}", skipped.reason);
    }

    #[test]
    fn non_string_config_values_and_bad_kinds_are_refused() {
        let dir = folder(&[
            ("a.wasm", "x"),
            ("a.toml", "[config]\ncapacity = 2\n"),
            ("b.toml", "component = \"a.wasm\"\nkind = \"cloud\"\n"),
        ]);
        let found = discover(dir.path()).unwrap();
        assert!(found.specs.is_empty());
        assert_eq!(found.skipped.len(), 2);
        assert!(
            found.skipped.iter().any(|s| s.reason.contains("string")),
            "{:?}",
            found.skipped
        );
        assert!(
            found.skipped.iter().any(|s| s.reason.contains("cloud")),
            "{:?}",
            found.skipped
        );
    }

    #[test]
    fn missing_components_bad_ids_and_duplicates_are_skipped() {
        let dir = folder(&[
            ("Bad_Name.wasm", "x"),
            ("ghost.toml", "[config]\n"),
            ("other.toml", "component = \"nope.wasm\"\n"),
            ("x.wasm", "x"),
            ("y.toml", "component = \"x.wasm\"\nid = \"x\"\n"),
        ]);
        let found = discover(dir.path()).unwrap();
        let ids: Vec<_> = found.specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["x"]);
        let reasons: Vec<_> = found.skipped.iter().map(|s| s.reason.clone()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("Bad_Name")));
        assert!(reasons.iter().any(|r| r.contains("ghost.wasm")));
        assert!(reasons.iter().any(|r| r.contains("nope.wasm")));
        assert!(reasons.iter().any(|r| r.contains("already used")));
    }
}
