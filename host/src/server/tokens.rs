//! Where bearer tokens come from: the config (a literal, an environment variable or a
//! file per tenant and for the admin) or, with no config file, a `local` tenant token and
//! an admin token generated into `<state>/tokens/` (owner-only) and reused on the next
//! start. The tokens become the API's [`TokenSet`], which keeps only their digests.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::config::{ConfigError, ServiceConfig, TokenSource};
use crate::domain::TenantId;
use crate::http::auth::{Principal, TokenSet};

/// The tenant created when the host runs without a config file.
pub const LOCAL_TENANT: &str = "local";

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

/// Tokens of the configured tenants and admin, read from the config, the environment or
/// files.
pub fn from_config(cfg: &ServiceConfig) -> Result<TokenSet, TokenError> {
    let file = cfg
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from("(no config)"));
    let mut set = TokenSet::new();
    // One token, one principal: a token given twice would silently speak for whichever
    // came first, so it is refused, naming both keys (never the token).
    let add = |set: &mut TokenSet, tok: String, key: String, who: Principal| {
        if let Some(first) = set.holder(&tok) {
            let first = match first {
                Principal::Tenant(t) => format!("tenants.{t}"),
                Principal::Admin => "admin".to_owned(),
            };
            return Err(TokenError::Config(ConfigError {
                file: file.display().to_string(),
                key,
                message: format!(
                    "this token is already {first}'s; every tenant and the admin need a token of their own"
                ),
            }));
        }
        set.insert(&tok, who);
        Ok(())
    };
    for (tenant, src) in &cfg.tenants {
        let key = format!("tenants.{tenant}");
        let tok = read_token(src, &file, &key)?;
        add(&mut set, tok, key, Principal::Tenant(tenant.clone()))?;
    }
    if let Some(src) = &cfg.admin {
        let tok = read_token(src, &file, "admin")?;
        add(&mut set, tok, "admin".to_owned(), Principal::Admin)?;
    }
    Ok(set)
}

/// The tokens `/metrics` accepts besides the admin's, when `[metrics]` names one.
pub fn metrics_from_config(cfg: &ServiceConfig) -> Result<Option<TokenSet>, TokenError> {
    let Some(src) = &cfg.metrics else {
        return Ok(None);
    };
    let file = cfg
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from("(no config)"));
    let mut set = TokenSet::new();
    // Only ever compared; the principal is never acted on.
    set.insert(&read_token(src, &file, "metrics")?, Principal::Admin);
    Ok(Some(set))
}

/// For a host without a config file: the `local` tenant's and the admin's tokens from
/// `<state>/tokens/`, generated (owner-only) on first start.
pub fn local(state_dir: &Path) -> Result<(TokenSet, GeneratedTokens), TokenError> {
    let dir = state_dir.join("tokens");
    create_private_dir(&dir)?;
    let tenant_file = dir.join(format!("{LOCAL_TENANT}.token"));
    let admin_file = dir.join("admin.token");
    let local = TenantId::parse(LOCAL_TENANT).map_err(|e| file_err(&tenant_file, e))?;
    let mut set = TokenSet::new();
    set.insert(&read_or_generate(&tenant_file)?, Principal::Tenant(local));
    set.insert(&read_or_generate(&admin_file)?, Principal::Admin);
    Ok((
        set,
        GeneratedTokens {
            tenant_file,
            admin_file,
        },
    ))
}

/// Where the generated tokens of a config-less host were written.
#[derive(Debug, Clone)]
pub struct GeneratedTokens {
    /// The `local` tenant's token file.
    pub tenant_file: PathBuf,
    /// The admin token file.
    pub admin_file: PathBuf,
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

pub(super) fn create_private_dir(dir: &Path) -> Result<(), TokenError> {
    crate::storage::private::private_dir(dir).map_err(|e| file_err(dir, e))
}

pub(super) fn read_or_generate(path: &Path) -> Result<String, TokenError> {
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
    fn local_tokens_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (s1, files) = local(dir.path()).unwrap();
        let tok = std::fs::read_to_string(&files.tenant_file).unwrap();
        assert_eq!(
            s1.authenticate(tok.trim()),
            Some(Principal::Tenant(TenantId::parse(LOCAL_TENANT).unwrap()))
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
        let (s2, _) = local(dir.path()).unwrap();
        assert_eq!(
            s2.authenticate(tok.trim()),
            Some(Principal::Tenant(TenantId::parse(LOCAL_TENANT).unwrap()))
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
        let e = from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("tenants.c.token_env"), "{e}");
        let text = format!("[tenants.b]\ntoken_file = {:?}\n", f.display().to_string());
        let cfg = ServiceConfig::parse(&text, &dir.path().join("s.toml")).unwrap();
        let s = from_config(&cfg).unwrap();
        assert_eq!(
            s.authenticate("file-token-0123456789"),
            Some(Principal::Tenant(TenantId::parse("b").unwrap()))
        );
    }

    #[test]
    fn a_token_given_twice_is_refused_naming_both_keys_but_not_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[tenants.a]\ntoken = \"same-token-0123456789\"\n[tenants.b]\ntoken = \"same-token-0123456789\"\n";
        let cfg = ServiceConfig::parse(text, &dir.path().join("s.toml")).unwrap();
        let e = from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("tenants.b") && e.contains("tenants.a"), "{e}");
        assert!(!e.contains("same-token"), "{e}");
        let text = "[tenants.a]\ntoken = \"same-token-0123456789\"\n[admin]\ntoken = \"same-token-0123456789\"\n";
        let cfg = ServiceConfig::parse(text, &dir.path().join("s.toml")).unwrap();
        let e = from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("admin") && e.contains("tenants.a"), "{e}");
    }
}
