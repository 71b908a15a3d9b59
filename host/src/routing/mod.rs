//! Routing: profiles and their route specs, the four strategies, health and latency
//! tracking, and [`resolve_extension`], which serves both real routing and
//! `route explain`. What it reports (decisions, candidate reports, circuit states) is
//! vocabulary in `domain::route`.

pub mod decision;
pub mod health;
pub mod loaded;
pub mod profile;
pub mod view;

pub use decision::resolve_extension;
pub use health::{HealthConfig, HealthTracker};
pub use profile::{Profile, ProfileSet};
pub use view::ExtensionView;

#[cfg(test)]
mod tests;
