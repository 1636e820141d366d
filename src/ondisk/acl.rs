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
