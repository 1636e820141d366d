//! The in-core inode table: one object per inode the mount holds anything for — the FUSE
//! client's lookup references, whether it is an orphan still referenced (freed at the last
//! forget) or an O_TMPFILE that `link` may still name, its back link on the on-disk orphan
//! list, whether a new file's first writes may still go inline, and, for a regular file with
//! cached data, its page-cache side (`InodeData`: i_rwsem,
//! page map, i_size beside i_disksize, the writeback error fsync has not reported yet). Reading
//! an inode overlays i_size from here; storing one writes i_disksize.
//!
//! An entry lives while any of that is held and goes when the last of it does. The table is one
//! mutex, held only for a map operation; files with cached data are also indexed apart, so the
//! flusher and the cache's eviction walk those only.

use super::Ino;
pub(crate) use crate::iomap::{InodeData, Sizes};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// One in-core inode.
#[derive(Default)]
struct InCore {
    /// FUSE lookup references.
    lookups: u64,
    /// Unlinked while still in use: on the orphan list, freed when let go.
    orphan: bool,
    /// O_TMPFILE: unlinked, yet `link` may still give it a name.
    linkable: bool,
    /// The inode before it on the on-disk orphan list (the list is singly linked on disk).
    orphan_prev: Option<Ino>,
    /// A regular file's page-cache side, while it has one.
    data: Option<Arc<InodeData>>,
    /// A new regular file on an inline_data file system whose first writes may still go into
    /// the inode (the kernel's EXT4_STATE_MAY_INLINE_DATA). Like that state it lives only as
    /// long as the in-core inode: it does not keep the entry, and an inode read again later
    /// starts without it.
    may_inline: bool,
}

impl InCore {
    fn is_empty(&self) -> bool {
        self.lookups == 0
            && !self.orphan
            && !self.linkable
            && self.orphan_prev.is_none()
            && self.data.is_none()
    }
}

#[derive(Default)]
struct Table {
    map: HashMap<Ino, InCore>,
    /// The inodes whose `data` is set.
    with_data: HashSet<Ino>,
}

impl Table {
    /// Run `f` on the entry of `ino` (made when missing); drop the entry when it holds nothing
    /// afterwards.
    fn update<R>(&mut self, ino: Ino, f: impl FnOnce(&mut InCore) -> R) -> R {
        let e = self.map.entry(ino).or_default();
        let r = f(e);
        let (empty, has_data) = (e.is_empty(), e.data.is_some());
        if empty {
            self.map.remove(&ino);
        }
        if has_data {
            self.with_data.insert(ino);
        } else {
            self.with_data.remove(&ino);
        }
        r
    }

    fn data(&self, ino: Ino) -> Option<&Arc<InodeData>> {
        self.map.get(&ino).and_then(|e| e.data.as_ref())
    }
}

/// Every in-core inode, by number.
#[derive(Default)]
pub(crate) struct InodeTable {
    table: Mutex<Table>,
}

impl InodeTable {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The page-cache side of `ino`, when it has one.
    pub fn get(&self, ino: Ino) -> Option<Arc<InodeData>> {
        self.table().data(ino).cloned()
    }

    /// The page-cache side of `ino`, made by `make` when there is none.
    pub fn get_or_insert_with(&self, ino: Ino, make: impl FnOnce() -> InodeData) -> Arc<InodeData> {
        self.table().update(ino, |e| {
            e.data.get_or_insert_with(|| Arc::new(make())).clone()
        })
    }

    /// Take the page-cache side of `ino` out of the table (the inode is being freed).
    pub fn remove(&self, ino: Ino) -> Option<Arc<InodeData>> {
        self.table().update(ino, |e| e.data.take())
    }

    /// Every file with a page-cache side.
    pub fn all(&self) -> Vec<(Ino, Arc<InodeData>)> {
        let t = self.table();
        t.with_data
            .iter()
            .filter_map(|&i| t.data(i).map(|d| (i, d.clone())))
            .collect()
    }

