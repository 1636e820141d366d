//! Linear directory entries (`ext4_dir_entry_2`) and the checksum tail of leaf blocks.

use super::csum::crc32c_raw;
use super::le::{put_u16, put_u32, u16_at, u32_at};

pub const DIRENT_HEADER: usize = 8;
/// Size of the fake entry holding a leaf block's checksum.
pub const TAIL_LEN: usize = 12;
const TAIL_FILE_TYPE: u8 = 0xDE;

/// `file_type` values in directory entries.
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

/// One entry found in a block, with its position (an owned copy of a [`DirentRef`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDirent {
    pub offset: usize,
    pub inode: u32,
    pub rec_len: usize,
    pub file_type: u8,
    pub name: Vec<u8>,
}

/// One entry of a directory block, borrowed from the block: no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirentRef<'a> {
    pub offset: usize,
    pub inode: u32,
    pub rec_len: usize,
    pub file_type: u8,
    pub name: &'a [u8],
}

impl DirentRef<'_> {
    /// True for an entry in use (inode != 0) named `name`.
    #[inline]
    pub fn is_live(&self, name: &[u8]) -> bool {
        self.inode != 0 && self.name == name
    }

    pub fn to_owned(&self) -> RawDirent {
        RawDirent {
            offset: self.offset,
            inode: self.inode,
            rec_len: self.rec_len,
            file_type: self.file_type,
            name: self.name.to_vec(),
        }
    }
}

/// The rec_len encoding for 64 KiB+ blocks (0 or 65535 means "whole block").
pub fn decode_rec_len(v: u16, block_size: usize) -> usize {
    let len = v as usize;
    if block_size < 65536 {
        return len;
    }
    if len == 65535 || len == 0 {
        return block_size;
    }
    (len & 65532) | ((len & 3) << 16)
}

/// Iterator over the entries of a directory block region, in place. Each entry is checked as it
/// is reached (header inside the region, rec_len >= 8, a multiple of 4 and inside the region,
/// name inside rec_len); the first bad entry yields `Err` and ends the iteration.
#[derive(Clone, Debug)]
pub struct Dirents<'a> {
    data: &'a [u8],
    off: usize,
    filetype: bool,
    done: bool,
}

impl<'a> Iterator for Dirents<'a> {
    type Item = Result<DirentRef<'a>, String>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.off >= self.data.len() {
            return None;
        }
        let data = self.data;
        let off = self.off;
        if off + DIRENT_HEADER > data.len() {
            self.done = true;
            return Some(Err(format!(
                "directory entry at offset {off} runs past the block"
            )));
        }
        let inode = u32_at(data, off);
        let rec_len = decode_rec_len(u16_at(data, off + 4), data.len());
        let name_len = data[off + 6] as usize;
        let file_type = if self.filetype {
            data[off + 7]
        } else {
            FT_UNKNOWN
        };
        if rec_len < DIRENT_HEADER || !rec_len.is_multiple_of(4) || off + rec_len > data.len() {
            self.done = true;
            return Some(Err(format!(
                "directory entry at offset {off} has bad rec_len {rec_len}"
            )));
        }
        if DIRENT_HEADER + name_len > rec_len {
            self.done = true;
            return Some(Err(format!(
                "directory entry at offset {off}: name length {name_len} exceeds rec_len {rec_len}"
            )));
        }
        self.off = off + rec_len;
        Some(Ok(DirentRef {
            offset: off,
            inode,
            rec_len,
            file_type,
            name: &data[off + DIRENT_HEADER..off + DIRENT_HEADER + name_len],
        }))
    }
}

/// Walk the entries of a directory block region (`data` is a whole block without its checksum
/// tail, or an inline area) in place. `filetype` says whether the fs stores file types in
/// entries. In-use and deleted (inode 0) entries are both returned.
pub fn entries(data: &[u8], filetype: bool) -> Dirents<'_> {
    Dirents {
        data,
        off: 0,
        filetype,
        done: false,
    }
}

