//! Secret stores the host reads from and writes to, beside environment variables and files
//! (those are read by the runtime's grants directly): OpenBao's KV v2 engine.
//!
//! Operator secrets of an extension are read through [`OpenBao::read`] by
//! `runtime::grants`; see docs/secrets.md for the set-up and what is stored where.

pub mod openbao;

pub use openbao::{OpenBao, OpenBaoAuth, OpenBaoError, OpenBaoSettings};
