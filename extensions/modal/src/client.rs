//! Modal's two gRPC services as the extension calls them: the control plane
//! (`modal.client.ModalClient`, with the token id and secret in the `x-modal-token-id` and
//! `x-modal-token-secret` metadata, as Modal's SDKs send them) and a task's command router
//! (`modal.task_command_router.TaskCommandRouter`, at the URL and with the JWT that
//! `TaskGetCommandRouterAccess` hands out, as `authorization: Bearer`).
//!
//! The extension keeps no sandbox state between calls. What it does keep, per instance, is
//! a cache of answers that cannot change under it: the app id for the configured name, the
//! image id of each template, the task id of each sandbox, and each task's router access
//! until shortly before its JWT expires. A cache miss costs one call; an answer that says
//! the cache is stale (`NOT_FOUND` for the app, `UNAUTHENTICATED` from a router) drops the
//! entry and asks again once.

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::Engine as _;
use guest_kit::http::BaseUrl;
use modal_proto::{self as pb, client_path as cp};
use prost::Message;

use crate::config::Config;
use crate::grpc::{self, CallError, ServerStream, Target};
use crate::handle::ImageRef;
use crate::status;
use crate::wit::BackendError;

#[derive(Default)]
struct Cache {
    /// server URL, token id, environment and app name the entries belong to.
    key: String,
    app: Option<String>,
    images: BTreeMap<String, String>,
    tasks: BTreeMap<String, String>,
    /// task id → (router URL, JWT, expiry in Unix seconds).
    routers: BTreeMap<String, (String, String, u64)>,
}

/// Entries kept per map before it is emptied (a host serves many sandboxes per instance).
const CACHE_ENTRIES: usize = 256;

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn with_cache<R>(key: &str, f: impl FnOnce(&mut Cache) -> R) -> R {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_none_or(|c| c.key != key) {
        *guard = Some(Cache {
            key: key.to_owned(),
            ..Cache::default()
        });
    }
    match guard.as_mut() {
        Some(c) => f(c),
        None => f(&mut Cache::default()),
    }
}

fn bounded<V>(map: &mut BTreeMap<String, V>) {
    if map.len() >= CACHE_ENTRIES {
        map.clear();
    }
}

