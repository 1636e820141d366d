//! ext4's on-disk POSIX ACL format, converted to the `system.posix_acl_*` xattr form.
use super::le::{u16_at, u32_at};
pub fn disk_to_xattr(d: &[u8]) -> Result<Vec<u8>, String> {
    if d.len() < 4 || u32_at(d, 0) != 1 {
        return Err("bad acl version".into());
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut off = 4;
    while off < d.len() {
        if off + 4 > d.len() {
            return Err("short".into());
        }
        let tag = u16_at(d, off);
        let perm = u16_at(d, off + 2);
        let (id, len) = if tag == 2 || tag == 8 {
            if off + 8 > d.len() {
                return Err("short".into());
            }
            (u32_at(d, off + 4), 8)
        } else {
            (u32::MAX, 4)
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        off += len;
    }
    Ok(out)
}

/// The xattr form of an ACL converted to ext4's on-disk form (validated).
pub fn xattr_to_disk(x: &[u8]) -> Result<Vec<u8>, String> {
    if x.len() < 4 || u32_at(x, 0) != 2 {
        return Err("ACL has an unknown version".into());
    }
    if !(x.len() - 4).is_multiple_of(8) {
        return Err("ACL has a truncated entry".into());
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in x[4..].chunks_exact(8) {
        let tag = u16_at(e, 0);
        let perm = u16_at(e, 2);
        if perm & !7 != 0 {
            return Err(format!("ACL entry has impossible permissions {perm:o}"));
        }
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        match tag {
            1 | 4 | 0x10 | 0x20 => {}
            2 | 8 => out.extend_from_slice(&u32_at(e, 4).to_le_bytes()),
            t => return Err(format!("ACL entry has unknown tag {t:#x}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_short_and_long_entries() {
        // version 1; USER_OBJ rw-; USER 1000 rwx; GROUP_OBJ r--; MASK rwx; OTHER ---.
        let mut d = 1u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, None),
            (2, 7, Some(1000u32)),
            (4, 4, None),
            (0x10, 7, None),
            (0x20, 0, None),
        ] {
            d.extend_from_slice(&tag.to_le_bytes());
            d.extend_from_slice(&perm.to_le_bytes());
            if let Some(id) = id {
                d.extend_from_slice(&id.to_le_bytes());
            }
        }
        let x = disk_to_xattr(&d).unwrap();
        assert_eq!(u32_at(&x, 0), 2);
        assert_eq!(x.len(), 4 + 5 * 8);
        assert_eq!(
            (u16_at(&x, 4), u16_at(&x, 6), u32_at(&x, 8)),
            (1, 6, u32::MAX)
        );
        assert_eq!(
            (u16_at(&x, 12), u16_at(&x, 14), u32_at(&x, 16)),
            (2, 7, 1000)
        );
        assert_eq!(xattr_to_disk(&x).unwrap(), d);
        assert!(xattr_to_disk(&x[..x.len() - 3]).is_err());
        assert!(disk_to_xattr(&[2, 0, 0, 0]).is_err());
        assert!(disk_to_xattr(&d[..d.len() - 2]).is_err());
    }
}
