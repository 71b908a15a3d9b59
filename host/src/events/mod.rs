//! Meter events: one CloudEvents 1.0 record per settlement, written to an outbox in the
//! settlement's own transaction (by the payments store) and delivered afterwards to the
//! configured sinks. Delivery is at-least-once; every sink deduplicates by event id, so a
//! consumer sees each settlement once.

mod cloudevent;
mod http;
mod jsonl;
mod relay;

pub use cloudevent::{MeterEventData, meter_event};
pub use http::{HttpSink, HttpSinkOptions};
pub use jsonl::JsonlSink;
pub use relay::{LogRelay, cursor_path};

/// One event ready for delivery: its CloudEvents id and its JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The CloudEvents `id`, stable per settlement.
    pub id: String,
    /// The event as CloudEvents JSON (one line, no newline).
    pub payload: String,
}

/// Why an event could not be built or delivered.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("cannot build meter event {id}: {reason}")]
    Build { id: String, reason: String },
    #[error("event sink {sink}: {reason}")]
    Sink { sink: String, reason: String },
}

/// A destination for meter events. `deliver` must be idempotent per event id: the outbox
/// may hand the same event again after a crash between delivery and acknowledgement.
pub trait EventSink: Send + Sync {
    /// A short name for logs and metrics, e.g. `jsonl:/var/lib/sandboxer/events.jsonl`.
    fn name(&self) -> String;
    /// Delivers a batch; on `Ok` every event in it is durable at the destination.
    fn deliver(&self, events: &[EventRecord]) -> Result<(), EventError>;
}
