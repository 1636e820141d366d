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

/// One entry found in a block, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDirent {
    pub offset: usize,
    pub inode: u32,
    pub rec_len: usize,
    pub file_type: u8,
    pub name: Vec<u8>,
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

/// Parse every entry of a directory block region (`data` is a whole block or an inline area).
/// `filetype` says whether the fs stores file types in entries. In-use and deleted (inode 0)
/// entries are both returned so the write path can reuse them; readers skip inode 0.
pub fn parse_block(data: &[u8], filetype: bool) -> Result<Vec<RawDirent>, String> {
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
    let need = rec_len_for(name.len());
    let ft = if filetype { ft } else { 0 };
    for d in parse_block(region, filetype)? {
        if d.inode == 0 && d.rec_len >= need {
            write_entry(region, d.offset, inode, d.rec_len, name, ft, block_size);
            return Ok(true);
        }
        let own = rec_len_for(d.name.len());
        if d.inode != 0 && d.rec_len >= own + need {
            // Shrink this entry to its own size and put the new one in the slack after it.
            put_u16(region, d.offset + 4, encode_rec_len(own, block_size));
            write_entry(
                region,
                d.offset + own,
                inode,
                d.rec_len - own,
                name,
                ft,
                block_size,
            );
            return Ok(true);
        }
    }
    Ok(false)
}

/// Remove entry `name` from a region: merged into the previous entry, or, as the first entry, marked
/// unused. Returns the removed entry's inode, or None when the name is not there.
pub fn remove_entry(
    region: &mut [u8],
    name: &[u8],
    filetype: bool,
    block_size: usize,
) -> Result<Option<u32>, String> {
    let entries = parse_block(region, filetype)?;
    for (i, d) in entries.iter().enumerate() {
        if d.inode != 0 && d.name == name {
            if i == 0 {
                put_u32(region, d.offset, 0);
            } else {
                let prev = &entries[i - 1];
                put_u16(
                    region,
                    prev.offset + 4,
                    encode_rec_len(prev.rec_len + d.rec_len, block_size),
                );
                region[d.offset..d.offset + DIRENT_HEADER].fill(0);
            }
            return Ok(Some(d.inode));
        }
    }
    Ok(None)
}

/// Change the inode (and type) an existing entry points to (rename over, `..` fix-up).
pub fn retarget_entry(
    region: &mut [u8],
    name: &[u8],
    inode: u32,
    ft: u8,
    filetype: bool,
) -> Result<bool, String> {
    for d in parse_block(region, filetype)? {
        if d.inode != 0 && d.name == name {
            put_u32(region, d.offset, inode);
            if filetype {
                region[d.offset + 7] = ft;
            }
            return Ok(true);
        }
    }
    Ok(false)
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
}
