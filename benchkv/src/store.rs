//! A daemon's shard: fixed-size values in one flat allocation, indexed by
//! slot ([`crate::route::Place::slot`]).

/// One daemon's keys.
pub struct Shard {
    value_size: usize,
    len: u64,
    data: Vec<u8>,
}

/// The slot is outside the shard (a request routed to the wrong daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("slot {slot} is outside the shard of {len} keys")]
pub struct OutOfRange {
    /// The slot asked for.
    pub slot: u64,
    /// Keys in the shard.
    pub len: u64,
}

impl Shard {
    /// `len` values of `value_size` bytes, all zero (never written).
    pub fn new(len: u64, value_size: usize) -> Shard {
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_mul(value_size))
            .expect("shard size checked by Params::check");
        Shard {
            value_size,
            len,
            data: vec![0; bytes],
        }
    }

    /// Keys in the shard.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the shard holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes per value.
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    #[inline]
    fn range(&self, slot: u64) -> Result<std::ops::Range<usize>, OutOfRange> {
        if slot >= self.len {
            return Err(OutOfRange {
                slot,
                len: self.len,
            });
        }
        let at = slot as usize * self.value_size;
        Ok(at..at + self.value_size)
    }

    /// The value at `slot`.
    #[inline]
    pub fn get(&self, slot: u64) -> Result<&[u8], OutOfRange> {
        Ok(&self.data[self.range(slot)?])
    }

    /// Overwrites every value with `byte` (the test fault of
    /// [`crate::daemon::FAULT_ENV`]).
    pub fn fill(&mut self, byte: u8) {
        self.data.fill(byte);
    }

    /// Replaces the value at `slot` with `value`.
    ///
    /// # Panics
    ///
    /// If `value` is not [`value_size`](Self::value_size) bytes long (the
    /// daemon refuses such a PUT before it gets here).
    #[inline]
    pub fn put(&mut self, slot: u64, value: &[u8]) -> Result<(), OutOfRange> {
        let r = self.range(slot)?;
        self.data[r].copy_from_slice(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_is_read_back_and_touches_only_its_slot() {
        let mut s = Shard::new(4, 16);
        assert_eq!(s.get(2).unwrap(), &[0u8; 16]);
        s.put(2, &[9u8; 16]).unwrap();
        assert_eq!(s.get(2).unwrap(), &[9u8; 16]);
        assert_eq!(s.get(1).unwrap(), &[0u8; 16]);
        assert_eq!(s.get(3).unwrap(), &[0u8; 16]);
        s.put(2, &[5u8; 16]).unwrap();
        assert_eq!(s.get(2).unwrap(), &[5u8; 16], "the last PUT wins");
    }

    #[test]
    fn a_filled_shard_holds_the_byte_in_every_value() {
        let mut s = Shard::new(3, 8);
        s.fill(0xa5);
        for slot in 0..3 {
            assert_eq!(s.get(slot).unwrap(), &[0xa5; 8]);
        }
    }

    #[test]
    fn a_slot_outside_the_shard_is_refused() {
        let mut s = Shard::new(4, 8);
        assert_eq!(s.get(4), Err(OutOfRange { slot: 4, len: 4 }));
        assert_eq!(s.put(9, &[0; 8]), Err(OutOfRange { slot: 9, len: 4 }));
    }

    #[test]
    fn an_empty_shard_is_allowed() {
        let s = Shard::new(0, 8);
        assert!(s.is_empty());
        assert!(s.get(0).is_err());
    }
}
