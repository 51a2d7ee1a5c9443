//! The one door from the resources to a device: [`Backend`] is the software
//! device or an rdma-core NIC, and every control verb the resources need is
//! a method of it, so `Context`, `Pd`, `Mr`, `Cq`, `Srq` and `Qp` never
//! look at which one they run on. Each resource keeps the backend's object
//! for it in a handle ([`PdHandle`], [`MrHandle`], [`CqHandle`],
//! [`SrqHandle`], [`QpHandle`]) and gives it back to be destroyed.
//!
//! Below this module the two backends sit side by side and import neither
//! each other nor any resource: they take and return the `queue` seam's
//! descriptors and their own raw handles.
//!
//! The data path does not come through here: posting writes the queue
//! memory and rings a [`Doorbell`], polling reads the CQ ring (both in the
//! resources, shared by both backends).

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use crate::error::Error;
use crate::event::AsyncEvent;
use crate::hw;
use crate::prm::{Access, QpState};
use crate::queue::{ConnInfo, ConnectOpts, CqMem, QpCaps, QpMem, QpTrack, SrqMem};
use crate::soft::{self, Progress, WireStats};

/// An opened device.
pub(crate) enum Backend {
    Soft(Arc<soft::Device>),
    Hw(Arc<hw::Device>),
}

/// A protection domain's backend object.
pub(crate) enum PdHandle {
    /// The software device's PD number.
    Soft(u32),
    Hw(hw::Pd),
}

/// A memory region's backend object.
pub(crate) enum MrHandle {
    /// The software device's key (lkey and rkey alike).
    Soft(u32),
    Hw(hw::Mr),
}

/// A CQ's backend object (the software device's: the queue memory it
/// allocated).
pub(crate) enum CqHandle {
    Soft { _bufs: soft::QueueBufs },
    Hw(hw::Cq),
}

/// An SRQ's backend object.
pub(crate) enum SrqHandle {
    Soft { _bufs: soft::QueueBufs },
    Hw(hw::Srq),
}

/// A QP's backend object.
pub(crate) enum QpHandle {
    Soft { _bufs: soft::QueueBufs },
    Hw(hw::Qp),
}

/// What a QP rings after updating its doorbell record.
pub(crate) enum Doorbell {
    /// Wakes the software device's progress if it sleeps, and kicks the
    /// device (its flag: its next pass looks at its QPs).
    Soft(Arc<soft::Bell>, Arc<std::sync::atomic::AtomicBool>),
    /// The QP's UAR/BlueFlame register, shared with the other QPs of the
    /// device that libmlx5 put on it (its lock and current half with them).
    Hw(Arc<hw::BlueFlame>),
}

