//! POSIX ACLs: ext4's on-disk form (the value of the index 2 / 3 xattrs) converted to and from the
//! Linux `system.posix_acl_access` / `system.posix_acl_default` xattr form.
//!
//! * On disk: `a_version` u32 = 1, then entries; `ACL_USER_OBJ`, `ACL_GROUP_OBJ`, `ACL_MASK` and
//!   `ACL_OTHER` use the short form `{e_tag u16, e_perm u16}`, `ACL_USER` and `ACL_GROUP` the long
//!   form `{e_tag u16, e_perm u16, e_id u32}`.
//! * xattr: `a_version` u32 = 2, then `{e_tag u16, e_perm u16, e_id u32}` for every entry, with
//!   `e_id = ACL_UNDEFINED_ID` (u32::MAX) for the short-form tags.
//!
//! A value with no entries means "no ACL" for the kernel (it reads it as a NULL ACL); both
//! conversions map it to the other form's bare header and leave that decision to the caller.

use super::le::{u16_at, u32_at};

pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;
pub const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// `a_version` of the on-disk and of the xattr form.
pub const DISK_VERSION: u32 = 1;
pub const XATTR_VERSION: u32 = 2;

/// One ACL entry: (tag, perm, id); id is [`ACL_UNDEFINED_ID`] for the short-form tags.
pub type AclEntry = (u16, u16, u32);

fn has_id(tag: u16) -> bool {
    tag == ACL_USER || tag == ACL_GROUP
}

fn known_tag(tag: u16) -> bool {
    matches!(
        tag,
        ACL_USER_OBJ | ACL_USER | ACL_GROUP_OBJ | ACL_GROUP | ACL_MASK | ACL_OTHER
    )
}

/// Parse ext4's on-disk ACL value (checks: version 1, the value ends exactly after the last
/// entry, every tag is known). Like the kernel's reader, it does not check the entry order.
pub fn parse_disk(d: &[u8]) -> Result<Vec<AclEntry>, String> {
    if d.len() < 4 {
        return Err(format!("on-disk ACL of {} bytes has no header", d.len()));
    }
    let version = u32_at(d, 0);
    if version != DISK_VERSION {
        return Err(format!("on-disk ACL has version {version} (want 1)"));
    }
    let mut out = Vec::new();
    let mut off = 4;
    while off < d.len() {
        if off + 4 > d.len() {
            return Err(format!("on-disk ACL entry at offset {off} is truncated"));
        }
        let tag = u16_at(d, off);
        let perm = u16_at(d, off + 2);
        if !known_tag(tag) {
            return Err(format!(
                "on-disk ACL entry at offset {off} has unknown tag {tag:#x}"
            ));
        }
        if has_id(tag) {
            if off + 8 > d.len() {
                return Err(format!("on-disk ACL entry at offset {off} is truncated"));
            }
            out.push((tag, perm, u32_at(d, off + 4)));
            off += 8;
        } else {
            out.push((tag, perm, ACL_UNDEFINED_ID));
            off += 4;
        }
    }
    Ok(out)
}

/// Parse the xattr form (checks: version 2, a whole number of 8-byte entries, known tags). The id
/// of short-form tags is ignored and returned as [`ACL_UNDEFINED_ID`].
pub fn parse_xattr(x: &[u8]) -> Result<Vec<AclEntry>, String> {
    if x.len() < 4 {
        return Err(format!("ACL xattr of {} bytes has no header", x.len()));
    }
    let version = u32_at(x, 0);
    if version != XATTR_VERSION {
        return Err(format!("ACL xattr has version {version} (want 2)"));
    }
    if !(x.len() - 4).is_multiple_of(8) {
        return Err(format!("ACL xattr size {} is not 4 + 8 * n", x.len()));
    }
    x[4..]
        .chunks_exact(8)
        .map(|e| {
            let tag = u16_at(e, 0);
            if !known_tag(tag) {
                return Err(format!("ACL xattr has unknown tag {tag:#x}"));
            }
            let id = if has_id(tag) {
                u32_at(e, 4)
            } else {
                ACL_UNDEFINED_ID
            };
            Ok((tag, u16_at(e, 2), id))
        })
        .collect()
}

