//! The segment's layout: a header, then one region per client slot.
//!
//! ```text
//! offset 0                 Header          (immutable geometry, state, attach epoch, server wait words)
//! HEADER_SIZE + i*region   ClientCtl i     (owner word, generation, client wait words)
//!                          request ring i  (depth x Slot<Req>)
//!                          response ring i (depth x Slot<Resp>)
//! ```
//!
//! # Who writes which header/control word, and when
//!
//! | word                    | written by        | when                                          |
//! |-------------------------|-------------------|-----------------------------------------------|
//! | geometry, `magic`       | server            | once, before the file is linked under its name (`magic` last) |
//! | `state`                 | server            | `CLOSED` when it shuts down                   |
//! | `attach_epoch`          | clients           | `fetch_add` after attaching or detaching      |
//! | `server_sleeping`       | server            | around a futex wait                           |
//! | `server_wake`           | clients           | `fetch_add` + futex wake when the server sleeps |
//! | `ctl.owner`             | client, server    | client: `FREE`→`CLAIMED` (CAS), →`ATTACHED`, →`DETACHED`; server: →`FREE` on reclaim |
//! | `ctl.generation`        | client            | bumped when it claims the slot                |
//! | `ctl.blocking`          | client            | before `ATTACHED`                             |
//! | `ctl.sleeping`          | client            | around a futex wait                           |
//! | `ctl.wake`              | server            | `fetch_add` + futex wake when the client sleeps |
//!
//! The server reads a client's `owner`, `generation` and `blocking` words
//! once, when it sees the slot become `ATTACHED`, and keeps its own copy;
//! later garbage in them cannot redirect it.

use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::Error;
use crate::message::Message;
use crate::ring::Slot;

/// "CPRCIPC1", little-endian.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"CPRCIPC1");
/// Bumped whenever the layout or protocol changes.
pub(crate) const VERSION: u32 = 1;

/// Segment state word values.
pub(crate) const STATE_RUNNING: u32 = 1;
pub(crate) const STATE_CLOSED: u32 = 2;

/// Client owner word: `pid << 32 | state`.
pub(crate) const SLOT_FREE: u64 = 0;
pub(crate) const SLOT_CLAIMED: u64 = 1;
pub(crate) const SLOT_ATTACHED: u64 = 2;
pub(crate) const SLOT_DETACHED: u64 = 3;

pub(crate) fn owner_word(pid: u32, state: u64) -> u64 {
    (u64::from(pid) << 32) | state
}
pub(crate) fn owner_pid(word: u64) -> u32 {
    (word >> 32) as u32
}
pub(crate) fn owner_state(word: u64) -> u64 {
    word & 0xffff_ffff
}

/// Largest accepted values, so a header cannot make us map absurd sizes.
pub(crate) const MAX_CLIENTS: u32 = 4096;
pub(crate) const MAX_DEPTH: u32 = 1 << 16;
const MAX_SEGMENT: u64 = 1 << 40;

/// 128 bytes: x86-64's adjacent-line prefetcher pulls 64-byte lines in
/// pairs, so words written by different processes sit 128 bytes apart.
#[repr(C, align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

#[repr(C)]
pub(crate) struct Geometry {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) header_size: AtomicU32,
    pub(crate) ctl_size: AtomicU32,
    pub(crate) max_clients: AtomicU32,
    pub(crate) ring_depth: AtomicU32,
    pub(crate) req_size: AtomicU32,
    pub(crate) req_align: AtomicU32,
    pub(crate) resp_size: AtomicU32,
    pub(crate) resp_align: AtomicU32,
    pub(crate) req_slot: AtomicU32,
    pub(crate) resp_slot: AtomicU32,
    pub(crate) server_pid: AtomicU32,
    pub(crate) server_blocking: AtomicU32,
    pub(crate) req_fingerprint: AtomicU64,
    pub(crate) resp_fingerprint: AtomicU64,
    pub(crate) client_region: AtomicU64,
    pub(crate) total_size: AtomicU64,
}

#[repr(C)]
pub(crate) struct Header {
    pub(crate) geo: Padded<Geometry>,
    pub(crate) state: Padded<AtomicU32>,
    pub(crate) attach_epoch: Padded<AtomicU64>,
    pub(crate) server_wait: Padded<WaitWords>,
}

#[repr(C)]
pub(crate) struct WaitWords {
    /// Non-zero while the owner is (about to be) blocked in a futex wait.
    pub(crate) sleeping: AtomicU32,
    /// The futex word; bumped by whoever wakes the owner.
    pub(crate) wake: AtomicU32,
}

#[repr(C)]
pub(crate) struct OwnerWords {
    pub(crate) owner: AtomicU64,
    pub(crate) generation: AtomicU32,
    pub(crate) blocking: AtomicU32,
}

#[repr(C)]
pub(crate) struct ClientCtl {
    pub(crate) owner: Padded<OwnerWords>,
    pub(crate) wait: Padded<WaitWords>,
}

pub(crate) const HEADER_SIZE: usize = size_of::<Header>();
pub(crate) const CTL_SIZE: usize = size_of::<ClientCtl>();
const REGION_ALIGN: usize = 128;

/// Byte offsets of everything in a segment for one geometry and type pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) max_clients: u32,
    pub(crate) depth: u32,
    pub(crate) req_slot: usize,
    pub(crate) resp_slot: usize,
    pub(crate) client_region: usize,
    pub(crate) total: usize,
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
        let client_region = (CTL_SIZE + rings).next_multiple_of(REGION_ALIGN);
        let total = client_region
            .checked_mul(max_clients as usize)
            .and_then(|c| c.checked_add(HEADER_SIZE))
            .filter(|&t| t as u64 <= MAX_SEGMENT)
            .ok_or_else(too_big)?;
        Ok(Self {
            max_clients,
            depth,
            req_slot,
            resp_slot,
            client_region,
            total,
        })
    }

    pub(crate) fn ctl_offset(&self, client: u32) -> usize {
        HEADER_SIZE + client as usize * self.client_region
    }

    pub(crate) fn req_offset(&self, client: u32) -> usize {
        self.ctl_offset(client) + CTL_SIZE
    }

    pub(crate) fn resp_offset(&self, client: u32) -> usize {
        self.req_offset(client) + self.depth as usize * self.req_slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_written_by_different_processes_do_not_share_a_line_pair() {
        assert_eq!(HEADER_SIZE % 128, 0);
        assert_eq!(CTL_SIZE, 256);
        assert_eq!(std::mem::offset_of!(ClientCtl, wait), 128);
        assert_eq!(std::mem::offset_of!(Header, attach_epoch) % 128, 0);
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
    fn client_regions_are_disjoint_and_inside_the_segment() {
        let l = Layout::new::<[u64; 3], u32>(5, 8).unwrap();
        for c in 0..5 {
            assert!(l.req_offset(c) >= l.ctl_offset(c) + CTL_SIZE);
            assert!(l.resp_offset(c) + 8 * l.resp_slot <= l.ctl_offset(c) + l.client_region);
        }
        assert_eq!(l.ctl_offset(4) + l.client_region, l.total);
    }
}
