//! The messages: one request and one response layout, little-endian, used
//! unchanged on every hop (ipc slot, Flux queue, network payload).
//!
//! Request, 16-byte header then the value (PUT only):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | key |
//! | 8 | opcode (1 GET, 2 PUT) |
//! | 9..12 | 0 |
//! | 12..16 | value bytes that follow (0 for GET) |
//!
//! Response, 8-byte header then the value (GET only):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | status (0 OK, 1 key out of range, 2 malformed request) |
//! | 1..4 | 0 |
//! | 4..8 | value bytes that follow |
//!
//! In an ipc slot or a Flux queue the message is a fixed-size struct whose
//! value area holds up to `N` bytes ([`KvReq`], [`KvResp`]); on the network
//! only the header and the bytes in use travel ([`KvReq::wire`]). `N` is a
//! size class ([`class_of`]): the ipc layer needs one fixed type per
//! segment, and copying a 4 KiB slot for an 8-byte value would measure
//! memcpy, not the stack.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::workload::OpKind;

/// Request header bytes.
pub const REQ_HDR: usize = 16;
/// Response header bytes.
pub const RESP_HDR: usize = 8;

const OP_GET: u8 = 1;
const OP_PUT: u8 = 2;

/// The value-area sizes messages come in (the smallest class that holds
/// the run's value size is used).
pub const CLASSES: [usize; 4] = [8, 64, 512, 4096];

/// The size class for values of `value_size` bytes.
pub fn class_of(value_size: usize) -> usize {
    *CLASSES
        .iter()
        .find(|&&c| c >= value_size)
        .expect("value size checked by Params::check")
}

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Done; a GET carries the value.
    Ok,
    /// The key is outside the key space or the shard it was sent to.
    OutOfRange,
    /// The request was malformed (bad opcode, wrong value length).
    Malformed,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::OutOfRange => 1,
            Status::Malformed => 2,
        }
    }

    fn from_code(c: u8) -> Option<Status> {
        match c {
            0 => Some(Status::Ok),
            1 => Some(Status::OutOfRange),
            2 => Some(Status::Malformed),
            _ => None,
        }
    }
}

/// A message that does not follow the layout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct WireError {
    /// "request" or "response".
    pub what: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn malformed(what: &'static str, reason: String) -> WireError {
    WireError { what, reason }
}

/// A decoded request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqHeader {
    /// The key.
    pub key: u64,
    /// GET or PUT.
    pub op: OpKind,
    /// Value bytes that follow.
    pub len: u32,
}

impl ReqHeader {
    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; REQ_HDR] {
        let mut b = [0u8; REQ_HDR];
        b[0..8].copy_from_slice(&self.key.to_le_bytes());
        b[8] = match self.op {
            OpKind::Get => OP_GET,
            OpKind::Put => OP_PUT,
        };
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes a request's header; `body` is how many bytes follow it in
    /// the message (checked against the length field).
    pub fn decode(b: &[u8; REQ_HDR], body: usize) -> Result<ReqHeader, WireError> {
        let op = match b[8] {
            OP_GET => OpKind::Get,
            OP_PUT => OpKind::Put,
            x => return Err(malformed("request", format!("opcode {x}"))),
        };
        if b[9..12] != [0, 0, 0] {
            return Err(malformed("request", "reserved bytes are not zero".into()));
        }
        let len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        if len as usize != body {
            return Err(malformed(
                "request",
                format!("length field {len}, {body} bytes follow"),
            ));
        }
        Ok(ReqHeader {
            key: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            op,
            len,
        })
    }

    /// Splits a network request into its header and value.
    pub fn parse(msg: &[u8]) -> Result<(ReqHeader, &[u8]), WireError> {
        let Some((h, body)) = msg.split_first_chunk::<REQ_HDR>() else {
            return Err(malformed("request", format!("{} bytes", msg.len())));
        };
        Ok((ReqHeader::decode(h, body.len())?, body))
    }
}

/// A request in an ipc slot or a Flux queue: the header and a value area
/// of `N` bytes.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, ipc::Message)]
#[repr(C)]
pub struct KvReq<const N: usize> {
    hdr: [u8; REQ_HDR],
    value: [u8; N],
}

