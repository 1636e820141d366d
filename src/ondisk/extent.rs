//! Extent tree nodes: header, index entries, leaf entries, and the tail checksum of tree blocks.

use super::csum::crc32c_raw;
use super::le::{put_u16, put_u32, u16_at, u32_at};

pub const EXTENT_MAGIC: u16 = 0xF30A;
pub const HEADER_LEN: usize = 12;
pub const ENTRY_LEN: usize = 12;
/// Longest initialized extent; longer `ee_len` values mark unwritten extents.
pub const MAX_INIT_LEN: u32 = 32768;
pub const MAX_DEPTH: u16 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentHeader {
    pub entries: u16,
    pub max: u16,
    pub depth: u16,
    pub generation: u32,
}

/// A leaf entry: `len` blocks from logical `lblk` map to physical `pblk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub lblk: u32,
    pub len: u32,
    pub pblk: u64,
    pub unwritten: bool,
}

/// An index entry: the subtree at `child` covers logical blocks from `lblk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentIndex {
    pub lblk: u32,
    pub child: u64,
}

/// Decoded node: header plus its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Leaf(ExtentHeader, Vec<Extent>),
    Index(ExtentHeader, Vec<ExtentIndex>),
}

/// Parse a node occupying `b` (60 bytes of `i_block`, or a whole tree block).
pub fn parse_node(b: &[u8]) -> Result<Node, String> {
    if b.len() < HEADER_LEN {
        return Err("extent node shorter than its header".into());
    }
    let magic = u16_at(b, 0);
    if magic != EXTENT_MAGIC {
        return Err(format!("bad extent header magic 0x{magic:04x}"));
    }
    let h = ExtentHeader {
        entries: u16_at(b, 2),
        max: u16_at(b, 4),
        depth: u16_at(b, 6),
        generation: u32_at(b, 8),
    };
    let capacity = (b.len() - HEADER_LEN) / ENTRY_LEN;
    if h.max as usize > capacity || h.max == 0 {
        return Err(format!(
            "extent header eh_max {} does not fit a {}-byte node",
            h.max,
            b.len()
        ));
    }
    if h.entries > h.max {
        return Err(format!(
            "extent header has {} entries but room for {}",
            h.entries, h.max
        ));
    }
    if h.depth > MAX_DEPTH {
        return Err(format!("extent tree depth {} is impossible", h.depth));
    }
    let at = |i: usize| HEADER_LEN + i * ENTRY_LEN;
    if h.depth == 0 {
        let mut v = Vec::with_capacity(h.entries as usize);
        for i in 0..h.entries as usize {
            let o = at(i);
            let raw_len = u16_at(b, o + 4) as u32;
            let (len, unwritten) = if raw_len > MAX_INIT_LEN {
                (raw_len - MAX_INIT_LEN, true)
            } else {
                (raw_len, false)
            };
            let e = Extent {
                lblk: u32_at(b, o),
                len,
                pblk: (u16_at(b, o + 6) as u64) << 32 | u32_at(b, o + 8) as u64,
                unwritten,
            };
            if e.len == 0 {
                return Err(format!("zero-length extent at logical block {}", e.lblk));
            }
            if let Some(prev) = v.last() {
                let prev: &Extent = prev;
                if (prev.lblk as u64 + prev.len as u64) > e.lblk as u64 {
                    return Err(format!(
                        "extents out of order or overlapping at logical block {}",
                        e.lblk
                    ));
                }
            }
            if e.lblk as u64 + e.len as u64 > 1 << 32 {
                return Err(format!("extent at logical block {} runs past 2^32", e.lblk));
            }
            v.push(e);
        }
        Ok(Node::Leaf(h, v))
    } else {
        let mut v = Vec::with_capacity(h.entries as usize);
        for i in 0..h.entries as usize {
            let o = at(i);
            let idx = ExtentIndex {
                lblk: u32_at(b, o),
                child: (u16_at(b, o + 8) as u64) << 32 | u32_at(b, o + 4) as u64,
            };
            if let Some(prev) = v.last() {
                let prev: &ExtentIndex = prev;
                if prev.lblk >= idx.lblk {
                    return Err(format!("extent index entries out of order at {}", idx.lblk));
                }
            }
            v.push(idx);
        }
        Ok(Node::Index(h, v))
    }
}

/// Where the tail checksum of a tree block sits (after `eh_max` entries).
pub fn tail_offset(b: &[u8]) -> usize {
    HEADER_LEN + u16_at(b, 4) as usize * ENTRY_LEN
}

