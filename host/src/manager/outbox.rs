//! Delivering meter events from the ledger's outbox to the sinks.

use super::{ManagerError, SandboxManager};
use crate::events::EventRecord;

const BATCH: usize = 256;

impl SandboxManager {
    /// Hands every undelivered meter event to every sink, then marks it delivered.
    /// At-least-once: a crash between delivery and marking hands the event again, and
    /// sinks deduplicate by event id. Returns how many events were delivered.
    pub fn deliver_outbox(&self) -> Result<usize, ManagerError> {
        let _one_at_a_time = self.delivery.lock();
        let mut delivered = 0;
        loop {
            let pending = self.ledger.pending_events(BATCH)?;
            if pending.is_empty() {
                return Ok(delivered);
            }
            let records: Vec<EventRecord> = pending
                .into_iter()
                .map(|e| EventRecord {
                    id: e.id,
                    payload: e.payload,
                })
                .collect();
            for sink in &self.sinks {
                sink.deliver(&records)?;
            }
            let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
            self.ledger.mark_delivered(&ids)?;
            delivered += ids.len();
            tracing::debug!(events = ids.len(), "meter events delivered");
            if ids.len() < BATCH {
                return Ok(delivered);
            }
        }
    }
}
