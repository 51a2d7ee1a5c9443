//! The control path on real hardware: open, PD, MR, CQ, SRQ, QP, state
//! transitions, and `mlx5dv_init_obj` for the buffers and registers that our
//! own data path (shared with the software device) then drives.
//!
//! UNVERIFIED ON HARDWARE: no machine this crate was developed on has an
//! RDMA NIC. The struct layouts are checked against rdma-core's headers
//! (`tests/hw_layout.rs`); the calls follow rdma-core's documented contract.
//!
//! Beyond the verbs, the device keeps three small tables, all cold path:
//! the BlueFlame registers its QPs ring (one lock per register, see
//! `doorbell.rs`), and the CQN and SRQN of each CQ and SRQ by verbs
//! pointer, which asynchronous events name (`async_event.rs`).

use std::collections::HashMap;
use std::ffi::{CStr, c_uint};
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::async_event;
use super::doorbell::{Arch, BlueFlame};
use super::ffi::{self, Verbs};
use crate::error::Error;
use crate::event::AsyncEvent;
use crate::prm::Access;
use crate::prm::{MAX_DS, QpState, SEG};
use crate::queue::{ConnInfo, ConnectOpts, CqMem, Mtu, QpCaps, QpMem, SrqMem};

/// An all-zero C struct (how C code initialises verbs attribute structs).
fn zeroed<T: Plain>() -> T {
    // SAFETY: Plain is implemented only for rdma-core structs of integers,
    // raw pointers and arrays of them, for which all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// rdma-core structs that are valid when all-zero.
trait Plain {}
impl Plain for ffi::mlx5dv_cq {}
impl Plain for ffi::mlx5dv_srq {}
impl Plain for ffi::mlx5dv_qp {}
impl Plain for ffi::ibv_qp_init_attr {}

fn last_os_error(verb: &'static str) -> Error {
    Error::Verb {
        verb,
        source: std::io::Error::last_os_error(),
    }
}

fn rc_error(verb: &'static str, rc: i32) -> Error {
    Error::Verb {
        verb,
        source: if rc > 0 {
            std::io::Error::from_raw_os_error(rc)
        } else {
            std::io::Error::last_os_error()
        },
    }
}

/// An opened mlx5 device.
pub(crate) struct Device {
    // Field order: the context closes (Drop) before the libraries unload.
    ctx: *mut ffi::ibv_context,
    name: String,
    /// The context's event descriptor, non-blocking since open.
    async_fd: std::ffi::c_int,
    arch: Arch,
    /// Every BlueFlame register a QP of this device was given, by address,
    /// kept for the device's life: a register's lock and current half
    /// outlive the QPs that use it, as libmlx5's `struct mlx5_bf` does.
    blueflames: Mutex<Vec<Arc<BlueFlame>>>,
    /// CQN of each live CQ, by `ibv_cq` address (for `IBV_EVENT_CQ_ERR`).
    cqns: Mutex<HashMap<usize, u32>>,
    /// SRQN of each live SRQ, by `ibv_srq` address (for the SRQ events).
    srqns: Mutex<HashMap<usize, u32>>,
    verbs: Verbs,
}

/// Locks a table of the device; a panic elsewhere cannot leave one
/// half-updated (each update is one insert or remove), so a poisoned lock
/// is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// SAFETY: verbs contexts are thread-safe (rdma-core locks internally).
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: ctx was opened by these verbs; every object created on it
        // holds an Arc of the Context and is gone by now.
        unsafe { (self.verbs.ibv_close_device)(self.ctx) };
    }
}

/// Raw handles; each is destroyed through the owning [`Device`].
pub(crate) struct Pd(*mut ffi::ibv_pd);
/// A registered memory region.
pub(crate) struct Mr(*mut ffi::ibv_mr);
/// A completion queue and its CQN.
pub(crate) struct Cq(*mut ffi::ibv_cq, u32);
/// A shared receive queue and its SRQN.
pub(crate) struct Srq(*mut ffi::ibv_srq, u32);
/// A queue pair.
pub(crate) struct Qp(*mut ffi::ibv_qp);

