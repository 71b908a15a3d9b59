//! A small client of OpenBao's (and Vault's) KV version 2 secrets engine: read, write and
//! delete the fields of one secret path, with the token in `X-Vault-Token`.
//!
//! Blocking (reqwest's blocking client, built on first use so it is never made or dropped
//! on the async runtime); every call is bounded by the configured timeout. Errors name the
//! address and the secret path, never a value: a response body is never copied into one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use once_cell::sync::OnceCell;
use serde::Deserialize;

/// Default bound on one request to OpenBao.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default interval between re-reads of a secret (rotation is picked up within it).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
/// Default interval between retries of extensions skipped because OpenBao failed.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(10);

/// How to reach OpenBao (`[openbao]` in `sandboxer.toml`).
#[derive(Clone)]
pub struct OpenBaoSettings {
    /// `http://host:port` (no path).
    pub address: String,
    /// The token sent as `X-Vault-Token`.
    pub token: String,
    /// The KV v2 engine's mount (`secret` by default).
    pub mount: String,
    /// A PEM file of CA certificates to trust (for an `https://` address).
    pub ca_file: Option<PathBuf>,
    /// Bound on one request.
    pub timeout: Duration,
    /// How long a secret read is used before it is read again.
    pub refresh: Duration,
    /// How often extensions skipped because OpenBao failed are tried again.
    pub retry: Duration,
    /// Where tenants' own keys live under the mount: `PREFIX/TENANT/EXTENSION`.
    pub tenant_prefix: String,
}

impl OpenBaoSettings {
    /// Settings for `address` with `token`, `mount` and `tenant_prefix`, and the default
    /// timeout, refresh and retry intervals.
    pub fn with_defaults(
        address: String,
        token: String,
        mount: String,
        tenant_prefix: String,
    ) -> Self {
        Self {
            address: address.trim_end_matches('/').to_owned(),
            token,
            mount,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            refresh: DEFAULT_REFRESH,
            retry: DEFAULT_RETRY,
            tenant_prefix,
        }
    }
}

/// Default [`OpenBaoSettings::tenant_prefix`].
pub const DEFAULT_TENANT_PREFIX: &str = "sandboxer/tenants";

impl fmt::Debug for OpenBaoSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenBaoSettings")
            .field("address", &self.address)
            .field("token", &"[redacted]")
            .field("mount", &self.mount)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("refresh", &self.refresh)
            .field("retry", &self.retry)
            .field("tenant_prefix", &self.tenant_prefix)
            .finish()
    }
}

/// Why OpenBao did not answer with the secret. Never carries a secret value or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenBaoError {
    #[error("OpenBao at {address} is unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("OpenBao at {address} is sealed")]
    Sealed { address: String },
    #[error("OpenBao has no secret at {mount}/{path}")]
    NotFound { mount: String, path: String },
    #[error("OpenBao refused access to {mount}/{path} (check the token's policy)")]
    Denied { mount: String, path: String },
    #[error("OpenBao answered HTTP {status} for {mount}/{path}")]
    Status {
        mount: String,
        path: String,
        status: u16,
    },
    #[error("OpenBao's answer for {mount}/{path} is not a KV v2 secret of string fields")]
    BadAnswer { mount: String, path: String },
    #[error("secret path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("OpenBao client: {reason}")]
    Client { reason: String },
}

impl OpenBaoError {
    /// Whether trying again later may succeed (OpenBao down, sealed, or the secret not
    /// written yet), as opposed to a request that can never work.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Sealed { .. }
                | Self::NotFound { .. }
                | Self::Status { .. }
        )
    }
}

/// A KV v2 client of one OpenBao; cheap to share (`Arc`).
pub struct OpenBao {
    settings: OpenBaoSettings,
    client: OnceCell<reqwest::blocking::Client>,
}

impl fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenBao")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ReadAnswer {
    data: ReadData,
}

#[derive(Deserialize)]
struct ReadData {
    data: Option<BTreeMap<String, serde_json::Value>>,
}

impl OpenBao {
    /// A client for `settings` (nothing is contacted yet).
    pub fn new(settings: OpenBaoSettings) -> Self {
        Self {
            settings,
            client: OnceCell::new(),
        }
    }

