//! What one endpoint tells its peer to connect: its QP, where its receive
//! ring is, and the limits it was built with. 80 little-endian bytes, for
//! any out-of-band exchange (MPI, a file, stdin).
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `"CRPC"` |
//! | 4..6 | version (1) |
//! | 6..8 | 0 |
//! | 8..40 | the QP's `mlx5::ConnInfo` (32 bytes) |
//! | 40..48 | receive ring address |
//! | 48..52 | receive ring rkey |
//! | 52..56 | ring bytes |
//! | 56..60 | max in-flight calls |
//! | 60..64 | max request payload |
//! | 64..68 | max reply payload |
//! | 68..72 | max batch bytes |
//! | 72..80 | 0 |

use mlx5::ConnInfo;

use crate::error::Error;
use crate::proto::Limits;

/// An endpoint's connection information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The QP.
    pub qp: ConnInfo,
    /// Address of the receive ring (in the peer's memory registration).
    pub ring_addr: u64,
    /// Remote key of the receive ring.
    pub ring_rkey: u32,
    /// The limits the endpoint was built with; both ends must agree.
    pub limits: Limits,
}

impl EndpointInfo {
    /// Encoded length.
    pub const LEN: usize = 80;
    const MAGIC: [u8; 4] = *b"CRPC";
    const VERSION: u16 = 1;

    /// The 80-byte encoding.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&Self::MAGIC);
        b[4..6].copy_from_slice(&Self::VERSION.to_le_bytes());
        b[8..40].copy_from_slice(&self.qp.encode());
        b[40..48].copy_from_slice(&self.ring_addr.to_le_bytes());
        b[48..52].copy_from_slice(&self.ring_rkey.to_le_bytes());
        let l = &self.limits;
        for (i, v) in [l.ring, l.max_inflight, l.max_call, l.max_reply, l.max_batch]
            .into_iter()
            .enumerate()
        {
            b[52 + 4 * i..56 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decodes [`EndpointInfo::encode`]'s bytes; anything else is an
    /// error.
    pub fn decode(b: &[u8]) -> Result<EndpointInfo, Error> {
        let bad = |m: &str| Err(Error::BadInfo(m.to_string()));
        if b.len() != Self::LEN {
            return bad("length is not 80 bytes");
        }
        if b[0..4] != Self::MAGIC {
            return bad("bad magic (not copyrpc endpoint info)");
        }
        if u16::from_le_bytes([b[4], b[5]]) != Self::VERSION {
            return bad("unknown version");
        }
        if b[6..8] != [0, 0] || b[72..80] != [0; 8] {
            return bad("reserved bytes are not zero");
        }
        let qp = ConnInfo::decode(&b[8..40]).map_err(|e| Error::BadInfo(e.to_string()))?;
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let limits = Limits {
            ring: u32_at(52),
            max_inflight: u32_at(56),
            max_call: u32_at(60),
            max_reply: u32_at(64),
            max_batch: u32_at(68),
        };
        limits
            .validate()
            .map_err(|e| Error::BadInfo(e.to_string()))?;
        Ok(EndpointInfo {
            qp,
            ring_addr: u64::from_le_bytes(b[40..48].try_into().expect("8 bytes")),
            ring_rkey: u32_at(48),
            limits,
        })
    }

    /// The encoding as lowercase hex (for a terminal or a file).
    pub fn to_hex(&self) -> String {
        self.encode().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decodes [`EndpointInfo::to_hex`]'s text (surrounding whitespace is
    /// ignored).
    pub fn from_hex(s: &str) -> Result<EndpointInfo, Error> {
        let s = s.trim();
        if !s.len().is_multiple_of(2) || !s.is_ascii() {
            return Err(Error::BadInfo("not hex".into()));
        }
        let bytes: Result<Vec<u8>, _> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
            .collect();
        EndpointInfo::decode(&bytes.map_err(|_| Error::BadInfo("not hex".into()))?)
    }
}
