//! Directory indexes (htree): the directory hash functions (legacy, half_md4, tea and their unsigned
//! variants) and dx root/node blocks with their checksums.
use super::le::{u16_at, u32_at};
pub const DX_HASH_TEA_UNSIGNED: u8 = 5;
pub struct DxRootInfo {
    pub hash_version: u8,
    pub info_length: u8,
    pub indirect_levels: u8,
    pub flags: u8,
}
#[derive(Clone)]
pub struct DxEntries {
    pub limit: u16,
    pub count: u16,
    pub entries: Vec<(u32, u32)>,
    pub countlimit_offset: usize,
}
fn str2hashbuf(msg: &[u8], num: usize, signed: bool) -> Vec<u32> {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut val = pad;
    let n = msg.len().min(num * 4);
    let mut out = Vec::new();
    for (i, &b) in msg[..n].iter().enumerate() {
        let c = if signed {
            b as i8 as i32 as u32
        } else {
            b as u32
        };
        val = c.wrapping_add(val << 8);
        if i % 4 == 3 {
            out.push(val);
            val = pad;
        }
    }
    if out.len() < num {
        out.push(val);
    }
    while out.len() < num {
        out.push(pad);
    }
    out
}
fn tea(buf: &mut [u32; 4], inp: &[u32]) {
    let mut sum = 0u32;
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let (a, b, c, d) = (inp[0], inp[1], inp[2], inp[3]);
    for _ in 0..16 {
        sum = sum.wrapping_add(0x9E3779B9);
        b0 = b0.wrapping_add(
            ((b1 << 4).wrapping_add(a)) ^ (b1.wrapping_add(sum)) ^ ((b1 >> 5).wrapping_add(b)),
        );
        b1 = b1.wrapping_add(
            ((b0 << 4).wrapping_add(c)) ^ (b0.wrapping_add(sum)) ^ ((b0 >> 5).wrapping_add(d)),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}
fn md4(buf: &mut [u32; 4], x: &[u32]) {
    let (mut a, mut b, mut c, mut d) = (buf[0], buf[1], buf[2], buf[3]);
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    macro_rules! r {
        ($f:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x);
            $a = $a.rotate_left($s);
        };
    }
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    r!(f, a, b, c, d, x[0], 3);
    r!(f, d, a, b, c, x[1], 7);
    r!(f, c, d, a, b, x[2], 11);
    r!(f, b, c, d, a, x[3], 19);
    r!(f, a, b, c, d, x[4], 3);
    r!(f, d, a, b, c, x[5], 7);
    r!(f, c, d, a, b, x[6], 11);
    r!(f, b, c, d, a, x[7], 19);
    r!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    r!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    r!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    r!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    r!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    r!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    r!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    r!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    r!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    r!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    r!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    r!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    r!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    r!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    r!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    r!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}
pub fn dirhash(name: &[u8], version: u8, seed: &[u32; 4]) -> Result<(u32, u32), String> {
    let mut buf = [0x67452301u32, 0xefcdab89, 0x98badcfe, 0x10325476];
    if seed.iter().any(|&s| s != 0) {
        buf = *seed;
    }
    let (hash, minor) = match version {
        0 | 3 => {
            let (mut h0, mut h1) = (0x12a3fe2du32, 0x37abe8f9u32);
            for &c in name {
                let c = if version == 0 {
                    c as i8 as i32
                } else {
                    c as i32
                };
                let mut h = h1.wrapping_add(h0 ^ (c.wrapping_mul(7152373) as u32));
                if h & 0x8000_0000 != 0 {
                    h = h.wrapping_sub(0x7fff_ffff);
                }
                h1 = h0;
                h0 = h;
            }
            (h0 << 1, 0)
        }
        1 | 4 => {
            let mut p = name;
            loop {
                let inp = str2hashbuf(p, 8, version == 1);
                md4(&mut buf, &inp);
                if p.len() <= 32 {
                    break;
                }
                p = &p[32..];
            }
            (buf[1], buf[2])
        }
        2 | 5 => {
            let mut p = name;
            loop {
                let inp = str2hashbuf(p, 4, version == 2);
                tea(&mut buf, &inp);
                if p.len() <= 16 {
                    break;
                }
                p = &p[16..];
            }
            (buf[0], buf[1])
        }
        v => return Err(format!("unsupported hash {v}")),
    };
    let mut hash = hash & !1;
    if hash == 0x7fff_ffff << 1 {
        hash = 0x7fff_fffe << 1;
    }
    Ok((hash, minor))
}
fn entries_at(b: &[u8], off: usize) -> Result<DxEntries, String> {
    if off + 8 > b.len() {
        return Err("short".into());
    }
    let limit = u16_at(b, off);
    let count = u16_at(b, off + 2);
    if count == 0 || count > limit || off + limit as usize * 8 > b.len() {
        return Err("bad count/limit".into());
    }
    let mut entries = vec![(0, u32_at(b, off + 4))];
    for i in 1..count as usize {
        entries.push((u32_at(b, off + i * 8), u32_at(b, off + i * 8 + 4)));
    }
    Ok(DxEntries {
        limit,
        count,
        entries,
        countlimit_offset: off,
    })
}
pub fn parse_dx_root(b: &[u8]) -> Result<(DxRootInfo, DxEntries), String> {
    if b.len() < 40 {
        return Err("htree root block is too small".into());
    }
    if &b[8..9] != b"." || &b[20..22] != b".." {
        return Err("htree root does not start with '.' and '..'".into());
    }
    let info = DxRootInfo {
        hash_version: b[28],
        info_length: b[29],
        indirect_levels: b[30],
        flags: b[31],
    };
    if info.info_length != 8 || u32_at(b, 24) != 0 {
        return Err(format!(
            "htree root info is invalid (length {})",
            info.info_length
        ));
    }
    let e = entries_at(b, 24 + info.info_length as usize)?;
    Ok((info, e))
}
pub fn parse_dx_node(b: &[u8]) -> Result<DxEntries, String> {
    entries_at(b, 8)
}
pub fn dx_lookup_slot(e: &DxEntries, h: u32) -> usize {
    e.entries[1..].partition_point(|x| x.0 <= h)
}
pub fn dx_csum_verify(s: u32, b: &[u8], o: usize, c: u16, l: u16) -> bool {
    let t = o + l as usize * 8;
    if t + 8 > b.len() {
        return false;
    }
    let mut x = super::csum::crc32c_raw(s, &b[..o + c as usize * 8]);
    x = super::csum::crc32c_raw(x, &b[t..t + 4]);
    x = super::csum::crc32c_raw(x, &[0; 4]);
    x == u32_at(b, t + 4)
}
pub fn write_dx_entries(block: &mut [u8], off: usize, limit: u16, entries: &[(u32, u32)]) {
    super::le::put_u16(block, off, limit);
    super::le::put_u16(block, off + 2, entries.len() as u16);
    super::le::put_u32(block, off + 4, entries[0].1);
    for (i, e) in entries.iter().enumerate().skip(1) {
        super::le::put_u32(block, off + i * 8, e.0);
        super::le::put_u32(block, off + i * 8 + 4, e.1);
    }
}
pub fn dx_csum_set(s: u32, b: &mut [u8], o: usize, c: u16, l: u16) {
    let t = o + l as usize * 8;
    if t + 8 > b.len() {
        return;
    }
    let mut x = super::csum::crc32c_raw(s, &b[..o + c as usize * 8]);
    x = super::csum::crc32c_raw(x, &b[t..t + 4]);
    x = super::csum::crc32c_raw(x, &[0; 4]);
    super::le::put_u32(b, t + 4, x);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by e2fsprogs' `debugfs -R "dx_hash -h N -s SEED NAME"`.
    #[test]
    fn hashes_match_e2fsprogs() {
        let uuid = [
            0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
            0xff, 0x00,
        ];
        let mut seed = [0u32; 4];
        for (i, s) in seed.iter_mut().enumerate() {
            *s = u32::from_le_bytes(uuid[i * 4..i * 4 + 4].try_into().unwrap());
        }
        let long = b"a-much-longer-file-name-that-crosses-32-bytes-boundary.txt";
        let high = "ÿé€".as_bytes();
        let cases: &[(&[u8], u8, (u32, u32))] = &[
            (b"hello", 0, (0x32252546, 0)),
            (long, 0, (0x62feb240, 0)),
            (high, 0, (0x9a9d0ece, 0)),
            (b"hello", 1, (0x6a6d483e, 0x029b44a0)),
            (long, 1, (0xbc7bfa32, 0x011fa7e6)),
            (high, 1, (0x43d251c6, 0x31b6e747)),
            (b"hello", 2, (0x77cfe3d8, 0x94e58ad8)),
            (long, 2, (0x92e600a6, 0x21b40480)),
            (high, 2, (0xb40bd06c, 0x88d08eeb)),
            (high, 3, (0xeb47876e, 0)),
            (high, 4, (0xa81b648c, 0xc88d83c9)),
            (high, 5, (0x8cb11522, 0x65943403)),
        ];
        for &(name, v, want) in cases {
            assert_eq!(
                dirhash(name, v, &seed).unwrap(),
                want,
                "{} v{v}",
                String::from_utf8_lossy(name)
            );
        }
        // An all-zero seed selects the default one.
        assert_eq!(
            dirhash(b"hello", 1, &[0; 4]).unwrap(),
            (0x1746da32, 0x420013b5)
        );
        assert!(dirhash(b"x", 6, &seed).is_err());
    }

    #[test]
    fn dx_blocks_round_trip_with_checksum() {
        let mut b = vec![0u8; 1024];
        b[8] = b'.';
        b[20] = b'.';
        b[21] = b'.';
        b[28] = 1;
        b[29] = 8;
        let entries = vec![(0, 1), (0x100, 2), (0x2000, 3)];
        write_dx_entries(&mut b, 32, 10, &entries);
        dx_csum_set(77, &mut b, 32, 3, 10);
        let (info, e) = parse_dx_root(&b).unwrap();
        assert_eq!((info.hash_version, info.indirect_levels), (1, 0));
        assert_eq!(e.entries, entries);
        assert!(dx_csum_verify(77, &b, 32, 3, 10));
        assert_eq!(dx_lookup_slot(&e, 0x50), 0);
        assert_eq!(dx_lookup_slot(&e, 0x100), 1);
        assert_eq!(dx_lookup_slot(&e, 0xFFFF_FFFF), 2);
        b[40] ^= 1;
        assert!(!dx_csum_verify(77, &b, 32, 3, 10));
        // Garbage never panics.
        let mut x = 12345u32;
        for _ in 0..2000 {
            for byte in b.iter_mut() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *byte = (x >> 16) as u8;
            }
            let _ = parse_dx_root(&b);
            let _ = parse_dx_node(&b);
        }
    }
}