macro_rules! send_sync {
    ($($t:ty),*) => {$(
        // SAFETY: a verbs handle; rdma-core serialises calls on it.
        unsafe impl Send for $t {}
        // SAFETY: as above; no method mutates through &self without verbs' locks.
        unsafe impl Sync for $t {}
    )*};
}
send_sync!(Pd, Mr, Cq, Srq, Qp);

impl Mr {
    pub(crate) fn lkey(&self) -> u32 {
        // SAFETY: a live ibv_mr from ibv_reg_mr.
        unsafe { (*self.0).lkey }
    }
    pub(crate) fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.0).rkey }
    }
}

fn access_bits(a: Access) -> u32 {
    let mut v = 0;
    if a.contains(Access::LOCAL_WRITE) {
        v |= ffi::IBV_ACCESS_LOCAL_WRITE;
    }
    if a.contains(Access::REMOTE_WRITE) {
        v |= ffi::IBV_ACCESS_REMOTE_WRITE;
    }
    if a.contains(Access::REMOTE_READ) {
        v |= ffi::IBV_ACCESS_REMOTE_READ;
    }
    if a.contains(Access::REMOTE_ATOMIC) {
        v |= ffi::IBV_ACCESS_REMOTE_ATOMIC;
    }
    v
}

impl Device {
    /// Opens `name`, or the first mlx5 device. Every reason it cannot
    /// names the device asked for.
    pub(crate) fn open(name: Option<&str>) -> Result<Arc<Device>, Error> {
        Self::open_any(name).map_err(|e| match (e, name) {
            (Error::NoDevice { reason }, Some(w)) if !reason.contains(&format!("{w:?}")) => {
                Error::NoDevice {
                    reason: format!("the NIC named {w:?} cannot be opened: {reason}"),
                }
            }
            (e, _) => e,
        })
    }

