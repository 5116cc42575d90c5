//! Memory goes back to the system once a load is over.
//!
//! Request bodies are buffered whole (up to `server.max_body_bytes`), so a
//! burst of large writes holds many buffers of hundreds of KiB at once.
//! glibc serves large allocations with their own mappings, returned on
//! free, but it raises that threshold each time such a block is freed, up
//! to 32 MiB; after the first burst the next ones are carved from its
//! heaps, which it seldom gives back. 100 held 1 MiB bodies left 85-130
//! MiB resident after they closed (`tests/tests/request_bodies.rs`).
//! Fixing the threshold at glibc's own initial value keeps every block of
//! 128 KiB or more in its own mapping: resident memory falls back within
//! moments of the load ending, for the price of one mapping per large
//! block.

/// Blocks at least this large get their own mapping (glibc's default
/// before it adapts).
const OWN_MAPPING_BYTES: i32 = 128 * 1024;

/// Fixes glibc's threshold for giving large blocks their own mapping.
/// Returns whether the allocator took the setting; other C libraries have
/// no such setting and are left as they are.
pub fn return_large_blocks_at_once() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's tuning parameters;
        // it takes the allocator's own lock and has no preconditions.
        #[allow(unsafe_code)]
        let taken = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_BYTES) };
        taken == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
