//! The on-disk orphan list: unlinked inodes still in use are chained from `s_last_orphan`
//! through their `i_dtime` field, so e2fsck (or our next mount) frees them after a crash.

use super::Fs;
use super::types::Ino;
use crate::errno::Result;
use crate::ondisk::inode::Inode;

impl Fs {
    /// Put `ino` at the head of the orphan list.
    pub(super) fn orphan_add(&self, ino: Ino, i: &mut Inode) -> Result<()> {
        let mut live = self.sb_live.lock().unwrap_or_else(|e| e.into_inner());
        let old_head = live.last_orphan as Ino;
        i.dtime = old_head as u32;
        live.last_orphan = ino as u32;
        drop(live);
        if old_head != 0 {
            self.inodes.set_orphan_prev(old_head, ino);
        }
        self.store_inode(ino, i)?;
        self.write_superblock(false)
    }

    /// Unlink `ino` from the orphan list (before freeing it). The list is singly linked on disk;
    /// the predecessor comes from the in-memory back links (O(1)), as the kernel keeps them.
    pub(super) fn orphan_del(&self, ino: Ino, i: &Inode) -> Result<()> {
        let next = i.dtime as Ino;
        let prev = self.inodes.unlink_orphan_prev(ino, next);
        let mut live = self.sb_live.lock().unwrap_or_else(|e| e.into_inner());
        if live.last_orphan as Ino == ino {
            live.last_orphan = next as u32;
            drop(live);
            return self.write_superblock(false);
        }
        let head = live.last_orphan as Ino;
        drop(live);
        if let Some(p) = prev {
            let mut c = self.read_inode(p)?;
            if c.dtime as Ino == ino {
                c.dtime = next as u32;
                return self.store_inode(p, &c);
            }
        }
        // No back link (a list this mount did not build): walk it.
        let mut cur = head;
        let mut steps = 0;
        while cur != 0 && steps < self.sb.inodes_count {
            let mut c = self.read_inode(cur)?;
            if c.dtime as Ino == ino {
                c.dtime = next as u32;
                if next != 0 {
                    self.inodes.set_orphan_prev(next, cur);
                }
                return self.store_inode(cur, &c);
            }
            cur = c.dtime as Ino;
            steps += 1;
        }
        log::warn!("inode {ino} was not on the orphan list");
        Ok(())
    }

    /// Free `ino`'s blocks from logical block `keep` on in as many transactions as the map
    /// needs, from the end down, leaving at most one step's worth for the caller's own handle
    /// (see `inode::truncate_steps`). The inode must already survive a crash between two steps:
    /// it is on the orphan list. The caller holds the file's rw lock when it has one.
    pub(super) fn free_blocks_in_steps(&self, ino: Ino, keep: u64) -> Result<()> {
        let cuts = {
            let _g = self.ns_read();
            let i = self.read_inode(ino)?;
            self.truncate_steps(ino, &i, keep)?
        };
        for cut in cuts {
            let _h = self.ns_write_credits(self.truncate_step_credits());
            let mut i = self.read_inode(ino)?;
            self.truncate_blocks(ino, &mut i, cut)?;
            self.store_inode(ino, &i)?;
        }
        Ok(())
    }

    /// Would freeing `ino`'s blocks from `keep` on outgrow one transaction?
    pub(super) fn needs_steps(&self, ino: Ino, i: &Inode, keep: u64) -> Result<bool> {
        Ok(!self.truncate_steps(ino, i, keep)?.is_empty())
    }

    /// The client dropped its last reference to an unlinked inode: free it.
    pub(super) fn reap_if_orphan(&self, ino: Ino) {
        self.inodes.set_linkable(ino, false);
        if !self.inodes.set_orphan(ino, false) {
            return;
        }
        // The file's rw lock before the namespace lock: no read, write or writeback of it runs
        // while it is freed.
        let data = self.data_if_cached(ino);
        let _w = data.as_ref().map(|d| d.write_lock());
        if let Err(e) = self.free_blocks_in_steps(ino, 0) {
            log::error!("freeing the blocks of unlinked inode {ino} failed: {e}");
        }
        let _g = self.ns_write();
        let r = self.read_inode(ino).and_then(|mut i| {
            self.orphan_del(ino, &i)?;
            self.free_inode(ino, &mut i)
        });
        if let Err(e) = r {
            log::error!("freeing unlinked inode {ino} failed: {e}");
        }
    }
}

impl Fs {
    /// At a writable mount: finish what a crash interrupted. Inodes on the orphan list with no
    /// links left are freed; linked ones (an interrupted truncate) lose their blocks past i_size.
    pub(super) fn process_orphans(&self) -> Result<()> {
        let mut done = 0u32;
        loop {
            if done > self.sb.inodes_count {
                return Err(crate::corrupt!("the orphan list loops"));
            }
            let ino = self
                .sb_live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_orphan as Ino;
            if ino == 0 {
                break;
            }
            // A big map is freed in steps first, the inode still heading the list.
            let keep = {
                let _g = self.ns_read();
                let i = self.read_inode(ino)?;
                if i.links_count == 0 {
                    0
                } else {
                    i.size.div_ceil(self.block_size as u64)
                }
            };
            self.free_blocks_in_steps(ino, keep)?;
            let _g = self.ns_write();
            let mut i = self.read_inode(ino)?;
            self.orphan_del(ino, &i)?;
            if i.links_count == 0 {
                self.free_inode(ino, &mut i)?;
            } else {
                self.truncate_blocks(ino, &mut i, keep)?;
                i.dtime = 0;
                self.store_inode(ino, &i)?;
            }
            done += 1;
        }
        if done > 0 {
            log::warn!("cleaned up {done} orphan inode(s) left by an unclean shutdown");
        }
        Ok(())
    }
}
