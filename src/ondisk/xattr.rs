//! Extended attributes as ext4 stores them: the in-inode area (after `128 + i_extra_isize`) and
//! xattr blocks, their name-index prefixes, entry and block hashes, the block checksum, and
//! serializers for the write path.
//!
//! Layout (little-endian):
//! * in-inode: `h_magic` (0xEA020000), then the entry table; value offsets count from the first
//!   entry (just after the magic).
//! * block: a 32-byte header `{h_magic, h_refcount, h_blocks (1), h_hash, h_checksum,
//!   h_reserved[3]}`, then the entry table from byte 32; value offsets count from the block start.
//! * entry: `{e_name_len u8, e_name_index u8, e_value_offs u16, e_value_inum u32,
//!   e_value_size u32, e_hash u32, e_name[name_len]}` padded to 4 bytes; the table ends at a
//!   zero 4-byte word. Values are padded to 4 bytes and packed downwards from the region end.
//!
//! Everything here is pure and never panics on corrupt input.

use super::csum::crc32c_raw;
use super::le::{put_u16, put_u32, u16_at, u32_at};

pub const XATTR_MAGIC: u32 = 0xEA02_0000;
pub const INDEX_USER: u8 = 1;
pub const INDEX_POSIX_ACL_ACCESS: u8 = 2;
pub const INDEX_POSIX_ACL_DEFAULT: u8 = 3;
pub const INDEX_TRUSTED: u8 = 4;
pub const INDEX_SECURITY: u8 = 6;
pub const INDEX_SYSTEM: u8 = 7;
pub const INDEX_RICHACL: u8 = 8;

/// Size of the xattr block header, of an entry without its name, and of the table terminator.
pub const BLOCK_HEADER_SIZE: usize = 32;
pub const ENTRY_HEADER_SIZE: usize = 16;
const TERMINATOR: usize = 4;
/// The largest value the kernel accepts (`EXT4_XATTR_SIZE_MAX`).
pub const VALUE_SIZE_MAX: u32 = 1 << 24;

/// Name prefixes by index. Indexes 2, 3 and 8 name one attribute each (empty suffix).
const PREFIXES: &[(u8, &[u8], bool)] = &[
    (INDEX_USER, b"user.", false),
    (INDEX_POSIX_ACL_ACCESS, b"system.posix_acl_access", true),
    (INDEX_POSIX_ACL_DEFAULT, b"system.posix_acl_default", true),
    (INDEX_TRUSTED, b"trusted.", false),
    (INDEX_SECURITY, b"security.", false),
    (INDEX_SYSTEM, b"system.", false),
    (INDEX_RICHACL, b"system.richacl", true),
];

/// The full attribute name for an on-disk (index, suffix). None for an unknown index, and for a
/// non-empty suffix on the whole-name indexes (2, 3, 8), so that `split_name` inverts it.
pub fn full_name(index: u8, suffix: &[u8]) -> Option<Vec<u8>> {
    let &(_, prefix, whole) = PREFIXES.iter().find(|p| p.0 == index)?;
    if whole && !suffix.is_empty() {
        return None;
    }
    let mut v = Vec::with_capacity(prefix.len() + suffix.len());
    v.extend_from_slice(prefix);
    v.extend_from_slice(suffix);
    Some(v)
}

/// Split a full name into (index, suffix), the inverse of [`full_name`]. The ACL and richacl names
/// match only exactly; otherwise the longest matching prefix wins ("system.data" → (7, "data")).
/// A prefix with an empty suffix ("user.") or an unknown namespace gives None.
pub fn split_name(full: &[u8]) -> Option<(u8, &[u8])> {
    if let Some(&(i, _, _)) = PREFIXES.iter().find(|p| p.2 && p.1 == full) {
        return Some((i, &[]));
    }
    PREFIXES
        .iter()
        .filter(|p| !p.2 && full.len() > p.1.len() && full.starts_with(p.1))
        .max_by_key(|p| p.1.len())
        .map(|&(i, p, _)| (i, &full[p.len()..]))
}

/// One parsed entry. `value` holds the bytes when they are stored inline; it is empty when the
/// value lives in an EA inode (`value_inum != 0`, read `value_size` bytes from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XattrEntry {
    pub index: u8,
    /// The name without its prefix.
    pub name: Vec<u8>,
    pub value_offs: u16,
    pub value_inum: u32,
    pub value_size: u32,
    pub hash: u32,
    pub value: Vec<u8>,
}

