//! Routing: profiles and their route specs, the four strategies, health and latency
//! tracking, and [`resolve_extension`], which serves both real routing and
//! `route explain`.

pub mod decision;
pub mod health;
pub mod loaded;
pub mod profile;
pub mod view;

pub use decision::{
    Attempt, CandidateReport, CapacityReport, DropReason, LatencyReport, LatencySource, Outcome,
    RouteDecision, RouteError, resolve_extension,
};
pub use health::{HealthConfig, HealthStatus, HealthTracker};
pub use profile::{
    Profile, ProfileError, ProfileSet, RequestOverrides, RouteSpec, Strategy, load_profiles,
};
pub use view::ExtensionView;

#[cfg(test)]
mod tests;
