//! Using a running sandbox: run commands in it and move files in and out, through the
//! extension that created it (`process` and `files`, contract 0.1.1).
//!
//! Only a `running` sandbox is used (anything else is [`ManagerError::WrongState`]), and
//! with `tenant` only that tenant's (another's is not found). Nothing here writes the
//! status store or the ledger: what a command costs reaches the bill through the usage
//! the backend reports at destroy. Failures count against the extension's health only
//! when they are the backend's fault (unavailable, internal, traps, timeouts), never for
//! a tenant's bad path or a missing file.

use std::sync::Arc;
use std::time::Duration;

use super::backend::Backend;
use super::{ManagerError, SandboxManager, now_ms};
use crate::domain::{
    ExecOutput, ExecRequest, ExtensionError, FileChunk, FileEntry, ProcessOutput, SandboxContext,
    SandboxState,
};

/// A running sandbox's extension and the context its calls carry.
struct Live {
    backend: Arc<dyn Backend>,
    ctx: SandboxContext,
    id: String,
}

impl SandboxManager {
    fn live(&self, tenant: Option<&str>, id: &str) -> Result<Live, ManagerError> {
        let st = self.visible_row(tenant, id)?.status;
        let hint = match st.state {
            SandboxState::Running => None,
            SandboxState::Creating => Some("it is still being created; try again shortly"),
            SandboxState::Destroying | SandboxState::Destroyed => {
                Some("it was destroyed; create a new sandbox to run commands")
            }
            SandboxState::Failed => Some("it was never created"),
        };
        if let Some(hint) = hint {
            return Err(ManagerError::WrongState {
                id: st.id,
                state: st.state,
                hint,
            });
        }
        let backend = self.backend_for(&st)?;
        let now = now_ms();
        let ctx = SandboxContext {
            request: st.request.clone(),
            handle: st.handle.clone().unwrap_or_default(),
            created_at_ms: st.started_at_ms.unwrap_or(now),
            now_ms: now,
        };
        Ok(Live {
            backend,
            ctx,
            id: st.id,
        })
    }

    /// Runs `call` on the sandbox's extension, mapping its failure.
    fn on_live<T>(
        &self,
        tenant: Option<&str>,
        id: &str,
        call: impl FnOnce(&dyn Backend, &SandboxContext) -> Result<T, ExtensionError>,
    ) -> Result<T, ManagerError> {
        let live = self.live(tenant, id)?;
        let span = tracing::debug_span!(
            "session",
            sandbox = %live.id,
            tenant = %live.ctx.request.tenant,
            extension = live.backend.id()
        );
        let _enter = span.enter();
        call(live.backend.as_ref(), &live.ctx).map_err(|error| {
            self.health.record_failure(live.backend.id(), &error);
            tracing::debug!(error = %error, "sandbox call failed");
            ManagerError::Session { id: live.id, error }
        })
    }

    /// Runs a command to its end in sandbox `id`.
    pub fn exec(
        &self,
        tenant: Option<&str>,
        id: &str,
        request: &ExecRequest,
    ) -> Result<ExecOutput, ManagerError> {
        self.on_live(tenant, id, |b, ctx| b.exec(ctx, request))
    }

    /// Starts a command in sandbox `id`; the backend's process id.
    pub fn start(
        &self,
        tenant: Option<&str>,
        id: &str,
        request: &ExecRequest,
    ) -> Result<String, ManagerError> {
        self.on_live(tenant, id, |b, ctx| b.start(ctx, request))
    }

    /// A started process's output after `cursor`, waiting up to `wait` for some.
    pub fn read_output(
        &self,
        tenant: Option<&str>,
        id: &str,
        process_id: &str,
        cursor: &str,
        wait: Duration,
        max_bytes: u32,
    ) -> Result<ProcessOutput, ManagerError> {
        self.on_live(tenant, id, |b, ctx| {
            b.read_output(ctx, process_id, cursor, wait, max_bytes)
        })
    }

    /// Kills a started process and everything it started.
    pub fn kill(
        &self,
        tenant: Option<&str>,
        id: &str,
        process_id: &str,
    ) -> Result<(), ManagerError> {
        self.on_live(tenant, id, |b, ctx| b.kill(ctx, process_id))
    }

    /// Writes (or appends) `data` to the file at `path` in sandbox `id`.
    pub fn write_file(
        &self,
        tenant: Option<&str>,
        id: &str,
        path: &str,
        data: &[u8],
        append: bool,
    ) -> Result<(), ManagerError> {
        self.on_live(tenant, id, |b, ctx| b.write_file(ctx, path, data, append))
    }

    /// Reads at most `max_bytes` of the file at `path` from `offset`.
    pub fn read_file(
        &self,
        tenant: Option<&str>,
        id: &str,
        path: &str,
        offset: u64,
        max_bytes: u32,
    ) -> Result<FileChunk, ManagerError> {
        self.on_live(tenant, id, |b, ctx| {
            b.read_file(ctx, path, offset, max_bytes)
        })
    }

    /// The entries of the folder at `path` in sandbox `id`.
    pub fn list_files(
        &self,
        tenant: Option<&str>,
        id: &str,
        path: &str,
    ) -> Result<Vec<FileEntry>, ManagerError> {
        self.on_live(tenant, id, |b, ctx| b.list_files(ctx, path))
    }
}