/// The header of an xattr block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XattrBlockHeader {
    pub magic: u32,
    pub refcount: u32,
    pub blocks: u32,
    pub hash: u32,
    pub checksum: u32,
}

/// Bytes an entry with a `name_len`-byte name takes in the table (`EXT4_XATTR_LEN`).
pub fn entry_len(name_len: usize) -> usize {
    (ENTRY_HEADER_SIZE + name_len + 3) & !3
}

/// A value's size padded to 4 bytes (`EXT4_XATTR_SIZE`).
pub fn value_len(size: usize) -> usize {
    (size + 3) & !3
}

/// Parse the entry table of `r` starting at `start`; value offsets are relative to `value_base`.
fn parse_entries(r: &[u8], start: usize, value_base: usize) -> Result<Vec<XattrEntry>, String> {
    // Pass 1: the names, up to the terminator.
    let mut pos = Vec::new();
    let mut off = start;
    loop {
        if off + TERMINATOR > r.len() {
            return Err(format!("entry table runs past the end at offset {off}"));
        }
        if u32_at(r, off) == 0 {
            break;
        }
        let name_len = r[off] as usize;
        let next = off + entry_len(name_len);
        if next + TERMINATOR > r.len() {
            return Err(format!(
                "entry at offset {off} (name length {name_len}) runs past the end"
            ));
        }
        let name = &r[off + ENTRY_HEADER_SIZE..off + ENTRY_HEADER_SIZE + name_len];
        if name.contains(&0) {
            return Err(format!("entry at offset {off} has a NUL byte in its name"));
        }
        pos.push(off);
        off = next;
    }
    // Values may start only after the terminator.
    let table_end = off + TERMINATOR;
    let mut out = Vec::with_capacity(pos.len());
    for off in pos {
        let name_len = r[off] as usize;
        let index = r[off + 1];
        let value_offs = u16_at(r, off + 2);
        let value_inum = u32_at(r, off + 4);
        let value_size = u32_at(r, off + 8);
        let hash = u32_at(r, off + 12);
        if value_size > VALUE_SIZE_MAX {
            return Err(format!(
                "entry at offset {off}: value size {value_size} is too large"
            ));
        }
        let mut value = Vec::new();
        if value_inum != 0 {
            if value_size == 0 {
                return Err(format!(
                    "entry at offset {off}: EA inode {value_inum} with an empty value"
                ));
            }
        } else if value_size != 0 {
            let vstart = value_base + value_offs as usize;
            let vend = vstart + value_len(value_size as usize);
            if vstart < table_end || vend > r.len() {
                return Err(format!(
                    "entry at offset {off}: value {vstart}..{vend} overlaps the entry table \
                     (ends at {table_end}) or runs past the end ({})",
                    r.len()
                ));
            }
            value = r[vstart..vstart + value_size as usize].to_vec();
        }
        out.push(XattrEntry {
            index,
            name: r[off + ENTRY_HEADER_SIZE..off + ENTRY_HEADER_SIZE + name_len].to_vec(),
            value_offs,
            value_inum,
            value_size,
            hash,
            value,
        });
    }
    Ok(out)
}

/// Parse the in-inode xattr area (`inode[128 + i_extra_isize .. inode_size]`). No magic means no
/// attributes.
pub fn parse_ibody(region: &[u8]) -> Result<Vec<XattrEntry>, String> {
    if region.len() < 4 || u32_at(region, 0) != XATTR_MAGIC {
        return Ok(Vec::new());
    }
    if region.len() < 4 + TERMINATOR {
        return Err(format!(
            "in-inode xattr area of {} bytes is too small",
            region.len()
        ));
    }
    parse_entries(region, 4, 4)
}

