//! What may travel through a segment.

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A request or response type: plain data that is valid for every bit
/// pattern ([`FromBytes`]) and has no padding ([`IntoBytes`]), so a peer can
/// neither hand us an invalid value nor read our uninitialized bytes.
///
/// Implemented for every such type; derive the `zerocopy` traits on your own
/// `#[repr(C)]` structs (`zerocopy = { version = "0.8", features = ["derive"] }`).
pub trait Message: FromBytes + IntoBytes + Immutable + Copy + Send + 'static {}

impl<T: FromBytes + IntoBytes + Immutable + Copy + Send + 'static> Message for T {}

/// A fingerprint of `T`'s identity and layout, compared at attach so a client
/// built with other message types is refused. It hashes the type's full path
/// (as the compiler names it), size and alignment.
pub(crate) fn fingerprint<T: Message>() -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    let name = std::any::type_name::<T>();
    let size = (std::mem::size_of::<T>() as u64).to_le_bytes();
    let align = (std::mem::align_of::<T>() as u64).to_le_bytes();
    for &b in name.as_bytes().iter().chain(&size).chain(&align) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_distinguishes_types_of_equal_size() {
        assert_ne!(fingerprint::<u64>(), fingerprint::<i64>());
        assert_ne!(fingerprint::<[u32; 2]>(), fingerprint::<u64>());
        assert_eq!(fingerprint::<u64>(), fingerprint::<u64>());
    }
}
