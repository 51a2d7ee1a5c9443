//! What lies in the shared memory: the server's header, and each client's
//! own region.
//!
//! Every piece of shared memory is a sealed memfd the server creates and
//! passes over the client's connection (see [`crate::wire`]); nothing has a
//! name in a file system, so a client holds exactly the descriptors it was
//! given and nothing else:
//!
//! ```text
//! header memfd (one per server)      sealed: no shrink, no grow, no new writable mapping
//!   0    ident          magic, version                      server, once
//!   128  server_wait    sleeping                            server
//!
//! region memfd (one per attached client, fresh on every attach)   sealed: no shrink, no grow
//!   0                      ClientCtl   wait words (sleeping, wake)
//!   128                    request ring   depth × Slot<Req>
//!   128 + depth × req_slot response ring  depth × Slot<Resp>
//! ```
//!
//! # Who writes which word, and when
//!
//! | word                  | in      | written by | when                                              |
//! |-----------------------|---------|------------|---------------------------------------------------|
//! | `ident`               | header  | server     | once, before any client receives the header       |
//! | `server_wait.sleeping`| header  | server     | around its wait for events; clients only read it  |
//! | `ctl.wait.sleeping`   | region  | client     | around a futex wait                               |
//! | `ctl.wait.wake`       | region  | server     | `fetch_add` + futex wake when the client sleeps, is evicted or the server shuts down |
//! | request ring          | region  | client     | see [`crate::ring`]                               |
//! | response ring         | region  | server     | see [`crate::ring`]                               |
//!
//! A client maps the header read-only (the seal refuses anything else) and
//! only its own region writable. Both memfds are sealed against shrinking
//! and growing, so no client can make the server's accesses fault. The
//! server reads nothing from a client's region that it uses as an index or
//! a length: the sequence words and call ids it reads are validated
//! ([`crate::ring::ServedClient`]), the `sleeping` word only decides whether
//! it issues a futex wake to that same client.

use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::Error;
use crate::message::Message;
use crate::ring::Slot;

/// "CPRCIPC2", little-endian; the wire handshake and the header carry it.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"CPRCIPC2");
/// Bumped whenever the layout or protocol changes.
pub(crate) const VERSION: u32 = 2;

/// Largest accepted values, so a peer cannot make us map absurd sizes.
pub(crate) const MAX_CLIENTS: u32 = 4096;
pub(crate) const MAX_DEPTH: u32 = 1 << 16;
const MAX_SEGMENT: u64 = 1 << 40;
const PAGE: usize = 4096;

/// 128 bytes: x86-64's adjacent-line prefetcher pulls 64-byte lines in
/// pairs, so words written by different processes sit 128 bytes apart.
#[repr(C, align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

#[repr(C)]
pub(crate) struct Ident {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
}

#[repr(C)]
pub(crate) struct ServerWait {
    /// Non-zero while the server is (about to be) blocked waiting for
    /// events; a client that publishes a request then sends a wake-up byte.
    pub(crate) sleeping: AtomicU32,
}

/// The server's header, mapped read-only by every client.
#[repr(C)]
pub(crate) struct Header {
    pub(crate) ident: Padded<Ident>,
    pub(crate) server_wait: Padded<ServerWait>,
}

#[repr(C)]
pub(crate) struct WaitWords {
    /// Non-zero while the client is (about to be) blocked in a futex wait.
    pub(crate) sleeping: AtomicU32,
    /// The futex word; bumped by the server to wake the client.
    pub(crate) wake: AtomicU32,
}

/// The control block at the start of a client's region.
#[repr(C)]
pub(crate) struct ClientCtl {
    pub(crate) wait: Padded<WaitWords>,
}

pub(crate) const HEADER_SIZE: usize = size_of::<Header>();
/// The header memfd's length: one page.
pub(crate) const HEADER_LEN: usize = HEADER_SIZE.next_multiple_of(PAGE);
pub(crate) const CTL_SIZE: usize = size_of::<ClientCtl>();

/// Geometry of one server's segment for one type pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) max_clients: u32,
    pub(crate) depth: u32,
    pub(crate) req_slot: usize,
    pub(crate) resp_slot: usize,
    /// Bytes of one client's region memfd (a multiple of the page size).
    pub(crate) region: usize,
}

impl Layout {
    pub(crate) fn new<Req: Message, Resp: Message>(
        max_clients: u32,
        depth: u32,
    ) -> Result<Self, Error> {
        if max_clients == 0 || max_clients > MAX_CLIENTS {
            return Err(Error::InvalidConfig(format!(
                "max_clients must be in 1..={MAX_CLIENTS}, got {max_clients}"
            )));
        }
        if !depth.is_power_of_two() || depth > MAX_DEPTH {
            return Err(Error::InvalidConfig(format!(
                "ring_depth must be a power of two in 1..={MAX_DEPTH}, got {depth}"
            )));
        }
        for (what, align) in [
            ("request", align_of::<Req>()),
            ("response", align_of::<Resp>()),
        ] {
            if align > 64 {
                return Err(Error::InvalidConfig(format!(
                    "{what} type alignment {align} exceeds 64 bytes"
                )));
            }
        }
        let req_slot = size_of::<Slot<Req>>();
        let resp_slot = size_of::<Slot<Resp>>();
        let too_big = || Error::InvalidConfig("segment would exceed 1 TiB".into());
        let rings = (req_slot + resp_slot)
            .checked_mul(depth as usize)
            .ok_or_else(too_big)?;
        let region = (CTL_SIZE + rings).next_multiple_of(PAGE);
        region
            .checked_mul(max_clients as usize)
            .filter(|&t| t as u64 <= MAX_SEGMENT)
            .ok_or_else(too_big)?;
        Ok(Self {
            max_clients,
            depth,
            req_slot,
            resp_slot,
            region,
        })
    }

    /// Offset of the request ring in a region.
    pub(crate) fn req_offset(&self) -> usize {
        CTL_SIZE
    }

    /// Offset of the response ring in a region.
    pub(crate) fn resp_offset(&self) -> usize {
        CTL_SIZE + self.depth as usize * self.req_slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_written_by_different_processes_do_not_share_a_line_pair() {
        assert_eq!(HEADER_SIZE % 128, 0);
        assert_eq!(CTL_SIZE, 128);
        assert_eq!(std::mem::offset_of!(Header, server_wait), 128);
        assert_eq!(size_of::<Slot<u8>>() % 64, 0);
    }

    #[test]
    fn layout_rejects_bad_geometry() {
        assert!(Layout::new::<u64, u64>(0, 4).is_err());
        assert!(Layout::new::<u64, u64>(4, 3).is_err());
        assert!(Layout::new::<u64, u64>(4, 0).is_err());
        assert!(Layout::new::<u64, u64>(MAX_CLIENTS + 1, 4).is_err());
        assert!(Layout::new::<[u8; 1 << 20], u64>(MAX_CLIENTS, MAX_DEPTH).is_err());
    }

    #[test]
    fn rings_lie_inside_the_region() {
        let l = Layout::new::<[u64; 3], u32>(5, 8).unwrap();
        assert!(l.req_offset() >= CTL_SIZE);
        assert_eq!(l.resp_offset(), l.req_offset() + 8 * l.req_slot);
        assert!(l.resp_offset() + 8 * l.resp_slot <= l.region);
        assert_eq!(l.region % PAGE, 0);
    }
}
