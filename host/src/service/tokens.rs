//! Bearer tokens: which tenant (or the admin) a request speaks for.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time against every
//! known digest, so neither the comparison's timing nor a log line can reveal one.
//! With no config file the host generates a `local` tenant token and an admin token into
//! `<state>/tokens/` (owner-only permissions) and reuses them on the next start.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::config::{ConfigError, ServiceConfig, TokenSource};

/// The tenant created when the host runs without a config file.
pub const LOCAL_TENANT: &str = "local";

/// Who a request speaks for.
#[derive(Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant: sees and touches only its own sandboxes and credits.
    Tenant(String),
    /// The operator: may add credits to any tenant.
    Admin,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Tenant(t) => write!(f, "tenant:{t}"),
            Principal::Admin => f.write_str("admin"),
        }
    }
}

/// Why tokens could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A configured source is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The generated token files could not be written or read.
    #[error("token file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The known tokens, as digests.
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<([u8; 32], Principal)>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print digests either: they identify tokens.
        let who: Vec<_> = self.entries.iter().map(|(_, p)| p).collect();
        f.debug_struct("TokenSet")
            .field("principals", &who)
            .finish()
    }
}

/// Where the generated tokens of a config-less host were written.
#[derive(Debug, Clone)]
pub struct GeneratedTokens {
    /// The `local` tenant's token file.
    pub tenant_file: PathBuf,
    /// The admin token file.
    pub admin_file: PathBuf,
}

impl TokenSet {
    /// An empty set (every request is refused with 401).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token for `who`.
    pub fn insert(&mut self, token: &str, who: Principal) {
        self.entries.push((digest(token), who));
    }

    /// Tenants that have a token.
    pub fn tenants(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .entries
            .iter()
            .filter_map(|(_, p)| match p {
                Principal::Tenant(t) => Some(t.clone()),
                Principal::Admin => None,
            })
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Whether an admin token exists.
    pub fn has_admin(&self) -> bool {
        self.entries.iter().any(|(_, p)| *p == Principal::Admin)
    }

    /// The principal a presented token belongs to. Looks at every entry whatever the
    /// outcome, and compares digests without early exit.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let d = digest(presented);
        let mut found = None;
        for (known, who) in &self.entries {
            let diff = known
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(who.clone());
            }
        }
        found
    }

    /// Tokens of the configured tenants and admin, read from the config, the environment
    /// or files.
    pub fn from_config(cfg: &ServiceConfig) -> Result<Self, TokenError> {
        let file = cfg
            .file
            .clone()
            .unwrap_or_else(|| PathBuf::from("(no config)"));
        let mut set = Self::new();
        for (tenant, src) in &cfg.tenants {
            let tok = read_token(src, &file, &format!("tenants.{tenant}"))?;
            set.insert(&tok, Principal::Tenant(tenant.clone()));
        }
        if let Some(src) = &cfg.admin {
            let tok = read_token(src, &file, "admin")?;
            set.insert(&tok, Principal::Admin);
        }
        Ok(set)
    }

    /// For a host without a config file: the `local` tenant's and the admin's tokens from
    /// `<state>/tokens/`, generated (owner-only) on first start.
    pub fn local(state_dir: &Path) -> Result<(Self, GeneratedTokens), TokenError> {
        let dir = state_dir.join("tokens");
        create_private_dir(&dir)?;
        let tenant_file = dir.join(format!("{LOCAL_TENANT}.token"));
        let admin_file = dir.join("admin.token");
        let mut set = Self::new();
        set.insert(
            &read_or_generate(&tenant_file)?,
            Principal::Tenant(LOCAL_TENANT.to_owned()),
        );
        set.insert(&read_or_generate(&admin_file)?, Principal::Admin);
        Ok((
            set,
            GeneratedTokens {
                tenant_file,
                admin_file,
            },
        ))
    }
}