impl<const N: usize> KvReq<N> {
    /// A GET of `key`.
    pub fn get(key: u64) -> KvReq<N> {
        let mut r = KvReq::new_zeroed();
        r.hdr = ReqHeader {
            key,
            op: OpKind::Get,
            len: 0,
        }
        .encode();
        r
    }

    /// A PUT of `value` (at most `N` bytes) to `key`.
    pub fn put(key: u64, value: &[u8]) -> KvReq<N> {
        let mut r = KvReq::new_zeroed();
        r.hdr = ReqHeader {
            key,
            op: OpKind::Put,
            len: value.len() as u32,
        }
        .encode();
        r.value[..value.len()].copy_from_slice(value);
        r
    }

    /// A PUT to `key` whose value `fill` writes in place (`len` bytes, at
    /// most `N`): no copy of the value through a buffer of its own.
    pub fn put_with(key: u64, len: usize, fill: impl FnOnce(&mut [u8])) -> KvReq<N> {
        let mut r = KvReq::new_zeroed();
        r.hdr = ReqHeader {
            key,
            op: OpKind::Put,
            len: len as u32,
        }
        .encode();
        fill(&mut r.value[..len]);
        r
    }

    /// The header and the value, validated (a slot comes from another
    /// thread or process: its length field is not trusted).
    pub fn parse(&self) -> Result<(ReqHeader, &[u8]), WireError> {
        let len = u32::from_le_bytes(self.hdr[12..16].try_into().expect("4 bytes")) as usize;
        if len > N {
            return Err(malformed(
                "request",
                format!("length field {len} exceeds the slot's {N} value bytes"),
            ));
        }
        Ok((ReqHeader::decode(&self.hdr, len)?, &self.value[..len]))
    }

    /// The bytes that travel on the network: header and value in use.
    pub fn wire(&self) -> &[u8] {
        let len =
            (u32::from_le_bytes(self.hdr[12..16].try_into().expect("4 bytes")) as usize).min(N);
        &self.as_bytes()[..REQ_HDR + len]
    }
}

/// A response in an ipc slot or a Flux queue: the header and a value
/// area of `N` bytes.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, ipc::Message)]
#[repr(C)]
pub struct KvResp<const N: usize> {
    hdr: [u8; RESP_HDR],
    value: [u8; N],
}

impl<const N: usize> KvResp<N> {
    /// A response with `status` and no value.
    pub fn status(status: Status) -> KvResp<N> {
        let mut r = KvResp::new_zeroed();
        r.hdr[0] = status.code();
        r
    }