    /// Is `d` still the page-cache side of `ino` (it was not freed meanwhile)?
    pub fn is_current(&self, ino: Ino, d: &Arc<InodeData>) -> bool {
        self.table().data(ino).is_some_and(|x| Arc::ptr_eq(x, d))
    }

    /// Drop `d`, the page-cache side of `ino`, when nobody but the table and the caller hold it
    /// and `idle()` says it has nothing pending (checked under the table lock).
    pub fn remove_if_idle(&self, ino: Ino, d: &Arc<InodeData>, idle: impl FnOnce() -> bool) {
        let mut t = self.table();
        if t.data(ino).is_some_and(|x| Arc::ptr_eq(x, d)) && Arc::strong_count(d) == 2 && idle() {
            t.update(ino, |e| e.data = None);
        }
    }

    /// The in-memory size of `ino` when it has in-core state (read_inode overlays it).
    pub fn size(&self, ino: Ino) -> Option<u64> {
        self.get(ino).map(|d| d.sizes().size)
    }

    /// The size the on-disk inode must carry (store_inode writes i_disksize).
    pub fn disksize(&self, ino: Ino) -> Option<u64> {
        self.get(ino).map(|d| d.sizes().disksize)
    }

    /// One more lookup reference of the client on `ino`.
    pub fn add_lookup(&self, ino: Ino) {
        self.table().update(ino, |e| e.lookups += 1);
    }

    /// Drop `n` lookup references; true when that let go of the last one.
    pub fn forget(&self, ino: Ino, n: u64) -> bool {
        let mut t = self.table();
        if !t.map.contains_key(&ino) {
            return false;
        }
        t.update(ino, |e| {
            let had = e.lookups > 0;
            e.lookups = e.lookups.saturating_sub(n);
            had && e.lookups == 0
        })
    }

    /// Drop every lookup reference (the client is gone); the inodes that had any.
    pub fn forget_all(&self) -> Vec<Ino> {
        let mut t = self.table();
        let held: Vec<Ino> = t
            .map
            .iter()
            .filter(|(_, e)| e.lookups > 0)
            .map(|(i, _)| *i)
            .collect();
        for &ino in &held {
            t.update(ino, |e| e.lookups = 0);
        }
        held
    }

    /// The client's lookup references on `ino`.
    pub fn lookup_count(&self, ino: Ino) -> u64 {
        self.table().map.get(&ino).map_or(0, |e| e.lookups)
    }

    /// Mark `ino` an orphan in use (or no longer); returns whether it was one.
    pub fn set_orphan(&self, ino: Ino, on: bool) -> bool {
        let mut t = self.table();
        if !on && !t.map.contains_key(&ino) {
            return false;
        }
        t.update(ino, |e| std::mem::replace(&mut e.orphan, on))
    }

    /// Is `ino` an orphan still in use?
    pub fn is_orphan(&self, ino: Ino) -> bool {
        self.table().map.get(&ino).is_some_and(|e| e.orphan)
    }

    /// Every orphan in use, unmarked (unmount frees them).
    pub fn take_orphans(&self) -> Vec<Ino> {
        let mut t = self.table();
        let all: Vec<Ino> = t
            .map
            .iter()
            .filter(|(_, e)| e.orphan)
            .map(|(i, _)| *i)
            .collect();
        for &ino in &all {
            t.update(ino, |e| e.orphan = false);
        }
        all
    }

    /// Mark `ino` an unnamed O_TMPFILE (or no longer); returns whether it was one.
    pub fn set_linkable(&self, ino: Ino, on: bool) -> bool {
        let mut t = self.table();
        if !on && !t.map.contains_key(&ino) {
            return false;
        }
        t.update(ino, |e| std::mem::replace(&mut e.linkable, on))
    }

