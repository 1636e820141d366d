//! Extended attribute entries in the inode body and in xattr blocks, name prefixes, block checksums.

use super::csum::crc32c_raw;
use super::le::{put_u16, put_u32, u16_at, u32_at};

pub const XATTR_MAGIC: u32 = 0xEA02_0000;
/// Bytes of the xattr block header.
pub const BLOCK_HEADER_LEN: usize = 32;
const ENTRY_HEADER_LEN: usize = 16;

/// One entry as stored (name without its prefix; value empty when it lives in an EA inode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XattrEntry {
    pub index: u8,
    pub name: Vec<u8>,
    pub value_offs: u16,
    pub value_inum: u32,
    pub value_size: u32,
    pub hash: u32,
    pub value: Vec<u8>,
}
pub struct XattrBlockHeader;

/// An attribute to store: (name index, name suffix, value).
pub type NewEntry = (u8, Vec<u8>, Vec<u8>);
const PREFIXES: &[(u8, &[u8])] = &[
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (6, b"security."),
    (7, b"system."),
];
pub fn full_name(i: u8, s: &[u8]) -> Option<Vec<u8>> {
    let p = PREFIXES.iter().find(|p| p.0 == i)?.1;
    let mut v = p.to_vec();
    v.extend_from_slice(s);
    Some(v)
}
pub fn split_name(f: &[u8]) -> Option<(u8, &[u8])> {
    for (i, p) in PREFIXES {
        if (*i == 2 || *i == 3) && f == *p {
            return Some((*i, &[]));
        }
    }
    for (i, p) in PREFIXES {
        if *i != 2 && *i != 3 && f.starts_with(p) && f.len() > p.len() {
            return Some((*i, &f[p.len()..]));
        }
    }
    None
}
fn entries(r: &[u8], start: usize, base: usize) -> Result<Vec<XattrEntry>, String> {
    let mut out = Vec::new();
    let mut off = start;
    loop {
        if off + 4 > r.len() {
            return Err("entry table runs off".into());
        }
        if u32_at(r, off) == 0 {
            break;
        }
        if off + 16 > r.len() {
            return Err("entry runs off".into());
        }
        let nl = r[off] as usize;
        let vo = u16_at(r, off + 2) as usize;
        let inum = u32_at(r, off + 4);
        let vs = u32_at(r, off + 8) as usize;
        if off + 16 + nl > r.len() {
            return Err("name runs off".into());
        }
        let name = r[off + 16..off + 16 + nl].to_vec();
        let value = if inum == 0 {
            let s = base + vo;
            if s + vs > r.len() {
                return Err("value runs off".into());
            }
            r[s..s + vs].to_vec()
        } else {
            Vec::new()
        };
        out.push(XattrEntry {
            index: r[off + 1],
            name,
            value_offs: vo as u16,
            value_inum: inum,
            value_size: vs as u32,
            hash: u32_at(r, off + 12),
            value,
        });
        off += (16 + nl + 3) & !3;
    }
    Ok(out)
}
pub fn parse_ibody(r: &[u8]) -> Result<Vec<XattrEntry>, String> {
    if r.len() < 4 || u32_at(r, 0) != 0xEA02_0000 {
        return Ok(vec![]);
    }
    entries(r, 4, 4)
}
pub fn parse_block(b: &[u8]) -> Result<(XattrBlockHeader, Vec<XattrEntry>), String> {
    if u32_at(b, 0) != 0xEA02_0000 {
        return Err("bad magic".into());
    }
    Ok((XattrBlockHeader, entries(b, 32, 0)?))
}
pub fn block_csum_verify(s: u32, n: u64, b: &[u8]) -> bool {
    let mut c = crc32c_raw(s, &n.to_le_bytes());
    c = crc32c_raw(c, &b[..16]);
    c = crc32c_raw(c, &[0; 4]);
    c = crc32c_raw(c, &b[20..]);
    c == u32_at(b, 16)
}
pub fn block_csum_set(s: u32, n: u64, b: &mut [u8]) {
    let mut c = crc32c_raw(s, &n.to_le_bytes());
    c = crc32c_raw(c, &b[..16]);
    c = crc32c_raw(c, &[0; 4]);
    c = crc32c_raw(c, &b[20..]);
    super::le::put_u32(b, 16, c);
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Bytes one entry takes in the entry table.
pub fn entry_len(name_len: usize) -> usize {
    pad4(ENTRY_HEADER_LEN + name_len)
}

/// Bytes an entry needs in total (table entry + padded value).
pub fn entry_space(name_len: usize, value_len: usize) -> usize {
    entry_len(name_len) + pad4(value_len)
}

/// The kernel's entry hash: name bytes, then the value as little-endian words (zero padded).
pub fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h = 0u32;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ c as u32;
    }
    for w in value.chunks(4) {
        let mut a = [0u8; 4];
        a[..w.len()].copy_from_slice(w);
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(a);
    }
    h
}

/// The block header hash over the entries' hashes (0 when any entry hash is 0).
pub fn block_hash(hashes: &[u32]) -> u32 {
    let mut h = 0u32;
    for &e in hashes {
        if e == 0 {
            return 0;
        }
        h = (h << 16) ^ (h >> 16) ^ e;
    }
    h
}