/// What creating a QP needs from its PD, CQs and SRQ.
pub(crate) struct QpSpec<'a> {
    pub(crate) pd: &'a PdHandle,
    /// The send CQ's handle and CQN.
    pub(crate) send_cq: (&'a CqHandle, u32),
    pub(crate) recv_cq: (&'a CqHandle, u32),
    pub(crate) srq: Option<(&'a SrqHandle, u32)>,
    pub(crate) track: &'a Arc<QpTrack>,
}

#[cold]
fn mismatch() -> Error {
    Error::Mismatch("a resource of another backend")
}

impl Backend {
    /// A software device; `tcp`: listening there instead of on a unix
    /// socket.
    pub(crate) fn soft(progress: Progress, tcp: Option<SocketAddrV4>) -> Result<Backend, Error> {
        Ok(Backend::Soft(soft::Device::open(progress, tcp)?))
    }

    /// An mlx5 NIC by rdma-core name, or the first one.
    pub(crate) fn hw(name: Option<&str>) -> Result<Backend, Error> {
        Ok(Backend::Hw(hw::Device::open(name)?))
    }

    /// `soft<N>`, or the rdma-core name.
    pub(crate) fn name(&self) -> String {
        match self {
            Backend::Soft(d) => d.name(),
            Backend::Hw(d) => d.name().to_string(),
        }
    }

    /// The software device, if this is one.
    pub(crate) fn soft_device(&self) -> Option<&Arc<soft::Device>> {
        match self {
            Backend::Soft(d) => Some(d),
            Backend::Hw(_) => None,
        }
    }

    /// The software device's progress mode (`None` on hardware).
    pub(crate) fn progress_mode(&self) -> Option<Progress> {
        let d = self.soft_device()?;
        Some(if d.is_manual() {
            Progress::Manual
        } else {
            Progress::Background
        })
    }

    /// One step of the software device.
    pub(crate) fn progress(&self) -> Result<usize, Error> {
        Ok(self.steppable()?.progress())
    }

    /// The software device, to step; hardware steps itself.
    fn steppable(&self) -> Result<&Arc<soft::Device>, Error> {
        // A static message: nothing is built for the error on this path,
        // which runs every poll.
        self.soft_device().ok_or(Error::SoftOnly(
            "stepping the device (hardware progresses by itself)",
        ))
    }

    /// Whether a manual software device holds answers for a later step.
    pub(crate) fn answers_held(&self) -> bool {
        self.soft_device().is_some_and(|d| d.answers_held())
    }

    /// A step of a software device that sends every answer held back.
    pub(crate) fn progress_sending_all(&self) -> Result<usize, Error> {
        Ok(self.steppable()?.progress_sending_all())
    }

    /// The software device's address, printable.
    pub(crate) fn soft_address(&self) -> Option<String> {
        self.soft_device().map(|d| d.address_string())
    }

    /// The software device's wire counters.
    pub(crate) fn wire_stats(&self) -> Result<WireStats, Error> {
        let d = self
            .soft_device()
            .ok_or(Error::SoftOnly("wire statistics"))?;
        Ok(d.wire_stats())
    }

    /// The next asynchronous event, waiting up to `timeout` (`None`: not
    /// at all).
    pub(crate) fn async_event(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<AsyncEvent>, Error> {
        match self {
            Backend::Soft(d) => Ok(d.async_event(timeout)),
            Backend::Hw(d) => d.async_event(timeout),
        }
    }

    pub(crate) fn alloc_pd(&self) -> Result<PdHandle, Error> {
        Ok(match self {
            Backend::Soft(d) => PdHandle::Soft(d.alloc_pd()),
            Backend::Hw(d) => PdHandle::Hw(d.alloc_pd()?),
        })
    }

    pub(crate) fn dealloc_pd(&self, pd: &PdHandle) {
        match (self, pd) {
            (Backend::Soft(d), PdHandle::Soft(id)) => d.dealloc_pd(*id),
            (Backend::Hw(d), PdHandle::Hw(pd)) => d.dealloc_pd(pd),
            _ => {}
        }
    }

    /// Registers `[addr, addr + len)`: the handle, the lkey and the rkey.
    ///
    /// # Safety
    ///
    /// The memory stays allocated until the handle is deregistered.
    pub(crate) unsafe fn reg_mr(
        &self,
        pd: &PdHandle,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<(MrHandle, u32, u32), Error> {
        match (self, pd) {
            (Backend::Soft(d), PdHandle::Soft(pd)) => {
                let key = d.reg_mr(*pd, addr as u64, len as u64, access);
                Ok((MrHandle::Soft(key), key, key))
            }
            (Backend::Hw(d), PdHandle::Hw(pd)) => {
                let mr = d.reg_mr(pd, addr, len, access)?;
                let (l, r) = (mr.lkey(), mr.rkey());
                Ok((MrHandle::Hw(mr), l, r))
            }
            _ => Err(mismatch()),
        }
    }

    pub(crate) fn dereg_mr(&self, mr: &MrHandle) {
        match (self, mr) {
            (Backend::Soft(d), MrHandle::Soft(key)) => d.dereg_mr(*key),
            (Backend::Hw(d), MrHandle::Hw(mr)) => d.dereg_mr(mr),
            _ => {}
        }
    }

    /// A CQ of at least `entries` CQEs: its handle, memory and CQN. The
    /// software device raises `overrun` when the CQ overflows.
    pub(crate) fn create_cq(
        &self,
        entries: u32,
        overrun: &Arc<AtomicBool>,
    ) -> Result<(CqHandle, CqMem, u32), Error> {
        match self {
            Backend::Soft(d) => {
                let (bufs, mem, cqn) = d.create_cq(entries, overrun.clone())?;
                Ok((CqHandle::Soft { _bufs: bufs }, mem, cqn))
            }
            Backend::Hw(d) => {
                let (cq, mem, cqn) = d.create_cq(entries)?;
                Ok((CqHandle::Hw(cq), mem, cqn))
            }
        }
    }

    pub(crate) fn destroy_cq(&self, cqn: u32, cq: &CqHandle) {
        match (self, cq) {
            (Backend::Soft(d), CqHandle::Soft { .. }) => d.destroy_cq(cqn),
            (Backend::Hw(d), CqHandle::Hw(cq)) => d.destroy_cq(cq),
            _ => {}
        }
    }

    /// An SRQ on `pd` with room for at least `depth` WQEs of `max_sge`
    /// entries: its handle, memory and SRQN.
    pub(crate) fn create_srq(
        &self,
        pd: &PdHandle,
        depth: u32,
        max_sge: u32,
    ) -> Result<(SrqHandle, SrqMem, u32), Error> {
        match (self, pd) {
            (Backend::Soft(d), PdHandle::Soft(_)) => {
                let (bufs, mem, srqn) = d.create_srq(depth, max_sge)?;
                Ok((SrqHandle::Soft { _bufs: bufs }, mem, srqn))
            }
            (Backend::Hw(d), PdHandle::Hw(pd)) => {
                let (s, mem, srqn) = d.create_srq(pd, depth, max_sge)?;
                Ok((SrqHandle::Hw(s), mem, srqn))
            }
            _ => Err(mismatch()),
        }
    }

    pub(crate) fn destroy_srq(&self, srqn: u32, srq: &SrqHandle) {
        match (self, srq) {
            (Backend::Soft(d), SrqHandle::Soft { .. }) => d.destroy_srq(srqn),
            (Backend::Hw(d), SrqHandle::Hw(s)) => d.destroy_srq(s),
            _ => {}
        }
    }

    /// An RC QP (in RESET): its handle, memory, QPN and doorbell. `caps`
    /// becomes what the device made of it (a NIC's provider rounds up).
    pub(crate) fn create_qp(
        &self,
        q: QpSpec<'_>,
        caps: &mut QpCaps,
    ) -> Result<(QpHandle, QpMem, u32, Doorbell), Error> {
        match (self, q.pd, q.send_cq.0, q.recv_cq.0) {
            (
                Backend::Soft(d),
                PdHandle::Soft(pd),
                CqHandle::Soft { .. },
                CqHandle::Soft { .. },
            ) => {
                let srq = match q.srq {
                    None => None,
                    Some((SrqHandle::Soft { .. }, srqn)) => Some(srqn),
                    Some(_) => return Err(mismatch()),
                };
                let (bufs, mem, qpn) = d.create_qp(soft::QpDesc {
                    pd: *pd,
                    send_cq: q.send_cq.1,
                    recv_cq: q.recv_cq.1,
                    srq,
                    caps: *caps,
                    track: q.track.clone(),
                })?;
                Ok((
                    QpHandle::Soft { _bufs: bufs },
                    mem,
                    qpn,
                    Doorbell::Soft(d.bell(), d.kick()),
                ))
            }
            (Backend::Hw(d), PdHandle::Hw(pd), CqHandle::Hw(scq), CqHandle::Hw(rcq)) => {
                let srq = match q.srq {
                    None => None,
                    Some((SrqHandle::Hw(s), _)) => Some(s),
                    Some(_) => return Err(mismatch()),
                };
                let (qp, mem, qpn, bf) = d.create_qp(pd, scq, rcq, srq, caps)?;
                Ok((QpHandle::Hw(qp), mem, qpn, Doorbell::Hw(bf)))
            }
            _ => Err(mismatch()),
        }
    }

    pub(crate) fn destroy_qp(&self, qpn: u32, qp: &QpHandle) {
        match (self, qp) {
            (Backend::Soft(d), QpHandle::Soft { .. }) => d.destroy_qp(qpn),
            (Backend::Hw(d), QpHandle::Hw(q)) => d.destroy_qp(q),
            _ => {}
        }
    }

    /// Moves QP `qpn` to `to` (the RC state machine was checked by the
    /// caller); `track` learns the new state.
    #[expect(
        clippy::too_many_arguments,
        reason = "a verb's attributes, passed through"
    )]
    pub(crate) fn modify_qp(
        &self,
        qpn: u32,
        qp: &QpHandle,
        track: &QpTrack,
        to: QpState,
        remote: Option<&ConnInfo>,
        opts: &ConnectOpts,
        local_psn: u32,
    ) -> Result<(), Error> {
        match (self, qp) {
            // The software device updates `track` itself, under its lock.
            (Backend::Soft(d), QpHandle::Soft { .. }) => d.modify_qp(qpn, to, remote, opts),
            (Backend::Hw(d), QpHandle::Hw(q)) => {
                d.modify_qp(q, to, remote, opts, local_psn)?;
                track.set_state(to);
                Ok(())
            }
            _ => Err(mismatch()),
        }
    }

    /// The QP's state as the device has it (`track`'s where the device
    /// cannot say).
    pub(crate) fn qp_state(&self, qp: &QpHandle, track: &QpTrack) -> QpState {
        match (self, qp) {
            (Backend::Hw(d), QpHandle::Hw(q)) => d.query_state(q).unwrap_or(track.state()),
            _ => track.state(),
        }
    }

    /// The LID and GID a QP's connection info carries (the software
    /// device's: 0 and its address).
    pub(crate) fn port_addr(&self, opts: &ConnectOpts) -> Result<(u16, [u8; 16]), Error> {
        match self {
            Backend::Soft(d) => Ok((0, d.address()?)),
            Backend::Hw(d) => d.port_addr(opts.port, opts.gid_index),
        }
    }
}

impl Doorbell {
    /// Publishes the send queue up to `counter` (`pi & 0xffff`): the
    /// doorbell record word `db`, then the doorbell (hardware: a BlueFlame
    /// copy of the last WQE, `single` bytes at `last_wqe`, when it is the
    /// only one pending and fits, else its first 8 bytes; see
    /// `hw/doorbell.rs`).
    ///
    /// # Safety
    ///
    /// `db` is the QP's send doorbell record and `counter` covers every WQE
    /// written; `last_wqe` is the last WQE, 64-aligned in the SQ buffer,
    /// with `single` (or, when 0, at least 64) bytes written, which the
    /// device owns until their completion.
    #[inline]
    pub(crate) unsafe fn ring_sq(
        &self,
        db: &AtomicU32,
        counter: u32,
        last_wqe: *const u8,
        single: usize,
    ) {
        match self {
            Doorbell::Soft(b, kick) => {
                // Release: the device reads the WQEs after it sees the
                // counter.
                db.store(counter.to_be(), std::sync::atomic::Ordering::Release);
                // Release: a pass that takes the kick (an acquiring swap)
                // sees the counter. A swap, not a store: every kick is a
                // read-modify-write, so another thread's kick landing
                // after this one continues its release sequence, and the
                // pass that takes the later kick sees this counter too.
                kick.swap(true, std::sync::atomic::Ordering::Release);
                b.ring();
            }
            // SAFETY: the caller's contract.
            Doorbell::Hw(bf) => unsafe { bf.ring(db, counter, last_wqe, single) },
        }
    }

    /// Wakes the software device to flush receives posted to a QP in ERROR
    /// (a NIC needs no doorbell for receives).
    pub(crate) fn wake_for_recv(&self) {
        if let Doorbell::Soft(b, kick) = self {
            // Release, and a swap: as for the send doorbell.
            kick.swap(true, std::sync::atomic::Ordering::Release);
            b.ring();
        }
    }

    /// Whether ringing needs the WQE's bytes (hardware's BlueFlame copy):
    /// the software device reads them from the ring.
    pub(crate) fn copies_wqe(&self) -> bool {
        matches!(self, Doorbell::Hw(_))
    }
}
