//! A fixed pool of worker threads fed through a channel. The vring epoll thread pops chains and
//! hands them here; each job completes its own chain.

use log::error;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Pool {
    tx: Mutex<Option<Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// Start `threads` workers (at least one).
    pub fn new(threads: usize, name: &str) -> std::io::Result<Pool> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv()
                        };
                        let Ok(job) = job else { break };
                        if catch_unwind(AssertUnwindSafe(job)).is_err() {
                            error!("a worker job panicked; the worker keeps serving");
                        }
                    }
                })?;
            workers.push(handle);
        }
        Ok(Pool {
            tx: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        })
    }

    /// Queue a job; gives it back when the pool is closed (the caller then runs it itself).
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Stop accepting jobs, let the queued ones finish, and join the workers.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let me = std::thread::current().id();
        for w in workers {
            // The last owner may be dropped by a job on a worker: never join oneself.
            if w.thread().id() != me {
                let _ = w.join();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}
