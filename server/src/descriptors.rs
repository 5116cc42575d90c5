//! Open files: the process's limit, raised at start, and the share of it
//! that connections may take.
//!
//! Every connection holds a descriptor, and so does everything the storage
//! opens (store files, log segments, the spare, the id counter, directory
//! syncs, plugin modules). With the usual soft limit of 1,024 and a
//! connection cap of 10,000, idle connections could take every descriptor
//! and leave none for the next log segment. So the soft limit is raised to
//! the hard one, and connections are capped below it, keeping a reserve.

/// Descriptors kept for everything but connections: a few per shard (its
/// store file, transient opens while applying), the log's segment and
/// spare, directory syncs, the id counter, plugin files, the runtime's own
/// (epoll, eventfds, the listener), and a margin for refusing connections
/// past the cap (each is accepted, answered and closed at once).
const RESERVE_BASE: u64 = 96;
const RESERVE_PER_SHARD: u64 = 4;
/// The soft limit is raised at most to this, when the hard one is unbounded.
const HIGHEST_SOFT_LIMIT: u64 = 1 << 20;

/// The open-files limit before and after the start raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process was started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard one. A failure leaves the
/// limit as it was (and says so in the result: `soft == before`).
pub fn raise_open_files_limit() -> OpenFiles {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let wanted = hard
        .min(HIGHEST_SOFT_LIMIT)
        .max(before.min(HIGHEST_SOFT_LIMIT));
    let raised = Rlimit {
        current: Some(wanted),
        maximum: limit.maximum,
    };
    let soft = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => wanted,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
            before
        }
    };
    OpenFiles { before, soft, hard }
}

/// The connections served at once: `configured` (`server.max_connections`),
/// but never so many that they leave storage without descriptors.
pub fn connection_cap(configured: usize, soft_limit: u64, shards: u32) -> usize {
    let reserve = RESERVE_BASE + RESERVE_PER_SHARD * u64::from(shards);
    let room = soft_limit.saturating_sub(reserve).max(1);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_a_reserve_for_storage() {
        // The usual soft limit: 10,000 configured connections would take
        // every descriptor; the cap leaves the reserve.
        assert_eq!(connection_cap(10_000, 1024, 4), 1024 - 96 - 16);
        assert_eq!(connection_cap(100, 1024, 4), 100);
        assert_eq!(connection_cap(10_000, 50, 4), 1);
        assert_eq!(connection_cap(10_000, u64::MAX, 4), 10_000);
    }

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let files = raise_open_files_limit();
        assert!(files.soft >= files.before.min(HIGHEST_SOFT_LIMIT));
        assert!(files.soft <= files.hard);
    }
}
