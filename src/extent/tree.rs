//! Path-based extent tree modification.
//!
//! A tree is its 60-byte root in `i_block` plus node blocks. Every operation walks a root-to-leaf
//! path, edits the leaf, then repairs upward: a full node splits (the root instead pushes its
//! entries into a new child and grows a level), an empty non-root node is freed and its index entry
//! removed, and each index key is set to its child's first logical block (e2fsck checks this).

use crate::errno::Result;
use crate::ondisk::extent::{
    self, ENTRY_LEN, Extent, ExtentHeader, ExtentIndex, HEADER_LEN, MAX_INIT_LEN, Node,
};
use crate::ondisk::inode::I_BLOCK_LEN;

/// A physical run (first block, count) that left the tree.
pub type Run = (u64, u32);

/// Longest unwritten extent (one less than the initialized maximum).
const MAX_UNWRITTEN_LEN: u32 = MAX_INIT_LEN - 1;

/// Node block access for tree changes.
pub trait ExtentIo {
    /// Read a node block (checksum verified).
    fn read_node(&self, block: u64) -> Result<Vec<u8>>;
    /// Write a node block (the implementation sets the checksum tail).
    fn write_node(&self, block: u64, data: Vec<u8>) -> Result<()>;
    /// Allocate a block for a new node, near `goal`.
    fn alloc_node(&self, goal: u64) -> Result<u64>;
    /// Free a node block that left the tree.
    fn free_node(&self, block: u64) -> Result<()>;
}

#[derive(Clone, Debug)]
enum Entries {
    Leaf(Vec<Extent>),
    Index(Vec<ExtentIndex>),
}

/// One node in memory: where it lives (None = the inode root), its header and entries.
#[derive(Clone, Debug)]
struct Mem {
    block: Option<u64>,
    depth: u16,
    max: u16,
    generation: u32,
    e: Entries,
}

impl Mem {
    fn len(&self) -> usize {
        match &self.e {
            Entries::Leaf(v) => v.len(),
            Entries::Index(v) => v.len(),
        }
    }

    fn first_key(&self) -> Option<u32> {
        match &self.e {
            Entries::Leaf(v) => v.first().map(|x| x.lblk),
            Entries::Index(v) => v.first().map(|x| x.lblk),
        }
    }

    fn encode(&self, out: &mut [u8]) {
        out.fill(0);
        extent::write_header(
            out,
            &ExtentHeader {
                entries: self.len() as u16,
                max: self.max,
                depth: self.depth,
                generation: self.generation,
            },
        );
        match &self.e {
            Entries::Leaf(v) => v
                .iter()
                .enumerate()
                .for_each(|(i, x)| extent::write_extent(out, i, x)),
            Entries::Index(v) => v
                .iter()
                .enumerate()
                .for_each(|(i, x)| extent::write_index(out, i, x)),
        }
    }
}

fn decode(b: &[u8], block: Option<u64>, what: &str) -> Result<Mem> {
    let node = extent::parse_node(b).map_err(|e| crate::corrupt!("{what}: {e}"))?;
    Ok(match node {
        Node::Leaf(h, v) => Mem {
            block,
            depth: h.depth,
            max: h.max,
            generation: h.generation,
            e: Entries::Leaf(v),
        },
        Node::Index(h, v) => Mem {
            block,
            depth: h.depth,
            max: h.max,
            generation: h.generation,
            e: Entries::Index(v),
        },
    })
}

/// An inode's extent tree, edited in place through its `i_block` root.
/// A path whose shape the tree code itself built is not what it should be: an internal error,
/// reported like corruption (never a panic).
fn broken(owner: u64, what: &str) -> crate::errno::Errno {
    crate::corrupt!("inode {owner}: extent tree path: unexpected {what}")
}

/// The entries of the leaf a lookup path ends in.
fn leaf_entries(path: &mut [(Mem, usize)], owner: u64) -> Result<&mut Vec<Extent>> {
    match path.last_mut().map(|(m, _)| &mut m.e) {
        Some(Entries::Leaf(v)) => Ok(v),
        _ => Err(broken(owner, "end (not a leaf)")),
    }
}

/// The entries of an index node on a lookup path.
fn index_entries(node: &mut Mem, owner: u64) -> Result<&mut Vec<ExtentIndex>> {
    match &mut node.e {
        Entries::Index(v) => Ok(v),
        Entries::Leaf(_) => Err(broken(owner, "leaf above another node")),
    }
}