    fn open_any(name: Option<&str>) -> Result<Arc<Device>, Error> {
        // First: on a target without the doorbell barriers, say so rather
        // than a missing library.
        let arch = Arch::check()?;
        let verbs = Verbs::load()?;
        let mut n = 0;
        // SAFETY: n is a valid out-pointer.
        let list = unsafe { (verbs.ibv_get_device_list)(&mut n) };
        if list.is_null() {
            return Err(Error::NoDevice {
                reason: format!(
                    "ibv_get_device_list: {} (no RDMA support in this kernel?)",
                    std::io::Error::last_os_error()
                ),
            });
        }
        let mut found = None;
        let mut seen = Vec::new();
        for i in 0..n.max(0) as usize {
            // SAFETY: list holds n device pointers.
            let dev = unsafe { *list.add(i) };
            // SAFETY: dev is from the list; the name is a C string it owns.
            let dname = unsafe { CStr::from_ptr((verbs.ibv_get_device_name)(dev)) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: dev is from the list.
            let mlx5 = unsafe { (verbs.mlx5dv_is_supported)(dev) };
            if mlx5 && name.is_none_or(|w| w == dname) {
                // SAFETY: dev is from the list (still alive until freed).
                let ctx = unsafe { (verbs.ibv_open_device)(dev) };
                found = Some((ctx, dname));
                break;
            }
            seen.push(dname);
        }
        // SAFETY: list came from ibv_get_device_list; opened contexts stay
        // valid after it is freed.
        unsafe { (verbs.ibv_free_device_list)(list) };
        match found {
            Some((ctx, dname)) if !ctx.is_null() => {
                // SAFETY: a live context; `async_fd` is a plain int of it.
                let async_fd = unsafe { (*ctx).async_fd };
                let dev = Device {
                    ctx,
                    name: dname,
                    async_fd,
                    arch,
                    blueflames: Mutex::new(Vec::new()),
                    cqns: Mutex::new(HashMap::new()),
                    srqns: Mutex::new(HashMap::new()),
                    verbs,
                };
                // Once, here: `async_event` then never blocks in
                // `ibv_get_async_event` and waits in `poll` instead. (On
                // error `dev` drops and closes the context.)
                async_event::set_nonblocking(async_fd)?;
                Ok(Arc::new(dev))
            }
            Some(_) => Err(last_os_error("ibv_open_device")),
            None => Err(Error::NoDevice {
                reason: match name {
                    Some(w) => format!("no mlx5 device named {w:?} (devices: {seen:?})"),
                    None => format!("rdma-core lists no mlx5 device (devices: {seen:?})"),
                },
            }),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn alloc_pd(&self) -> Result<Pd, Error> {
        // SAFETY: a live context.
        let pd = unsafe { (self.verbs.ibv_alloc_pd)(self.ctx) };
        if pd.is_null() {
            return Err(last_os_error("ibv_alloc_pd"));
        }
        Ok(Pd(pd))
    }

    pub(crate) fn dealloc_pd(&self, pd: &Pd) {
        // SAFETY: pd is live and unused (its users hold Arcs of it).
        unsafe { (self.verbs.ibv_dealloc_pd)(pd.0) };
    }

    pub(crate) fn reg_mr(
        &self,
        pd: &Pd,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Mr, Error> {
        // SAFETY: the caller (Pd::register) guarantees the memory's lifetime.
        let mr =
            unsafe { (self.verbs.ibv_reg_mr)(pd.0, addr.cast(), len, access_bits(access) as i32) };
        if mr.is_null() {
            return Err(last_os_error("ibv_reg_mr"));
        }
        Ok(Mr(mr))
    }

    pub(crate) fn dereg_mr(&self, mr: &Mr) {
        // SAFETY: a live MR.
        unsafe { (self.verbs.ibv_dereg_mr)(mr.0) };
    }

    pub(crate) fn create_cq(&self, entries: u32) -> Result<(Cq, CqMem, u32), Error> {
        // Held until the CQN is recorded: an event about this CQ waits for
        // it rather than finding it missing.
        let mut cqns = lock(&self.cqns);
        // SAFETY: a live context; no channel, vector 0.
        let cq = unsafe {
            (self.verbs.ibv_create_cq)(
                self.ctx,
                entries as i32,
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        if cq.is_null() {
            return Err(last_os_error("ibv_create_cq"));
        }
        let mut out = zeroed::<ffi::mlx5dv_cq>();
        let mut obj = ffi::mlx5dv_obj::null();
        obj.cq.in_ = cq;
        obj.cq.out = &mut out;
        // SAFETY: obj points at a live CQ and a writable mlx5dv_cq.
        let rc = unsafe { (self.verbs.mlx5dv_init_obj)(&mut obj, ffi::MLX5DV_OBJ_CQ) };
        if rc != 0 {
            // SAFETY: the CQ we just created.
            unsafe { (self.verbs.ibv_destroy_cq)(cq) };
            return Err(rc_error("mlx5dv_init_obj(CQ)", rc));
        }
        if out.cqe_size != 64 {
            // SAFETY: as above.
            unsafe { (self.verbs.ibv_destroy_cq)(cq) };
            return Err(Error::InvalidAttr(format!(
                "CQE size {} (this crate parses 64-byte CQEs)",
                out.cqe_size
            )));
        }
        cqns.insert(cq as usize, out.cqn);
        Ok((
            Cq(cq, out.cqn),
            CqMem {
                buf: out.buf.cast(),
                cqe_cnt: out.cqe_cnt,
                dbrec: out.dbrec,
            },
            out.cqn,
        ))
    }

    pub(crate) fn destroy_cq(&self, cq: &Cq) {
        // Not under the table's lock: `ibv_destroy_cq` waits until every
        // event reported on the CQ is acknowledged, and `async_event` needs
        // the table to map one before it acknowledges it.
        // SAFETY: a live CQ whose QPs are destroyed (they hold Arcs of it).
        unsafe { (self.verbs.ibv_destroy_cq)(cq.0) };
        forget(&self.cqns, cq.0 as usize, cq.1);
    }

    pub(crate) fn create_srq(
        &self,
        hpd: &Pd,
        depth: u32,
        max_sge: u32,
    ) -> Result<(Srq, SrqMem, u32), Error> {
        let mut attr = ffi::ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: ffi::ibv_srq_attr {
                max_wr: depth,
                max_sge,
                srq_limit: 0,
            },
        };
        // Held until the SRQN is recorded (as in `create_cq`).
        let mut srqns = lock(&self.srqns);
        // SAFETY: a live PD and a valid attribute struct.
        let srq = unsafe { (self.verbs.ibv_create_srq)(hpd.0, &mut attr) };
        if srq.is_null() {
            return Err(last_os_error("ibv_create_srq"));
        }
        let mut out = zeroed::<ffi::mlx5dv_srq>();
        out.comp_mask = ffi::MLX5DV_SRQ_MASK_SRQN;
        let mut obj = ffi::mlx5dv_obj::null();
        obj.srq.in_ = srq;
        obj.srq.out = &mut out;
        // SAFETY: obj points at a live SRQ and a writable mlx5dv_srq.
        let rc = unsafe { (self.verbs.mlx5dv_init_obj)(&mut obj, ffi::MLX5DV_OBJ_SRQ) };
        if rc != 0 {
            // SAFETY: the SRQ we just created.
            unsafe { (self.verbs.ibv_destroy_srq)(srq) };
            return Err(rc_error("mlx5dv_init_obj(SRQ)", rc));
        }
        // libmlx5 links the WQEs in ring order with head 0 and tail at the
        // last WQE: the ring discipline of `Srq` relies on exactly that.
        let wqe_cnt = out.tail + 1;
        srqns.insert(srq as usize, out.srqn);
        Ok((
            Srq(srq, out.srqn),
            SrqMem {
                buf: out.buf.cast(),
                wqe_cnt,
                stride: out.stride,
                dbrec: out.dbrec,
            },
            out.srqn,
        ))
    }

    pub(crate) fn destroy_srq(&self, srq: &Srq) {
        // Not under the table's lock (as in `destroy_cq`).
        // SAFETY: a live SRQ whose QPs are gone.
        unsafe { (self.verbs.ibv_destroy_srq)(srq.0) };
        forget(&self.srqns, srq.0 as usize, srq.1);
    }

    pub(crate) fn create_qp(
        &self,
        hpd: &Pd,
        send_cq: &Cq,
        recv_cq: &Cq,
        srq: Option<&Srq>,
        caps: &mut QpCaps,
    ) -> Result<(Qp, QpMem, u32, Arc<BlueFlame>), Error> {
        let mut attr = ffi::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: send_cq.0,
            recv_cq: recv_cq.0,
            srq: srq.map_or(ptr::null_mut(), |s| s.0),
            cap: ffi::ibv_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: caps.max_recv_wr,
                max_send_sge: caps.max_send_sge,
                max_recv_sge: caps.max_recv_sge,
                max_inline_data: caps.max_inline,
            },
            qp_type: ffi::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: a live PD and CQs, a valid attribute struct.
        let qp = unsafe { (self.verbs.ibv_create_qp)(hpd.0, &mut attr) };
        if qp.is_null() {
            return Err(last_os_error("ibv_create_qp"));
        }
        // What the provider made (it rounds sizes up), so that `Qp::caps`
        // tells the truth.
        *caps = provider_caps(&attr.cap, srq.is_some());
        let mut out = zeroed::<ffi::mlx5dv_qp>();
        let mut obj = ffi::mlx5dv_obj::null();
        obj.qp.in_ = qp;
        obj.qp.out = &mut out;
        // SAFETY: obj points at a live QP and a writable mlx5dv_qp.
        let rc = unsafe { (self.verbs.mlx5dv_init_obj)(&mut obj, ffi::MLX5DV_OBJ_QP) };
        if rc != 0 {
            // SAFETY: the QP we just created.
            unsafe { (self.verbs.ibv_destroy_qp)(qp) };
            return Err(rc_error("mlx5dv_init_obj(QP)", rc));
        }
        if out.sq.stride != 64 {
            // SAFETY: as above.
            unsafe { (self.verbs.ibv_destroy_qp)(qp) };
            return Err(Error::InvalidAttr(format!(
                "send-queue stride {} (this crate writes 64-byte WQEBBs)",
                out.sq.stride
            )));
        }
        let bf = match self.blueflame(out.bf.reg.cast(), out.bf.size) {
            Ok(bf) => bf,
            Err(e) => {
                // SAFETY: as above.
                unsafe { (self.verbs.ibv_destroy_qp)(qp) };
                return Err(e);
            }
        };
        // SAFETY: a live QP.
        let qpn = unsafe { (*qp).qp_num };
        Ok((
            Qp(qp),
            QpMem {
                sq_buf: out.sq.buf.cast(),
                sq_wqe_cnt: out.sq.wqe_cnt,
                rq_buf: out.rq.buf.cast(),
                rq_wqe_cnt: out.rq.wqe_cnt,
                rq_stride: out.rq.stride,
                dbrec: out.dbrec,
            },
            qpn,
            bf,
        ))
    }

    /// The device's one [`BlueFlame`] for the register at `reg`: QPs that
    /// libmlx5 put on the same register share its lock and its half (see
    /// `doorbell.rs` for why every ring of a BlueFlame register locks).
    fn blueflame(&self, reg: *mut u8, size: u32) -> Result<Arc<BlueFlame>, Error> {
        let mut all = lock(&self.blueflames);
        if let Some(bf) = all.iter().find(|b| b.reg() == reg) {
            if bf.size() != size {
                return Err(Error::InvalidAttr(format!(
                    "register {reg:p} reported with BlueFlame halves of {size} and {} bytes",
                    bf.size()
                )));
            }
            return Ok(bf.clone());
        }
        let bf = Arc::new(BlueFlame::new(self.arch, reg, size)?);
        all.push(bf.clone());
        Ok(bf)
    }

    /// The next asynchronous event (`ibv_get_async_event`), waiting up to
    /// `timeout` for one (`None`: not at all); `Ok(None)` when none came.
    /// Several threads may call it: each event goes to one of them.
    pub(crate) fn async_event(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<AsyncEvent>, Error> {
        // `None` inside `Some`: a timeout too long to represent, no end.
        let deadline = timeout.map(async_event::deadline);
        loop {
            if let Some(e) = self.take_async_event()? {
                return Ok(Some(e));
            }
            let Some(deadline) = deadline else {
                return Ok(None);
            };
            if deadline.is_some_and(|d| d <= std::time::Instant::now()) {
                return Ok(None);
            }
            // Readable, interrupted or timed out: look again either way
            // (another thread may have taken the event; the deadline is
            // checked above).
            async_event::wait_readable(self.async_fd, deadline)?;
        }
    }

    /// One `ibv_get_async_event` on the non-blocking descriptor, mapped and
    /// acknowledged; `None` when no event is queued.
    fn take_async_event(&self) -> Result<Option<AsyncEvent>, Error> {
        let mut ev = ffi::ibv_async_event::empty();
        // ibv_get_async_event fails without setting errno when its `read`
        // returns short (0 at end of file: the device went away); clear
        // errno so that a stale EAGAIN cannot pass for "no event" forever.
        // SAFETY: this thread's errno, a valid int.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a live context and a writable event.
        if unsafe { (self.verbs.ibv_get_async_event)(self.ctx, &mut ev) } != 0 {
            let e = std::io::Error::last_os_error();
            return match (e.kind(), e.raw_os_error()) {
                (std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted, _) => Ok(None),
                (_, Some(0)) => Err(Error::Verb {
                    verb: "ibv_get_async_event",
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "short read of the async event descriptor (device removed?)",
                    ),
                }),
                _ => Err(Error::Verb {
                    verb: "ibv_get_async_event",
                    source: e,
                }),
            };
        }
        // SAFETY: an event from ibv_get_async_event, not yet acknowledged,
        // so a QP it names is alive (ibv_destroy_qp waits for the ack).
        let mapped = unsafe {
            async_event::map_event(
                &ev,
                |cq| lock(&self.cqns).get(&(cq as usize)).copied(),
                |srq| lock(&self.srqns).get(&(srq as usize)).copied(),
            )
        };
        // SAFETY: the event ibv_get_async_event filled, acknowledged once.
        unsafe { (self.verbs.ibv_ack_async_event)(&mut ev) };
        Ok(Some(mapped))
    }

    pub(crate) fn destroy_qp(&self, qp: &Qp) {
        // SAFETY: a live QP.
        unsafe { (self.verbs.ibv_destroy_qp)(qp.0) };
    }

    pub(crate) fn query_state(&self, qp: &Qp) -> Result<QpState, Error> {
        let mut attr = ffi::ibv_qp_attr::default();
        let mut init = zeroed::<ffi::ibv_qp_init_attr>();
        // SAFETY: a live QP and writable attribute structs.
        let rc =
            unsafe { (self.verbs.ibv_query_qp)(qp.0, &mut attr, ffi::IBV_QP_STATE, &mut init) };
        if rc != 0 {
            return Err(rc_error("ibv_query_qp", rc));
        }
        Ok(match attr.qp_state {
            ffi::IBV_QPS_RESET => QpState::Reset,
            ffi::IBV_QPS_INIT => QpState::Init,
            ffi::IBV_QPS_RTR => QpState::Rtr,
            ffi::IBV_QPS_RTS => QpState::Rts,
            _ => QpState::Error,
        })
    }

    pub(crate) fn modify_qp(
        &self,
        qp: &Qp,
        to: QpState,
        remote: Option<&ConnInfo>,
        o: &ConnectOpts,
        local_psn: u32,
    ) -> Result<(), Error> {
        let mut a = ffi::ibv_qp_attr::default();
        let mask = match to {
            QpState::Reset => {
                a.qp_state = ffi::IBV_QPS_RESET;
                ffi::IBV_QP_STATE
            }
            QpState::Error => {
                a.qp_state = ffi::IBV_QPS_ERR;
                ffi::IBV_QP_STATE
            }
            QpState::Init => {
                a.qp_state = ffi::IBV_QPS_INIT;
                a.pkey_index = 0;
                a.port_num = o.port;
                a.qp_access_flags = access_bits(o.access);
                ffi::IBV_QP_STATE
                    | ffi::IBV_QP_PKEY_INDEX
                    | ffi::IBV_QP_PORT
                    | ffi::IBV_QP_ACCESS_FLAGS
            }
            QpState::Rtr => {
                let r = remote.ok_or(Error::InvalidAttr("RTR needs the remote info".into()))?;
                // SAFETY: a live context opened through these verbs.
                let port = unsafe { self.verbs.query_port(self.ctx, o.port)? };
                a.qp_state = ffi::IBV_QPS_RTR;
                a.path_mtu = path_mtu(o.mtu, port.active_mtu) as u32;
                a.dest_qp_num = r.qpn;
                a.rq_psn = r.psn;
                a.max_dest_rd_atomic = o.max_rd_atomic;
                a.min_rnr_timer = o.min_rnr_timer;
                a.ah_attr.port_num = o.port;
                a.ah_attr.dlid = r.lid;
                if r.lid == 0 {
                    // RoCE: route by GID.
                    a.ah_attr.is_global = 1;
                    a.ah_attr.grh.dgid.raw = r.gid;
                    a.ah_attr.grh.sgid_index = o.gid_index;
                    a.ah_attr.grh.hop_limit = 64;
                }
                ffi::IBV_QP_STATE
                    | ffi::IBV_QP_AV
                    | ffi::IBV_QP_PATH_MTU
                    | ffi::IBV_QP_DEST_QPN
                    | ffi::IBV_QP_RQ_PSN
                    | ffi::IBV_QP_MAX_DEST_RD_ATOMIC
                    | ffi::IBV_QP_MIN_RNR_TIMER
            }
            QpState::Rts => {
                a.qp_state = ffi::IBV_QPS_RTS;
                a.timeout = o.timeout;
                a.retry_cnt = o.retry_cnt;
                a.rnr_retry = o.rnr_retry;
                a.sq_psn = local_psn;
                a.max_rd_atomic = o.max_rd_atomic;
                ffi::IBV_QP_STATE
                    | ffi::IBV_QP_TIMEOUT
                    | ffi::IBV_QP_RETRY_CNT
                    | ffi::IBV_QP_RNR_RETRY
                    | ffi::IBV_QP_SQ_PSN
                    | ffi::IBV_QP_MAX_QP_RD_ATOMIC
            }
        };
        // SAFETY: a live QP, a valid attribute struct and mask.
        let rc = unsafe { (self.verbs.ibv_modify_qp)(qp.0, &mut a, mask) };
        if rc != 0 {
            return Err(rc_error("ibv_modify_qp", rc));
        }
        Ok(())
    }

    /// (LID, GID) of `port` at `gid_index`.
    pub(crate) fn port_addr(&self, port: u8, gid_index: u8) -> Result<(u16, [u8; 16]), Error> {
        // SAFETY: a live context opened through these verbs.
        let attr = unsafe { self.verbs.query_port(self.ctx, port)? };
        let mut gid = ffi::ibv_gid::default();
        // SAFETY: a live context and a writable gid.
        let rc =
            unsafe { (self.verbs.ibv_query_gid)(self.ctx, port, i32::from(gid_index), &mut gid) };
        if rc != 0 {
            return Err(rc_error("ibv_query_gid", rc));
        }
        let lid = if attr.link_layer == ffi::IBV_LINK_LAYER_ETHERNET {
            0
        } else {
            attr.lid
        };
        Ok((lid, gid.raw))
    }
}

/// Removes `key` from a CQN/SRQN table if it still maps to `number`: a
/// CQ created at the same address after the destroy returned must stay.
fn forget(table: &Mutex<HashMap<usize, u32>>, key: usize, number: u32) {
    let mut t = lock(table);
    if t.get(&key) == Some(&number) {
        t.remove(&key);
    }
}

/// The path MTU to program at RTR: the one asked for, but no larger than
/// the port's `active_mtu`. Packets larger than the link carries are
/// dropped, and an RC QP then retries until `TransportRetryExceeded`: the
/// 4096 default on a RoCE port with a 1500-byte Ethernet MTU (active MTU
/// 1024) fails every message over 1024 bytes that way. An `active_mtu`
/// outside the `IBV_MTU_*` values (which no port reports) leaves the
/// request as it is, for `ibv_modify_qp` to judge.
///
/// Only the local port is known here; if the two ends' ports differ, set
/// `ConnectOpts::mtu` to the smaller of the two on both.
pub(crate) fn path_mtu(requested: Mtu, active_mtu: c_uint) -> Mtu {
    let active = match active_mtu {
        ffi::IBV_MTU_256 => Mtu::M256,
        ffi::IBV_MTU_512 => Mtu::M512,
        ffi::IBV_MTU_1024 => Mtu::M1024,
        ffi::IBV_MTU_2048 => Mtu::M2048,
        ffi::IBV_MTU_4096 => Mtu::M4096,
        _ => return requested,
    };
    // The IBV_MTU_* encoding grows with the size (checked in the tests).
    if (active as u32) < (requested as u32) {
        active
    } else {
        requested
    }
}

/// The caps a QP really has, from the `cap` that `ibv_create_qp` wrote
/// back: libmlx5 rounds the queues and the receive scatter list up (the
/// receive WQE stride is a power of two, so asking for 3 SGEs gives 4) and
/// reports the inline size its send WQE size allows. A QP on an SRQ has no
/// receive queue of its own: 0 receive WQEs and SGEs, whatever the
/// provider says.
///
/// Clamped only where this crate could not honour the provider's figure: a
/// WQE's `ds` count has 6 bits (at most [`MAX_DS`] 16-byte segments), so
/// the inline size and gather list are capped to what fits after the
/// control and remote-address segments (libmlx5's send WQEs are much
/// smaller than those 1008 bytes in practice).
pub(crate) fn provider_caps(cap: &ffi::ibv_qp_cap, srq: bool) -> QpCaps {
    let max_segs = (MAX_DS - 2) as u32;
    QpCaps {
        max_send_wr: cap.max_send_wr,
        max_recv_wr: if srq { 0 } else { cap.max_recv_wr },
        max_send_sge: cap.max_send_sge.min(max_segs),
        max_recv_sge: if srq { 0 } else { cap.max_recv_sge },
        // The inline header is 4 bytes of the first segment.
        max_inline: cap.max_inline_data.min(max_segs * SEG as u32 - 4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTUS: [Mtu; 5] = [Mtu::M256, Mtu::M512, Mtu::M1024, Mtu::M2048, Mtu::M4096];

    fn bytes(m: Mtu) -> u32 {
        128 << (m as u32)
    }

    #[test]
    fn mtu_discriminants_are_the_verbs_encoding() {
        // ffi's values are checked against verbs.h by tests/hw_layout.rs.
        let verbs = [
            ffi::IBV_MTU_256,
            ffi::IBV_MTU_512,
            ffi::IBV_MTU_1024,
            ffi::IBV_MTU_2048,
            ffi::IBV_MTU_4096,
        ];
        for (m, v) in MTUS.into_iter().zip(verbs) {
            assert_eq!(m as u32, v);
        }
        assert_eq!(MTUS.map(bytes), [256, 512, 1024, 2048, 4096]);
    }

    #[test]
    fn path_mtu_is_the_smaller_of_request_and_port() {
        for requested in MTUS {
            for active in MTUS {
                let got = path_mtu(requested, active as c_uint);
                assert_eq!(
                    bytes(got),
                    bytes(requested).min(bytes(active)),
                    "requested {requested:?}, port {active:?}"
                );
            }
        }
    }

    #[test]
    fn default_4096_on_a_1500_byte_roce_port_becomes_1024() {
        // A 1500-byte Ethernet MTU leaves room for 1024-byte RoCE payloads:
        // the port reports IBV_MTU_1024.
        let opts = ConnectOpts::default();
        assert_eq!(opts.mtu, Mtu::M4096);
        assert_eq!(path_mtu(opts.mtu, ffi::IBV_MTU_1024), Mtu::M1024);
    }

    #[test]
    fn unknown_active_mtu_leaves_the_request() {
        for bad in [0, 6, 255] {
            assert_eq!(path_mtu(Mtu::M2048, bad), Mtu::M2048);
        }
    }

    fn cap(
        send_wr: u32,
        recv_wr: u32,
        send_sge: u32,
        recv_sge: u32,
        inline: u32,
    ) -> ffi::ibv_qp_cap {
        ffi::ibv_qp_cap {
            max_send_wr: send_wr,
            max_recv_wr: recv_wr,
            max_send_sge: send_sge,
            max_recv_sge: recv_sge,
            max_inline_data: inline,
        }
    }

    #[test]
    fn caps_are_what_the_provider_returned() {
        // Asked for the defaults (128, 128, 2, 2, 64); libmlx5 rounds up.
        let got = provider_caps(&cap(255, 128, 2, 4, 188), false);
        assert_eq!(
            got,
            QpCaps {
                max_send_wr: 255,
                max_recv_wr: 128,
                max_send_sge: 2,
                max_recv_sge: 4,
                max_inline: 188,
            }
        );
        assert!(got.max_ds() <= MAX_DS);
    }

    #[test]
    fn a_qp_on_an_srq_has_no_receive_queue() {
        let got = provider_caps(&cap(128, 7, 2, 3, 64), true);
        assert_eq!((got.max_recv_wr, got.max_recv_sge), (0, 0));
        assert_eq!(
            (got.max_send_wr, got.max_send_sge, got.max_inline),
            (128, 2, 64)
        );
    }

    #[test]
    fn caps_never_allow_wqes_the_ds_field_cannot_express() {
        let got = provider_caps(&cap(64, 64, 1000, 2, 100_000), false);
        assert!(got.max_ds() <= MAX_DS, "{got:?}: max_ds {}", got.max_ds());
        assert_eq!(got.max_send_sge, 61);
        assert_eq!(got.max_inline, 61 * 16 - 4);
        // The largest inline WQE exactly fills 63 segments.
        assert_eq!(got.max_ds(), MAX_DS);
    }

    #[test]
    fn forget_keeps_an_entry_reused_by_a_newer_object() {
        let t = Mutex::new(HashMap::from([(0x1000usize, 5u32)]));
        forget(&t, 0x1000, 4); // an older CQ at the same address
        assert_eq!(lock(&t).get(&0x1000), Some(&5));
        forget(&t, 0x1000, 5);
        assert!(lock(&t).is_empty());
    }
}
