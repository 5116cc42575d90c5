//! A fixed set of threads that run the plugin pipeline's blocking work
//! (reading a key's current value, calling plugins).
//!
//! Why not tokio's `spawn_blocking`: under load it hands every job to one of
//! many pooled threads and wakes it, and those wake-ups and context switches
//! cost more than a fast plugin call. Here a few long-lived threads take
//! jobs from one queue; while the queue is non-empty they never sleep, and a
//! submitter signals only when a thread is actually idle.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting on `ready`; a submit signals only when one is.
    idle: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The pipeline's worker threads.
pub struct WorkerPool {
    shared: Arc<Shared>,
}

/// The job did not complete (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("plugin pipeline job failed")]
pub struct JobFailed;

impl WorkerPool {
    /// Starts `threads` workers (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
            }),
            ready: Condvar::new(),
        });
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("plugin-worker-{i}"))
                .spawn(move || work(&shared))?;
        }
        Ok(Self { shared })
    }

    /// Runs `f` on a worker and waits for its result without blocking the
    /// async runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobFailed> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let wake = {
            let mut queue = match self.shared.queue.lock() {
                Ok(q) => q,
                Err(poisoned) => poisoned.into_inner(),
            };
            queue.jobs.push_back(job);
            queue.idle > 0
        };
        if wake {
            self.shared.ready.notify_one();
        }
        rx.await.map_err(|_| JobFailed)
    }
}

/// A worker: take jobs while there are any, sleep when there are none.
fn work(shared: &Shared) {
    let mut queue = match shared.queue.lock() {
        Ok(q) => q,
        Err(poisoned) => poisoned.into_inner(),
    };
    loop {
        if let Some(job) = queue.jobs.pop_front() {
            drop(queue);
            // A panicking job drops its reply sender; the caller sees JobFailed.
            let _ = catch_unwind(AssertUnwindSafe(job));
            queue = match shared.queue.lock() {
                Ok(q) => q,
                Err(poisoned) => poisoned.into_inner(),
            };
            continue;
        }
        queue.idle += 1;
        queue = match shared.ready.wait(queue) {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        queue.idle -= 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_panics() {
        let pool = WorkerPool::new(2).unwrap();
        let mut results = Vec::new();
        for i in 0..100u64 {
            results.push(pool.run(move || i * 2));
        }
        let mut sum = 0;
        for r in results {
            sum += r.await.unwrap();
        }
        assert_eq!(sum, 9900);
        assert!(pool.run(|| panic!("boom")).await.is_err());
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