pub struct ExtentTree<'a> {
    root: &'a mut [u8; I_BLOCK_LEN],
    io: &'a dyn ExtentIo,
    block_size: usize,
    /// Names the owner in corruption messages.
    owner: u64,
}

fn can_merge(a: &Extent, b: &Extent) -> bool {
    let max = if a.unwritten {
        MAX_UNWRITTEN_LEN
    } else {
        MAX_INIT_LEN
    };
    a.unwritten == b.unwritten
        && a.lblk as u64 + a.len as u64 == b.lblk as u64
        && a.pblk + a.len as u64 == b.pblk
        && a.len + b.len <= max
}

impl<'a> ExtentTree<'a> {
    pub fn new(
        root: &'a mut [u8; I_BLOCK_LEN],
        io: &'a dyn ExtentIo,
        block_size: u32,
        owner: u64,
    ) -> Self {
        ExtentTree {
            root,
            io,
            block_size: block_size as usize,
            owner,
        }
    }

    /// Initialize an empty tree in `root` (a new inode).
    pub fn init_empty(root: &mut [u8; I_BLOCK_LEN]) {
        root.fill(0);
        extent::write_header(
            root,
            &ExtentHeader {
                entries: 0,
                max: 4,
                depth: 0,
                generation: 0,
            },
        );
    }

    fn node_max(&self) -> u16 {
        ((self.block_size - HEADER_LEN) / ENTRY_LEN) as u16
    }

    fn load_root(&self) -> Result<Mem> {
        decode(
            &self.root[..],
            None,
            &format!("inode {} extent root", self.owner),
        )
    }

    fn load(&self, block: u64, depth: u16) -> Result<Mem> {
        let b = self.io.read_node(block)?;
        let m = decode(
            &b,
            Some(block),
            &format!("inode {} extent block {block}", self.owner),
        )?;
        if m.depth != depth {
            return Err(crate::corrupt!(
                "inode {}: extent block {block} has depth {} where {depth} was expected",
                self.owner,
                m.depth
            ));
        }
        Ok(m)
    }

    fn store(&mut self, m: &Mem) -> Result<()> {
        match m.block {
            None => {
                m.encode(&mut self.root[..]);
                Ok(())
            }
            Some(b) => {
                let mut buf = vec![0u8; self.block_size];
                m.encode(&mut buf);
                self.io.write_node(b, buf)
            }
        }
    }

    /// Root-to-leaf path for `lblk`, with the slot taken at each index node.
    fn path(&self, lblk: u32) -> Result<Vec<(Mem, usize)>> {
        let mut path = Vec::new();
        let mut cur = self.load_root()?;
        loop {
            match &cur.e {
                Entries::Leaf(_) => {
                    path.push((cur, 0));
                    return Ok(path);
                }
                Entries::Index(v) => {
                    if v.is_empty() {
                        return Err(crate::corrupt!(
                            "inode {}: empty extent index node",
                            self.owner
                        ));
                    }
                    let slot = v.partition_point(|x| x.lblk <= lblk).saturating_sub(1);
                    let child = v[slot].child;
                    let depth = cur.depth - 1;
                    path.push((cur, slot));
                    if path.len() > extent::MAX_DEPTH as usize + 1 {
                        return Err(crate::corrupt!(
                            "inode {}: extent tree too deep",
                            self.owner
                        ));
                    }
                    cur = self.load(child, depth)?;
                }
            }
        }
    }

