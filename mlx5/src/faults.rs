//! Fault injection on the software device ([`Context::faults`]): the
//! knobs tests of code above this crate turn to make the fabric fail.

use std::sync::Arc;
use std::time::Duration;

use crate::device::Context;
use crate::error::Error;
use crate::prm::Syndrome;
use crate::qp::Qp;
use crate::queue::ConnInfo;
use crate::soft;

impl Context {
    /// Fault injection on the software device ([`Error::SoftOnly`] on
    /// hardware).
    pub fn faults(&self) -> Result<Faults, Error> {
        match self.inner.backend.soft_device() {
            Some(d) => Ok(Faults { dev: d.clone() }),
            None => Err(Error::SoftOnly("fault injection")),
        }
    }
}

/// Fault injection knobs of a software device ([`Context::faults`]), for
/// tests of code that must survive a failing fabric.
#[derive(Clone)]
pub struct Faults {
    dev: Arc<soft::Device>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

impl Faults {
    /// Treats the device `peer` names (its `gid`) as gone, as if its
    /// process died: links to it close, WQEs in flight to it and every
    /// later one of QPs connected to it complete with
    /// `TransportRetryExceeded` and those QPs enter ERROR; connecting to it
    /// again is refused. Works for peers in this process too.
    pub fn drop_peer(&self, peer: &ConnInfo) {
        self.dev.drop_peer(peer.gid);
    }

    /// The next QP connected to a device in another process opens a link of
    /// its own even if one to that device is up, as two devices that
    /// connect to each other at the same moment do (each side's connect
    /// finds no link and opens one): the case where both sides must choose
    /// the same link to send on. A connect that fails does not spend this.
    pub fn open_a_second_link_on_next_connect(&self) {
        self.dev.fresh_link_next();
    }

    /// Silently discards every frame to and from the device `peer` names,
    /// as a network partition does: QPs with requests outstanding to it
    /// fail with `TransportRetryExceeded` once their ACK timeout
    /// (`4.096 µs × 2^timeout × (retry_cnt + 1)` of [`crate::ConnectOpts`]) passes.
    /// Only for a peer in another process with a link up (else an error).
    pub fn partition_peer(&self, peer: &ConnInfo) -> Result<(), Error> {
        if self.dev.partition_peer(peer.gid) {
            Ok(())
        } else {
            Err(Error::InvalidAttr(
                "no link to that device is up (partitions apply to peers in other processes)"
                    .into(),
            ))
        }
    }

    /// Holds every frame this device sends to other processes for `d`
    /// before it is written (`Duration::ZERO` turns it off). Order is kept.
    pub fn delay(&self, d: Duration) {
        self.dev.set_delay(d);
    }

    /// Holds the plain ACKs of requests that asked for none at once
    /// (unsignaled WRITEs and SENDs from a peer process) up to `d` instead
    /// of 20 µs, waiting for a frame of this device's to ride with: a
    /// responder that coalesces ACKs that long (at most an hour). A hold
    /// longer than a peer's ACK timeout times that peer out, as a NIC's
    /// would; a peer whose NOP or locally failing WQE waits for the held
    /// ACKs asks for them (an ACKREQ), which ends the hold.
    pub fn hold_acks_for(&self, d: Duration) {
        self.dev.set_ack_hold(d);
    }

    /// Seals a record no producer can have written (longer than the ring)
    /// at the next record's place of every shared-memory ring this device
    /// sends on, as a peer process that scribbles over the rings would:
    /// each peer must cut that link, with `TransportRetryExceeded` for what
    /// was in flight, and carry on. Returns the rings corrupted.
    pub fn corrupt_shm_rings(&self) -> usize {
        self.dev.corrupt_shm_rings()
    }

    /// Publishes, in every shared-memory ring this device sends on, a
    /// well-framed REQ of 16 KiB whose fixed part disagrees with its
    /// length, as a buggy or hostile peer process would: a frame that size
    /// is handled where it lies in the ring, and each peer must refuse it
    /// there, cut that link (`TransportRetryExceeded` for what was in
    /// flight) and carry on. Returns the rings written.
    pub fn send_malformed_large_frames(&self) -> usize {
        self.dev.send_malformed_large_frames()
    }

    /// From now on, publishes a consumer head that no reader can have
    /// reached on every shared-memory ring this device reads, as a peer
    /// process that scribbles over its own index would: each peer cuts
    /// that link when it next needs room in the ring (its QPs fail with
    /// `TransportRetryExceeded`) and carries on. Returns the rings.
    pub fn corrupt_shm_heads(&self) -> usize {
        self.dev.corrupt_shm_heads()
    }

    /// The next WQE `qp` executes completes with an error CQE carrying
    /// `syndrome`, and the QP enters ERROR (its later WQEs are flushed).
    pub fn fail_next(&self, qp: &Qp, syndrome: Syndrome) -> Result<(), Error> {
        self.check(qp)?;
        self.dev
            .qp_fault(qp.qpn(), |q| q.fail_next = Some(syndrome))
    }

    /// While `on`, `qp` answers as if it had no receive WQE posted: SENDs
    /// and WRITE_IMMs to it get RNR NAKs (and `RnrRetryExceeded` once the
    /// sender's `rnr_retry` runs out). Posted receives stay queued.
    pub fn withhold_recv(&self, qp: &Qp, on: bool) -> Result<(), Error> {
        self.check(qp)?;
        self.dev.qp_fault(qp.qpn(), |q| q.withhold_recv = on)
    }

    fn check(&self, qp: &Qp) -> Result<(), Error> {
        match qp.context().inner.backend.soft_device() {
            Some(d) if Arc::ptr_eq(d, &self.dev) => Ok(()),
            _ => Err(Error::Mismatch("QP of another device")),
        }
    }
}