/// Parse an xattr block: header (magic, `h_blocks == 1`) and entries. The checksum is checked
/// separately ([`block_csum_verify`]), as it needs the block number.
pub fn parse_block(block: &[u8]) -> Result<(XattrBlockHeader, Vec<XattrEntry>), String> {
    if block.len() < BLOCK_HEADER_SIZE + TERMINATOR {
        return Err(format!("xattr block of {} bytes is too small", block.len()));
    }
    let h = XattrBlockHeader {
        magic: u32_at(block, 0),
        refcount: u32_at(block, 4),
        blocks: u32_at(block, 8),
        hash: u32_at(block, 12),
        checksum: u32_at(block, 16),
    };
    if h.magic != XATTR_MAGIC {
        return Err(format!("xattr block has bad magic {:#010x}", h.magic));
    }
    if h.blocks != 1 {
        return Err(format!("xattr block has h_blocks {} (must be 1)", h.blocks));
    }
    Ok((h, parse_entries(block, BLOCK_HEADER_SIZE, 0)?))
}

// ---------------------------------------------------------------------------------------------
// Checksum and hashes
// ---------------------------------------------------------------------------------------------

/// The metadata_csum checksum of an xattr block: crc32c (from the file system seed) over the
/// little-endian 64-bit block number, then the block with `h_checksum` (bytes 16..20) as zero.
pub fn block_csum(fs_csum_seed: u32, block_nr: u64, block: &[u8]) -> u32 {
    let c = crc32c_raw(fs_csum_seed, &block_nr.to_le_bytes());
    if block.len() < 20 {
        return crc32c_raw(c, block);
    }
    let c = crc32c_raw(c, &block[..16]);
    let c = crc32c_raw(c, &[0; 4]);
    crc32c_raw(c, &block[20..])
}

/// True when the stored `h_checksum` matches [`block_csum`] (false for a block under 32 bytes).
pub fn block_csum_verify(fs_csum_seed: u32, block_nr: u64, block: &[u8]) -> bool {
    block.len() >= BLOCK_HEADER_SIZE
        && u32_at(block, 16) == block_csum(fs_csum_seed, block_nr, block)
}

/// Store [`block_csum`] in `h_checksum`. Returns false, changing nothing, for a block under
/// 32 bytes.
pub fn block_csum_set(fs_csum_seed: u32, block_nr: u64, block: &mut [u8]) -> bool {
    if block.len() < BLOCK_HEADER_SIZE {
        return false;
    }
    let c = block_csum(fs_csum_seed, block_nr, block);
    put_u32(block, 16, c);
    true
}

fn hash_entry(name: &[u8], value: &[u8], signed: bool) -> u32 {
    let mut h = 0u32;
    for &b in name {
        let c = if signed {
            b as i8 as i32 as u32
        } else {
            b as u32
        };
        h = (h << 5) ^ (h >> 27) ^ c;
    }
    // The value as little-endian words, its last word zero-padded (as stored on disk).
    for chunk in value.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(w);
    }
    h
}

/// `e_hash` of an entry as Linux (6.2 and later) and e2fsprogs (1.47 and later) write it: over the
/// name suffix taken as *unsigned* chars, then the value as little-endian words, zero-padded to 4
/// bytes. For a value in an EA inode, pass the EA inode's 32-bit value hash as `value` (4
/// little-endian bytes). In-inode entries are stored with hash 0 (see [`build_ibody`]).
pub fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    hash_entry(name, value, false)
}

/// The legacy variant of [`entry_hash`] over *signed* chars, which older x86 kernels and
/// e2fsprogs wrote; it differs only for names with bytes >= 0x80. Accept either on read.
pub fn entry_hash_signed(name: &[u8], value: &[u8]) -> u32 {
    hash_entry(name, value, true)
}

/// True when `e.hash` is either variant of the entry hash of an inline value (entries whose value
/// is in an EA inode cannot be checked here).
pub fn entry_hash_ok(e: &XattrEntry) -> bool {
    e.value_inum != 0
        || e.hash == entry_hash(&e.name, &e.value)
        || e.hash == entry_hash_signed(&e.name, &e.value)
}