    /// Every extent in order (for truncate, fiemap-style walks and tests).
    pub fn extents(&self) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let root = self.load_root()?;
        self.collect(&root, &mut out, 0)?;
        Ok(out)
    }

    fn collect(&self, m: &Mem, out: &mut Vec<Extent>, level: usize) -> Result<()> {
        if level > extent::MAX_DEPTH as usize {
            return Err(crate::corrupt!(
                "inode {}: extent tree too deep",
                self.owner
            ));
        }
        match &m.e {
            Entries::Leaf(v) => out.extend_from_slice(v),
            Entries::Index(v) => {
                for x in v {
                    let child = self.load(x.child, m.depth - 1)?;
                    self.collect(&child, out, level + 1)?;
                }
            }
        }
        Ok(())
    }

    /// Blocks used by the tree's nodes (not data), for i_blocks accounting and freeing.
    pub fn node_blocks(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let root = self.load_root()?;
        let mut stack = vec![root];
        while let Some(m) = stack.pop() {
            if let Entries::Index(v) = &m.e {
                for x in v {
                    out.push(x.child);
                    stack.push(self.load(x.child, m.depth - 1)?);
                }
            }
        }
        Ok(out)
    }

    /// Map `len` blocks at `lblk` to `pblk`. The range must be unmapped.
    pub fn insert(&mut self, ext: Extent) -> Result<()> {
        let max = if ext.unwritten {
            MAX_UNWRITTEN_LEN
        } else {
            MAX_INIT_LEN
        };
        // Long runs go in as several extents.
        let mut e = ext;
        while e.len > max {
            self.insert_one(Extent { len: max, ..e })?;
            e = Extent {
                lblk: e.lblk + max,
                len: e.len - max,
                pblk: e.pblk + max as u64,
                unwritten: e.unwritten,
            };
        }
        self.insert_one(e)
    }

    fn insert_one(&mut self, ext: Extent) -> Result<()> {
        let mut path = self.path(ext.lblk)?;
        let owner = self.owner;
        let v = leaf_entries(&mut path, owner)?;
        let pos = v.partition_point(|x| x.lblk < ext.lblk);
        if let Some(next) = v.get(pos)
            && (ext.lblk as u64 + ext.len as u64) > next.lblk as u64
        {
            return Err(crate::corrupt!(
                "inode {}: inserting extent at {} overlaps an existing one",
                self.owner,
                ext.lblk
            ));
        }
        if pos > 0 && (v[pos - 1].lblk as u64 + v[pos - 1].len as u64) > ext.lblk as u64 {
            return Err(crate::corrupt!(
                "inode {}: inserting extent at {} overlaps an existing one",
                self.owner,
                ext.lblk
            ));
        }
        if pos > 0 && can_merge(&v[pos - 1], &ext) {
            v[pos - 1].len += ext.len;
            if pos < v.len() && can_merge(&v[pos - 1], &v[pos]) {
                let n = v.remove(pos);
                v[pos - 1].len += n.len;
            }
        } else if pos < v.len() && can_merge(&ext, &v[pos]) {
            v[pos].lblk = ext.lblk;
            v[pos].pblk = ext.pblk;
            v[pos].len += ext.len;
        } else {
            v.insert(pos, ext);
        }
        self.repair(path)
    }

    /// Unmap `[start, end)`; returns the physical runs that were mapped there (data to free).
    pub fn remove(&mut self, start: u32, end: u64) -> Result<Vec<(u64, u32)>> {
        Ok(self.remove_leaves(start, end, usize::MAX)?.0)
    }

    /// Like `remove`, but touching at most `max_leaves` leaves (a bounded change): returns the
    /// runs unmapped and where to continue, `None` when `[start, end)` is done.
    pub fn remove_leaves(
        &mut self,
        start: u32,
        end: u64,
        max_leaves: usize,
    ) -> Result<(Vec<Run>, Option<u32>)> {
        let mut freed = Vec::new();
        let mut cursor = start as u64;
        let mut leaves = 0;
        while cursor < end {
            leaves += 1;
            let mut path = self.path(cursor as u32)?;
            let owner = self.owner;
            let v = leaf_entries(&mut path, owner)?;
            let mut i = v.partition_point(|x| (x.lblk as u64 + x.len as u64) <= cursor);
            let mut changed = false;
            let mut split_tail: Option<Extent> = None;
            while i < v.len() && (v[i].lblk as u64) < end {
                let x = v[i];
                let xs = x.lblk as u64;
                let xe = xs + x.len as u64;
                let cs = xs.max(start as u64);
                let ce = xe.min(end);
                freed.push((x.pblk + (cs - xs), (ce - cs) as u32));
                changed = true;
                match (cs > xs, ce < xe) {
                    (false, false) => {
                        v.remove(i);
                        continue;
                    }
                    (true, false) => v[i].len = (cs - xs) as u32,
                    (false, true) => {
                        v[i].lblk = ce as u32;
                        v[i].pblk = x.pblk + (ce - xs);
                        v[i].len = (xe - ce) as u32;
                    }
                    (true, true) => {
                        // A hole punched inside one extent: keep the head here, re-insert the tail.
                        v[i].len = (cs - xs) as u32;
                        split_tail = Some(Extent {
                            lblk: ce as u32,
                            len: (xe - ce) as u32,
                            pblk: x.pblk + (ce - xs),
                            unwritten: x.unwritten,
                        });
                    }
                }
                i += 1;
            }
            // Where to continue: past this leaf's range (the next leaf's first key) or done.
            let next = self.next_leaf_key(&path);
            if changed {
                self.repair(path)?;
            }
            if let Some(t) = split_tail {
                self.insert_one(t)?;
                break;
            }
            match next {
                Some(k) if (k as u64) > cursor && (k as u64) < end => {
                    if leaves >= max_leaves {
                        self.shrink()?;
                        return Ok((freed, Some(k)));
                    }
                    cursor = k as u64
                }
                _ => break,
            }
        }
        self.shrink()?;
        Ok((freed, None))
    }

    /// Split the extent that straddles `lblk` (starts before it, ends after it) in two at `lblk`,
    /// so that no extent crosses it. Nothing happens when none does.
    pub fn split_at(&mut self, lblk: u32) -> Result<()> {
        let mut path = self.path(lblk)?;
        let owner = self.owner;
        let v = leaf_entries(&mut path, owner)?;
        let i = v.partition_point(|x| x.lblk < lblk);
        if i == 0 {
            return Ok(());
        }
        let x = v[i - 1];
        let head = lblk - x.lblk;
        if (x.lblk as u64 + x.len as u64) <= lblk as u64 {
            return Ok(());
        }
        v[i - 1].len = head;
        v.insert(
            i,
            Extent {
                lblk,
                len: x.len - head,
                pblk: x.pblk + head as u64,
                unwritten: x.unwritten,
            },
        );
        self.repair(path)
    }

    /// End (one past the last block) of the last extent, 0 for an empty tree.
    pub fn last_end(&self) -> Result<u64> {
        let mut path = self.path(u32::MAX)?;
        let v = leaf_entries(&mut path, self.owner)?;
        Ok(v.last().map_or(0, |x| x.lblk as u64 + x.len as u64))
    }

    /// Move the extents that start in `[lo, hi)` by `delta` blocks (left when negative), at most
    /// `max_leaves` leaves per call: lowest leaf first when moving left, highest first when
    /// moving right, so the tree stays sorted and valid after every call. The caller guarantees
    /// that the blocks they move into are unmapped (and that no extent straddles `lo`). Returns
    /// the part of `[lo, hi)` still to move, `None` when done. Index keys follow their children;
    /// neighbours that become contiguous are not merged here (see `merge_at`).
    pub fn shift(
        &mut self,
        lo: u32,
        hi: u64,
        delta: i64,
        max_leaves: usize,
    ) -> Result<Option<(u32, u64)>> {
        let owner = self.owner;
        let bad =
            |what: &str| crate::corrupt!("inode {owner}: shifting extents by {delta}: {what}");
        let (mut lo, mut hi) = (lo, hi.min(1 << 32));
        let mut leaves = 0;
        while (lo as u64) < hi {
            if leaves == max_leaves.max(1) {
                return Ok(Some((lo, hi)));
            }
            leaves += 1;
            if delta < 0 {
                let mut path = self.path(lo)?;
                let next = self.next_leaf_key(&path);
                let v = leaf_entries(&mut path, owner)?;
                let i0 = v.partition_point(|x| x.lblk < lo);
                let mut changed = false;
                for i in i0..v.len() {
                    if v[i].lblk as u64 >= hi {
                        break;
                    }
                    let new = v[i].lblk as i64 + delta;
                    let floor = if i > 0 {
                        v[i - 1].lblk as i64 + v[i - 1].len as i64
                    } else {
                        0
                    };
                    if new < floor {
                        return Err(bad(&format!(
                            "the extent at {} would overlap its left neighbour",
                            v[i].lblk
                        )));
                    }
                    v[i].lblk = new as u32;
                    changed = true;
                }
                if changed {
                    self.repair(path)?;
                }
                match next {
                    Some(k) if k > lo && (k as u64) < hi => lo = k,
                    _ => return Ok(None),
                }
            } else {
                let mut path = self.path((hi - 1) as u32)?;
                let v = leaf_entries(&mut path, owner)?;
                let Some(first_key) = v.first().map(|x| x.lblk) else {
                    return Ok(None);
                };
                let i1 = v.partition_point(|x| (x.lblk as u64) < hi);
                let mut changed = false;
                for i in (0..i1).rev() {
                    if v[i].lblk < lo {
                        break;
                    }
                    let new = v[i].lblk as u64 + delta as u64;
                    let ceiling = v.get(i + 1).map_or(u32::MAX as u64, |x| x.lblk as u64);
                    if new + v[i].len as u64 > ceiling {
                        return Err(bad(&format!(
                            "the extent at {} would overlap its right neighbour or pass the last block",
                            v[i].lblk
                        )));
                    }
                    v[i].lblk = new as u32;
                    changed = true;
                }
                if changed {
                    self.repair(path)?;
                }
                if first_key > lo && (first_key as u64) < hi {
                    hi = first_key as u64;
                } else {
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    /// Merge the extent that ends at `lblk` with the one that starts there when they continue
    /// each other (same state, contiguous on disk, not too long together).
    pub fn merge_at(&mut self, lblk: u32) -> Result<()> {
        if lblk == 0 {
            return Ok(());
        }
        let left = {
            let mut path = self.path(lblk - 1)?;
            let v = leaf_entries(&mut path, self.owner)?;
            let i = v.partition_point(|x| x.lblk < lblk);
            match i.checked_sub(1).map(|i| v[i]) {
                Some(x) if x.lblk as u64 + x.len as u64 == lblk as u64 => x,
                _ => return Ok(()),
            }
        };
        let right = {
            let mut path = self.path(lblk)?;
            let v = leaf_entries(&mut path, self.owner)?;
            match v.iter().find(|x| x.lblk == lblk) {
                Some(x) => *x,
                None => return Ok(()),
            }
        };
        if !can_merge(&left, &right) {
            return Ok(());
        }
        // Take the right one out and put it back: the insert merges it into its left neighbour
        // (in the same leaf or the previous one).
        self.remove(lblk, lblk as u64 + right.len as u64)?;
        self.insert_one(right)
    }

    /// First key of the leaf after the one `path` ends in.
    fn next_leaf_key(&self, path: &[(Mem, usize)]) -> Option<u32> {
        for (m, slot) in path.iter().rev().skip(1) {
            if let Entries::Index(v) = &m.e
                && slot + 1 < v.len()
            {
                return Some(v[slot + 1].lblk);
            }
        }
        None
    }

    /// Write back a path whose leaf changed: split overfull nodes, free empty ones, fix keys.
    fn repair(&mut self, mut path: Vec<(Mem, usize)>) -> Result<()> {
        let mut level = path.len() - 1;
        loop {
            let (node, _) = &path[level];
            let is_root = node.block.is_none();
            if node.len() > node.max as usize {
                if is_root {
                    self.grow(&mut path)?;
                    // The old root's contents now sit one level down; redo from there.
                    level += 1;
                    continue;
                }
                let right = self.split(&mut path[level].0)?;
                self.store(&path[level].0)?;
                self.store(&right)?;
                let key = right.first_key().unwrap_or(0);
                let child = right
                    .block
                    .ok_or_else(|| broken(self.owner, "split node"))?;
                let (parent, slot) = &mut path[level - 1];
                let pv = index_entries(parent, self.owner)?;
                pv.insert(*slot + 1, ExtentIndex { lblk: key, child });
            } else if node.len() == 0 && !is_root {
                let b = node
                    .block
                    .ok_or_else(|| broken(self.owner, "non-root node"))?;
                self.io.free_node(b)?;
                let (parent, slot) = &mut path[level - 1];
                let pv = index_entries(parent, self.owner)?;
                pv.remove(*slot);
            } else {
                self.store(&path[level].0)?;
                if level > 0 {
                    let key = path[level].0.first_key();
                    let (parent, slot) = &mut path[level - 1];
                    let pv = index_entries(parent, self.owner)?;
                    if let Some(k) = key {
                        pv[*slot].lblk = k;
                    }
                }
            }
            if level == 0 {
                let root = &path[0].0;
                if root.len() == 0 && root.depth > 0 {
                    // Everything was removed: back to an empty leaf root.
                    let mut r = root.clone();
                    r.depth = 0;
                    r.e = Entries::Leaf(Vec::new());
                    self.store(&r)?;
                } else {
                    self.store(&path[0].0)?;
                }
                return Ok(());
            }
            level -= 1;
        }
    }

    /// Move the root's entries into a new block; the root becomes an index with one entry.
    fn grow(&mut self, path: &mut Vec<(Mem, usize)>) -> Result<()> {
        let goal = match &path[0].0.e {
            Entries::Leaf(v) => v.first().map_or(0, |x| x.pblk),
            Entries::Index(v) => v.first().map_or(0, |x| x.child),
        };
        let b = self.io.alloc_node(goal)?;
        let old = path[0].0.clone();
        let child = Mem {
            block: Some(b),
            depth: old.depth,
            max: self.node_max(),
            generation: 0,
            e: old.e,
        };
        let key = child.first_key().unwrap_or(0);
        let root = Mem {
            block: None,
            depth: old.depth + 1,
            max: old.max,
            generation: old.generation,
            e: Entries::Index(vec![ExtentIndex {
                lblk: key,
                child: b,
            }]),
        };
        let slot = path[0].1;
        path[0] = (root, 0);
        path.insert(1, (child, slot));
        Ok(())
    }

    /// Split an overfull block node in two; returns the new right half (already allocated).
    fn split(&mut self, node: &mut Mem) -> Result<Mem> {
        let goal = node.block.unwrap_or(0);
        let b = self.io.alloc_node(goal)?;
        let half = node.len() / 2;
        let e = match &mut node.e {
            Entries::Leaf(v) => Entries::Leaf(v.split_off(half)),
            Entries::Index(v) => Entries::Index(v.split_off(half)),
        };
        Ok(Mem {
            block: Some(b),
            depth: node.depth,
            max: self.node_max(),
            generation: 0,
            e,
        })
    }

    /// Pull a lone child back into the root while it fits, freeing its block.
    fn shrink(&mut self) -> Result<()> {
        loop {
            let root = self.load_root()?;
            let Entries::Index(v) = &root.e else {
                return Ok(());
            };
            if v.len() != 1 {
                return Ok(());
            }
            let child = self.load(v[0].child, root.depth - 1)?;
            if child.len() > root.max as usize {
                return Ok(());
            }
            let new_root = Mem {
                block: None,
                depth: child.depth,
                max: root.max,
                generation: root.generation,
                e: child.e,
            };
            self.store(&new_root)?;
            self.io.free_node(v[0].child)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errno::Errno;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};

    struct Mem {
        blocks: RefCell<HashMap<u64, Vec<u8>>>,
        next: RefCell<u64>,
        bs: usize,
    }

    impl ExtentIo for Mem {
        fn read_node(&self, block: u64) -> Result<Vec<u8>> {
            self.blocks.borrow().get(&block).cloned().ok_or(Errno::EIO)
        }
        fn write_node(&self, block: u64, data: Vec<u8>) -> Result<()> {
            assert_eq!(data.len(), self.bs);
            self.blocks.borrow_mut().insert(block, data);
            Ok(())
        }
        fn alloc_node(&self, _goal: u64) -> Result<u64> {
            let mut n = self.next.borrow_mut();
            *n += 1;
            Ok(1_000_000 + *n)
        }
        fn free_node(&self, block: u64) -> Result<()> {
            assert!(
                self.blocks.borrow_mut().remove(&block).is_some(),
                "freeing unknown node {block}"
            );
            Ok(())
        }
    }

    /// Check structure: sorted, non-overlapping, index keys equal child first keys, counts in limits.
    fn check(t: &ExtentTree) {
        let root = t.load_root().unwrap();
        fn walk(t: &ExtentTree, m: &super::Mem, lo: Option<u32>) {
            assert!(m.len() <= m.max as usize);
            if m.block.is_some() {
                assert!(m.len() > 0, "empty non-root node");
            }
            if let (Some(lo), Some(k)) = (lo, m.first_key()) {
                assert_eq!(lo, k, "index key must equal the child's first key");
            }
            if let Entries::Index(v) = &m.e {
                for w in v.windows(2) {
                    assert!(w[0].lblk < w[1].lblk);
                }
                for x in v {
                    let c = t.load(x.child, m.depth - 1).unwrap();
                    walk(t, &c, Some(x.lblk));
                }
            }
        }
        walk(t, &root, None);
        let all = t.extents().unwrap();
        for w in all.windows(2) {
            assert!(w[0].lblk as u64 + w[0].len as u64 <= w[1].lblk as u64);
        }
    }

    impl Mem {
        fn new(bs: usize) -> Mem {
            Mem {
                blocks: RefCell::new(HashMap::new()),
                next: RefCell::new(0),
                bs,
            }
        }
    }

    fn model_of(t: &ExtentTree) -> BTreeMap<u32, (u64, bool)> {
        let mut m = BTreeMap::new();
        for e in t.extents().unwrap() {
            for i in 0..e.len {
                m.insert(e.lblk + i, (e.pblk + i as u64, e.unwritten));
            }
        }
        m
    }

    #[test]
    fn random_inserts_and_removes_match_a_model() {
        for bs in [1024usize, 4096] {
            let io = Mem::new(bs);
            let mut root = [0u8; I_BLOCK_LEN];
            ExtentTree::init_empty(&mut root);
            let mut t = ExtentTree::new(&mut root, &io, bs as u32, 12);
            let mut model: BTreeMap<u32, (u64, bool)> = BTreeMap::new();
            let mut max_depth = 0;
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ bs as u64;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            for step in 0..3000 {
                let r = next();
                if r % 3 != 0 {
                    // Insert a small run into a hole.
                    let lblk = (next() % 20_000) as u32;
                    let len = 1 + (next() % 8) as u32;
                    if (lblk..lblk + len).any(|b| model.contains_key(&b)) {
                        continue;
                    }
                    // Physical placement: sometimes contiguous with the left neighbour to exercise merges.
                    let pblk = if next() % 2 == 0 {
                        model
                            .get(&(lblk.wrapping_sub(1)))
                            .map_or(lblk as u64 * 3 + 7, |p| p.0 + 1)
                    } else {
                        lblk as u64 * 3 + 7
                    };
                    let unwritten = next() % 5 == 0;
                    t.insert(Extent {
                        lblk,
                        len,
                        pblk,
                        unwritten,
                    })
                    .unwrap();
                    for i in 0..len {
                        model.insert(lblk + i, (pblk + i as u64, unwritten));
                    }
                } else {
                    let s = (next() % 20_000) as u32;
                    let l = 1 + next() % 300;
                    let freed = t.remove(s, s as u64 + l).unwrap();
                    let mut expect: Vec<u64> = model
                        .range(s..(s as u64 + l).min(u32::MAX as u64) as u32)
                        .map(|(_, p)| p.0)
                        .collect();
                    let mut got: Vec<u64> =
                        freed.iter().flat_map(|&(p, n)| p..p + n as u64).collect();
                    expect.sort_unstable();
                    got.sort_unstable();
                    assert_eq!(got, expect, "step {step}: freed blocks");
                    model.retain(|&k, _| (k as u64) < s as u64 || k as u64 >= s as u64 + l);
                }
                max_depth = max_depth.max(t.load_root().unwrap().depth);
                if step % 100 == 0 {
                    check(&t);
                    assert_eq!(model_of(&t), model, "step {step}");
                }
            }
            check(&t);
            assert_eq!(model_of(&t), model);
            assert!(
                max_depth >= if bs == 1024 { 2 } else { 1 },
                "tree never grew: depth {max_depth}"
            );
            // Removing everything frees every node and leaves an empty leaf root.
            t.remove(0, u32::MAX as u64 + 1).unwrap();
            assert!(t.extents().unwrap().is_empty());
            assert!(io.blocks.borrow().is_empty(), "node blocks leaked");
        }
    }

    /// Collapse- and insert-style edits (remove + shift left + merge; split + shift right), in
    /// small batches of leaves, against a block model: structure and mapping stay exact.
    #[test]
    fn shifts_split_and_merge_match_a_model() {
        for bs in [1024usize, 4096] {
            let io = Mem::new(bs);
            let mut root = [0u8; I_BLOCK_LEN];
            ExtentTree::init_empty(&mut root);
            let mut t = ExtentTree::new(&mut root, &io, bs as u32, 12);
            let mut model: BTreeMap<u32, (u64, bool)> = BTreeMap::new();
            let mut rng = 0x1234_5678_9ABC_DEF1u64 ^ bs as u64;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut merged = 0;
            let mut max_depth = 0;
            for step in 0..3000 {
                match next() % 6 {
                    0..=3 => {
                        let lblk = (next() % 30_000) as u32;
                        let len = 1 + (next() % 6) as u32;
                        if (lblk..lblk + len).any(|b| model.contains_key(&b)) {
                            continue;
                        }
                        // Physically right after the extent before the hole half of the time,
                        // so that collapses create mergeable neighbours.
                        let before = model.range(..lblk).next_back();
                        let pblk = match before {
                            Some((_, p)) if next() % 2 == 0 => p.0 + 1,
                            _ => lblk as u64 * 5 + 3,
                        };
                        let unwritten = next() % 6 == 0;
                        t.insert(Extent {
                            lblk,
                            len,
                            pblk,
                            unwritten,
                        })
                        .unwrap();
                        for i in 0..len {
                            model.insert(lblk + i, (pblk + i as u64, unwritten));
                        }
                    }
                    4 => {
                        // Collapse [s, s + n): random, or exactly the hole between two
                        // extents (their neighbours may become mergeable).
                        let mut s = (next() % 30_000) as u32;
                        let mut n = 1 + (next() % 200) as u32;
                        let all = t.extents().unwrap();
                        if all.len() > 1 && next() % 2 == 0 {
                            let i = (next() % (all.len() as u64 - 1)) as usize;
                            let e = all[i + 1].lblk - (all[i].lblk + all[i].len);
                            if e > 0 {
                                s = all[i].lblk + all[i].len;
                                n = e;
                            }
                        }
                        // In batches of a few leaves, as collapse does.
                        let mut gone = 0usize;
                        let mut at = Some(s);
                        while let Some(a) = at {
                            let (freed, next) = t
                                .remove_leaves(a, s as u64 + n as u64, 1 + (next() % 2) as usize)
                                .unwrap();
                            gone += freed.iter().map(|r| r.1 as usize).sum::<usize>();
                            at = next;
                            check(&t);
                        }
                        let before = model.len();
                        model.retain(|&k, _| k < s || k >= s + n);
                        assert_eq!(before - model.len(), gone, "step {step}");
                        let mut range = Some((s + n, 1u64 << 32));
                        while let Some((lo, hi)) = range {
                            range = t
                                .shift(lo, hi, -(n as i64), 1 + (next() % 3) as usize)
                                .unwrap();
                            check(&t);
                        }
                        let count = t.extents().unwrap().len();
                        t.merge_at(s).unwrap();
                        merged += count - t.extents().unwrap().len();
                        model = model
                            .into_iter()
                            .map(|(k, v)| (if k >= s + n { k - n } else { k }, v))
                            .collect();
                    }
                    _ => {
                        // Insert a hole of n blocks at s.
                        let s = (next() % 30_000) as u32;
                        let n = 1 + (next() % 200) as u32;
                        t.split_at(s).unwrap();
                        check(&t);
                        let mut range = Some((s, 1u64 << 32));
                        while let Some((lo, hi)) = range {
                            range = t
                                .shift(lo, hi, n as i64, 1 + (next() % 3) as usize)
                                .unwrap();
                            check(&t);
                        }
                        model = model
                            .into_iter()
                            .map(|(k, v)| (if k >= s { k + n } else { k }, v))
                            .collect();
                        let end = t.last_end().unwrap();
                        assert_eq!(
                            end,
                            model.keys().next_back().map_or(0, |&k| k as u64 + 1),
                            "step {step}: last end"
                        );
                    }
                }
                assert_eq!(model_of(&t), model, "step {step}");
                max_depth = max_depth.max(t.load_root().unwrap().depth);
            }
            check(&t);
            assert!(merged > 0, "no collapse ever merged neighbours");
            assert!(
                max_depth >= if bs == 1024 { 2 } else { 1 },
                "the tree never grew: depth {max_depth}"
            );
            // Moving past the last logical block is refused, not wrapped.
            let end = t.last_end().unwrap();
            if end > 0 {
                assert!(
                    t.shift(0, 1 << 32, (u32::MAX as u64 - end + 1) as i64, 1000)
                        .is_err()
                );
            }
            t.remove(0, u32::MAX as u64 + 1).unwrap();
            assert!(io.blocks.borrow().is_empty(), "node blocks leaked");
        }
    }

    #[test]
    fn long_runs_split_into_maximal_extents() {
        let io = Mem::new(4096);
        let mut root = [0u8; I_BLOCK_LEN];
        ExtentTree::init_empty(&mut root);
        let mut t = ExtentTree::new(&mut root, &io, 4096, 12);
        t.insert(Extent {
            lblk: 0,
            len: 100_000,
            pblk: 5000,
            unwritten: false,
        })
        .unwrap();
        let v = t.extents().unwrap();
        assert_eq!(v.iter().map(|e| e.len).sum::<u32>(), 100_000);
        assert!(v.iter().all(|e| e.len <= MAX_INIT_LEN));
        assert!(
            t.insert(Extent {
                lblk: 50,
                len: 1,
                pblk: 1,
                unwritten: false
            })
            .is_err(),
            "overlap refused"
        );
    }
}