/// The `exp` claim of a JWT (Unix seconds), read the way Modal's SDKs read it.
pub fn jwt_expiry(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

/// The control plane, with the configured credentials.
pub struct Modal {
    base: BaseUrl,
    origin: String,
    token_id: String,
    token_secret: String,
    client_type: String,
    client_version: String,
    environment: String,
    app_name: String,
    builder_version: String,
    cache_key: String,
}

impl Modal {
    /// A client from the configuration; `unauthorized` without a token.
    pub fn new(cfg: &Config) -> Result<Modal, BackendError> {
        let base = cfg.server_url().map_err(BackendError::Internal)?;
        let (Some(id), Some(secret)) = (cfg.token_id(), cfg.token_secret()) else {
            return Err(BackendError::Unauthorized(
                "no Modal token configured (grant token_id and token_secret under [secrets] in the sidecar)"
                    .into(),
            ));
        };
        let origin = base.origin();
        Ok(Modal {
            cache_key: format!("{origin}|{id}|{}|{}", cfg.environment(), cfg.app_name()),
            origin,
            base,
            token_id: id.to_owned(),
            token_secret: secret.to_owned(),
            client_type: cfg.client_type().to_owned(),
            client_version: cfg.client_version().to_owned(),
            environment: cfg.environment().to_owned(),
            app_name: cfg.app_name().to_owned(),
            builder_version: cfg.image_builder_version().to_owned(),
        })
    }

    /// The configured environment.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The configured app name.
    pub fn app_name(&self) -> &str {
        &self.app_name
    }

    /// One control-plane call; the error still carries the gRPC code.
    pub fn call_raw<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        let metadata: [(&str, &[u8]); 5] = [
            ("x-modal-client-type", self.client_type.as_bytes()),
            ("x-modal-client-version", self.client_version.as_bytes()),
            ("x-modal-libmodal-version", b"sandboxer-modal/0.1.0"),
            ("x-modal-token-id", self.token_id.as_bytes()),
            ("x-modal-token-secret", self.token_secret.as_bytes()),
        ];
        grpc::unary(
            &Target {
                base: &self.base,
                metadata: &metadata,
            },
            path,
            request,
        )
    }

    /// The contract's error for a failure of the control-plane call `what`.
    pub fn error(&self, what: &str, e: CallError) -> BackendError {
        e.redacted(&[&self.token_secret])
            .into_backend(what, &self.origin)
    }

    /// One control-plane call, errors mapped onto the contract.
    pub fn call<Req: Message, Resp: Message + Default>(
        &self,
        what: &str,
        path: &str,
        request: &Req,
    ) -> Result<Resp, BackendError> {
        self.call_raw(path, request)
            .map_err(|e| self.error(what, e))
    }

    /// The app every sandbox of this extension belongs to (`AppGetOrCreate`, once per
    /// instance and configuration).
    pub fn app_id(&self) -> Result<String, BackendError> {
        if let Some(id) = with_cache(&self.cache_key, |c| c.app.clone()) {
            return Ok(id);
        }
        let r: pb::AppGetOrCreateResponse = self.call(
            "AppGetOrCreate",
            cp::APP_GET_OR_CREATE,
            &pb::AppGetOrCreateRequest {
                app_name: self.app_name.clone(),
                environment_name: self.environment.clone(),
                object_creation_type: pb::ObjectCreationType::CreateIfMissing as i32,
            },
        )?;
        if !crate::handle::modal_id(&r.app_id, "ap-") {
            return Err(BackendError::Internal(format!(
                "Modal AppGetOrCreate answered an unusable app id {:?}",
                r.app_id
            )));
        }
        with_cache(&self.cache_key, |c| c.app = Some(r.app_id.clone()));
        Ok(r.app_id)
    }

    /// Forgets the cached app id (Modal said it does not exist).
    pub fn forget_app(&self) {
        with_cache(&self.cache_key, |c| {
            c.app = None;
            c.images.clear();
        });
    }

    /// The image id for `image` in `app_id` (`ImageFromId` for an id, `ImageGetOrCreate`
    /// with `FROM <image>` for a registry image, as Modal's SDKs build one).
    pub fn image_id(&self, app_id: &str, image: &ImageRef) -> Result<String, BackendError> {
        let key = match image {
            ImageRef::Id(id) => id.clone(),
            ImageRef::Registry(r) => r.clone(),
        };
        if let Some(id) = with_cache(&self.cache_key, |c| c.images.get(&key).cloned()) {
            return Ok(id);
        }
        let id = match image {
            ImageRef::Id(id) => {
                let r: pb::ImageFromIdResponse = self
                    .call_raw(
                        cp::IMAGE_FROM_ID,
                        &pb::ImageFromIdRequest {
                            image_id: id.clone(),
                        },
                    )
                    .map_err(|e| match e.code() {
                        Some(status::NOT_FOUND) => BackendError::Unsupported(format!(
                            "Modal has no image {id} (from the template)"
                        )),
                        _ => self.error("ImageFromId", e),
                    })?;
                r.image_id
            }
            ImageRef::Registry(tag) => {
                let r: pb::ImageGetOrCreateResponse = self.call(
                    "ImageGetOrCreate",
                    cp::IMAGE_GET_OR_CREATE,
                    &pb::ImageGetOrCreateRequest {
                        image: Some(pb::Image {
                            dockerfile_commands: vec![format!("FROM {tag}")],
                        }),
                        app_id: app_id.to_owned(),
                        builder_version: self.builder_version.clone(),
                    },
                )?;
                let status = r.result.as_ref().map_or(0, |res| res.status);
                if status == pb::GenericStatus::Unspecified as i32 {
                    // Still building: the next create will find it built (or fail over).
                    return Err(BackendError::Unavailable(format!(
                        "Modal is still building the image {tag}; retry shortly"
                    )));
                }
                if status != pb::GenericStatus::Success as i32 {
                    let why = r.result.map(|res| res.exception).unwrap_or_default();
                    return Err(BackendError::Unsupported(format!(
                        "Modal could not build the image {tag}: {why}"
                    )));
                }
                r.image_id
            }
        };
        if !crate::handle::modal_id(&id, "im-") {
            return Err(BackendError::Internal(format!(
                "Modal answered an unusable image id {id:?}"
            )));
        }
        with_cache(&self.cache_key, |c| {
            bounded(&mut c.images);
            c.images.insert(key, id.clone());
        });
        Ok(id)
    }

    /// The task running `sandbox_id` (`SandboxGetTaskId`; waits briefly for one to be
    /// scheduled).
    pub fn task_id(&self, sandbox_id: &str) -> Result<String, BackendError> {
        if let Some(id) = with_cache(&self.cache_key, |c| c.tasks.get(sandbox_id).cloned()) {
            return Ok(id);
        }
        let r: pb::SandboxGetTaskIdResponse = self.call(
            "SandboxGetTaskId",
            cp::SANDBOX_GET_TASK_ID,
            &pb::SandboxGetTaskIdRequest {
                sandbox_id: sandbox_id.to_owned(),
                timeout: Some(5.0),
                wait_until_ready: false,
            },
        )?;
        if let Some(result) = r.task_result {
            return Err(BackendError::NotFound(format!(
                "the sandbox has already ended at Modal ({})",
                generic_status_name(result.status)
            )));
        }
        let id = r
            .task_id
            .filter(|t| crate::handle::modal_id(t, "ta-"))
            .ok_or_else(|| {
                BackendError::Unavailable(
                    "Modal has not scheduled the sandbox yet; retry shortly".into(),
                )
            })?;
        with_cache(&self.cache_key, |c| {
            bounded(&mut c.tasks);
            c.tasks.insert(sandbox_id.to_owned(), id.clone());
        });
        Ok(id)
    }

    /// The command router of `task_id`.
    pub fn router(&self, task_id: &str) -> Result<Router<'_>, BackendError> {
        let now = guest_kit::clock::now_ms() / 1000;
        let cached = with_cache(&self.cache_key, |c| {
            c.routers
                .get(task_id)
                .filter(|(_, _, exp)| *exp > now + 30)
                .cloned()
        });
        let (url, jwt) = match cached {
            Some((url, jwt, _)) => (url, jwt),
            None => self.fetch_router(task_id)?,
        };
        let base = BaseUrl::parse(&url, "the router URL Modal answered")
            .map_err(BackendError::Internal)?;
        // Like Modal's SDKs: a router is reached over TLS, except beside a plain-text
        // control plane (a loopback server in tests).
        if self.base.is_https() && !base.is_https() {
            return Err(BackendError::Internal(format!(
                "Modal answered a command router URL that is not https: {}",
                base.origin()
            )));
        }
        Ok(Router {
            modal: self,
            task_id: task_id.to_owned(),
            origin: base.origin(),
            base,
            jwt,
        })
    }

    fn fetch_router(&self, task_id: &str) -> Result<(String, String), BackendError> {
        let r: pb::TaskGetCommandRouterAccessResponse = self
            .call_raw(
                cp::TASK_GET_COMMAND_ROUTER_ACCESS,
                &pb::TaskGetCommandRouterAccessRequest {
                    task_id: task_id.to_owned(),
                },
            )
            .map_err(|e| match e.code() {
                // The task has finished: the sandbox is gone.
                Some(9) => BackendError::NotFound("the sandbox has already ended at Modal".into()),
                _ => self.error("TaskGetCommandRouterAccess", e),
            })?;
        let now = guest_kit::clock::now_ms() / 1000;
        // A JWT without `exp` is used for five minutes or until a router refuses it.
        let exp = jwt_expiry(&r.jwt).unwrap_or(now + 300);
        with_cache(&self.cache_key, |c| {
            bounded(&mut c.routers);
            c.routers
                .insert(task_id.to_owned(), (r.url.clone(), r.jwt.clone(), exp));
        });
        Ok((r.url, r.jwt))
    }

    fn forget_router(&self, task_id: &str) {
        with_cache(&self.cache_key, |c| {
            c.routers.remove(task_id);
        });
    }

    /// Forgets the cached task of a sandbox that has ended.
    pub fn forget_task(&self, sandbox_id: &str) {
        with_cache(&self.cache_key, |c| {
            if let Some(task) = c.tasks.remove(sandbox_id) {
                c.routers.remove(&task);
            }
        });
    }
}