    /// An OK response carrying `value` (at most `N` bytes).
    pub fn with_value(value: &[u8]) -> KvResp<N> {
        let mut r = KvResp::new_zeroed();
        r.hdr[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
        r.value[..value.len()].copy_from_slice(value);
        r
    }

    /// A response decoded from network bytes (header and value).
    pub fn from_wire(msg: &[u8]) -> Result<KvResp<N>, WireError> {
        let (status, value) = parse_response(msg)?;
        if value.len() > N {
            return Err(malformed(
                "response",
                format!("{} value bytes exceed the slot's {N}", value.len()),
            ));
        }
        let mut r = KvResp::with_value(value);
        r.hdr[0] = status.code();
        Ok(r)
    }

    /// Status and value, validated.
    pub fn parse(&self) -> Result<(Status, &[u8]), WireError> {
        let len = u32::from_le_bytes(self.hdr[4..8].try_into().expect("4 bytes")) as usize;
        if len > N {
            return Err(malformed(
                "response",
                format!("length field {len} exceeds the slot's {N} value bytes"),
            ));
        }
        let status = Status::from_code(self.hdr[0])
            .ok_or_else(|| malformed("response", format!("status {}", self.hdr[0])))?;
        Ok((status, &self.value[..len]))
    }
}

/// Writes a response (header, then `value`) into `out`; returns its
/// length. `out` holds at least `RESP_HDR + value.len()` bytes.
pub fn write_response(out: &mut [u8], status: Status, value: &[u8]) -> usize {
    out[..RESP_HDR].fill(0);
    out[0] = status.code();
    out[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
    out[RESP_HDR..RESP_HDR + value.len()].copy_from_slice(value);
    RESP_HDR + value.len()
}

/// Splits network response bytes into status and value.
pub fn parse_response(msg: &[u8]) -> Result<(Status, &[u8]), WireError> {
    let Some((h, body)) = msg.split_first_chunk::<RESP_HDR>() else {
        return Err(malformed("response", format!("{} bytes", msg.len())));
    };
    let status =
        Status::from_code(h[0]).ok_or_else(|| malformed("response", format!("status {}", h[0])))?;
    if h[1..4] != [0, 0, 0] {
        return Err(malformed("response", "reserved bytes are not zero".into()));
    }
    let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
    if len != body.len() {
        return Err(malformed(
            "response",
            format!("length field {len}, {} bytes follow", body.len()),
        ));
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_hold_their_values() {
        assert_eq!(class_of(8), 8);
        assert_eq!(class_of(9), 64);
        assert_eq!(class_of(64), 64);
        assert_eq!(class_of(65), 512);
        assert_eq!(class_of(4096), 4096);
    }

    #[test]
    fn a_request_survives_the_wire() {
        let put = KvReq::<64>::put(0x0102_0304_0506_0708, &[7u8; 40]);
        let w = put.wire();
        assert_eq!(w.len(), REQ_HDR + 40);
        assert_eq!(&w[..8], &[8, 7, 6, 5, 4, 3, 2, 1], "key little-endian");
        assert_eq!(w[8], 2, "PUT opcode");
        let (h, v) = ReqHeader::parse(w).unwrap();
        assert_eq!(
            h,
            ReqHeader {
                key: 0x0102_0304_0506_0708,
                op: OpKind::Put,
                len: 40
            }
        );
        assert_eq!(v, &[7u8; 40]);
        assert_eq!(put.parse().unwrap(), (h, &[7u8; 40][..]));

        let get = KvReq::<8>::get(5);
        assert_eq!(get.wire().len(), REQ_HDR);
        assert_eq!(ReqHeader::parse(get.wire()).unwrap().0.op, OpKind::Get);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let mut w = KvReq::<8>::put(1, &[1; 8]).wire().to_vec();
        assert!(ReqHeader::parse(&w[..10]).is_err(), "short");
        assert!(
            ReqHeader::parse(&w[..20]).is_err(),
            "length field disagrees"
        );
        w[8] = 9;
        assert!(ReqHeader::parse(&w).is_err(), "opcode");
        w[8] = 2;
        w[10] = 1;
        assert!(ReqHeader::parse(&w).is_err(), "reserved byte");
        // A slot whose length field exceeds its value area.
        let mut slot = KvReq::<8>::get(1);
        slot.as_mut_bytes()[12] = 9;
        assert!(slot.parse().is_err());
    }

    #[test]
    fn a_response_survives_the_wire() {
        let mut out = [0u8; 64];
        let n = write_response(&mut out, Status::Ok, &[3u8; 16]);
        assert_eq!(n, RESP_HDR + 16);
        let r = KvResp::<64>::from_wire(&out[..n]).unwrap();
        assert_eq!(r.parse().unwrap(), (Status::Ok, &[3u8; 16][..]));
        let n = write_response(&mut out, Status::OutOfRange, &[]);
        assert_eq!(
            parse_response(&out[..n]).unwrap(),
            (Status::OutOfRange, &[][..])
        );
        assert!(KvResp::<8>::from_wire(&[0u8; 4]).is_err(), "short");
        assert!(KvResp::<8>::from_wire(&out[..n + 1]).is_err(), "length");
        let n = write_response(&mut out, Status::Ok, &[1u8; 16]);
        assert!(KvResp::<8>::from_wire(&out[..n]).is_err(), "too large");
        out[0] = 7;
        assert!(parse_response(&out[..n]).is_err(), "status");
    }
}
