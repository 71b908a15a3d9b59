//! The operator's overview: every tenant's balances and how many live sandboxes each
//! extension holds (capacity in use), for the dashboard's admin page. Read only.

use serde::Serialize;

use super::{App, AppError};
use crate::domain::{Balance, SandboxState};

/// Live sandboxes (creating, running or destroying) on one extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InUse {
    /// The extension's id.
    pub extension: String,
    /// Its live sandboxes.
    pub sandboxes: u64,
}

/// Every tenant's balances and the capacity in use per extension.
/// `GET /v1/admin/overview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// One row per tenant and currency (none before credits were added).
    pub balances: Vec<Balance>,
    /// One row per extension with live sandboxes, by id.
    pub in_use: Vec<InUse>,
}

impl App {
    /// The operator's overview (balances from the ledger, counts from the sandbox store).
    pub fn overview(&self) -> Result<Overview, AppError> {
        let balances = self.all_balances()?;
        let mut in_use: Vec<InUse> = Vec::new();
        for (state, extension, n) in self.manager()?.counts_by_state()? {
            let live = matches!(
                state,
                SandboxState::Creating | SandboxState::Running | SandboxState::Destroying
            );
            let Some(extension) = extension else { continue };
            if !live || n == 0 {
                continue;
            }
            match in_use.iter_mut().find(|r| r.extension == extension) {
                Some(row) => row.sandboxes += n,
                None => in_use.push(InUse {
                    extension,
                    sandboxes: n,
                }),
            }
        }
        in_use.sort_by(|a, b| a.extension.cmp(&b.extension));
        Ok(Overview { balances, in_use })
    }
}
