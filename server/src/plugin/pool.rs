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

    /// Queues `job` on a worker; it reports its own result.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        let wake = {
            let mut queue = match self.shared.queue.lock() {
                Ok(q) => q,
                Err(poisoned) => poisoned.into_inner(),
            };
            queue.jobs.push_back(Box::new(job));
            queue.idle > 0
        };
        if wake {
            self.shared.ready.notify_one();
        }
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
            // A panicking job drops its reply sender, which its caller sees.
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
        let run = |f: Box<dyn FnOnce() -> u64 + Send>| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            pool.spawn(move || {
                let _ = tx.send(f());
            });
            rx
        };
        let answers: Vec<_> = (0..100u64).map(|i| run(Box::new(move || i * 2))).collect();
        let mut sum = 0;
        for a in answers {
            sum += a.await.unwrap();
        }
        assert_eq!(sum, 9900);
        assert!(run(Box::new(|| panic!("boom"))).await.is_err());
        assert_eq!(run(Box::new(|| 7)).await.unwrap(), 7);
    }
}