/// Check the structure of a whole region (what [`entries`] checks), without allocating.
pub fn check_block(data: &[u8], filetype: bool) -> Result<(), String> {
    for d in entries(data, filetype) {
        d?;
    }
    Ok(())
}

/// Find the live entry `name` in a region, checking the structure of the whole region (an error
/// anywhere in it is reported even when the name comes before it).
pub fn find_entry<'a>(
    data: &'a [u8],
    name: &[u8],
    filetype: bool,
) -> Result<Option<DirentRef<'a>>, String> {
    let mut found = None;
    for d in entries(data, filetype) {
        let d = d?;
        if found.is_none() && d.is_live(name) {
            found = Some(d);
        }
    }
    Ok(found)
}

/// Parse every entry of a directory block region into owned entries (for full listings; the
/// lookup and change paths use [`entries`] / [`find_entry`] in place).
pub fn parse_block(data: &[u8], filetype: bool) -> Result<Vec<RawDirent>, String> {
    entries(data, filetype)
        .map(|d| d.map(|d| d.to_owned()))
        .collect()
}

/// Bytes an entry with a name of `name_len` needs (header + name, rounded up to 4).
pub fn rec_len_for(name_len: usize) -> usize {
    (DIRENT_HEADER + name_len + 3) & !3
}

fn encode_rec_len(len: usize, block_size: usize) -> u16 {
    if block_size < 65536 {
        return len as u16;
    }
    if len == block_size {
        return if block_size == 65536 { 65535 } else { 0 };
    }
    ((len & 65532) | ((len >> 16) & 3)) as u16
}

fn write_entry(
    region: &mut [u8],
    off: usize,
    inode: u32,
    rec_len: usize,
    name: &[u8],
    ft: u8,
    block_size: usize,
) {
    put_u32(region, off, inode);
    put_u16(region, off + 4, encode_rec_len(rec_len, block_size));
    region[off + 6] = name.len() as u8;
    region[off + 7] = ft;
    region[off + DIRENT_HEADER..off + DIRENT_HEADER + name.len()].copy_from_slice(name);
    // Clear what is left of the old name bytes inside this entry's header span.
    let used = rec_len_for(name.len()).min(rec_len);
    region[off + DIRENT_HEADER + name.len()..off + used].fill(0);
}

/// Where a new entry fits in a region (see [`find_slot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The entry that gives up the room.
    offset: usize,
    rec_len: usize,
    /// 0 to reuse an unused entry whole; else the size the live entry shrinks to.
    keep: usize,
}

/// The first place (in block order) where an entry with a name of `name_len` bytes fits: an
/// unused entry large enough, or the slack after a live entry. Checks the whole region.
pub fn find_slot(region: &[u8], name_len: usize, filetype: bool) -> Result<Option<Slot>, String> {
    let need = rec_len_for(name_len);
    let mut slot = None;
    for d in entries(region, filetype) {
        let d = d?;
        if slot.is_some() {
            continue;
        }
        if d.inode == 0 && d.rec_len >= need {
            slot = Some(Slot {
                offset: d.offset,
                rec_len: d.rec_len,
                keep: 0,
            });
            continue;
        }
        let own = rec_len_for(d.name.len());
        if d.inode != 0 && d.rec_len >= own + need {
            slot = Some(Slot {
                offset: d.offset,
                rec_len: d.rec_len,
                keep: own,
            });
        }
    }
    Ok(slot)
}

/// Write a new entry at `slot` (from [`find_slot`] on this same region with this name length).
pub fn write_slot(
    region: &mut [u8],
    slot: Slot,
    name: &[u8],
    inode: u32,
    ft: u8,
    filetype: bool,
    block_size: usize,
) {
    let ft = if filetype { ft } else { 0 };
    if slot.keep == 0 {
        write_entry(
            region,
            slot.offset,
            inode,
            slot.rec_len,
            name,
            ft,
            block_size,
        );
    } else {
        // Shrink this entry to its own size and put the new one in the slack after it.
        put_u16(
            region,
            slot.offset + 4,
            encode_rec_len(slot.keep, block_size),
        );
        write_entry(
            region,
            slot.offset + slot.keep,
            inode,
            slot.rec_len - slot.keep,
            name,
            ft,
            block_size,
        );
    }
}

