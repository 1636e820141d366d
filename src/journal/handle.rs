//! Journal handles, as jbd2 has them: an operation that changes metadata *joins* the running
//! transaction for its duration, and a commit waits until every handle in it has ended before it
//! freezes the transaction.
//!
//! The gate ([`HandleGate`]) counts the handles open in the running transaction (`t_updates`)
//! and the credits they reserved (the blocks they may still dirty). Starting a handle:
//! * waits while a commit has locked the running transaction (no new handle may join it then;
//!   the starter joins the next one once the commit froze this one);
//! * when the transaction's blocks plus the reserved credits plus the new handle's credits would
//!   outgrow the transaction's limit, it asks the caller to commit first ([`Start::Full`]);
//! * otherwise counts itself in and returns.
//!
//! A commit calls [`HandleGate::lock_for_commit`]: new handles wait from then on, and it returns
//! once `t_updates` is zero; the committer freezes the transaction and unlocks (dropping the
//! [`CommitLock`]).
//!
//! Handles nest: a thread that already holds a handle of a gate and starts another just deepens
//! its own (no waiting, no new count, no credit check), so an operation calling a helper that
//! starts a handle never waits for its own commit. A thread holding a handle must never commit
//! (the commit would wait for that very handle): [`HandleGate::lock_for_commit`] refuses.
//!
//! Lock order: whatever the caller takes before starting a handle (the file's rw lock, the
//! namespace lock) → the handle → what it takes inside (the inode's data lock, buffer locks).
//! A handle holder never waits for a lock that is taken before handles are started.
//!
//! This layer knows nothing of the buffer cache: the caller tells it how many blocks the
//! running transaction holds.

use std::cell::RefCell;
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct GateState {
    /// Handles open in the running transaction (jbd2's t_updates).
    updates: usize,
    /// Credits the open handles reserved (jbd2's outstanding credits).
    reserved: usize,
    /// A commit locked the running transaction: no handle may join it.
    locked: bool,
    /// Transactions frozen so far (tells starters that the commit they waited for happened).
    frozen: u64,
}

/// Counts the handles of the running transaction; see the module comment.
#[derive(Default)]
pub struct HandleGate {
    state: Mutex<GateState>,
    cv: Condvar,
}

thread_local! {
    /// The handles this thread holds: (gate address, nesting depth).
    static HELD: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
}

/// What [`HandleGate::try_start`] did.
#[must_use]
pub enum Start<'a> {
    /// The handle joined the running transaction.
    Joined(Handle<'a>),
    /// The transaction would outgrow its limit with this handle: commit (the transaction that
    /// was running after `frozen` commits) and try again.
    Full { frozen: u64 },
}

/// One open handle; it ends when dropped.
pub struct Handle<'a> {
    gate: &'a HandleGate,
    credits: usize,
}

/// The running transaction locked against new handles, with none open; unlocks when dropped.
pub struct CommitLock<'a> {
    gate: &'a HandleGate,
    /// Whether the transaction was frozen (new handles then join a new one).
    froze: bool,
}

impl HandleGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self) -> usize {
        self as *const HandleGate as usize
    }

    /// How deep this thread's handles of this gate nest (0: it holds none).
    pub fn held_by_me(&self) -> usize {
        let key = self.key();
        HELD.with(|h| {
            h.borrow()
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |(_, d)| *d)
        })
    }

    fn push_held(&self) {
        let key = self.key();
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            match h.iter_mut().find(|(k, _)| *k == key) {
                Some((_, d)) => *d += 1,
                None => h.push((key, 1)),
            }
        });
    }

    /// Pops one level; returns the depth left.
    fn pop_held(&self) -> usize {
        let key = self.key();
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            let Some(i) = h.iter().position(|(k, _)| *k == key) else {
                return 0;
            };
            h[i].1 -= 1;
            let left = h[i].1;
            if left == 0 {
                h.swap_remove(i);
            }
            left
        })
    }

    /// Start a handle that may dirty `credits` more blocks of a transaction that now holds
    /// `running()` blocks and may hold at most `max`. With `force`, join even when full (the
    /// commit that would make room failed; the caller finds the file system read-only).
    pub fn try_start(
        &self,
        credits: usize,
        running: impl Fn() -> usize,
        max: usize,
        force: bool,
    ) -> Start<'_> {
        if self.held_by_me() > 0 {
            // Nested: the outer handle keeps the transaction open.
            self.push_held();
            return Start::Joined(Handle {
                gate: self,
                credits: 0,
            });
        }
        let mut s = self.lock();
        while s.locked {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        let used = running() + s.reserved;
        if !force && used > 0 && used + credits > max {
            return Start::Full { frozen: s.frozen };
        }
        s.updates += 1;
        s.reserved += credits;
        drop(s);
        self.push_held();
        Start::Joined(Handle {
            gate: self,
            credits,
        })
    }

    fn stop(&self, credits: usize) {
        if self.pop_held() > 0 {
            return;
        }
        let mut s = self.lock();
        s.updates -= 1;
        s.reserved -= credits;
        if s.updates == 0 {
            self.cv.notify_all();
        }
    }

    /// Lock the running transaction against new handles and wait until the open ones ended.
    /// `None` when this thread holds a handle itself (the wait would never end).
    pub fn lock_for_commit(&self) -> Option<CommitLock<'_>> {
        if self.held_by_me() > 0 {
            return None;
        }
        let mut s = self.lock();
        // Committers are serialized by the caller; wait out one that is not (tests).
        while s.locked {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.locked = true;
        while s.updates > 0 {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        Some(CommitLock {
            gate: self,
            froze: false,
        })
    }

    /// Transactions frozen so far.
    pub fn frozen(&self) -> u64 {
        self.lock().frozen
    }

    /// Handles open in the running transaction.
    pub fn updates(&self) -> usize {
        self.lock().updates
    }
}

