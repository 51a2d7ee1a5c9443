//! Reading structured operations out of fuzzer bytes, and writing them
//! (for the seed corpus).
//!
//! Every read succeeds: past the end of the input it yields zeros, so any
//! byte string decodes to some sequence of operations and the fuzzer never
//! wastes an input on a parse error.

/// A cursor over fuzzer bytes.
pub struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, at: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at = self.at.saturating_add(1);
        b
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// The next `n` bytes (zero-padded past the end).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let start = self.at.min(self.data.len());
        let end = self.at.saturating_add(n).min(self.data.len());
        let mut v = self.data[start..end].to_vec();
        v.resize(n, 0);
        self.at = self.at.saturating_add(n);
        v
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        self.at = self.data.len();
        &self.data[start..]
    }
}

/// The inverse of [`Reader`], for writing seeds.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero_and_writer_round_trips() {
        let mut w = Writer::default();
        w.u8(1)
            .u16(0x0203)
            .u32(0x0405_0607)
            .u64(u64::MAX)
            .bytes(b"xy");
        let mut r = Reader::new(&w.0);
        assert_eq!(
            (r.u8(), r.u16(), r.u32(), r.u64()),
            (1, 0x0203, 0x0405_0607, u64::MAX)
        );
        assert_eq!(r.bytes(4), b"xy\0\0");
        assert!(r.is_empty());
        assert_eq!((r.u32(), r.rest()), (0, &[][..]));
    }
}