/// Put a new entry into a directory region (a leaf block without its checksum tail, or an inline
/// area). Returns false when there is no room. The caller checked the name is not there yet.
pub fn insert_entry(
    region: &mut [u8],
    name: &[u8],
    inode: u32,
    ft: u8,
    filetype: bool,
    block_size: usize,
) -> Result<bool, String> {
    match find_slot(region, name.len(), filetype)? {
        Some(slot) => {
            write_slot(region, slot, name, inode, ft, filetype, block_size);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Remove entry `name` from a region: merged into the previous entry, or, as the first entry, marked
/// unused. Returns the removed entry's inode, or None when the name is not there.
pub fn remove_entry(
    region: &mut [u8],
    name: &[u8],
    filetype: bool,
    block_size: usize,
) -> Result<Option<u32>, String> {
    // (previous entry, the entry) of the first live match.
    let mut hit: Option<(Option<DirentRef>, DirentRef)> = None;
    let mut prev = None;
    for d in entries(region, filetype) {
        let d = d?;
        if hit.is_none() && d.is_live(name) {
            hit = Some((prev, d));
        }
        prev = Some(d);
    }
    let Some((prev, d)) = hit else {
        return Ok(None);
    };
    let (off, rec_len, inode) = (d.offset, d.rec_len, d.inode);
    let prev = prev.map(|p| (p.offset, p.rec_len));
    match prev {
        None => put_u32(region, off, 0),
        Some((poff, prec)) => {
            put_u16(region, poff + 4, encode_rec_len(prec + rec_len, block_size));
            region[off..off + DIRENT_HEADER].fill(0);
        }
    }
    Ok(Some(inode))
}

/// Change the inode (and type) an existing entry points to (rename over, `..` fix-up).
pub fn retarget_entry(
    region: &mut [u8],
    name: &[u8],
    inode: u32,
    ft: u8,
    filetype: bool,
) -> Result<bool, String> {
    let Some(off) = find_entry(region, name, filetype)?.map(|d| d.offset) else {
        return Ok(false);
    };
    put_u32(region, off, inode);
    if filetype {
        region[off + 7] = ft;
    }
    Ok(true)
}

/// An empty leaf region: one unused entry spanning it.
pub fn init_empty_region(region: &mut [u8], block_size: usize) {
    region.fill(0);
    let len = region.len();
    put_u16(region, 4, encode_rec_len(len, block_size));
}

/// True when `block` is an htree interior node: a fake unused entry spanning the whole block.
pub fn is_dx_node_block(block: &[u8]) -> bool {
    block.len() >= 8
        && u32_at(block, 0) == 0
        && decode_rec_len(u16_at(block, 4), block.len()) == block.len()
}

/// True when the last 12 bytes of `block` are a checksum tail.
pub fn has_tail(block: &[u8]) -> bool {
    if block.len() < TAIL_LEN {
        return false;
    }
    let t = block.len() - TAIL_LEN;
    u32_at(block, t) == 0
        && u16_at(block, t + 4) as usize == TAIL_LEN
        && block[t + 6] == 0
        && block[t + 7] == TAIL_FILE_TYPE
}

pub fn leaf_checksum(inode_seed: u32, block: &[u8]) -> u32 {
    crc32c_raw(inode_seed, &block[..block.len() - TAIL_LEN])
}

/// Verify the tail checksum of a leaf block. Returns Err when the tail is missing.
pub fn verify_leaf(inode_seed: u32, block: &[u8]) -> Result<bool, String> {
    if !has_tail(block) {
        return Err("directory leaf block has no checksum tail".into());
    }
    Ok(u32_at(block, block.len() - 4) == leaf_checksum(inode_seed, block))
}

/// Write the checksum tail (structure and value) of a leaf block.
pub fn set_leaf_tail(inode_seed: u32, block: &mut [u8]) {
    let t = block.len() - TAIL_LEN;
    put_u32(block, t, 0);
    put_u16(block, t + 4, TAIL_LEN as u16);
    block[t + 6] = 0;
    block[t + 7] = TAIL_FILE_TYPE;
    let c = leaf_checksum(inode_seed, block);
    put_u32(block, t + 8, c);
}

/// `DT_*` value for a dirent file type.
pub fn ft_to_dt(ft: u8) -> u8 {
    match ft {
        FT_REG_FILE => libc::DT_REG,
        FT_DIR => libc::DT_DIR,
        FT_CHRDEV => libc::DT_CHR,
        FT_BLKDEV => libc::DT_BLK,
        FT_FIFO => libc::DT_FIFO,
        FT_SOCK => libc::DT_SOCK,
        FT_SYMLINK => libc::DT_LNK,
        _ => libc::DT_UNKNOWN,
    }
}

/// `DT_*` value for an inode mode.
pub fn mode_to_dt(mode: u32) -> u8 {
    ((mode >> 12) & 0xF) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(b: &mut [u8], off: usize, ino: u32, rec: u16, name: &[u8], ft: u8) {
        put_u32(b, off, ino);
        put_u16(b, off + 4, rec);
        b[off + 6] = name.len() as u8;
        b[off + 7] = ft;
        b[off + 8..off + 8 + name.len()].copy_from_slice(name);
    }

    #[test]
    fn parses_block_with_tail() {
        let mut b = vec![0u8; 1024];
        entry(&mut b, 0, 2, 12, b".", FT_DIR);
        entry(&mut b, 12, 2, 12, b"..", FT_DIR);
        entry(&mut b, 24, 12, 1024 - 24 - 12, b"hello", FT_REG_FILE);
        set_leaf_tail(99, &mut b);
        let v = parse_block(&b, true).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[2].name, b"hello");
        assert!(verify_leaf(99, &b).unwrap());
        b[30] ^= 1;
        assert!(!verify_leaf(99, &b).unwrap());
    }

    #[test]
    fn insert_and_remove_keep_the_block_valid() {
        let bs = 1024;
        let mut b = vec![0u8; bs];
        init_empty_region(&mut b[..bs - TAIL_LEN], bs);
        let region = &mut b[..bs - TAIL_LEN];
        assert!(insert_entry(region, b".", 2, FT_DIR, true, bs).unwrap());
        assert!(insert_entry(region, b"..", 2, FT_DIR, true, bs).unwrap());
        let mut n = 0;
        while insert_entry(
            region,
            format!("name-{n:04}").as_bytes(),
            100 + n,
            FT_REG_FILE,
            true,
            bs,
        )
        .unwrap()
        {
            n += 1;
        }
        assert_eq!(n, (bs - TAIL_LEN - 24) as u32 / 20);
        let live = |r: &[u8]| {
            parse_block(r, true)
                .unwrap()
                .into_iter()
                .filter(|d| d.inode != 0)
                .count()
        };
        assert_eq!(live(region), n as usize + 2);
        assert_eq!(
            remove_entry(region, b"name-0003", true, bs).unwrap(),
            Some(103)
        );
        assert_eq!(remove_entry(region, b"name-0003", true, bs).unwrap(), None);
        assert_eq!(remove_entry(region, b".", true, bs).unwrap(), Some(2));
        assert_eq!(live(region), n as usize);
        // The freed space is reusable, including the unused first slot.
        assert!(insert_entry(region, b"again", 7, FT_REG_FILE, true, bs).unwrap());
        assert!(insert_entry(region, b"x", 8, FT_REG_FILE, true, bs).unwrap());
        assert!(retarget_entry(region, b"x", 9, FT_DIR, true).unwrap());
        let v = parse_block(region, true).unwrap();
        assert!(
            v.iter()
                .any(|d| d.name == b"x" && d.inode == 9 && d.file_type == FT_DIR)
        );
        set_leaf_tail(5, &mut b);
        assert!(verify_leaf(5, &b).unwrap());
    }

    #[test]
    fn rejects_bad_rec_len() {
        let mut b = vec![0u8; 1024];
        entry(&mut b, 0, 2, 6, b".", FT_DIR);
        assert!(parse_block(&b, true).is_err());
        entry(&mut b, 0, 2, 2000, b".", FT_DIR);
        assert!(parse_block(&b, true).is_err());
        entry(&mut b, 0, 2, 12, b"abcdefghijk", FT_DIR);
        assert!(parse_block(&b, true).is_err());
    }
    /// The allocating parser this module had before the in-place iterator, kept as the
    /// reference the iterator must agree with (entries and error messages).
    fn reference_parse(data: &[u8], filetype: bool) -> Result<Vec<RawDirent>, String> {
        let mut out = Vec::new();
        let mut off = 0usize;
        while off < data.len() {
            if off + DIRENT_HEADER > data.len() {
                return Err(format!(
                    "directory entry at offset {off} runs past the block"
                ));
            }
            let inode = u32_at(data, off);
            let rec_len = decode_rec_len(u16_at(data, off + 4), data.len());
            let name_len = data[off + 6] as usize;
            let file_type = if filetype { data[off + 7] } else { FT_UNKNOWN };
            if rec_len < DIRENT_HEADER || !rec_len.is_multiple_of(4) || off + rec_len > data.len() {
                return Err(format!(
                    "directory entry at offset {off} has bad rec_len {rec_len}"
                ));
            }
            if DIRENT_HEADER + name_len > rec_len {
                return Err(format!(
                    "directory entry at offset {off}: name length {name_len} exceeds rec_len {rec_len}"
                ));
            }
            out.push(RawDirent {
                offset: off,
                inode,
                rec_len,
                file_type,
                name: data[off + DIRENT_HEADER..off + DIRENT_HEADER + name_len].to_vec(),
            });
            off += rec_len;
        }
        Ok(out)
    }

    /// A valid 1 KiB leaf with a checksum tail: ".", "..", "a", "bb", "ccc" (the last spanning
    /// the rest of the region).
    fn sample_leaf() -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        entry(&mut b, 0, 2, 12, b".", FT_DIR);
        entry(&mut b, 12, 2, 12, b"..", FT_DIR);
        entry(&mut b, 24, 11, 12, b"a", FT_REG_FILE);
        entry(&mut b, 36, 0, 12, b"bb", FT_REG_FILE);
        entry(
            &mut b,
            48,
            13,
            (1024 - 48 - TAIL_LEN) as u16,
            b"ccc",
            FT_SYMLINK,
        );
        set_leaf_tail(7, &mut b);
        b
    }

    #[test]
    fn iterator_borrows_entries_in_place() {
        let b = sample_leaf();
        let region = &b[..1024 - TAIL_LEN];
        let v: Vec<DirentRef> = entries(region, true).map(|d| d.unwrap()).collect();
        let names: Vec<&[u8]> = v.iter().map(|d| d.name).collect();
        assert_eq!(names, [&b"."[..], b"..", b"a", b"bb", b"ccc"]);
        assert_eq!(v[3].inode, 0);
        assert_eq!((v[4].offset, v[4].rec_len), (48, 1024 - 48 - TAIL_LEN));
        assert_eq!(v[4].file_type, FT_SYMLINK);
        // Names point into the block itself.
        assert!(std::ptr::eq(v[2].name.as_ptr(), &region[24 + 8]));
        // Without the filetype feature the type byte is not reported.
        assert!(entries(region, false).all(|d| d.unwrap().file_type == FT_UNKNOWN));
        // The tail is itself a valid (unused) entry of the whole block.
        let all: Vec<DirentRef> = entries(&b, true).map(|d| d.unwrap()).collect();
        assert_eq!(all.len(), 6);
        assert_eq!((all[5].inode, all[5].rec_len), (0, TAIL_LEN));
        assert_eq!(parse_block(region, true), reference_parse(region, true));
        check_block(region, true).unwrap();
        // Lookups see live entries only.
        assert_eq!(
            find_entry(region, b"a", true).unwrap().map(|d| d.inode),
            Some(11)
        );
        assert_eq!(find_entry(region, b"bb", true).unwrap(), None);
        assert_eq!(find_entry(region, b"c", true).unwrap(), None);
        assert!(verify_leaf(7, &b).unwrap());
    }

    #[test]
    fn corrupt_blocks_give_the_same_errors() {
        let good = sample_leaf();
        let rl = 1024 - TAIL_LEN;
        // (what, offset of a u16 / u8 patch, value)
        let cases: &[(&str, usize, u16, &str)] = &[
            ("rec_len 0", 24 + 4, 0, "has bad rec_len 0"),
            ("rec_len below the header", 24 + 4, 4, "has bad rec_len 4"),
            (
                "rec_len past the block",
                48 + 4,
                2000,
                "has bad rec_len 2000",
            ),
            (
                "rec_len just past the region",
                48 + 4,
                (1024 - 48 - 8) as u16,
                "bad rec_len",
            ),
            ("misaligned rec_len", 24 + 4, 14, "has bad rec_len 14"),
            (
                "name_len > rec_len",
                24 + 6,
                9,
                "name length 9 exceeds rec_len 12",
            ),
        ];
        for &(what, off, val, msg) in cases {
            let mut b = good.clone();
            if off % 8 == 6 {
                b[off] = val as u8;
            } else {
                put_u16(&mut b, off, val);
            }
            let region = &b[..rl];
            let want = reference_parse(region, true).unwrap_err();
            assert!(want.contains(msg), "{what}: {want}");
            assert_eq!(parse_block(region, true).unwrap_err(), want, "{what}");
            assert_eq!(check_block(region, true).unwrap_err(), want, "{what}");
            // A lookup reports the damage even when its name comes first.
            assert_eq!(find_entry(region, b".", true).unwrap_err(), want, "{what}");
            assert_eq!(find_slot(region, 3, true).unwrap_err(), want, "{what}");
            // The iterator yields the entries before the damage, then the error, then stops.
            let items: Vec<_> = entries(region, true).collect();
            assert_eq!(items.last().unwrap().as_ref().unwrap_err(), &want, "{what}");
            assert!(items[..items.len() - 1].iter().all(|d| d.is_ok()));
            // The writers refuse the block and leave it alone.
            let mut w = b.clone();
            assert_eq!(
                insert_entry(&mut w[..rl], b"new", 5, FT_REG_FILE, true, 1024).unwrap_err(),
                want
            );
            assert_eq!(
                remove_entry(&mut w[..rl], b".", true, 1024).unwrap_err(),
                want
            );
            assert_eq!(
                retarget_entry(&mut w[..rl], b".", 9, FT_DIR, true).unwrap_err(),
                want
            );
            assert_eq!(w, b, "{what}");
        }
        // A header that runs past the region end.
        let mut b = good.clone();
        put_u16(&mut b, 48 + 4, (1024 - 48 - TAIL_LEN - 4) as u16);
        put_u16(&mut b, 1024 - TAIL_LEN - 4 + 4, 0);
        let region = &b[..rl];
        // The short entry itself is fine; what follows it is a 4-byte stub.
        let want = reference_parse(region, true).unwrap_err();
        assert!(want.contains("runs past the block"), "{want}");
        assert_eq!(check_block(region, true).unwrap_err(), want);
        // A bad checksum tail and a missing tail.
        let mut b = good.clone();
        b[30] ^= 1;
        assert!(!verify_leaf(7, &b).unwrap());
        let mut b = good.clone();
        b[1024 - TAIL_LEN + 7] = 0;
        assert!(verify_leaf(7, &b).is_err());
        assert!(!verify_leaf(8, &good).unwrap());
    }

    #[test]
    fn iterator_agrees_with_the_reference_on_garbage() {
        let mut x = 0x9e37_79b9u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let good = sample_leaf();
        for round in 0..20_000 {
            let mut b = if round % 4 == 0 {
                (0..[16usize, 64, 1012][round % 3])
                    .map(|_| rnd() as u8)
                    .collect()
            } else {
                good[..1012].to_vec()
            };
            for _ in 0..1 + round % 3 {
                let i = rnd() as usize % b.len();
                b[i] = rnd() as u8;
            }
            let ft = round % 2 == 0;
            let want = reference_parse(&b, ft);
            assert_eq!(parse_block(&b, ft), want);
            assert_eq!(
                check_block(&b, ft),
                want.as_ref().map(|_| ()).map_err(|e| e.clone())
            );
            let name = [b".".as_slice(), b"..", b"a", b"ccc"][round % 4];
            let found = find_entry(&b, name, ft).map(|d| d.map(|d| d.to_owned()));
            let want_found = want
                .clone()
                .map(|v| v.into_iter().find(|d| d.inode != 0 && d.name == name));
            assert_eq!(found, want_found);
        }
    }

    #[test]
    fn slots_match_first_fit() {
        let bs = 1024;
        let mut b = sample_leaf();
        let rl = bs - TAIL_LEN;
        // "bb" is unused with rec_len 12: a name of up to 4 bytes reuses it.
        assert_eq!(
            find_slot(&b[..rl], 4, true).unwrap(),
            Some(Slot {
                offset: 36,
                rec_len: 12,
                keep: 0
            })
        );
        // A longer name goes after "ccc", which keeps 12 bytes.
        assert_eq!(
            find_slot(&b[..rl], 5, true).unwrap(),
            Some(Slot {
                offset: 48,
                rec_len: rl - 48,
                keep: 12
            })
        );
        assert_eq!(
            find_slot(&b[..rl], 255, true).unwrap().map(|s| s.offset),
            Some(48)
        );
        assert!(insert_entry(&mut b[..rl], b"hello", 20, FT_REG_FILE, true, bs).unwrap());
        let v = parse_block(&b[..rl], true).unwrap();
        assert_eq!(v[5].name, b"hello");
        assert_eq!((v[5].offset, v[5].rec_len), (60, rl - 60));
        assert_eq!(v[4].rec_len, 12);
        // Removing "hello" gives its space back to "ccc".
        assert_eq!(
            remove_entry(&mut b[..rl], b"hello", true, bs).unwrap(),
            Some(20)
        );
        assert_eq!(parse_block(&b[..rl], true).unwrap()[4].rec_len, rl - 48);
        assert_eq!(
            find_slot(&b[..rl], 900, true).unwrap(),
            Some(Slot {
                offset: 48,
                rec_len: rl - 48,
                keep: 12
            })
        );
        assert_eq!(find_slot(&b[..rl], 1000, true).unwrap(), None);
    }

    #[test]
    fn large_block_rec_len_encoding() {
        let bs = 65536;
        let mut b = vec![0u8; bs];
        init_empty_region(&mut b, bs);
        assert_eq!(
            entries(&b, true)
                .map(|d| d.unwrap().rec_len)
                .collect::<Vec<_>>(),
            [bs]
        );
        assert!(insert_entry(&mut b, b"x", 5, FT_REG_FILE, true, bs).unwrap());
        assert!(insert_entry(&mut b, b"y", 6, FT_REG_FILE, true, bs).unwrap());
        assert_eq!(parse_block(&b, true), reference_parse(&b, true));
        assert_eq!(remove_entry(&mut b, b"y", true, bs).unwrap(), Some(6));
        assert_eq!(parse_block(&b, true).unwrap()[0].rec_len, bs);
    }
}