/// `GenericResult.GenericStatus` as a word.
pub fn generic_status_name(status: i32) -> &'static str {
    match pb::GenericStatus::try_from(status) {
        Ok(pb::GenericStatus::Success) => "success",
        Ok(pb::GenericStatus::Failure) => "failure",
        Ok(pb::GenericStatus::Terminated) => "terminated",
        Ok(pb::GenericStatus::Timeout) => "timeout",
        Ok(pb::GenericStatus::InitFailure) => "init failure",
        Ok(pb::GenericStatus::InternalFailure) => "internal failure",
        Ok(pb::GenericStatus::IdleTimeout) => "idle timeout",
        Ok(pb::GenericStatus::MemoryManagerEviction) => "evicted under memory pressure",
        _ => "unknown",
    }
}

/// A task's command router.
pub struct Router<'m> {
    modal: &'m Modal,
    task_id: String,
    base: BaseUrl,
    origin: String,
    jwt: String,
}

impl Router<'_> {
    /// The task this router serves.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Runs `f` with the router as a gRPC target (its URL, its JWT).
    fn with_target<T>(&self, f: impl FnOnce(&Target<'_>) -> T) -> T {
        let auth = format!("Bearer {}", self.jwt);
        let metadata: [(&str, &[u8]); 1] = [("authorization", auth.as_bytes())];
        f(&Target {
            base: &self.base,
            metadata: &metadata,
        })
    }

    /// The contract's error for a failure of the router call `what`.
    pub fn error(&self, what: &str, e: CallError) -> BackendError {
        self.redacted(e).into_backend(what, &self.origin)
    }

    /// `e` with the router's JWT and the token secret replaced in its message.
    pub fn redacted(&self, e: CallError) -> CallError {
        e.redacted(&[&self.jwt, &self.modal.token_secret])
    }

    /// Refreshes the access once when the router refused the JWT (as Modal's SDKs do).
    fn with_auth_retry<T>(
        &mut self,
        mut f: impl FnMut(&Router<'_>) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        match f(self) {
            Err(CallError::Status(st)) if st.code == status::UNAUTHENTICATED => {
                self.modal.forget_router(&self.task_id);
                let (url, jwt) = self
                    .modal
                    .fetch_router(&self.task_id)
                    .map_err(|_| CallError::Status(st))?;
                if let Ok(base) = BaseUrl::parse(&url, "router URL") {
                    self.origin = base.origin();
                    self.base = base;
                }
                self.jwt = jwt;
                f(self)
            }
            other => other,
        }
    }

    /// One unary router call; the error keeps the gRPC code.
    pub fn call_raw<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.with_auth_retry(|r| r.with_target(|t| grpc::unary(t, path, request)))
    }

    /// One unary router call, errors mapped onto the contract.
    pub fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        what: &str,
        path: &str,
        request: &Req,
    ) -> Result<Resp, BackendError> {
        self.call_raw(path, request)
            .map_err(|e| self.error(what, e))
    }

    /// Opens a server-streaming router call.
    pub fn stream<Req: Message>(
        &mut self,
        what: &str,
        path: &str,
        request: &Req,
    ) -> Result<ServerStream, BackendError> {
        self.with_auth_retry(|r| r.with_target(|t| grpc::server_stream(t, path, request)))
            .map_err(|e| self.error(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_expiry_is_read_from_the_payload() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"HS256"}"#),
            b64.encode(br#"{"task_id":"ta-1","exp":1700000000}"#)
        );
        assert_eq!(jwt_expiry(&jwt), Some(1_700_000_000));
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.e30.c"), None, "{{}} has no exp");
    }

    #[test]
    fn caches_belong_to_one_configuration() {
        with_cache("a", |c| c.app = Some("ap-1".into()));
        assert_eq!(with_cache("a", |c| c.app.clone()), Some("ap-1".into()));
        assert_eq!(
            with_cache("b", |c| c.app.clone()),
            None,
            "another token sees nothing"
        );
        let mut m: BTreeMap<String, u32> = (0..CACHE_ENTRIES as u32)
            .map(|i| (i.to_string(), i))
            .collect();
        bounded(&mut m);
        assert!(m.is_empty());
    }
}