/// Check an ACL as the kernel's `posix_acl_valid` does before storing it: permissions within rwx;
/// exactly one USER_OBJ, GROUP_OBJ and OTHER in the order USER_OBJ, USER*, GROUP_OBJ, GROUP*,
/// MASK?, OTHER; a MASK whenever USER or GROUP entries exist; USER/GROUP ids not
/// `ACL_UNDEFINED_ID`.
pub fn validate(entries: &[AclEntry]) -> Result<(), String> {
    #[derive(PartialEq)]
    enum State {
        UserObj,
        User,
        Group,
        Other,
        Done,
    }
    let mut state = State::UserObj;
    let mut needs_mask = false;
    for (i, &(tag, perm, id)) in entries.iter().enumerate() {
        if perm & !7 != 0 {
            return Err(format!("ACL entry {i} has permission bits {perm:#o}"));
        }
        if has_id(tag) && id == ACL_UNDEFINED_ID {
            return Err(format!("ACL entry {i} has an undefined id"));
        }
        state = match (tag, &state) {
            (ACL_USER_OBJ, State::UserObj) => State::User,
            (ACL_USER, State::User) => {
                needs_mask = true;
                State::User
            }
            (ACL_GROUP_OBJ, State::User) => State::Group,
            (ACL_GROUP, State::Group) => {
                needs_mask = true;
                State::Group
            }
            (ACL_MASK, State::Group) => State::Other,
            (ACL_OTHER, State::Other) => State::Done,
            (ACL_OTHER, State::Group) if !needs_mask => State::Done,
            _ => return Err(format!("ACL entry {i} (tag {tag:#x}) is out of place")),
        };
    }
    if state != State::Done {
        return Err("ACL lacks a required entry (USER_OBJ, GROUP_OBJ, MASK or OTHER)".into());
    }
    Ok(())
}

