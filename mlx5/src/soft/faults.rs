//! Fault injection (the software device's side of `mlx5::Faults`): a peer
//! dropped or partitioned, frames delayed, a QP's next WQE failed or its
//! receives withheld. The knobs' device-wide state is
//! [`super::state::FaultState`]; the per-QP ones are fields of the QP.

use std::time::Duration;

use super::Device;
use super::link::Link;
use super::progress::{fail_link, remove_dead_links};
use super::state::SoftQp;
use crate::error::Error;

impl Device {
    /// Fault: the peer device at `addr` is gone.
    pub(crate) fn drop_peer(&self, addr: [u8; 16]) {
        let mut eng = self.shared.engine_outside();
        if !eng.faults.dropped.contains(&addr) {
            eng.faults.dropped.push(addr);
        }
        let mut killed = Vec::new();
        for l in eng.links.iter_mut().filter(|l| l.is_up() && l.peer == addr) {
            l.kill("dropped by fault injection".into());
            killed.push(l.id);
        }
        let mut s = self.shared.lock();
        for id in killed {
            fail_link(&mut s, id);
        }
        drop(s);
        remove_dead_links(&mut eng.links);
        drop(eng);
        self.shared.bell.ring();
    }

    /// Fault: frames to and from `addr` vanish. False if no link is up.
    pub(crate) fn partition_peer(&self, addr: [u8; 16]) -> bool {
        let mut eng = self.shared.engine_outside();
        let mut any = false;
        for l in eng.links.iter_mut().filter(|l| l.is_up() && l.peer == addr) {
            l.blackhole = true;
            any = true;
        }
        any
    }

    /// Fault: the next connect opens its own link (see
    /// `Faults::open_a_second_link_on_next_connect`).
    pub(crate) fn fresh_link_next(&self) {
        let mut eng = self.shared.engine_outside();
        eng.faults.fresh_link = true;
    }

    /// Fault: hold every frame sent for `d`.
    pub(crate) fn set_delay(&self, d: Duration) {
        let mut eng = self.shared.engine_outside();
        eng.faults.delay = d;
        for l in &mut eng.links {
            l.delay = d;
        }
    }

    /// Fault: hold plain ACKs nobody waits for up to `d` (at most an hour,
    /// so that a deadline never overflows).
    pub(crate) fn set_ack_hold(&self, d: Duration) {
        let d = d.min(Duration::from_secs(3600));
        let mut eng = self.shared.engine_outside();
        eng.faults.ack_hold = Some(d);
        for l in &mut eng.links {
            l.ack_hold = d;
        }
    }

    /// Fault: seals an impossible record in every shared-memory ring this
    /// device produces. Returns how many.
    pub(crate) fn corrupt_shm_rings(&self) -> usize {
        let mut eng = self.shared.engine_outside();
        eng.links
            .iter_mut()
            .map(Link::corrupt_ring)
            .filter(|&c| c)
            .count()
    }

    /// Fault: a malformed large REQ into every shared-memory ring this
    /// device produces. Returns how many.
    pub(crate) fn send_malformed_large_frames(&self) -> usize {
        let mut eng = self.shared.engine_outside();
        eng.links
            .iter_mut()
            .filter(|l| l.is_up())
            .map(Link::send_malformed_large)
            .filter(|&c| c)
            .count()
    }

    /// Fault: impossible heads on every shared-memory ring this device
    /// reads. Returns how many.
    pub(crate) fn corrupt_shm_heads(&self) -> usize {
        let mut eng = self.shared.engine_outside();
        eng.links
            .iter_mut()
            .map(Link::corrupt_head)
            .filter(|&c| c)
            .count()
    }

    /// Fault knobs of one QP.
    pub(crate) fn qp_fault(&self, qpn: u32, f: impl FnOnce(&mut SoftQp)) -> Result<(), Error> {
        let mut s = self.shared.lock();
        let qp = s
            .qp(qpn)
            .ok_or(Error::Mismatch("QP is not on this device"))?;
        f(qp);
        drop(s);
        self.shared.bell.ring();
        Ok(())
    }
}