/// Whether `s` is a valid tenant id: `[a-z0-9][a-z0-9_-]*`, at most 64 characters (the
/// ledger's rule).
pub fn is_tenant_id(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Reads a token from its source (literal, environment variable or file), trimmed; errors
/// name the config file and key, never the value.
pub fn read_token(src: &TokenSource, file: &Path, key: &str) -> Result<String, TokenError> {
    let err = |k: String, m: String| {
        TokenError::Config(ConfigError {
            file: file.display().to_string(),
            key: k,
            message: m,
        })
    };
    let tok = if let Some(t) = &src.token {
        t.trim().to_owned()
    } else if let Some(var) = &src.token_env {
        match std::env::var(var) {
            Ok(v) => v.trim().to_owned(),
            Err(_) => {
                return Err(err(
                    format!("{key}.token_env"),
                    format!(
                        "expected the environment variable {var} to hold a token; it is unset or not UTF-8"
                    ),
                ));
            }
        }
    } else if let Some(p) = &src.token_file {
        warn_if_readable_by_others(p);
        match std::fs::read_to_string(p) {
            Ok(v) => v.trim().to_owned(),
            Err(e) => {
                return Err(err(
                    format!("{key}.token_file"),
                    format!(
                        "expected a readable file holding a token at {}: {e}",
                        p.display()
                    ),
                ));
            }
        }
    } else {
        return Err(err(
            key.to_owned(),
            "expected one of token, token_env, token_file".to_owned(),
        ));
    };
    if tok.len() < 16 {
        return Err(err(
            key.to_owned(),
            "expected a token of at least 16 characters".to_owned(),
        ));
    }
    Ok(tok)
}

fn file_err(path: &Path, e: impl fmt::Display) -> TokenError {
    TokenError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), TokenError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| file_err(dir, e))?;
    }
    Ok(())
}

fn read_or_generate(path: &Path) -> Result<String, TokenError> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= 16 => return Ok(t.trim().to_owned()),
        Ok(_) => {
            return Err(file_err(
                path,
                "holds no usable token (expected at least 16 characters); delete it to generate a new one",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_err(path, e)),
    }
    let token = generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(format!("{token}\n").as_bytes())
        .map_err(|e| file_err(path, e))?;
    f.sync_all().map_err(|e| file_err(path, e))?;
    Ok(token)
}

/// A fresh random token: 244 bits from the OS generator, hex, with a recognisable prefix.
pub fn generate() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("sbx_{a}{b}")
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(file = %path.display(), "token file is readable by group or others; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_only_known_tokens() {
        let mut s = TokenSet::new();
        s.insert("tenant-a-token-0000", Principal::Tenant("a".into()));
        s.insert("admin-token-000000", Principal::Admin);
        assert_eq!(
            s.authenticate("tenant-a-token-0000"),
            Some(Principal::Tenant("a".into()))
        );
        assert_eq!(s.authenticate("admin-token-000000"), Some(Principal::Admin));
        assert_eq!(s.authenticate("tenant-a-token-000"), None);
        assert_eq!(s.authenticate(""), None);
        assert!(!format!("{s:?}").contains("token-0000"));
    }

    #[test]
    fn local_tokens_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (s1, files) = TokenSet::local(dir.path()).unwrap();
        let tok = std::fs::read_to_string(&files.tenant_file).unwrap();
        assert_eq!(
            s1.authenticate(tok.trim()),
            Some(Principal::Tenant(LOCAL_TENANT.into()))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.admin_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (s2, _) = TokenSet::local(dir.path()).unwrap();
        assert_eq!(
            s2.authenticate(tok.trim()),
            Some(Principal::Tenant(LOCAL_TENANT.into()))
        );
    }

    #[test]
    fn env_and_file_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.token");
        std::fs::write(&f, "file-token-0123456789\n").unwrap();
        let text = format!(
            "[tenants.b]\ntoken_file = {:?}\n[tenants.c]\ntoken_env = \"SANDBOXER_TEST_TOKEN_UNSET_X\"\n",
            f.display().to_string()
        );
        let cfg = ServiceConfig::parse(&text, &dir.path().join("s.toml")).unwrap();
        let e = TokenSet::from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("tenants.c.token_env"), "{e}");
        let text = format!("[tenants.b]\ntoken_file = {:?}\n", f.display().to_string());
        let cfg = ServiceConfig::parse(&text, &dir.path().join("s.toml")).unwrap();
        let s = TokenSet::from_config(&cfg).unwrap();
        assert_eq!(
            s.authenticate("file-token-0123456789"),
            Some(Principal::Tenant("b".into()))
        );
    }
}