/// Encode entries in the on-disk form (no validation).
pub fn encode_disk(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = DISK_VERSION.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        if has_id(tag) {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out
}

/// Encode entries in the xattr form (no validation); short-form tags get `ACL_UNDEFINED_ID`.
pub fn encode_xattr(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = XATTR_VERSION.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        let id = if has_id(tag) { id } else { ACL_UNDEFINED_ID };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// On-disk value → `system.posix_acl_*` xattr value (what getxattr returns). Structural checks
/// only (as the kernel's reader): version, sizes, known tags.
pub fn disk_to_xattr(d: &[u8]) -> Result<Vec<u8>, String> {
    Ok(encode_xattr(&parse_disk(d)?))
}

/// `system.posix_acl_*` xattr value (what setxattr receives) → on-disk value, after the checks
/// of [`parse_xattr`] and, unless the ACL is empty, [`validate`].
pub fn xattr_to_disk(x: &[u8]) -> Result<Vec<u8>, String> {
    let entries = parse_xattr(x)?;
    if !entries.is_empty() {
        validate(&entries)?;
    }
    Ok(encode_disk(&entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ondisk::xattr;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    // In-inode xattr areas (96 bytes) from an image made by `mke2fs -I 256 -d TREE`, where TREE's
    // ACLs were set with `setfacl -m u:1000:rwx,g:100:r-x,m::rwx FILE` and, on a directory,
    // `setfacl -d -m u:1001:r,g::rw,o::- DIR; setfacl -m u:1002:rw DIR`. Linux 6.18 wrote the
    // same bytes as mke2fs for the same setfacl on a mounted copy.
    const IBODY_FILE: &str = concat!(
        "000002ea00023800000000002400000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000010000000100060002000700e8030000040004000800050064000000",
        "1000070020000400",
    );
    const IBODY_DIR: &str = concat!(
        "000002ea00034000000000001c0000000000000000022400000000001c000000000000000000000001000000",
        "0100070002000600ea030000040005001000070020000500010000000100070002000400e903000004000600",
        "1000060020000000",
    );
    // `getfattr -e hex` of the source files.
    const XATTR_FILE: &str = "0200000001000600ffffffff02000700e803000004000400ffffffff080005006400000010000700ffffffff20000400ffffffff";
    const XATTR_DIR_ACCESS: &str =
        "0200000001000700ffffffff02000600ea03000004000500ffffffff10000700ffffffff20000500ffffffff";
    const XATTR_DIR_DEFAULT: &str =
        "0200000001000700ffffffff02000400e903000004000600ffffffff10000600ffffffff20000000ffffffff";

    fn acls(region: &str) -> Vec<(u8, Vec<u8>)> {
        xattr::parse_ibody(&hex(region))
            .unwrap()
            .into_iter()
            .map(|e| (e.index, e.value))
            .collect()
    }

    #[test]
    fn real_acls_convert_both_ways() {
        let file = acls(IBODY_FILE);
        assert_eq!(file.len(), 1);
        assert_eq!(file[0].0, xattr::INDEX_POSIX_ACL_ACCESS);
        assert_eq!(disk_to_xattr(&file[0].1).unwrap(), hex(XATTR_FILE));
        assert_eq!(xattr_to_disk(&hex(XATTR_FILE)).unwrap(), file[0].1);
        assert_eq!(
            parse_disk(&file[0].1).unwrap(),
            vec![
                (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
                (ACL_USER, 7, 1000),
                (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
                (ACL_GROUP, 5, 100),
                (ACL_MASK, 7, ACL_UNDEFINED_ID),
                (ACL_OTHER, 4, ACL_UNDEFINED_ID),
            ]
        );

        let dir = acls(IBODY_DIR);
        assert_eq!(dir.len(), 2);
        assert_eq!(dir[0].0, xattr::INDEX_POSIX_ACL_DEFAULT);
        assert_eq!(dir[1].0, xattr::INDEX_POSIX_ACL_ACCESS);
        assert_eq!(disk_to_xattr(&dir[0].1).unwrap(), hex(XATTR_DIR_DEFAULT));
        assert_eq!(disk_to_xattr(&dir[1].1).unwrap(), hex(XATTR_DIR_ACCESS));
        let default = xattr_to_disk(&hex(XATTR_DIR_DEFAULT)).unwrap();
        let access = xattr_to_disk(&hex(XATTR_DIR_ACCESS)).unwrap();
        assert_eq!((&default, &access), (&dir[0].1, &dir[1].1));
        // The whole in-inode area is reproduced from the converted values.
        let area = xattr::build_ibody(&[(3, vec![], default), (2, vec![], access)], 96).unwrap();
        assert_eq!(area, hex(IBODY_DIR));
    }

    #[test]
    fn ids_of_short_entries_are_ignored_and_empty_acls_pass_through() {
        // Short-form tags with a defined id in the xattr form: the id is dropped.
        let mut x = hex(XATTR_FILE);
        x[8..12].copy_from_slice(&7u32.to_le_bytes());
        let d = xattr_to_disk(&x).unwrap();
        assert_eq!(disk_to_xattr(&d).unwrap(), hex(XATTR_FILE));
        assert_eq!(xattr_to_disk(&[2, 0, 0, 0]).unwrap(), vec![1, 0, 0, 0]);
        assert_eq!(disk_to_xattr(&[1, 0, 0, 0]).unwrap(), vec![2, 0, 0, 0]);
    }

    #[test]
    fn validation() {
        let minimal = [(1, 6, 0), (4, 4, 0), (0x20, 4, 0)];
        assert!(validate(&minimal).is_ok());
        let bad: &[&[AclEntry]] = &[
            &[],
            &[(1, 6, 0), (4, 4, 0)],                          // no OTHER
            &[(4, 4, 0), (1, 6, 0), (0x20, 4, 0)],            // order
            &[(1, 6, 0), (1, 6, 0), (4, 4, 0), (0x20, 4, 0)], // two USER_OBJ
            &[(1, 6, 0), (2, 6, 5), (4, 4, 0), (0x20, 4, 0)], // USER without MASK
            &[
                (1, 6, 0),
                (2, 6, u32::MAX),
                (4, 4, 0),
                (0x10, 7, 0),
                (0x20, 4, 0),
            ], // bad id
            &[(1, 8, 0), (4, 4, 0), (0x20, 4, 0)],            // perm bits
            &[(1, 6, 0), (4, 4, 0), (0x20, 4, 0), (0x20, 4, 0)], // two OTHER
            &[(1, 6, 0), (4, 4, 0), (0x40, 4, 0), (0x20, 4, 0)], // unknown tag
        ];
        for (i, acl) in bad.iter().enumerate() {
            assert!(validate(acl).is_err(), "case {i}");
        }
        let with_mask = [
            (1, 6, 0),
            (2, 7, 5),
            (4, 4, 0),
            (8, 1, 9),
            (0x10, 7, 0),
            (0x20, 0, 0),
        ];
        assert!(validate(&with_mask).is_ok());
        assert!(xattr_to_disk(&encode_xattr(&with_mask)).is_ok());
        assert!(xattr_to_disk(&encode_xattr(bad[4])).is_err());
    }

    #[test]
    fn malformed_values() {
        let d = xattr_to_disk(&hex(XATTR_FILE)).unwrap();
        assert!(disk_to_xattr(&d[..d.len() - 2]).is_err()); // truncated short entry
        assert!(disk_to_xattr(&d[..10]).is_err()); // truncated long entry
        assert!(disk_to_xattr(&[2, 0, 0, 0]).is_err()); // xattr version on disk
        assert!(disk_to_xattr(&[1, 0]).is_err());
        let mut bad_tag = d.clone();
        bad_tag[4] = 0x40;
        assert!(disk_to_xattr(&bad_tag).is_err());
        let x = hex(XATTR_FILE);
        assert!(xattr_to_disk(&x[..x.len() - 1]).is_err());
        assert!(xattr_to_disk(&d).is_err()); // disk version as xattr
        assert!(xattr_to_disk(&[]).is_err());
        let mut x2 = x.clone();
        x2[6] = 0x10; // perm bits beyond rwx
        assert!(xattr_to_disk(&x2).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = 0xdead_beefu32;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for _ in 0..20_000 {
            let len = rnd() as usize % 64;
            let mut v: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            if len >= 4 {
                v[0] = (1 + rnd() % 2) as u8;
                v[1..4].fill(0);
            }
            if let Ok(x) = disk_to_xattr(&v) {
                assert!(xattr_to_disk(&x).map(|d| d == v).unwrap_or(true));
            }
            let _ = xattr_to_disk(&v);
        }
    }
}