/// Lay out `entries` in a region: table from `table_start`, values packed down from the end,
/// offsets relative to `base`. Returns the entries' hashes, or None when they do not fit.
fn layout(
    region: &mut [u8],
    table_start: usize,
    base: usize,
    entries: &[NewEntry],
) -> Option<Vec<u32>> {
    let mut table = table_start;
    let mut value_end = region.len();
    let mut hashes = Vec::with_capacity(entries.len());
    for (index, name, value) in entries {
        let vlen = pad4(value.len());
        if table + entry_len(name.len()) + 4 > value_end.checked_sub(vlen)? || name.len() > 255 {
            return None;
        }
        value_end -= vlen;
        let h = entry_hash(name, value);
        region[table] = name.len() as u8;
        region[table + 1] = *index;
        put_u16(
            region,
            table + 2,
            if value.is_empty() {
                0
            } else {
                (value_end - base) as u16
            },
        );
        put_u32(region, table + 4, 0);
        put_u32(region, table + 8, value.len() as u32);
        put_u32(region, table + 12, h);
        region[table + ENTRY_HEADER_LEN..table + ENTRY_HEADER_LEN + name.len()]
            .copy_from_slice(name);
        region[value_end..value_end + value.len()].copy_from_slice(value);
        hashes.push(h);
        table += entry_len(name.len());
    }
    Some(hashes)
}

/// The in-inode xattr area (`region_len` bytes after the extra fields) holding `entries`, or None
/// when they do not fit. An empty list gives an area without the magic (no xattrs).
pub fn build_ibody(entries: &[NewEntry], region_len: usize) -> Option<Vec<u8>> {
    let mut r = vec![0u8; region_len];
    if entries.is_empty() {
        return Some(r);
    }
    if region_len < 8 {
        return None;
    }
    put_u32(&mut r, 0, XATTR_MAGIC);
    layout(&mut r, 4, 4, entries)?;
    Some(r)
}

/// An xattr block holding `entries` (sorted as the kernel keeps them), or None when they do not
/// fit. The checksum is left to `block_csum_set`.
pub fn build_block(entries: &[NewEntry], block_size: usize, refcount: u32) -> Option<Vec<u8>> {
    let mut sorted: Vec<&NewEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| (a.0, a.1.len(), &a.1).cmp(&(b.0, b.1.len(), &b.1)));
    let sorted: Vec<NewEntry> = sorted.into_iter().cloned().collect();
    let mut b = vec![0u8; block_size];
    put_u32(&mut b, 0, XATTR_MAGIC);
    put_u32(&mut b, 4, refcount);
    put_u32(&mut b, 8, 1);
    let hashes = layout(&mut b, BLOCK_HEADER_LEN, 0, &sorted)?;
    put_u32(&mut b, 12, block_hash(&hashes));
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ondisk::le::{put_u16, put_u32};

    fn entry(
        r: &mut [u8],
        off: usize,
        index: u8,
        name: &[u8],
        value_offs: u16,
        size: u32,
    ) -> usize {
        r[off] = name.len() as u8;
        r[off + 1] = index;
        put_u16(r, off + 2, value_offs);
        put_u32(r, off + 8, size);
        r[off + 16..off + 16 + name.len()].copy_from_slice(name);
        off + ((16 + name.len() + 3) & !3)
    }

    #[test]
    fn built_areas_parse_back() {
        let entries: Vec<NewEntry> = vec![
            (1, b"zeta".to_vec(), b"1".to_vec()),
            (4, b"t".to_vec(), vec![7u8; 300]),
            (1, b"a".to_vec(), Vec::new()),
        ];
        let r = build_ibody(&entries, 400).unwrap();
        let v = parse_ibody(&r).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].value, vec![7u8; 300]);
        assert_eq!(v[0].hash, entry_hash(b"zeta", b"1"));
        assert!(build_ibody(&entries, 200).is_none());
        let b = build_block(&entries, 1024, 1).unwrap();
        let (_, v) = parse_block(&b).unwrap();
        let names: Vec<&[u8]> = v.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(
            names,
            vec![&b"a"[..], b"zeta", b"t"],
            "sorted by index, name length, name"
        );
        assert_eq!(
            u32_at(&b, 12),
            block_hash(&v.iter().map(|e| e.hash).collect::<Vec<_>>())
        );
        assert!(build_block(&[(1, b"x".to_vec(), vec![0u8; 1200])], 1024, 1).is_none());
    }

    #[test]
    fn parses_ibody_and_block() {
        let mut r = vec![0u8; 96];
        put_u32(&mut r, 0, 0xEA02_0000);
        let next = entry(&mut r, 4, 1, b"color", 60, 4);
        assert_eq!(next, 4 + 24);
        // Values in the ibody are relative to the first entry (byte 4).
        r[64..68].copy_from_slice(b"blue");
        let v = parse_ibody(&r).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].index, v[0].name.as_slice(), v[0].value.as_slice()),
            (1, &b"color"[..], &b"blue"[..])
        );
        assert_eq!(full_name(1, b"color").unwrap(), b"user.color");
        assert_eq!(split_name(b"user.color"), Some((1, &b"color"[..])));
        assert_eq!(split_name(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(split_name(b"system.data"), Some((7, &b"data"[..])));
        assert_eq!(split_name(b"bogus.x"), None);
        // A value pointing outside the region is refused, not read.
        put_u16(&mut r, 6, 90);
        assert!(parse_ibody(&r).is_err());
        // Block form with a checksum.
        let mut b = vec![0u8; 1024];
        put_u32(&mut b, 0, 0xEA02_0000);
        put_u32(&mut b, 4, 1);
        put_u32(&mut b, 8, 1);
        entry(&mut b, 32, 4, b"t", 1000, 3);
        b[1000..1003].copy_from_slice(b"abc");
        block_csum_set(9, 42, &mut b);
        assert!(block_csum_verify(9, 42, &b));
        assert!(!block_csum_verify(9, 43, &b));
        let (_, v) = parse_block(&b).unwrap();
        assert_eq!(v[0].value, b"abc");
        assert!(parse_block(&[0u8; 64]).is_err());
    }
}