    /// Where `tenant`'s own key for `extension` is stored. Both are ids the host has
    /// validated (letters, digits, `-`, `_`): one tenant's path can never name another's.
    pub fn tenant_key_path(&self, tenant: &str, extension: &str) -> String {
        format!("{}/{tenant}/{extension}", self.settings.tenant_prefix)
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &OpenBaoSettings {
        &self.settings
    }

    fn client(&self) -> Result<&reqwest::blocking::Client, OpenBaoError> {
        self.client.get_or_try_init(|| {
            if self.settings.ca_file.is_some() || self.settings.address.starts_with("https://") {
                // The host is built without a TLS stack; say so rather than fail obscurely.
                return Err(OpenBaoError::Client {
                    reason: "https:// and ca_file are not supported by this build; reach \
                             OpenBao over http:// on loopback or a private network"
                        .into(),
                });
            }
            reqwest::blocking::Client::builder()
                .timeout(self.settings.timeout)
                .connect_timeout(self.settings.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| OpenBaoError::Client {
                    reason: e.to_string(),
                })
        })
    }

    fn url(&self, kind: &str, path: &str) -> Result<String, OpenBaoError> {
        check_path(&self.settings.mount)?;
        check_path(path)?;
        Ok(format!(
            "{}/v1/{}/{kind}/{path}",
            self.settings.address.trim_end_matches('/'),
            self.settings.mount
        ))
    }

    fn unreachable(&self, e: &reqwest::Error) -> OpenBaoError {
        // reqwest's message names the URL (address and path, no secret) and the cause.
        let reason = if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            "connection refused or failed".to_owned()
        } else {
            "request failed".to_owned()
        };
        OpenBaoError::Unreachable {
            address: self.settings.address.clone(),
            reason,
        }
    }

    fn status_error(&self, status: u16, path: &str) -> OpenBaoError {
        let (mount, path) = (self.settings.mount.clone(), path.to_owned());
        match status {
            404 => OpenBaoError::NotFound { mount, path },
            403 => OpenBaoError::Denied { mount, path },
            503 => OpenBaoError::Sealed {
                address: self.settings.address.clone(),
            },
            status => OpenBaoError::Status {
                mount,
                path,
                status,
            },
        }
    }

    /// The string fields of the newest version of the secret at `path`.
    pub fn read(&self, path: &str) -> Result<BTreeMap<String, String>, OpenBaoError> {
        let url = self.url("data", path)?;
        let answer = self
            .client()?
            .get(url)
            .header("X-Vault-Token", &self.settings.token)
            .send()
            .map_err(|e| self.unreachable(&e))?;
        let status = answer.status().as_u16();
        if status != 200 {
            return Err(self.status_error(status, path));
        }
        let bad = || OpenBaoError::BadAnswer {
            mount: self.settings.mount.clone(),
            path: path.to_owned(),
        };
        let parsed: ReadAnswer = answer.json().map_err(|_| bad())?;
        // A deleted (soft-deleted) version answers 404 or `data: null`: both mean missing.
        let Some(fields) = parsed.data.data else {
            return Err(self.status_error(404, path));
        };
        fields
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                _ => Err(bad()),
            })
            .collect()
    }

    /// Writes `fields` as a new version of the secret at `path`.
    pub fn write(&self, path: &str, fields: &BTreeMap<String, String>) -> Result<(), OpenBaoError> {
        let url = self.url("data", path)?;
        let answer = self
            .client()?
            .post(url)
            .header("X-Vault-Token", &self.settings.token)
            .json(&serde_json::json!({ "data": fields }))
            .send()
            .map_err(|e| self.unreachable(&e))?;
        match answer.status().as_u16() {
            200 | 204 => Ok(()),
            status => Err(self.status_error(status, path)),
        }
    }

    /// Deletes the secret at `path` with all its versions; deleting a missing one is fine.
    pub fn delete(&self, path: &str) -> Result<(), OpenBaoError> {
        let url = self.url("metadata", path)?;
        let answer = self
            .client()?
            .delete(url)
            .header("X-Vault-Token", &self.settings.token)
            .send()
            .map_err(|e| self.unreachable(&e))?;
        match answer.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            status => Err(self.status_error(status, path)),
        }
    }
}

/// A secret path is `segment/segment/…` of letters, digits, `.`, `_` and `-`, with no
/// empty, `.` or `..` segment: nothing that could climb out of the configured mount or
/// out of a tenant's own prefix.
pub fn check_path(path: &str) -> Result<(), OpenBaoError> {
    let fail = |reason| OpenBaoError::BadPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() || path.len() > 512 {
        return Err(fail("expected 1 to 512 characters"));
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(fail("empty, `.` and `..` segments are not allowed"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(fail(
                "segments are letters, digits, `.`, `_` and `-` separated by `/`",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_escape_are_refused() {
        for ok in ["sandboxer/e2b", "a", "tenants/acme/e2b.key", "x-y_z/1"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "/abs", "a//b", "a/../b", "..", "a/./b", "a b", "a?b", "a%2e", "trail/",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_unreachable_server_is_a_transient_error_naming_the_address() {
        let bao = OpenBao::new(OpenBaoSettings {
            address: "http://127.0.0.1:9".into(),
            token: "root-token-never-shown".into(),
            mount: "secret".into(),
            ca_file: None,
            timeout: Duration::from_millis(300),
            refresh: DEFAULT_REFRESH,
            retry: DEFAULT_RETRY,
            tenant_prefix: DEFAULT_TENANT_PREFIX.into(),
        });
        let err = bao.read("sandboxer/e2b").unwrap_err();
        assert!(err.is_transient(), "{err}");
        let text = err.to_string();
        assert!(text.contains("127.0.0.1:9"), "{text}");
        assert!(!text.contains("root-token"), "{text}");
        assert!(!format!("{bao:?}").contains("root-token"));
    }
}
