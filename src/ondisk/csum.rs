//! Metadata checksums: crc32c as ext4 and jbd2 use it (the kernel's raw `crc32c(seed, data)`, with no
//! pre- or post-inversion), and the crc16 of `uninit_bg`/`gdt_csum` group descriptors.

/// The kernel's `ext4_chksum(seed, data)`: crc32c continuing from `seed`, without final inversion.
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The ANSI crc16 (poly 0x8005, reflected 0xA001) the kernel's `crc16()` computes.
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= b as u16;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_crc32c_matches_kernel_convention() {
        // Standard CRC-32C("123456789") = 0xE3069283; the kernel's raw form from ~0 is its inverse.
        assert_eq!(crc32c_raw(!0, b"123456789"), !0xE306_9283);
        // Chaining equals one pass.
        let a = crc32c_raw(!0, b"1234");
        assert_eq!(crc32c_raw(a, b"56789"), crc32c_raw(!0, b"123456789"));
    }

    #[test]
    fn crc16_check_value() {
        // CRC-16/ARC check value for "123456789" with initial 0.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }
}
