//! A small client of OpenBao's (and Vault's) KV version 2 secrets engine: read, write and
//! delete the fields of one secret path, with the token in `X-Vault-Token`: a configured
//! token, or one got by an AppRole login (`auth/approle/login`) and got again before it
//! expires (and at once when OpenBao refuses it). `https://` addresses are verified
//! against the `ca_file`'s certificates, else the bundled web PKI roots (rustls).
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

/// How the host authenticates to OpenBao.
#[derive(Clone)]
pub enum OpenBaoAuth {
    /// A token, sent as `X-Vault-Token` as it is (renew it outside the host, or use a
    /// periodic one).
    Token(String),
    /// An AppRole: `role_id` and `secret_id` are exchanged for a token at
    /// `auth/approle/login`, again before the token's lease ends.
    AppRole {
        /// The role's id (not secret on its own).
        role_id: String,
        /// The secret id (a credential: never logged).
        secret_id: String,
    },
}

/// How to reach OpenBao (`[openbao]` in `sandboxer.toml`).
#[derive(Clone)]
pub struct OpenBaoSettings {
    /// `http://host:port` or `https://host:port` (no path).
    pub address: String,
    /// A token, or an AppRole to log in with.
    pub auth: OpenBaoAuth,
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
            auth: OpenBaoAuth::Token(token),
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
            .field(
                "auth",
                &match &self.auth {
                    OpenBaoAuth::Token(_) => "token [redacted]".to_owned(),
                    OpenBaoAuth::AppRole { role_id, .. } => {
                        format!("approle {role_id} (secret id [redacted])")
                    }
                },
            )
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
    #[error(
        "OpenBao at {address} refused the AppRole login (HTTP {status}): check role_id and secret_id"
    )]
    LoginRefused { address: String, status: u16 },
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
                // The role or its secret id may be fixed in OpenBao without the host.
                | Self::LoginRefused { .. }
        )
    }
}

/// A KV v2 client of one OpenBao; cheap to share (`Arc`).
pub struct OpenBao {
    settings: OpenBaoSettings,
    client: OnceCell<reqwest::blocking::Client>,
    /// The token an AppRole login got, and when to log in again.
    login: parking_lot::Mutex<Option<Login>>,
}

/// A token from an AppRole login.
struct Login {
    token: String,
    /// Log in again from then on (two thirds into the lease); `None`: it does not expire.
    renew_at: Option<std::time::Instant>,
}

#[derive(Deserialize)]
struct LoginAnswer {
    auth: LoginAuth,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
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
            login: parking_lot::Mutex::new(None),
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
            let https = self.settings.address.starts_with("https://");
            if self.settings.ca_file.is_some() && !https {
                return Err(OpenBaoError::Client {
                    reason: "ca_file is set but the address is not https://".into(),
                });
            }
            let mut builder = reqwest::blocking::Client::builder()
                .timeout(self.settings.timeout)
                .connect_timeout(self.settings.timeout)
                .redirect(reqwest::redirect::Policy::none());
            if https {
                builder = builder
                    .use_preconfigured_tls(tls_config(self.settings.ca_file.as_deref())?)
                    .https_only(true);
            }
            builder.build().map_err(|e| OpenBaoError::Client {
                reason: e.to_string(),
            })
        })
    }

    /// The token to send: the configured one, or the AppRole login's (logging in when
    /// there is none yet or it is due for renewal).
    fn token(&self) -> Result<String, OpenBaoError> {
        let (role_id, secret_id) = match &self.settings.auth {
            OpenBaoAuth::Token(t) => return Ok(t.clone()),
            OpenBaoAuth::AppRole { role_id, secret_id } => (role_id, secret_id),
        };
        let mut login = self.login.lock();
        if let Some(l) = login.as_ref()
            && l.renew_at.is_none_or(|at| std::time::Instant::now() < at)
        {
            return Ok(l.token.clone());
        }
        let url = format!("{}/v1/auth/approle/login", self.settings.address);
        let answer = self
            .client()?
            .post(url)
            .json(&serde_json::json!({ "role_id": role_id, "secret_id": secret_id }))
            .send()
            .map_err(|e| self.unreachable(&e))?;
        let address = self.settings.address.clone();
        match answer.status().as_u16() {
            200 => {}
            503 => return Err(OpenBaoError::Sealed { address }),
            status => return Err(OpenBaoError::LoginRefused { address, status }),
        }
        let parsed: LoginAnswer = answer.json().map_err(|_| OpenBaoError::LoginRefused {
            address: self.settings.address.clone(),
            status: 200,
        })?;
        let lease = parsed.auth.lease_duration;
        let renew_at = (lease > 0)
            .then(|| std::time::Instant::now() + Duration::from_millis(lease * 2000 / 3));
        tracing::info!(address = %self.settings.address, role_id = %role_id, lease_secs = lease, "logged in to OpenBao with AppRole");
        let token = parsed.auth.client_token;
        *login = Some(Login {
            token: token.clone(),
            renew_at,
        });
        Ok(token)
    }

    /// Sends the request `build` makes with the current token; when an AppRole token is
    /// refused (expired or revoked), logs in again once and sends it again.
    fn send(
        &self,
        build: impl Fn(&reqwest::blocking::Client) -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response, OpenBaoError> {
        let client = self.client()?;
        let answer = build(client)
            .header("X-Vault-Token", self.token()?)
            .send()
            .map_err(|e| self.unreachable(&e))?;
        if answer.status().as_u16() != 403
            || !matches!(self.settings.auth, OpenBaoAuth::AppRole { .. })
        {
            return Ok(answer);
        }
        *self.login.lock() = None;
        build(client)
            .header("X-Vault-Token", self.token()?)
            .send()
            .map_err(|e| self.unreachable(&e))
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
        } else if e.is_connect() && self.settings.address.starts_with("https://") {
            "connection or TLS handshake failed (is the server's CA in ca_file?)".to_owned()
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
        let answer = self.send(|c| c.get(&url))?;
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
        let body = serde_json::json!({ "data": fields });
        let answer = self.send(|c| c.post(&url).json(&body))?;
        match answer.status().as_u16() {
            200 | 204 => Ok(()),
            status => Err(self.status_error(status, path)),
        }
    }

    /// Deletes the secret at `path` with all its versions; deleting a missing one is fine.
    pub fn delete(&self, path: &str) -> Result<(), OpenBaoError> {
        let url = self.url("metadata", path)?;
        let answer = self.send(|c| c.delete(&url))?;
        match answer.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            status => Err(self.status_error(status, path)),
        }
    }
}

/// The TLS settings of an `https://` OpenBao: the certificates of `ca_file` (PEM) as the
/// only roots, else the bundled web PKI roots.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, OpenBaoError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let fail = |reason: String| OpenBaoError::Client { reason };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| fail(format!("ca_file {}: {e}", path.display())))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    fail(format!(
                        "ca_file {}: not PEM certificates: {e}",
                        path.display()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    fail(format!(
                        "ca_file {}: a certificate is refused: {e}",
                        path.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(fail(format!(
                    "ca_file {}: holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    .map_err(|e| fail(format!("TLS: {e}")))
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
            auth: OpenBaoAuth::Token("root-token-never-shown".into()),
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
