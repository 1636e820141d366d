//! Bit operations on allocation bitmaps (bit i of byte i/8, least significant first).

pub fn test(b: &[u8], i: usize) -> bool {
    b[i / 8] & (1 << (i % 8)) != 0
}

pub fn set(b: &mut [u8], i: usize) {
    b[i / 8] |= 1 << (i % 8);
}

pub fn clear(b: &mut [u8], i: usize) {
    b[i / 8] &= !(1 << (i % 8));
}

/// First clear bit in `[from, end)`, skipping whole full bytes quickly.
pub fn find_zero(b: &[u8], from: usize, end: usize) -> Option<usize> {
    let mut i = from;
    while i < end {
        if i.is_multiple_of(8) && i + 8 <= end && b[i / 8] == 0xFF {
            i += 8;
            continue;
        }
        if !test(b, i) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Length of the run of clear bits starting at `from`, at most `max`, not past `end`.
pub fn zero_run(b: &[u8], from: usize, end: usize, max: usize) -> usize {
    let mut n = 0;
    while from + n < end && n < max && !test(b, from + n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_runs() {
        let mut b = vec![0xFFu8; 4];
        clear(&mut b, 13);
        clear(&mut b, 14);
        clear(&mut b, 15);
        assert_eq!(find_zero(&b, 0, 32), Some(13));
        assert_eq!(zero_run(&b, 13, 32, 10), 3);
        assert_eq!(zero_run(&b, 13, 14, 10), 1);
        assert_eq!(find_zero(&b, 16, 32), None);
        set(&mut b, 14);
        assert!(test(&b, 14));
    }
}