/// `h_hash` of a block from its entries' `e_hash`, in table order (`ext4_xattr_rehash`): 0 when
/// any entry hash is 0 (such a block is never shared).
pub fn block_hash(entries: &[XattrEntry]) -> u32 {
    let mut h = 0u32;
    for e in entries {
        if e.hash == 0 {
            return 0;
        }
        h = (h << 16) ^ (h >> 16) ^ e.hash;
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Serializers
// ---------------------------------------------------------------------------------------------

fn check_entry(index: u8, name: &[u8], value: &[u8]) -> Result<(), String> {
    if index == 0 {
        return Err("xattr name index 0 is invalid".into());
    }
    if name.len() > 255 {
        return Err(format!("xattr name of {} bytes is too long", name.len()));
    }
    if name.contains(&0) {
        return Err("xattr name contains a NUL byte".into());
    }
    if value.len() > VALUE_SIZE_MAX as usize {
        return Err(format!("xattr value of {} bytes is too large", value.len()));
    }
    Ok(())
}

/// Lay out `entries` (index, name suffix, value) into `out`: the table from `table_start`, values
/// packed downwards from the end (the first entry's value last), offsets relative to `base`.
fn layout(
    out: &mut [u8],
    table_start: usize,
    base: usize,
    entries: &[(u8, Vec<u8>, Vec<u8>)],
    with_hash: bool,
) -> Result<(), String> {
    let table: usize = entries.iter().map(|e| entry_len(e.1.len())).sum();
    let values: usize = entries.iter().map(|e| value_len(e.2.len())).sum();
    let need = table_start + table + TERMINATOR + values;
    if need > out.len() {
        return Err(format!(
            "xattrs need {need} bytes but the region has {}",
            out.len()
        ));
    }
    let mut off = table_start;
    let mut vend = out.len();
    for (index, name, value) in entries {
        check_entry(*index, name, value)?;
        let vstart = vend - value_len(value.len());
        let offs = if value.is_empty() { 0 } else { vstart - base };
        let offs =
            u16::try_from(offs).map_err(|_| format!("value offset {offs} exceeds 16 bits"))?;
        out[off] = name.len() as u8;
        out[off + 1] = *index;
        put_u16(out, off + 2, offs);
        put_u32(out, off + 4, 0);
        put_u32(out, off + 8, value.len() as u32);
        let hash = if with_hash {
            entry_hash(name, value)
        } else {
            0
        };
        put_u32(out, off + 12, hash);
        out[off + ENTRY_HEADER_SIZE..off + ENTRY_HEADER_SIZE + name.len()].copy_from_slice(name);
        out[vstart..vstart + value.len()].copy_from_slice(value);
        off += entry_len(name.len());
        vend = vstart;
    }
    Ok(())
}

/// Build the in-inode xattr area of `region_len` bytes holding `entries` (index, name suffix,
/// value) in the given order (the kernel keeps in-inode entries unsorted). Entry hashes are 0, as
/// the kernel and mke2fs write them for in-inode values. No entries gives an all-zero area (no
/// magic), as the kernel leaves it.
pub fn build_ibody(
    entries: &[(u8, Vec<u8>, Vec<u8>)],
    region_len: usize,
) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; region_len];
    if entries.is_empty() {
        return Ok(out);
    }
    if region_len < 4 + TERMINATOR {
        return Err(format!(
            "in-inode xattr area of {region_len} bytes is too small"
        ));
    }
    put_u32(&mut out, 0, XATTR_MAGIC);
    layout(&mut out, 4, 4, entries, false)?;
    Ok(out)
}

