//! The bytes of a value: who wrote it and which of its writes it is, so a
//! GET can be checked against the last PUT of its key.
//!
//! A value starts with its 8-byte tag (little-endian): `(writer + 1) << 40
//! | version`, with versions counted from 1 per key. The rest is a pattern
//! derived from the tag and the key, so a value copied to the wrong key or
//! cut short is seen too. A key never written holds zeros (tag 0).

/// Bits of the version in a tag.
const VERSION_BITS: u32 = 40;

/// The tag of `writer`'s `version`-th write of a key (`version` ≥ 1).
#[inline]
pub fn tag(writer: u32, version: u64) -> u64 {
    debug_assert!(version > 0 && version < 1 << VERSION_BITS);
    (u64::from(writer) + 1) << VERSION_BITS | version
}

/// The tag in the first 8 bytes of `value`.
#[inline]
pub fn tag_of(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[..8].try_into().expect("values have at least 8 bytes"))
}

/// Writer and version of a tag (`None` for the zero tag of a key never
/// written).
pub fn split(tag: u64) -> Option<(u32, u64)> {
    (tag != 0).then(|| {
        (
            ((tag >> VERSION_BITS) - 1) as u32,
            tag & ((1 << VERSION_BITS) - 1),
        )
    })
}

#[inline]
fn word(key: u64, tag: u64, i: usize) -> u64 {
    let mut z = tag ^ key.rotate_left(32) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^ (z >> 29)
}

/// Writes the value of `key` with `tag` into `buf` (its whole length): the
/// tag, then the pattern. Tag 0 is the all-zero value of a key never
/// written.
pub fn fill(buf: &mut [u8], key: u64, tag: u64) {
    if tag == 0 {
        buf.fill(0);
        return;
    }
    buf[..8].copy_from_slice(&tag.to_le_bytes());
    for (i, chunk) in buf[8..].chunks_mut(8).enumerate() {
        let w = word(key, tag, i).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Whether `value` is exactly what [`fill`] writes for `key` and `tag`.
pub fn matches(value: &[u8], key: u64, tag: u64) -> bool {
    if tag == 0 {
        return value.iter().all(|&b| b == 0);
    }
    if tag_of(value) != tag {
        return false;
    }
    value[8..].chunks(8).enumerate().all(|(i, chunk)| {
        let w = word(key, tag, i).to_le_bytes();
        chunk == &w[..chunk.len()]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_value_matches_only_its_key_and_tag() {
        for len in [8, 9, 16, 100, 4096] {
            let mut v = vec![0u8; len];
            let t = tag(3, 17);
            fill(&mut v, 42, t);
            assert!(matches(&v, 42, t));
            assert_eq!(tag_of(&v), t);
            assert!(!matches(&v, 42, tag(3, 18)), "another version");
            assert!(!matches(&v, 42, tag(4, 17)), "another writer");
            assert!(!matches(&v, 42, 0), "the unwritten value");
            if len > 8 {
                assert!(!matches(&v, 43, t), "another key's value");
                v[len - 1] ^= 1;
                assert!(!matches(&v, 42, t), "a flipped last byte");
            }
        }
    }

    #[test]
    fn the_unwritten_value_is_zeros() {
        let mut v = vec![7u8; 32];
        fill(&mut v, 1, 0);
        assert!(v.iter().all(|&b| b == 0));
        assert!(matches(&v, 1, 0));
        assert_eq!(split(0), None);
    }

    #[test]
    fn tags_split_into_writer_and_version() {
        assert_eq!(split(tag(0, 1)), Some((0, 1)));
        assert_eq!(split(tag(77, 123_456)), Some((77, 123_456)));
        assert_ne!(tag(0, 1), 0);
    }
}