impl Handle<'_> {
    /// The credits this handle reserved (0 for a nested one).
    pub fn credits(&self) -> usize {
        self.credits
    }
}

impl Drop for Handle<'_> {
    fn drop(&mut self) {
        self.gate.stop(self.credits);
    }
}

impl CommitLock<'_> {
    /// The running transaction was frozen: handles that start from now on join the next one.
    pub fn frozen(&mut self) {
        self.froze = true;
    }
}

impl Drop for CommitLock<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.locked = false;
        if self.froze {
            s.frozen += 1;
        }
        self.gate.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    fn join(g: &HandleGate, credits: usize) -> Handle<'_> {
        match g.try_start(credits, || 0, 100, false) {
            Start::Joined(h) => h,
            Start::Full { .. } => panic!("an empty transaction is never full"),
        }
    }

    #[test]
    fn handles_count_in_and_out() {
        let g = HandleGate::default();
        let a = join(&g, 10);
        let b = join(&g, 5);
        assert_eq!(
            g.updates(),
            1,
            "one thread: the second handle nests in the first"
        );
        assert_eq!(b.credits(), 0);
        drop(b);
        assert_eq!(g.updates(), 1);
        drop(a);
        assert_eq!(g.updates(), 0);
        assert_eq!(g.held_by_me(), 0);
    }

    #[test]
    fn commit_waits_for_open_handles_to_drain() {
        let g = Arc::new(HandleGate::default());
        let release = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for _ in 0..3 {
            let (g, release, started) = (g.clone(), release.clone(), started.clone());
            threads.push(std::thread::spawn(move || {
                let _h = join(&g, 1);
                started.fetch_add(1, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }));
        }
        while started.load(Ordering::SeqCst) < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(g.updates(), 3);
        let committed = Arc::new(AtomicBool::new(false));
        let committer = {
            let (g, committed) = (g.clone(), committed.clone());
            std::thread::spawn(move || {
                let mut l = g.lock_for_commit().unwrap();
                // Every handle has ended by now.
                assert_eq!(g.lock().updates, 0);
                committed.store(true, Ordering::SeqCst);
                l.frozen();
            })
        };
        // The committer cannot get past the open handles.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!committed.load(Ordering::SeqCst));
        release.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        committer.join().unwrap();
        assert!(committed.load(Ordering::SeqCst));
        assert_eq!(g.frozen(), 1);
    }

    #[test]
    fn new_handles_wait_for_the_frozen_transaction() {
        let g = Arc::new(HandleGate::default());
        let mut l = g.lock_for_commit().unwrap();
        let joined = Arc::new(AtomicBool::new(false));
        let t = {
            let (g, joined) = (g.clone(), joined.clone());
            std::thread::spawn(move || {
                let h = join(&g, 1);
                joined.store(true, Ordering::SeqCst);
                // It joined the transaction after the frozen one.
                assert_eq!(g.frozen(), 1);
                drop(h);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !joined.load(Ordering::SeqCst),
            "joined a locked transaction"
        );
        l.frozen();
        drop(l);
        t.join().unwrap();
        assert!(joined.load(Ordering::SeqCst));
    }

    #[test]
    fn a_handle_holder_cannot_commit_but_nests() {
        let g = HandleGate::default();
        let h = join(&g, 3);
        assert!(g.lock_for_commit().is_none());
        // A nested start never reports the transaction full nor waits.
        match g.try_start(1000, || 99, 100, false) {
            Start::Joined(inner) => drop(inner),
            Start::Full { .. } => panic!("a nested handle must not ask for a commit"),
        }
        drop(h);
        assert!(g.lock_for_commit().is_some());
    }

    #[test]
    fn credits_beyond_the_limit_ask_for_a_commit() {
        let g = Arc::new(HandleGate::default());
        // Another thread holds 40 credits in a transaction of 50 blocks (limit 100).
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let g = g.clone();
            std::thread::spawn(move || {
                let _h = match g.try_start(40, || 50, 100, false) {
                    Start::Joined(h) => h,
                    Start::Full { .. } => panic!("fits"),
                };
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
            })
        };
        rx.recv().unwrap();
        // 50 + 40 + 10 fits; 50 + 40 + 11 does not.
        match g.try_start(10, || 50, 100, false) {
            Start::Joined(h) => drop(h),
            Start::Full { .. } => panic!("10 credits fit"),
        }
        let frozen = match g.try_start(11, || 50, 100, false) {
            Start::Full { frozen } => frozen,
            Start::Joined(_) => panic!("11 credits overflow the transaction"),
        };
        assert_eq!(frozen, 0);
        // The commit waits for the holder, freezes, and the starter gets in.
        done_tx.send(()).unwrap();
        let mut l = g.lock_for_commit().unwrap();
        l.frozen();
        drop(l);
        holder.join().unwrap();
        match g.try_start(11, || 0, 100, false) {
            Start::Joined(h) => drop(h),
            Start::Full { .. } => panic!("a fresh transaction has room"),
        }
        // Forced: joins even a full transaction.
        match g.try_start(200, || 50, 100, true) {
            Start::Joined(h) => drop(h),
            Start::Full { .. } => panic!("forced"),
        }
        assert_eq!(g.updates(), 0);
    }
}