/// Build an xattr block of `block_size` bytes: header (`h_refcount = refcount`, `h_blocks = 1`,
/// `h_hash` filled in, `h_checksum` 0: set it with [`block_csum_set`] once the block number is
/// known), entries sorted as the kernel keeps them (by index, then name length, then name), entry
/// hashes filled in, values packed from the end. Refuses an empty or duplicated entry set and
/// entries that do not fit.
pub fn build_block(
    entries: &[(u8, Vec<u8>, Vec<u8>)],
    block_size: usize,
    refcount: u32,
) -> Result<Vec<u8>, String> {
    if entries.is_empty() {
        return Err("an xattr block needs at least one entry".into());
    }
    if block_size < BLOCK_HEADER_SIZE + TERMINATOR {
        return Err(format!("xattr block size {block_size} is too small"));
    }
    let mut sorted: Vec<_> = entries.to_vec();
    sorted.sort_by(|a, b| (a.0, a.1.len(), &a.1).cmp(&(b.0, b.1.len(), &b.1)));
    if sorted
        .windows(2)
        .any(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1)
    {
        return Err("duplicate xattr name".into());
    }
    let mut out = vec![0u8; block_size];
    put_u32(&mut out, 0, XATTR_MAGIC);
    put_u32(&mut out, 4, refcount);
    put_u32(&mut out, 8, 1);
    layout(&mut out, BLOCK_HEADER_SIZE, 0, &sorted, true)?;
    let parsed = parse_entries(&out, BLOCK_HEADER_SIZE, 0)?;
    put_u32(&mut out, 12, block_hash(&parsed));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    // Fixtures from 1 KiB-block images with 256-byte inodes, metadata_csum and UUID
    // 01234567-89ab-cdef-0123-456789abcdef: made by `mke2fs -d TREE` (TREE's xattrs set with
    // setfattr), then mounted by Linux 6.18 which added more files with setfattr. e2fsck -fn
    // clean. In-inode areas are the 96 bytes after 128 + i_extra_isize (32).
    const UUID: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];
    /// mke2fs: `user.color=blue`.
    const IBODY_SMALL: &str = concat!(
        "000002ea05015800000000000400000000000000636f6c6f7200000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000626c7565",
    );
    /// mke2fs: `user.k1` in the inode (`user.k2`..`user.k12` went to block 1621).
    const IBODY_MIXED: &str = concat!(
        "000002ea02013c00000000001f000000000000006b3100000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000076616c7565206e756d6265722031207769746820736f6d65",
        "206c656e67746800",
    );
    /// mke2fs: head (header, entry table, terminator) of xattr block 1621 of the same file; the
    /// values ("value number N with some length", N = 2..=12) are packed from the block end.
    const BLOCK_MIXED_HEAD: &str = concat!(
        "000002ea010000000100000000000000b6ab841d0000000000000000000000000201e003000000001f000000",
        "074d197c6b3200000201c003000000001f000000064c197c6b3300000201a003000000001f000000014b197c",
        "6b34000002018003000000001f000000004a197c6b35000002016003000000001f0000000349197c6b360000",
        "02014003000000001f0000000248197c6b37000002012003000000001f0000000d47197c6b38000002010003",
        "000000001f0000000c46197c6b3900000301e00200000000200000000aa54d1a6b3130000301c00200000000",
        "200000000ba54c1a6b3131000301a002000000002000000008a54f1a6b31320000000000",
    );
    /// Linux: xattr block 1622 of a file given, in this order, `user.b` (60 bytes, in the inode),
    /// `user.\xe9\xff\x80z` = fe fd fc "abc", `user.été` = "summer" and `user.k2`: its head and
    /// its last 48 bytes (the values, in insertion order from the end).
    const BLOCK_KERNEL_HEAD: &str = concat!(
        "000002ea01000000010000004fe7eb6b19b280dd0000000000000000000000000201d003000000001f000000",
        "074d197c6b3200000401f8030000000006000000e46e89fde9ff807a0501f0030000000006000000c1571679",
        "c3a974c3a900000000000000",
    );
    const BLOCK_KERNEL_TAIL: &str = concat!(
        "76616c7565206e756d6265722032207769746820736f6d65206c656e6774680073756d6d65720000fefdfc61",
        "62630000",
    );

    fn fs_seed() -> u32 {
        crc32c_raw(!0, &UUID)
    }

    fn block(head: &str, tail: &[u8]) -> Vec<u8> {
        let mut b = hex(head);
        b.resize(1024 - tail.len(), 0);
        b.extend_from_slice(tail);
        b
    }

    fn mixed_entries() -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        (2..=12)
            .map(|n| {
                let v = format!("value number {n} with some length");
                (INDEX_USER, format!("k{n}").into_bytes(), v.into_bytes())
            })
            .collect()
    }

    fn mixed_block() -> Vec<u8> {
        let mut tail = Vec::new();
        for (_, _, v) in mixed_entries().iter().rev() {
            tail.extend_from_slice(v);
            tail.resize(value_len(tail.len()), 0);
        }
        block(BLOCK_MIXED_HEAD, &tail)
    }

    fn kernel_block() -> Vec<u8> {
        block(BLOCK_KERNEL_HEAD, &hex(BLOCK_KERNEL_TAIL))
    }

    #[test]
    fn names() {
        assert_eq!(full_name(1, b"color").unwrap(), b"user.color");
        assert_eq!(full_name(2, b"").unwrap(), b"system.posix_acl_access");
        assert_eq!(full_name(3, b"").unwrap(), b"system.posix_acl_default");
        assert_eq!(full_name(4, b"x").unwrap(), b"trusted.x");
        assert_eq!(full_name(6, b"selinux").unwrap(), b"security.selinux");
        assert_eq!(full_name(7, b"data").unwrap(), b"system.data");
        assert_eq!(full_name(8, b"").unwrap(), b"system.richacl");
        assert_eq!(full_name(2, b"x"), None);
        assert_eq!(full_name(5, b"x"), None);
        assert_eq!(full_name(0, b"x"), None);
        assert_eq!(split_name(b"user.color"), Some((1, &b"color"[..])));
        assert_eq!(split_name(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(split_name(b"system.posix_acl_default"), Some((3, &b""[..])));
        assert_eq!(split_name(b"system.richacl"), Some((8, &b""[..])));
        assert_eq!(split_name(b"system.data"), Some((7, &b"data"[..])));
        assert_eq!(
            split_name(b"system.posix_acl_accessX"),
            Some((7, &b"posix_acl_accessX"[..]))
        );
        assert_eq!(split_name(b"security.selinux"), Some((6, &b"selinux"[..])));
        assert_eq!(
            split_name(b"trusted.overlay.x"),
            Some((4, &b"overlay.x"[..]))
        );
        assert_eq!(split_name(b"user."), None);
        assert_eq!(split_name(b"bogus.x"), None);
        assert_eq!(split_name(b"user"), None);
        for i in [1u8, 2, 3, 4, 6, 7, 8] {
            let suffix: &[u8] = if [2, 3, 8].contains(&i) { b"" } else { b"s" };
            let full = full_name(i, suffix).unwrap();
            assert_eq!(split_name(&full), Some((i, suffix)));
        }
    }

    #[test]
    fn real_ibody_areas() {
        let small = hex(IBODY_SMALL);
        assert_eq!(small.len(), 96);
        let v = parse_ibody(&small).unwrap();
        assert_eq!(v.len(), 1);
        let e = &v[0];
        assert_eq!(
            (e.index, &e.name[..], &e.value[..]),
            (1, &b"color"[..], &b"blue"[..])
        );
        assert_eq!(
            (e.value_offs, e.value_size, e.value_inum, e.hash),
            (88, 4, 0, 0)
        );
        let rebuilt = build_ibody(&[(1, b"color".to_vec(), b"blue".to_vec())], 96).unwrap();
        assert_eq!(rebuilt, small);

        let mixed = hex(IBODY_MIXED);
        let v = parse_ibody(&mixed).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].value, b"value number 1 with some length");
        let rebuilt = build_ibody(&[(1, v[0].name.clone(), v[0].value.clone())], 96).unwrap();
        assert_eq!(rebuilt, mixed);

        assert!(parse_ibody(&[0u8; 96]).unwrap().is_empty());
        assert!(parse_ibody(&[]).unwrap().is_empty());
        assert_eq!(build_ibody(&[], 96).unwrap(), vec![0u8; 96]);
    }

    #[test]
    fn mke2fs_block_checksum_and_layout() {
        let b = mixed_block();
        let (h, v) = parse_block(&b).unwrap();
        // e2fsprogs leaves h_hash 0 (allowed: such a block is just never shared).
        assert_eq!(
            h,
            XattrBlockHeader {
                magic: XATTR_MAGIC,
                refcount: 1,
                blocks: 1,
                hash: 0,
                checksum: 0x1d84_abb6
            }
        );
        assert_eq!(block_csum(fs_seed(), 1621, &b), 0x1d84_abb6);
        assert!(block_csum_verify(fs_seed(), 1621, &b));
        assert!(!block_csum_verify(fs_seed(), 1620, &b));
        assert_eq!(v.len(), 11);
        assert_eq!((v[0].name.as_slice(), v[0].value_offs), (&b"k2"[..], 992));
        assert_eq!(v[10].value, b"value number 12 with some length");
        for e in &v {
            assert_eq!(e.hash, entry_hash(&e.name, &e.value));
            assert!(entry_hash_ok(e));
        }
        // Our builder lays the block out exactly as mke2fs did; only h_hash (and so the checksum)
        // differs, because we fill it in.
        let mut entries = mixed_entries();
        entries.reverse(); // any order in, kernel order out
        let mut built = build_block(&entries, 1024, 1).unwrap();
        assert_eq!(u32_at(&built, 12), block_hash(&v));
        assert_eq!(built[32..], b[32..]);
        put_u32(&mut built, 12, 0);
        assert!(block_csum_set(fs_seed(), 1621, &mut built));
        assert_eq!(built, b);
    }

    #[test]
    fn kernel_block_hashes_and_checksum() {
        let b = kernel_block();
        let (h, v) = parse_block(&b).unwrap();
        assert_eq!((h.hash, h.checksum), (0x6beb_e74f, 0xdd80_b219));
        assert!(block_csum_verify(fs_seed(), 1622, &b));
        assert_eq!(block_hash(&v), h.hash);
        let names: Vec<&[u8]> = v.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, vec![&b"k2"[..], b"\xe9\xff\x80z", "été".as_bytes()]);
        assert_eq!(v[1].value, b"\xfe\xfd\xfcabc");
        assert_eq!(v[2].value, b"summer");
        for e in &v {
            assert_eq!(e.hash, entry_hash(&e.name, &e.value));
            assert!(entry_hash_ok(e));
        }
        // High-bit names: Linux 6.18 (like e2fsprogs 1.47) hashes unsigned chars.
        assert_eq!(v[1].hash, 0xfd89_6ee4);
        assert_eq!(entry_hash_signed(&v[1].name, &v[1].value), 0x020a_f2fb);
        let mut legacy = v[1].clone();
        legacy.hash = 0x020a_f2fb;
        assert!(entry_hash_ok(&legacy));
        legacy.hash ^= 1;
        assert!(!entry_hash_ok(&legacy));

        // Rebuilt from its entries: same table and h_hash; values packed in table order instead
        // of the kernel's insertion order.
        let entries: Vec<_> = v
            .iter()
            .map(|e| (e.index, e.name.clone(), e.value.clone()))
            .collect();
        let mut built = build_block(&entries, 1024, 1).unwrap();
        assert!(block_csum_set(fs_seed(), 1622, &mut built));
        let (bh, bv) = parse_block(&built).unwrap();
        assert_eq!(bh.hash, h.hash);
        for (x, y) in bv.iter().zip(&v) {
            assert_eq!(
                (x.index, &x.name, &x.value, x.hash),
                (y.index, &y.name, &y.value, y.hash)
            );
        }
    }

    #[test]
    fn build_round_trip_and_limits() {
        let entries = vec![
            (
                6,
                b"selinux".to_vec(),
                b"system_u:object_r:etc_t:s0".to_vec(),
            ),
            (1, b"a".to_vec(), b"1".to_vec()),
            (4, b"t".to_vec(), vec![]),
            (1, b"long-name".to_vec(), vec![7; 9]),
            (2, vec![], vec![1, 0, 0, 0]),
        ];
        let b = build_block(&entries, 1024, 3).unwrap();
        let (h, v) = parse_block(&b).unwrap();
        assert_eq!((h.refcount, h.blocks, h.checksum), (3, 1, 0));
        let order: Vec<(u8, &[u8])> = v.iter().map(|e| (e.index, e.name.as_slice())).collect();
        assert_eq!(
            order,
            vec![
                (1, &b"a"[..]),
                (1, &b"long-name"[..]),
                (2, &b""[..]),
                (4, &b"t"[..]),
                (6, &b"selinux"[..])
            ]
        );
        assert_eq!((v[3].value_offs, v[3].value.len()), (0, 0));
        assert_eq!(block_hash(&v), h.hash);
        assert_ne!(h.hash, 0);
        let mut zero = v.clone();
        zero[2].hash = 0;
        assert_eq!(block_hash(&zero), 0);

        let ib = build_ibody(&entries, 200).unwrap();
        let v = parse_ibody(&ib).unwrap();
        assert_eq!(v.len(), entries.len());
        for (e, (i, n, val)) in v.iter().zip(&entries) {
            assert_eq!((e.index, &e.name, &e.value, e.hash), (*i, n, val, 0));
        }
        // Exact fit and one byte short.
        let one = vec![(1u8, b"abc".to_vec(), vec![9u8; 8])];
        assert!(build_ibody(&one, 4 + 20 + 4 + 8).is_ok());
        assert!(build_ibody(&one, 4 + 20 + 4 + 7).is_err());
        assert!(build_block(&one, 32 + 20 + 4 + 8, 1).is_ok());
        assert!(build_block(&one, 32 + 20 + 4 + 7, 1).is_err());
        assert!(build_block(&[], 1024, 1).is_err());
        let dup = vec![one[0].clone(), one[0].clone()];
        assert!(build_block(&dup, 1024, 1).is_err());
        assert!(build_ibody(&[(0, b"x".to_vec(), vec![])], 100).is_err());
        assert!(build_ibody(&[(1, vec![b'x'; 256], vec![])], 1000).is_err());
        assert!(build_ibody(&[(1, b"a\0b".to_vec(), vec![])], 100).is_err());
    }

    #[test]
    fn rejects_nonsense() {
        let good = mixed_block();
        assert!(parse_block(&good).is_ok());
        // (offset, bytes) patched into the first entry (at 32) or the header.
        let cases: &[(usize, &[u8])] = &[
            (3, &[0]),                       // magic
            (8, &[2]),                       // h_blocks
            (34, &[0x10, 0x00]),             // value inside the entry table
            (34, &[0xf0, 0x03]),             // value runs past the end
            (34, &[0xe1, 0x03]),             // padded value runs past the end
            (40, &[0, 0, 0, 2]),             // value size over 16 MiB
            (36, &[5, 0, 0, 0, 0, 0, 0, 0]), // EA inode with an empty value
            (48, &[0]),                      // NUL in the name
        ];
        for &(off, bytes) in cases {
            let mut b = good.clone();
            b[off..off + bytes.len()].copy_from_slice(bytes);
            assert!(parse_block(&b).is_err(), "patch at {off}: {bytes:x?}");
        }
        // An EA inode reference is fine and carries no inline value.
        let mut b = good.clone();
        b[36] = 99;
        let (_, v) = parse_block(&b).unwrap();
        assert_eq!((v[0].value_inum, v[0].value.len()), (99, 0));
        assert!(entry_hash_ok(&v[0]));
        // A name running past the end of a short region, and a missing terminator.
        let mut short = good[..32 + 16 + 8].to_vec();
        short[32] = 255;
        assert!(parse_block(&short).is_err());
        assert!(parse_block(&good[..32 + 32]).is_err());
        assert!(parse_block(&good[..20]).is_err());
        let mut ib = hex(IBODY_SMALL);
        ib.truncate(24);
        assert!(parse_ibody(&ib).is_err());
        assert!(parse_ibody(&hex("000002ea")).is_err());
        // Checksum helpers on short blocks.
        assert!(!block_csum_verify(1, 2, &[0; 16]));
        assert!(!block_csum_set(1, 2, &mut [0; 16]));
        let _ = block_csum(1, 2, &[0; 7]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9e37_79b9u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let good = mixed_block();
        let small = hex(IBODY_SMALL);
        for round in 0..4000 {
            let (mut b, mut ib) = (good.clone(), small.clone());
            if round % 3 == 0 {
                b.iter_mut().for_each(|v| *v = rnd() as u8);
                ib.iter_mut().for_each(|v| *v = rnd() as u8);
                put_u32(&mut b, 0, XATTR_MAGIC);
                put_u32(&mut b, 8, 1);
                put_u32(&mut ib, 0, XATTR_MAGIC);
            } else {
                for _ in 0..1 + round % 5 {
                    let i = rnd() as usize % 300;
                    b[i] = rnd() as u8;
                    let j = rnd() as usize % ib.len();
                    ib[j] = rnd() as u8;
                }
            }
            let cut = rnd() as usize % (b.len() + 1);
            for r in [&b[..], &b[..cut]] {
                if let Ok((_, v)) = parse_block(r) {
                    let _ = block_hash(&v);
                    for e in &v {
                        assert!(e.value.len() <= e.value_size as usize);
                        let _ = entry_hash_ok(e);
                    }
                }
                let _ = block_csum_verify(rnd(), rnd() as u64, r);
            }
            let _ = parse_ibody(&ib);
            let _ = parse_ibody(&ib[..rnd() as usize % (ib.len() + 1)]);
        }
    }
}
