//! `wasi:io/poll` bounded by the call's time budget.
//!
//! A call's budget interrupts guest code through the engine's epoch, but a guest blocked
//! inside a host call is not running guest code: a WASI sleep (`subscribe-duration` then
//! `block` or `poll`) or a wait for an HTTP response would run past the budget until the
//! host call returned by itself. Every such wait goes through `wasi:io/poll`, so the
//! linker's `poll` and `pollable.block` are replaced by these, which stop waiting at the
//! deadline of the call in progress and fail the call with [`BudgetSpentWaiting`]. The
//! runtime reports that as [`crate::domain::Fault::Timeout`], counted against the
//! extension's health like any timeout, and drops the instance.
//!
//! Not covered: the `blocking-*` methods of `wasi:io/streams`, which wait inside the
//! stream; outbound HTTP bodies are bounded there by the grant's timeout
//! (docs/security.md).

use std::time::Instant;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::runtime::in_tokio;

use super::limits::StoreData;

/// A guest waited in a host call until its call's budget ran out.
#[derive(Debug, thiserror::Error)]
#[error("waited in a host call (wasi:io/poll) until its time budget ran out")]
pub struct BudgetSpentWaiting;

/// An instance's resources and the deadline of its call in progress.
pub struct BoundedWaits<'a> {
    pub(super) table: &'a mut ResourceTable,
    pub(super) deadline: Instant,
}

impl BoundedWaits<'_> {
    /// Runs `wait` on the WASI runtime, giving up at the deadline.
    fn until_deadline<T>(
        deadline: Instant,
        wait: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        in_tokio(async move {
            match tokio::time::timeout_at(deadline.into(), wait).await {
                Ok(answer) => answer,
                Err(_) => Err(BudgetSpentWaiting.into()),
            }
        })
    }
}

impl sync_poll::Host for BoundedWaits<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let deadline = self.deadline;
        Self::until_deadline(deadline, async_poll::Host::poll(self.table, pollables))
    }
}

impl sync_poll::HostPollable for BoundedWaits<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // Asks and returns at once; bounded all the same, as the readiness check awaits.
        let deadline = self.deadline;
        Self::until_deadline(
            deadline,
            async_poll::HostPollable::ready(self.table, pollable),
        )
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let deadline = self.deadline;
        Self::until_deadline(
            deadline,
            async_poll::HostPollable::block(self.table, pollable),
        )
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

struct HasBoundedWaits;

impl HasData for HasBoundedWaits {
    type Data<'a> = BoundedWaits<'a>;
}

/// Defines `wasi:io/poll` with the bounded waits (the linker must allow shadowing).
pub fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    sync_poll::add_to_linker::<StoreData, HasBoundedWaits>(linker, StoreData::waits)
}