/// Checksum of an extent tree block, seeded with the owning inode's checksum seed.
pub fn block_checksum(inode_seed: u32, b: &[u8]) -> Option<u32> {
    let t = tail_offset(b);
    if t + 4 > b.len() {
        return None;
    }
    Some(crc32c_raw(inode_seed, &b[..t]))
}

pub fn checksum_ok(inode_seed: u32, b: &[u8]) -> bool {
    let t = tail_offset(b);
    match block_checksum(inode_seed, b) {
        Some(c) => u32_at(b, t) == c,
        None => false,
    }
}

pub fn set_checksum(inode_seed: u32, b: &mut [u8]) {
    if let Some(c) = block_checksum(inode_seed, b) {
        let t = tail_offset(b);
        put_u32(b, t, c);
    }
}

/// Encode a header at the start of `b`.
pub fn write_header(b: &mut [u8], h: &ExtentHeader) {
    put_u16(b, 0, EXTENT_MAGIC);
    put_u16(b, 2, h.entries);
    put_u16(b, 4, h.max);
    put_u16(b, 6, h.depth);
    put_u32(b, 8, h.generation);
}

/// Encode leaf entry `i`.
pub fn write_extent(b: &mut [u8], i: usize, e: &Extent) {
    let o = HEADER_LEN + i * ENTRY_LEN;
    put_u32(b, o, e.lblk);
    put_u16(
        b,
        o + 4,
        (e.len + if e.unwritten { MAX_INIT_LEN } else { 0 }) as u16,
    );
    put_u16(b, o + 6, (e.pblk >> 32) as u16);
    put_u32(b, o + 8, e.pblk as u32);
}

/// Encode index entry `i`.
pub fn write_index(b: &mut [u8], i: usize, x: &ExtentIndex) {
    let o = HEADER_LEN + i * ENTRY_LEN;
    put_u32(b, o, x.lblk);
    put_u32(b, o + 4, x.child as u32);
    put_u16(b, o + 8, (x.child >> 32) as u16);
    put_u16(b, o + 10, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_round_trip_with_unwritten() {
        let mut b = vec![0u8; 60];
        write_header(
            &mut b,
            &ExtentHeader {
                entries: 2,
                max: 4,
                depth: 0,
                generation: 0,
            },
        );
        let a = Extent {
            lblk: 0,
            len: 10,
            pblk: 0x1_0000_0005,
            unwritten: false,
        };
        let c = Extent {
            lblk: 20,
            len: 5,
            pblk: 77,
            unwritten: true,
        };
        write_extent(&mut b, 0, &a);
        write_extent(&mut b, 1, &c);
        match parse_node(&b).unwrap() {
            Node::Leaf(h, v) => {
                assert_eq!(h.entries, 2);
                assert_eq!(v, vec![a, c]);
            }
            _ => panic!("expected leaf"),
        }
    }

    #[test]
    fn rejects_garbage() {
        let mut b = vec![0u8; 60];
        assert!(parse_node(&b).is_err());
        write_header(
            &mut b,
            &ExtentHeader {
                entries: 5,
                max: 4,
                depth: 0,
                generation: 0,
            },
        );
        assert!(parse_node(&b).is_err());
        write_header(
            &mut b,
            &ExtentHeader {
                entries: 1,
                max: 9,
                depth: 0,
                generation: 0,
            },
        );
        assert!(parse_node(&b).is_err());
        write_header(
            &mut b,
            &ExtentHeader {
                entries: 2,
                max: 4,
                depth: 0,
                generation: 0,
            },
        );
        write_extent(
            &mut b,
            0,
            &Extent {
                lblk: 0,
                len: 10,
                pblk: 1,
                unwritten: false,
            },
        );
        write_extent(
            &mut b,
            1,
            &Extent {
                lblk: 5,
                len: 10,
                pblk: 1,
                unwritten: false,
            },
        );
        assert!(parse_node(&b).unwrap_err().contains("overlapping"));
    }

    #[test]
    fn block_checksum_round_trip() {
        let mut b = vec![0u8; 1024];
        write_header(
            &mut b,
            &ExtentHeader {
                entries: 0,
                max: 84,
                depth: 0,
                generation: 0,
            },
        );
        set_checksum(42, &mut b);
        assert!(checksum_ok(42, &b));
        b[20] ^= 1;
        assert!(!checksum_ok(42, &b));
    }
}
