//! The agent's configuration: a TOML file (`--config`), overridden by flags, with
//! defaults that serve a single machine. Every error names the file, the key and what was
//! expected. The keys are documented in docs/agent.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7744";
/// The environment variable that may hold the token instead of a file.
pub const TOKEN_ENV: &str = "SANDBOXER_AGENT_TOKEN";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The file's keys (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub slots: Option<u32>,
    pub bwrap: Option<PathBuf>,
    pub uid_base: Option<u32>,
    pub pids_max: Option<u32>,
    pub tmp_mib: Option<u32>,
    pub default_disk_mib: Option<u32>,
    pub max_disk_mib: Option<u32>,
    pub cgroup_parent: Option<String>,
    pub system_dirs: Option<Vec<PathBuf>>,
    pub max_output_bytes: Option<u64>,
    pub max_file_bytes: Option<u64>,
    pub max_exec_timeout_secs: Option<u64>,
    pub keep_destroyed_hours: Option<u64>,
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateConfig>,
}

/// `[templates.NAME]`: a root filesystem folder mounted read-only as the sandbox's `/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub root: PathBuf,
}

/// What a template mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// The host's system folders, read-only.
    Base(Vec<PathBuf>),
    /// A root filesystem folder, read-only.
    Rootfs(PathBuf),
}

/// Flags that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub slots: Option<u32>,
    pub cgroup_parent: Option<String>,
    pub uid_base: Option<u32>,
    pub pids_max: Option<u32>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub token_file: Option<PathBuf>,
    pub slots: u32,
    pub bwrap: PathBuf,
    pub uid_base: u32,
    pub pids_max: u32,
    pub tmp_mib: u32,
    pub default_disk_mib: u32,
    pub max_disk_mib: u32,
    pub cgroup_parent: String,
    pub max_output_bytes: u64,
    pub max_file_bytes: u64,
    pub max_exec_timeout_secs: u64,
    pub keep_destroyed_hours: u64,
    pub templates: BTreeMap<String, Template>,
    /// CPU cores and memory of this machine (admission limits).
    pub host_cores: u32,
    pub host_memory_mib: u64,
}

/// The system folders the `base` template mounts read-only (those that exist).
pub const DEFAULT_SYSTEM_DIRS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];

/// This machine's CPU cores.
pub fn host_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// This machine's memory in MiB (from /proc/meminfo).
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024)
}

/// The default number of slots: 4 per core, at most one per 256 MiB of memory, at least 1.
pub fn default_slots(cores: u32, memory_mib: u64) -> u32 {
    let by_mem = u32::try_from(memory_mib / 256).unwrap_or(u32::MAX);
    cores.saturating_mul(4).min(by_mem).max(1)
}

