//! The budget of request body bytes held by the server at once.
//!
//! Each body is read into memory before it is checked and written, and a
//! client can hold its buffer for up to `server.body_read_timeout_ms` by
//! sending all but the last byte: with thousands of connections that is
//! gigabytes. So every body takes its share of one budget
//! (`server.max_body_bytes_in_flight`) before its bytes are buffered: its
//! declared length at once, a chunked body step by step as it grows. A
//! body that cannot get its share within a moment is refused with 503 and
//! `Retry-After`, and its share goes back as soon as it is read.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget's unit: shares are whole units.
const UNIT: usize = 4096;
/// How long a body may wait for its share before it is refused.
const WAIT: Duration = Duration::from_millis(500);
/// A chunked body's first share; each later one doubles what it holds.
const FIRST_STEP: usize = 64 * 1024;

/// See the module documentation.
pub struct BodyBudget {
    units: Arc<Semaphore>,
    total: usize,
}

/// The budget had no room for a body in time.
#[derive(Debug)]
pub struct Exhausted;

/// One body's share of the budget; given back when dropped.
#[derive(Default)]
pub struct Share {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Share {
    /// Bytes this share covers.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl BodyBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: usize) -> Self {
        let total = (units(bytes) as usize).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes held by bodies being read now.
    pub fn in_flight(&self) -> usize {
        (self.total - self.units.available_permits()) * UNIT
    }

    /// Grows `share` to cover at least `bytes` (and, for a body whose
    /// length is not known, at least twice what it held, up to `limit`),
    /// waiting a moment for room.
    pub async fn grow(
        &self,
        share: &mut Share,
        bytes: usize,
        limit: usize,
    ) -> Result<(), Exhausted> {
        if bytes <= share.bytes {
            return Ok(());
        }
        // A body larger than the whole budget takes all of it, no more.
        let target = bytes
            .max(share.bytes * 2)
            .max(FIRST_STEP.min(limit))
            .min(limit.max(bytes))
            .min(self.total * UNIT);
        let more = units(target).saturating_sub(units(share.bytes));
        let acquire = self.units.clone().acquire_many_owned(more);
        let permit = match tokio::time::timeout(WAIT, acquire).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(Exhausted),
        };
        match &mut share.permit {
            Some(held) => held.merge(permit),
            None => share.permit = Some(permit),
        }
        share.bytes = units(target) as usize * UNIT;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn shares_come_out_of_one_budget_and_go_back() {
        let budget = BodyBudget::new(256 * 1024);
        let mut a = Share::default();
        budget.grow(&mut a, 100, 1 << 20).await.unwrap();
        // A share of unknown final size starts with a step, not a byte.
        assert_eq!(a.bytes(), FIRST_STEP);
        budget.grow(&mut a, FIRST_STEP + 1, 1 << 20).await.unwrap();
        assert_eq!(a.bytes(), 2 * FIRST_STEP);
        let mut b = Share::default();
        budget.grow(&mut b, 128 * 1024, 128 * 1024).await.unwrap();
        assert_eq!(budget.in_flight(), 256 * 1024);
        // No room left: the next body is refused after its moment.
        let mut c = Share::default();
        assert!(budget.grow(&mut c, 1, 1 << 20).await.is_err());
        drop(a);
        budget.grow(&mut c, 1, 1 << 20).await.unwrap();
        drop((b, c));
        assert_eq!(budget.in_flight(), 0);
    }
}
