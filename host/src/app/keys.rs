//! Tenants' own provider keys (BYOK): a tenant stores, lists and removes its key for an
//! extension that offers it (`byok = ["api_key"]` in the sidecar). Keys are written to
//! OpenBao at `TENANT_PREFIX/TENANT/EXTENSION`, never to the host's database, never
//! logged; answers carry a fingerprint and the time it was set, never the value.
//! `PUT/GET/DELETE /v1/keys…`.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{App, AppError};
use crate::domain::TenantId;
use crate::runtime::Extension;
use crate::secrets::{OpenBao, OpenBaoError};

/// Field of the stored secret that records when it was set (RFC 3339); not a key.
const SET_AT_FIELD: &str = "sandboxer_set_at";

/// One extension that takes a tenant's own key, and whether this tenant set one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyRow {
    /// The extension id.
    pub extension: String,
    /// The fields a key consists of (the sidecar's `byok`).
    pub fields: Vec<String>,
    /// Whether the tenant stored a key: its calls to this extension carry it.
    pub set: bool,
    /// `sha256:` and the first 16 hex digits of the key's digest, to tell keys apart.
    pub fingerprint: Option<String>,
    /// When it was stored (RFC 3339).
    pub set_at: Option<String>,
}

/// The tenant's keys, one row per extension that takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// By extension id.
    pub keys: Vec<KeyRow>,
}

impl App {
    /// The OpenBao that stores tenants' keys, or why there is none.
    fn key_store(&self) -> Result<&OpenBao, AppError> {
        self.openbao()
            .map(|b| b.as_ref())
            .ok_or_else(|| AppError::SecretStore {
                message: "tenants' own keys need OpenBao: the host has no [openbao] table in \
                          sandboxer.toml"
                    .into(),
            })
    }

    /// The loaded extension `id` if it takes tenants' keys.
    fn byok_extension(
        &self,
        id: &str,
    ) -> Result<std::sync::Arc<dyn crate::manager::Backend>, AppError> {
        let registry = self.registry()?;
        let backend = registry.extensions().get(id).ok_or_else(|| {
            AppError::invalid("extension", format!("no extension {id:?} is loaded"))
        })?;
        let takes = backend
            .component()
            .is_some_and(|c: &Extension| !c.byok_fields().is_empty());
        if !takes {
            return Err(AppError::invalid(
                "extension",
                format!(
                    "extension {id:?} does not take tenants' own keys (its sidecar has no byok)"
                ),
            ));
        }
        Ok(backend)
    }

    /// Stores `tenant`'s own key for `extension`: exactly the fields it declares, none
    /// empty. Replaces an earlier key; the tenant's next call carries the new one.
    pub fn set_key(
        &self,
        tenant: &TenantId,
        extension: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<KeyRow, AppError> {
        let store = self.key_store()?;
        let backend = self.byok_extension(extension)?;
        let Some(ext) = backend.component() else {
            return Err(AppError::internal("a BYOK extension without a component"));
        };
        let wanted = ext.byok_fields();
        if let Some(unknown) = fields.keys().find(|k| !wanted.contains(k)) {
            return Err(AppError::invalid(
                unknown,
                format!(
                    "{extension} takes no key field {unknown:?}; its fields: {}",
                    wanted.join(", ")
                ),
            ));
        }
        for f in wanted {
            match fields.get(f) {
                None => {
                    return Err(AppError::invalid(
                        f,
                        format!("{extension} needs the key field {f:?}"),
                    ));
                }
                Some(v) if v.trim().is_empty() => {
                    return Err(AppError::invalid(
                        f,
                        format!("the key field {f:?} is empty"),
                    ));
                }
                Some(v) if v.len() > 8192 || v.chars().any(char::is_control) => {
                    return Err(AppError::invalid(
                        f,
                        format!(
                            "the key field {f:?} is longer than 8192 bytes or has control characters"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let set_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut stored = fields.clone();
        stored.insert(SET_AT_FIELD.into(), set_at);
        let path = store.tenant_key_path(tenant.as_str(), extension);
        store.write(&path, &stored).map_err(store_error)?;
        ext.forget_tenant_keys(tenant.as_str());
        tracing::info!(tenant = %tenant, extension, "tenant's own key stored");
        Ok(row(extension, wanted, Some(&stored)))
    }

    /// Removes `tenant`'s own key for `extension` (fine if there was none): its next
    /// calls carry the operator's key again.
    pub fn remove_key(&self, tenant: &TenantId, extension: &str) -> Result<KeyRow, AppError> {
        let store = self.key_store()?;
        let backend = self.byok_extension(extension)?;
        let Some(ext) = backend.component() else {
            return Err(AppError::internal("a BYOK extension without a component"));
        };
        let path = store.tenant_key_path(tenant.as_str(), extension);
        store.delete(&path).map_err(store_error)?;
        ext.forget_tenant_keys(tenant.as_str());
        tracing::info!(tenant = %tenant, extension, "tenant's own key removed");
        Ok(row(extension, ext.byok_fields(), None))
    }

    /// Every extension that takes tenants' keys, with whether `tenant` set one.
    pub fn list_keys(&self, tenant: &TenantId) -> Result<KeyList, AppError> {
        let store = self.key_store()?;
        let registry = self.registry()?;
        let extensions = registry.extensions();
        let mut keys = Vec::new();
        for id in extensions.ids() {
            let Some(backend) = extensions.get(&id) else {
                continue;
            };
            let Some(ext) = backend.component() else {
                continue;
            };
            if ext.byok_fields().is_empty() {
                continue;
            }
            let path = store.tenant_key_path(tenant.as_str(), &id);
            let stored = match store.read(&path) {
                Ok(f) => Some(f),
                Err(OpenBaoError::NotFound { .. }) => None,
                Err(e) => return Err(store_error(e)),
            };
            keys.push(row(&id, ext.byok_fields(), stored.as_ref()));
        }
        Ok(KeyList { keys })
    }
}

fn row(extension: &str, fields: &[String], stored: Option<&BTreeMap<String, String>>) -> KeyRow {
    KeyRow {
        extension: extension.to_owned(),
        fields: fields.to_vec(),
        set: stored.is_some(),
        fingerprint: stored.map(|s| fingerprint(fields, s)),
        set_at: stored.and_then(|s| s.get(SET_AT_FIELD).cloned()),
    }
}

/// A digest of the key fields (in declared order), short enough to compare by eye and
/// far too short to help guess a key.
fn fingerprint(fields: &[String], stored: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for f in fields {
        h.update(f.as_bytes());
        h.update([0]);
        h.update(stored.get(f).map_or("", String::as_str).as_bytes());
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    format!("sha256:{}", &digest[..16])
}

fn store_error(e: OpenBaoError) -> AppError {
    AppError::SecretStore {
        message: format!("tenants' keys cannot be reached: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_depends_on_every_field_and_shows_no_value() {
        let fields = vec!["api_key".to_owned()];
        let a: BTreeMap<_, _> = [("api_key".to_owned(), "e2b_secret_one".to_owned())].into();
        let b: BTreeMap<_, _> = [("api_key".to_owned(), "e2b_secret_two".to_owned())].into();
        let fa = fingerprint(&fields, &a);
        assert_ne!(fa, fingerprint(&fields, &b));
        assert_eq!(fa, fingerprint(&fields, &a.clone()));
        assert!(fa.starts_with("sha256:") && fa.len() == 7 + 16, "{fa}");
        assert!(!fa.contains("secret"));
    }
}