impl Config {
    /// Reads `file` (when given) and applies `flags`.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let parsed = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    file: path.to_owned(),
                    message: format!("cannot read it: {e}"),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::File {
                    file: path.to_owned(),
                    message: e.to_string(),
                })?
            }
        };
        let where_ = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the flags".to_owned());
        Self::resolve(parsed, flags, &where_)
    }

    fn resolve(f: FileConfig, flags: &Overrides, where_: &str) -> Result<Config, ConfigError> {
        let bad = |key: &str, msg: String| ConfigError::Invalid(format!("{where_}: {key}: {msg}"));
        let listen_text = flags
            .listen
            .clone()
            .or(f.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            bad(
                "listen",
                format!("expected an address like \"127.0.0.1:7744\", got {listen_text:?}"),
            )
        })?;
        let cores = host_cores();
        let memory = host_memory_mib();
        let slots = flags
            .slots
            .or(f.slots)
            .unwrap_or_else(|| default_slots(cores, memory));
        if slots == 0 || slots > 4096 {
            return Err(bad("slots", format!("expected 1..=4096, got {slots}")));
        }
        let uid_base = flags.uid_base.or(f.uid_base).unwrap_or(900_000);
        if uid_base < 1000 || uid_base.checked_add(slots).is_none() {
            return Err(bad(
                "uid_base",
                format!("expected an unused uid range start of at least 1000, got {uid_base}"),
            ));
        }
        let pids_max = flags.pids_max.or(f.pids_max).unwrap_or(512);
        if pids_max < 8 {
            return Err(bad(
                "pids_max",
                format!("expected at least 8, got {pids_max}"),
            ));
        }
        let positive = |key: &str, v: Option<u64>, default: u64| -> Result<u64, ConfigError> {
            match v {
                Some(0) => Err(bad(key, "expected a number above 0, got 0".into())),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let tmp_mib = positive("tmp_mib", f.tmp_mib.map(u64::from), 64)? as u32;
        let default_disk_mib =
            positive("default_disk_mib", f.default_disk_mib.map(u64::from), 512)? as u32;
        let max_disk_mib = positive("max_disk_mib", f.max_disk_mib.map(u64::from), 8192)? as u32;
        if default_disk_mib > max_disk_mib {
            return Err(bad(
                "default_disk_mib",
                format!("{default_disk_mib} is above max_disk_mib {max_disk_mib}"),
            ));
        }
        let cgroup_parent = flags
            .cgroup_parent
            .clone()
            .or(f.cgroup_parent)
            .unwrap_or_else(|| "sandboxer-agent".to_owned());
        if cgroup_parent.trim_matches('/').is_empty()
            || cgroup_parent
                .split('/')
                .any(|p| p == ".." || p == "." || p.contains(char::is_whitespace))
        {
            return Err(bad(
                "cgroup_parent",
                format!(
                    "expected a relative cgroup path like \"sandboxer-agent\", got {cgroup_parent:?}"
                ),
            ));
        }
        let state_dir = flags
            .state_dir
            .clone()
            .or(f.state_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/sandboxer-agent"));
        let system_dirs: Vec<PathBuf> = f
            .system_dirs
            .unwrap_or_else(|| DEFAULT_SYSTEM_DIRS.iter().map(PathBuf::from).collect());
        for d in &system_dirs {
            if !d.is_absolute() {
                return Err(bad(
                    "system_dirs",
                    format!("{} is not an absolute path", d.display()),
                ));
            }
        }
        let abs_state = std::path::absolute(&state_dir).unwrap_or(state_dir.clone());
        if let Some(d) = system_dirs.iter().find(|d| abs_state.starts_with(d)) {
            return Err(bad(
                "state_dir",
                format!(
                    "{} is inside {}, which every sandbox sees read-only; keep the state elsewhere",
                    abs_state.display(),
                    d.display()
                ),
            ));
        }
        let mut templates = BTreeMap::new();
        templates.insert("base".to_owned(), Template::Base(system_dirs));
        for (name, t) in f.templates {
            if name == "base" {
                return Err(bad("templates.base", "\"base\" is built in".into()));
            }
            valid_template_root(&t.root).map_err(|m| bad(&format!("templates.{name}.root"), m))?;
            templates.insert(name, Template::Rootfs(t.root));
        }
        Ok(Config {
            listen,
            state_dir,
            token_file: flags.token_file.clone().or(f.token_file),
            slots,
            bwrap: f.bwrap.unwrap_or_else(|| PathBuf::from("bwrap")),
            uid_base,
            pids_max,
            tmp_mib,
            default_disk_mib,
            max_disk_mib,
            cgroup_parent,
            max_output_bytes: positive("max_output_bytes", f.max_output_bytes, 16 << 20)?,
            max_file_bytes: positive("max_file_bytes", f.max_file_bytes, 16 << 20)?,
            max_exec_timeout_secs: positive(
                "max_exec_timeout_secs",
                f.max_exec_timeout_secs,
                3600,
            )?,
            keep_destroyed_hours: positive("keep_destroyed_hours", f.keep_destroyed_hours, 168)?,
            templates,
            host_cores: cores,
            host_memory_mib: memory,
        })
    }

    /// The bearer token: from `token_file` (which must be owner-only) or [`TOKEN_ENV`].
    pub fn token(&self) -> Result<String, ConfigError> {
        let token = match &self.token_file {
            Some(path) => read_token_file(path)?,
            None => std::env::var(TOKEN_ENV).map_err(|_| {
                ConfigError::Invalid(format!(
                    "no token: pass --token-file FILE (owner-only, e.g. chmod 600) or set {TOKEN_ENV}"
                ))
            })?,
        };
        let token = token.trim().to_owned();
        if token.len() < 16 {
            return Err(ConfigError::Invalid(
                "the token is shorter than 16 characters; use a long random one (e.g. `openssl rand -hex 32`)".into(),
            ));
        }
        Ok(token)
    }
}

fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::File {
        file: path.to_owned(),
        message: format!("cannot read the token file: {e}"),
    })?;
    if meta.mode() & 0o077 != 0 {
        return Err(ConfigError::File {
            file: path.to_owned(),
            message: format!(
                "the token file is readable by others (mode {:o}); run `chmod 600 {}`",
                meta.mode() & 0o777,
                path.display()
            ),
        });
    }
    std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        file: path.to_owned(),
        message: format!("cannot read the token file: {e}"),
    })
}

/// A root filesystem template must have the folders the sandbox mounts over.
fn valid_template_root(root: &Path) -> Result<(), String> {
    if !root.is_absolute() {
        return Err(format!("{} is not an absolute path", root.display()));
    }
    if !root.is_dir() {
        return Err(format!("{} is not a folder", root.display()));
    }
    let missing: Vec<&str> = ["proc", "dev", "tmp", "run", "workspace"]
        .into_iter()
        .filter(|d| !root.join(d).is_dir())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} lacks the folders {} (create them: they are mount points)",
            root.display(),
            missing.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(Some(&p), &Overrides::default())
    }

    #[test]
    fn defaults_and_flags() {
        let c = load("state_dir = \"/tmp/agent-state\"\nslots = 3\n").unwrap();
        assert_eq!(c.slots, 3);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(matches!(c.templates["base"], Template::Base(_)));
        let flags = Overrides {
            slots: Some(5),
            listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let c = Config::load(None, &flags).unwrap();
        assert_eq!(c.slots, 5);
        assert_eq!(default_slots(2, 24 * 1024), 8);
        assert_eq!(default_slots(64, 1024), 4);
        assert_eq!(default_slots(1, 100), 1);
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = load("slots = \"many\"").unwrap_err().to_string();
        assert!(e.contains("agent.toml") && e.contains("slots"), "{e}");
        let e = load("colour = 1").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = load("listen = \"here\"").unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("\"here\""), "{e}");
        let e = load("state_dir = \"/etc/agent\"").unwrap_err().to_string();
        assert!(e.contains("read-only"), "{e}");
        let e = load("[templates.py]\nroot = \"/nonexistent-root\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("templates.py.root"), "{e}");
        let e = load("cgroup_parent = \"../x\"").unwrap_err().to_string();
        assert!(e.contains("cgroup_parent"), "{e}");
    }

    #[test]
    fn token_files_must_be_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let flags = Overrides {
            token_file: Some(p.clone()),
            ..Overrides::default()
        };
        let c = Config::load(None, &flags).unwrap();
        let e = c.token().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.token().unwrap(), "0123456789abcdef0123");
        std::fs::write(&p, "short").unwrap();
        assert!(c.token().unwrap_err().to_string().contains("16"));
    }
}