    /// Let the first writes of new regular file `ino` go inline (or no longer). Setting needs
    /// an entry held for something else (the creator's lookup reference).
    pub fn set_may_inline(&self, ino: Ino, on: bool) {
        let mut t = self.table();
        if t.map.contains_key(&ino) {
            t.update(ino, |e| e.may_inline = on);
        }
    }

    /// May a write still put `ino`'s data inline?
    pub fn may_inline(&self, ino: Ino) -> bool {
        self.table().map.get(&ino).is_some_and(|e| e.may_inline)
    }

    /// Is `ino` an unnamed O_TMPFILE?
    pub fn is_linkable(&self, ino: Ino) -> bool {
        self.table().map.get(&ino).is_some_and(|e| e.linkable)
    }

    /// `prev` is the inode before `ino` on the on-disk orphan list.
    pub fn set_orphan_prev(&self, ino: Ino, prev: Ino) {
        self.table().update(ino, |e| e.orphan_prev = Some(prev));
    }

    /// `ino` leaves the orphan list, `next` following it: `next`'s back link becomes `ino`'s.
    /// Returns `ino`'s predecessor, when known.
    pub fn unlink_orphan_prev(&self, ino: Ino, next: Ino) -> Option<Ino> {
        let mut t = self.table();
        let prev = if t.map.contains_key(&ino) {
            t.update(ino, |e| e.orphan_prev.take())
        } else {
            None
        };
        if next != 0 && (prev.is_some() || t.map.contains_key(&next)) {
            t.update(next, |e| e.orphan_prev = prev);
        }
        prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_while_anything_is_held() {
        let t = InodeTable::default();
        t.add_lookup(5);
        t.add_lookup(5);
        assert!(!t.set_orphan(5, true));
        assert!(!t.forget(5, 1));
        assert!(t.forget(5, 1), "the last reference");
        assert!(!t.forget(5, 1), "none left");
        assert_eq!(t.lookup_count(5), 0);
        assert_eq!(t.take_orphans(), vec![5]);
        assert!(t.table().map.is_empty());
        let d = t.get_or_insert_with(7, || InodeData::new(10));
        assert_eq!(t.all().len(), 1);
        assert_eq!(t.size(7), Some(10));
        t.add_lookup(7);
        t.remove_if_idle(7, &d, || true);
        assert!(t.get(7).is_none() && t.all().is_empty());
        assert_eq!(t.lookup_count(7), 1, "the lookup outlives the data");
        t.forget(7, 1);
        assert!(t.table().map.is_empty());
    }

    #[test]
    fn may_inline_lives_with_the_entry_and_does_not_hold_it() {
        let t = InodeTable::default();
        t.set_may_inline(4, true);
        assert!(!t.may_inline(4), "no entry to carry it");
        assert!(t.table().map.is_empty());
        t.add_lookup(4);
        t.set_may_inline(4, true);
        assert!(t.may_inline(4));
        t.set_may_inline(4, false);
        assert!(!t.may_inline(4));
        t.set_may_inline(4, true);
        assert!(t.forget(4, 1));
        assert!(
            t.table().map.is_empty(),
            "the state does not keep the inode in core"
        );
        t.add_lookup(4);
        assert!(!t.may_inline(4), "read again, the inode starts without it");
    }

    #[test]
    fn orphan_back_links_follow_the_list() {
        let t = InodeTable::default();
        // List: 3 -> 2 -> 1 (head 3): back links 2<-3, 1<-2.
        t.set_orphan_prev(2, 3);
        t.set_orphan_prev(1, 2);
        assert_eq!(t.unlink_orphan_prev(2, 1), Some(3));
        assert_eq!(t.unlink_orphan_prev(1, 0), Some(3));
        assert_eq!(t.unlink_orphan_prev(3, 0), None);
        assert!(t.table().map.is_empty());
        assert!(!t.set_linkable(9, false));
        assert!(!t.set_linkable(9, true));
        assert!(t.is_linkable(9));
        assert!(t.set_linkable(9, false));
        assert!(t.table().map.is_empty());
    }
}
