//! Hand-written declarations of the rdma-core ABI the hardware backend's
//! control path uses, and [`Verbs`], the two rdma-core libraries opened at
//! run time.
//!
//! Everything here is transcribed from `<infiniband/verbs.h>` and
//! `<infiniband/mlx5dv.h>` (rdma-core v44, Debian's libibverbs-dev) for
//! x86_64 and aarch64 Linux; `tests/hw_layout.rs` compares every size,
//! alignment, field offset, field size and constant below with what the C
//! compiler computes from the real headers. Only the types libibverbs
//! allocates and we merely point at (`ibv_device`, `ibv_cq`,
//! `ibv_comp_channel`) are opaque; every struct we allocate, read or pass by
//! pointer to be filled is declared whole so that libibverbs never writes
//! past the end of our copy (`ibv_context` too, whose `async_fd` we read). The pthread members of `ibv_qp` and `ibv_srq`
//! take their types from the `libc` crate, which models the target's C
//! library (they differ between x86_64 and aarch64 glibc).
//!
//! Nothing is linked: [`Verbs::load`] opens `libibverbs.so.1` and
//! `libmlx5.so.1` with `dlopen` and resolves each function with `dlsym`, so
//! the crate builds and its software device runs on machines without
//! rdma-core.
//!
//! # Symbol versions and header wrappers
//!
//! libibverbs exports most verbs twice: a hidden `IBVERBS_1.0` compatibility
//! version (`objdump -T` prints it in parentheses) and the default
//! `IBVERBS_1.1` one. An unversioned `dlsym` ignores hidden versions and
//! returns the default, which is the one a C program compiled against
//! today's headers links; a unit test checks this against `dlvsym`.
//!
//! Two of the verbs we need are wrapped by `static inline` functions and
//! macros in verbs.h, so their prototypes in the header are not what a C
//! caller actually calls:
//!
//! * `ibv_reg_mr` is a macro that calls the exported `ibv_reg_mr`
//!   (`IBVERBS_1.1`, `int access`) when the access flags are a compile-time
//!   constant without bits of `IBV_ACCESS_OPTIONAL_RANGE`, and
//!   `ibv_reg_mr_iova2` otherwise. We only use the four classic access bits,
//!   so we resolve the exported `ibv_reg_mr`, exactly what the macro
//!   compiles to for us.
//! * `ibv_query_port` is a macro around an inline function that calls the
//!   provider's `query_port` op through the private `verbs_context` (which
//!   lies before `ibv_context` in memory) and falls back to the exported
//!   `ibv_query_port`. That exported symbol (`IBVERBS_1.1`) takes a
//!   `struct _compat_ibv_port_attr *`: `ibv_port_attr` without its last
//!   member, `port_cap_flags2`. It fills exactly
//!   `offset_of!(ibv_port_attr, port_cap_flags2)` bytes and leaves the rest
//!   untouched (libibverbs' `verbs.c`: it calls `__lib_query_port` with
//!   `sizeof(struct _compat_ibv_port_attr)`, which queries the provider into
//!   a whole temporary `ibv_port_attr` and copies that many bytes out). We resolve that symbol rather than reach into
//!   `verbs_context`; [`Verbs::query_port`] zeroes the whole struct first, so
//!   `port_cap_flags2` reads 0 (the control path does not use it).
//!
//! `ibv_get_device_list` is also a macro, but only when rdma-core is built
//! with static providers (`RDMA_STATIC_PROVIDERS`); the shared library's
//! exported symbol is the plain function.

#![allow(
    dead_code,
    non_camel_case_types,
    reason = "the C ABI keeps its C names and is declared whole; the backend uses a subset"
)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::marker::{PhantomData, PhantomPinned};

use libloading::Library;

use crate::Error;

/// The soname of rdma-core's verbs library.
pub(crate) const LIBIBVERBS: &str = "libibverbs.so.1";
/// The soname of rdma-core's mlx5 provider, which exports the direct verbs.
pub(crate) const LIBMLX5: &str = "libmlx5.so.1";

macro_rules! opaque {
    ($($(#[$attr:meta])* $name:ident;)*) => {$(
        $(#[$attr])*
        #[repr(C)]
        pub(crate) struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
    )*};
}

opaque! {
    /// `struct ibv_device`: only ever behind a pointer from
    /// `ibv_get_device_list`; its name comes from `ibv_get_device_name`.
    ibv_device;
    /// `struct ibv_cq`: only ever behind a pointer; its buffer and doorbell
    /// record come from `mlx5dv_init_obj`.
    ibv_cq;
    /// `struct ibv_comp_channel`: unused (always null), declared for the
    /// `ibv_create_cq` prototype.
    ibv_comp_channel;
}

/// `struct ibv_context`: an open device. libibverbs allocates it (inside
/// its private `verbs_context`, which lies before it in memory); we only
/// read `async_fd` through the pointer `ibv_open_device` returns.
#[repr(C)]
pub(crate) struct ibv_context {
    /// The device it was opened from.
    pub(crate) device: *mut ibv_device,
    /// `struct ibv_context_ops`: the provider's legacy op table, 32
    /// function pointers (checked by size); never called from here.
    pub(crate) ops: [*mut c_void; 32],
    /// The uverbs command descriptor.
    pub(crate) cmd_fd: c_int,
    /// The descriptor `ibv_get_async_event` reads events from.
    pub(crate) async_fd: c_int,
    /// Completion vectors.
    pub(crate) num_comp_vectors: c_int,
    /// libibverbs' lock.
    pub(crate) mutex: libc::pthread_mutex_t,
    /// Marks an extended (`verbs_context`) context.
    pub(crate) abi_compat: *mut c_void,
}

/// `ibv_async_event.element` (an anonymous union in C): what the event is
/// about, by `event_type`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union ibv_async_event_element {
    /// `IBV_EVENT_CQ_ERR`.
    pub(crate) cq: *mut ibv_cq,
    /// The QP events.
    pub(crate) qp: *mut ibv_qp,
    /// `IBV_EVENT_SRQ_ERR`, `IBV_EVENT_SRQ_LIMIT_REACHED`.
    pub(crate) srq: *mut ibv_srq,
    /// `IBV_EVENT_WQ_FATAL` (`struct ibv_wq`, unused here).
    pub(crate) wq: *mut c_void,
    /// The port events.
    pub(crate) port_num: c_int,
}

/// `struct ibv_async_event`: filled by `ibv_get_async_event`, given back to
/// `ibv_ack_async_event`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ibv_async_event {
    /// The object the event is about.
    pub(crate) element: ibv_async_event_element,
    /// `IBV_EVENT_*`.
    pub(crate) event_type: c_uint,
}

impl ibv_async_event {
    /// An event with a null element, to be filled by `ibv_get_async_event`.
    pub(crate) fn empty() -> Self {
        ibv_async_event {
            element: ibv_async_event_element {
                qp: std::ptr::null_mut(),
            },
            event_type: 0,
        }
    }
}

/// `union ibv_gid`: a 128-bit GID, in network byte order. The union's other
/// member (two `__be64`) gives it 8-byte alignment, hence `align(8)`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ibv_gid {
    /// The GID's bytes.
    pub(crate) raw: [u8; 16],
}

/// `struct ibv_pd`: a protection domain.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ibv_pd {
    /// The context it belongs to.
    pub(crate) context: *mut ibv_context,
    /// The kernel's handle.
    pub(crate) handle: u32,
}

/// `struct ibv_mr`: a registered memory region.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ibv_mr {
    /// The context it belongs to.
    pub(crate) context: *mut ibv_context,
    /// Its protection domain.
    pub(crate) pd: *mut ibv_pd,
    /// Start of the registered range.
    pub(crate) addr: *mut c_void,
    /// Length of the registered range in bytes.
    pub(crate) length: usize,
    /// The kernel's handle.
    pub(crate) handle: u32,
    /// Local key, for SGEs of this process's WQEs.
    pub(crate) lkey: u32,
    /// Remote key, for peers' RDMA and atomic WQEs.
    pub(crate) rkey: u32,
}

/// `struct ibv_srq_attr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ibv_srq_attr {
    /// Receive WQEs (in: at least; out: actual).
    pub(crate) max_wr: u32,
    /// Scatter entries per WQE (in: at least; out: actual).
    pub(crate) max_sge: u32,
    /// Limit event threshold (0: none).
    pub(crate) srq_limit: u32,
}

/// `struct ibv_srq_init_attr`: the argument of `ibv_create_srq`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ibv_srq_init_attr {
    /// Returned in async events.
    pub(crate) srq_context: *mut c_void,
    /// Sizes; updated to the actual ones.
    pub(crate) attr: ibv_srq_attr,
}

/// `struct ibv_srq`: a shared receive queue.
#[repr(C)]
pub(crate) struct ibv_srq {
    /// The context it belongs to.
    pub(crate) context: *mut ibv_context,
    /// `ibv_srq_init_attr::srq_context`.
    pub(crate) srq_context: *mut c_void,
    /// Its protection domain.
    pub(crate) pd: *mut ibv_pd,
    /// The kernel's handle.
    pub(crate) handle: u32,
    /// libibverbs' lock for async events.
    pub(crate) mutex: libc::pthread_mutex_t,
    /// libibverbs' condition for async events.
    pub(crate) cond: libc::pthread_cond_t,
    /// Async events acknowledged.
    pub(crate) events_completed: u32,
}

/// `struct ibv_qp_cap`: queue sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ibv_qp_cap {
    /// Send WQEs.
    pub(crate) max_send_wr: u32,
    /// Receive WQEs.
    pub(crate) max_recv_wr: u32,
    /// Gather entries per send WQE.
    pub(crate) max_send_sge: u32,
    /// Scatter entries per receive WQE.
    pub(crate) max_recv_sge: u32,
    /// Inline payload bytes per send WQE.
    pub(crate) max_inline_data: u32,
}

/// `struct ibv_qp_init_attr`: the argument of `ibv_create_qp`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ibv_qp_init_attr {
    /// Returned in async events.
    pub(crate) qp_context: *mut c_void,
    /// CQ of send completions.
    pub(crate) send_cq: *mut ibv_cq,
    /// CQ of receive completions.
    pub(crate) recv_cq: *mut ibv_cq,
    /// SRQ to receive through, or null.
    pub(crate) srq: *mut ibv_srq,
    /// Sizes; updated to the actual ones.
    pub(crate) cap: ibv_qp_cap,
    /// `IBV_QPT_*`.
    pub(crate) qp_type: c_uint,
    /// Nonzero: every send WQE generates a completion.
    pub(crate) sq_sig_all: c_int,
}

/// `struct ibv_qp`: a queue pair.
#[repr(C)]
pub(crate) struct ibv_qp {
    /// The context it belongs to.
    pub(crate) context: *mut ibv_context,
    /// `ibv_qp_init_attr::qp_context`.
    pub(crate) qp_context: *mut c_void,
    /// Its protection domain.
    pub(crate) pd: *mut ibv_pd,
    /// CQ of send completions.
    pub(crate) send_cq: *mut ibv_cq,
    /// CQ of receive completions.
    pub(crate) recv_cq: *mut ibv_cq,
    /// Its SRQ, or null.
    pub(crate) srq: *mut ibv_srq,
    /// The kernel's handle.
    pub(crate) handle: u32,
    /// The QP number peers address.
    pub(crate) qp_num: u32,
    /// `IBV_QPS_*` as of the last `ibv_modify_qp`/`ibv_query_qp` with
    /// `IBV_QP_STATE`.
    pub(crate) state: c_uint,
    /// `IBV_QPT_*`.
    pub(crate) qp_type: c_uint,
    /// libibverbs' lock for async events.
    pub(crate) mutex: libc::pthread_mutex_t,
    /// libibverbs' condition for async events.
    pub(crate) cond: libc::pthread_cond_t,
    /// Async events acknowledged.
    pub(crate) events_completed: u32,
}

/// `struct ibv_global_route`: the GRH part of an address vector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ibv_global_route {
    /// Destination GID.
    pub(crate) dgid: ibv_gid,
    /// IPv6 flow label.
    pub(crate) flow_label: u32,
    /// Index of the source GID in the port's table.
    pub(crate) sgid_index: u8,
    /// Hop limit (TTL).
    pub(crate) hop_limit: u8,
    /// Traffic class (DSCP and ECN).
    pub(crate) traffic_class: u8,
}

/// `struct ibv_ah_attr`: an address vector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ibv_ah_attr {
    /// Global route; used when `is_global` (always on RoCE).
    pub(crate) grh: ibv_global_route,
    /// Destination LID (InfiniBand).
    pub(crate) dlid: u16,
    /// Service level.
    pub(crate) sl: u8,
    /// Source path bits.
    pub(crate) src_path_bits: u8,
    /// `IBV_RATE_*` (0: port rate).
    pub(crate) static_rate: u8,
    /// Nonzero: `grh` is valid.
    pub(crate) is_global: u8,
    /// Local port (from 1).
    pub(crate) port_num: u8,
}

/// `struct ibv_qp_attr`: the argument of `ibv_modify_qp`/`ibv_query_qp`;
/// the `IBV_QP_*` mask says which members count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ibv_qp_attr {
    /// `IBV_QPS_*` to move to.
    pub(crate) qp_state: c_uint,
    /// `IBV_QPS_*` assumed current.
    pub(crate) cur_qp_state: c_uint,
    /// `IBV_MTU_*`.
    pub(crate) path_mtu: c_uint,
    /// `IBV_MIG_*`.
    pub(crate) path_mig_state: c_uint,
    /// Q_Key (UD only).
    pub(crate) qkey: u32,
    /// Expected PSN of the first incoming packet.
    pub(crate) rq_psn: u32,
    /// PSN of the first outgoing packet.
    pub(crate) sq_psn: u32,
    /// The peer's QP number.
    pub(crate) dest_qp_num: u32,
    /// `IBV_ACCESS_*` remote operations allowed.
    pub(crate) qp_access_flags: c_uint,
    /// Queue sizes.
    pub(crate) cap: ibv_qp_cap,
    /// Primary path.
    pub(crate) ah_attr: ibv_ah_attr,
    /// Alternate path.
    pub(crate) alt_ah_attr: ibv_ah_attr,
    /// P_Key index.
    pub(crate) pkey_index: u16,
    /// Alternate path's P_Key index.
    pub(crate) alt_pkey_index: u16,
    /// Nonzero: raise an event when SQD is reached.
    pub(crate) en_sqd_async_notify: u8,
    /// Query only: the send queue is draining.
    pub(crate) sq_draining: u8,
    /// Outstanding RDMA reads/atomics as initiator.
    pub(crate) max_rd_atomic: u8,
    /// Outstanding RDMA reads/atomics as responder.
    pub(crate) max_dest_rd_atomic: u8,
    /// Minimum RNR NAK timer (encoded).
    pub(crate) min_rnr_timer: u8,
    /// Local port (from 1).
    pub(crate) port_num: u8,
    /// Local ACK timeout (4.096 µs × 2^timeout).
    pub(crate) timeout: u8,
    /// Retries on timeout.
    pub(crate) retry_cnt: u8,
    /// Retries on RNR NAK (7: infinite).
    pub(crate) rnr_retry: u8,
    /// Alternate path's port.
    pub(crate) alt_port_num: u8,
    /// Alternate path's ACK timeout.
    pub(crate) alt_timeout: u8,
    /// Rate limit in kbps (packet pacing).
    pub(crate) rate_limit: u32,
}

/// `struct ibv_port_attr`: the result of `ibv_query_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ibv_port_attr {
    /// `IBV_PORT_*` logical state.
    pub(crate) state: c_uint,
    /// `IBV_MTU_*` the port supports.
    pub(crate) max_mtu: c_uint,
    /// `IBV_MTU_*` in use.
    pub(crate) active_mtu: c_uint,
    /// GID table entries.
    pub(crate) gid_tbl_len: c_int,
    /// Capability bits.
    pub(crate) port_cap_flags: u32,
    /// Largest message in bytes.
    pub(crate) max_msg_sz: u32,
    /// Bad P_Key counter.
    pub(crate) bad_pkey_cntr: u32,
    /// Q_Key violation counter.
    pub(crate) qkey_viol_cntr: u32,
    /// P_Key table entries.
    pub(crate) pkey_tbl_len: u16,
    /// The port's LID (InfiniBand).
    pub(crate) lid: u16,
    /// The subnet manager's LID.
    pub(crate) sm_lid: u16,
    /// LID mask control.
    pub(crate) lmc: u8,
    /// Virtual lanes.
    pub(crate) max_vl_num: u8,
    /// The subnet manager's service level.
    pub(crate) sm_sl: u8,
    /// Subnet propagation delay.
    pub(crate) subnet_timeout: u8,
    /// Type of initialization the SM performed.
    pub(crate) init_type_reply: u8,
    /// Link width (encoded).
    pub(crate) active_width: u8,
    /// Link speed (encoded).
    pub(crate) active_speed: u8,
    /// Physical state.
    pub(crate) phys_state: u8,
    /// `IBV_LINK_LAYER_*`.
    pub(crate) link_layer: u8,
    /// `IBV_QPF_*` flags.
    pub(crate) flags: u8,
    /// More capability bits. The exported `ibv_query_port` does not write
    /// this member (see the module docs).
    pub(crate) port_cap_flags2: u16,
}

/// `mlx5dv_qp.sq`/`mlx5dv_qp.rq` (anonymous in C): a work queue's buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct mlx5dv_qp_wq {
    /// First WQE.
    pub(crate) buf: *mut c_void,
    /// WQEs (a power of two).
    pub(crate) wqe_cnt: u32,
    /// Bytes per WQE (send: 64, the WQEBB; receive: 16 × scatter entries).
    pub(crate) stride: u32,
}

/// `mlx5dv_qp.bf` (anonymous in C): the BlueFlame register.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct mlx5dv_qp_bf {
    /// The mapped UAR BlueFlame register.
    pub(crate) reg: *mut c_void,
    /// Bytes per BlueFlame buffer (0: doorbell writes only).
    pub(crate) size: u32,
}

/// `struct mlx5dv_qp`: the queue pair as the hardware sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct mlx5dv_qp {
    /// Doorbell record: `[0]` receive counter, `[1]` send counter
    /// (big-endian).
    pub(crate) dbrec: *mut u32,
    /// Send queue.
    pub(crate) sq: mlx5dv_qp_wq,
    /// Receive queue (empty when the QP uses an SRQ).
    pub(crate) rq: mlx5dv_qp_wq,
    /// BlueFlame/doorbell register.
    pub(crate) bf: mlx5dv_qp_bf,
    /// In: `MLX5DV_QP_MASK_*` asked for; out: those filled.
    pub(crate) comp_mask: u64,
    /// `mmap` offset of the UAR (`MLX5DV_QP_MASK_UAR_MMAP_OFFSET`).
    pub(crate) uar_mmap_offset: libc::off_t,
    /// TIR number (`MLX5DV_QP_MASK_RAW_QP_HANDLES`, raw packet QPs).
    pub(crate) tirn: u32,
    /// TIS number (`MLX5DV_QP_MASK_RAW_QP_HANDLES`).
    pub(crate) tisn: u32,
    /// RQ number (`MLX5DV_QP_MASK_RAW_QP_HANDLES`).
    pub(crate) rqn: u32,
    /// SQ number (`MLX5DV_QP_MASK_RAW_QP_HANDLES`).
    pub(crate) sqn: u32,
    /// TIR ICM address (`MLX5DV_QP_MASK_RAW_QP_TIR_ADDR`).
    pub(crate) tir_icm_addr: u64,
}

/// `struct mlx5dv_cq`: the completion queue as the hardware sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct mlx5dv_cq {
    /// First CQE.
    pub(crate) buf: *mut c_void,
    /// Doorbell record: `[0]` consumer index, `[1]` arm (big-endian).
    pub(crate) dbrec: *mut u32,
    /// CQEs (a power of two).
    pub(crate) cqe_cnt: u32,
    /// Bytes per CQE (64 or 128).
    pub(crate) cqe_size: u32,
    /// The UAR for arming.
    pub(crate) cq_uar: *mut c_void,
    /// CQ number.
    pub(crate) cqn: u32,
    /// In/out: no flags defined yet; pass 0.
    pub(crate) comp_mask: u64,
}

/// `struct mlx5dv_srq`: the shared receive queue as the hardware sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct mlx5dv_srq {
    /// First WQE.
    pub(crate) buf: *mut c_void,
    /// Doorbell record: `[0]` receive counter (big-endian).
    pub(crate) dbrec: *mut u32,
    /// Bytes per WQE.
    pub(crate) stride: u32,
    /// Index of the first free WQE of the free list.
    pub(crate) head: u32,
    /// Index of the last free WQE of the free list.
    pub(crate) tail: u32,
    /// In: `MLX5DV_SRQ_MASK_*` asked for; out: those filled.
    pub(crate) comp_mask: u64,
    /// SRQ number (`MLX5DV_SRQ_MASK_SRQN`).
    pub(crate) srqn: u32,
}

/// One `mlx5dv_obj` member (anonymous in C): the verbs object to look at and
/// where to write what the hardware sees.
#[repr(C)]
pub(crate) struct mlx5dv_obj_pair<I, O> {
    /// The verbs object (`in` in C).
    pub(crate) in_: *mut I,
    /// Where to write its mlx5 view.
    pub(crate) out: *mut O,
}

// Not derived: derives would require `I: Clone` etc. of the pointees.
impl<I, O> Clone for mlx5dv_obj_pair<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for mlx5dv_obj_pair<I, O> {}

impl<I, O> std::fmt::Debug for mlx5dv_obj_pair<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mlx5dv_obj_pair")
            .field("in", &self.in_)
            .field("out", &self.out)
            .finish()
    }
}

/// `struct mlx5dv_obj`: the argument of `mlx5dv_init_obj`; it reads only the
/// members whose `MLX5DV_OBJ_*` bit is set. The members this crate never
/// uses point at `c_void`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct mlx5dv_obj {
    /// `MLX5DV_OBJ_QP`.
    pub(crate) qp: mlx5dv_obj_pair<ibv_qp, mlx5dv_qp>,
    /// `MLX5DV_OBJ_CQ`.
    pub(crate) cq: mlx5dv_obj_pair<ibv_cq, mlx5dv_cq>,
    /// `MLX5DV_OBJ_SRQ`.
    pub(crate) srq: mlx5dv_obj_pair<ibv_srq, mlx5dv_srq>,
    /// `MLX5DV_OBJ_RWQ` (`ibv_wq`, `mlx5dv_rwq`): unused.
    pub(crate) rwq: mlx5dv_obj_pair<c_void, c_void>,
    /// `MLX5DV_OBJ_DM` (`ibv_dm`, `mlx5dv_dm`): unused.
    pub(crate) dm: mlx5dv_obj_pair<c_void, c_void>,
    /// `MLX5DV_OBJ_AH` (`ibv_ah`, `mlx5dv_ah`): unused.
    pub(crate) ah: mlx5dv_obj_pair<c_void, c_void>,
    /// `MLX5DV_OBJ_PD` (`ibv_pd`, `mlx5dv_pd`): unused.
    pub(crate) pd: mlx5dv_obj_pair<c_void, c_void>,
}

impl mlx5dv_obj {
    /// All members null: `mlx5dv_init_obj` then reads only what the caller
    /// sets.
    pub(crate) fn null() -> Self {
        fn pair<I, O>() -> mlx5dv_obj_pair<I, O> {
            mlx5dv_obj_pair {
                in_: std::ptr::null_mut(),
                out: std::ptr::null_mut(),
            }
        }
        Self {
            qp: pair(),
            cq: pair(),
            srq: pair(),
            rwq: pair(),
            dm: pair(),
            ah: pair(),
            pd: pair(),
        }
    }
}

// enum ibv_qp_type (the ones the control path names).
/// `IBV_QPT_RC`: reliable connected.
pub(crate) const IBV_QPT_RC: c_uint = 2;
/// `IBV_QPT_UC`: unreliable connected.
pub(crate) const IBV_QPT_UC: c_uint = 3;
/// `IBV_QPT_UD`: unreliable datagram.
pub(crate) const IBV_QPT_UD: c_uint = 4;

// enum ibv_qp_state.
/// `IBV_QPS_RESET`.
pub(crate) const IBV_QPS_RESET: c_uint = 0;
/// `IBV_QPS_INIT`.
pub(crate) const IBV_QPS_INIT: c_uint = 1;
/// `IBV_QPS_RTR`: ready to receive.
pub(crate) const IBV_QPS_RTR: c_uint = 2;
/// `IBV_QPS_RTS`: ready to send.
pub(crate) const IBV_QPS_RTS: c_uint = 3;
/// `IBV_QPS_SQD`: send queue drained.
pub(crate) const IBV_QPS_SQD: c_uint = 4;
/// `IBV_QPS_SQE`: send queue error.
pub(crate) const IBV_QPS_SQE: c_uint = 5;
/// `IBV_QPS_ERR`.
pub(crate) const IBV_QPS_ERR: c_uint = 6;
/// `IBV_QPS_UNKNOWN`.
pub(crate) const IBV_QPS_UNKNOWN: c_uint = 7;

// enum ibv_qp_attr_mask: the `attr_mask` argument (an `int`).
/// `IBV_QP_STATE`: `qp_state`.
pub(crate) const IBV_QP_STATE: c_int = 1 << 0;
/// `IBV_QP_CUR_STATE`: `cur_qp_state`.
pub(crate) const IBV_QP_CUR_STATE: c_int = 1 << 1;
/// `IBV_QP_EN_SQD_ASYNC_NOTIFY`: `en_sqd_async_notify`.
pub(crate) const IBV_QP_EN_SQD_ASYNC_NOTIFY: c_int = 1 << 2;
/// `IBV_QP_ACCESS_FLAGS`: `qp_access_flags`.
pub(crate) const IBV_QP_ACCESS_FLAGS: c_int = 1 << 3;
/// `IBV_QP_PKEY_INDEX`: `pkey_index`.
pub(crate) const IBV_QP_PKEY_INDEX: c_int = 1 << 4;
/// `IBV_QP_PORT`: `port_num`.
pub(crate) const IBV_QP_PORT: c_int = 1 << 5;
/// `IBV_QP_QKEY`: `qkey`.
pub(crate) const IBV_QP_QKEY: c_int = 1 << 6;
/// `IBV_QP_AV`: `ah_attr`.
pub(crate) const IBV_QP_AV: c_int = 1 << 7;
/// `IBV_QP_PATH_MTU`: `path_mtu`.
pub(crate) const IBV_QP_PATH_MTU: c_int = 1 << 8;
/// `IBV_QP_TIMEOUT`: `timeout`.
pub(crate) const IBV_QP_TIMEOUT: c_int = 1 << 9;
/// `IBV_QP_RETRY_CNT`: `retry_cnt`.
pub(crate) const IBV_QP_RETRY_CNT: c_int = 1 << 10;
/// `IBV_QP_RNR_RETRY`: `rnr_retry`.
pub(crate) const IBV_QP_RNR_RETRY: c_int = 1 << 11;
/// `IBV_QP_RQ_PSN`: `rq_psn`.
pub(crate) const IBV_QP_RQ_PSN: c_int = 1 << 12;
/// `IBV_QP_MAX_QP_RD_ATOMIC`: `max_rd_atomic`.
pub(crate) const IBV_QP_MAX_QP_RD_ATOMIC: c_int = 1 << 13;
/// `IBV_QP_ALT_PATH`: the `alt_*` members.
pub(crate) const IBV_QP_ALT_PATH: c_int = 1 << 14;
/// `IBV_QP_MIN_RNR_TIMER`: `min_rnr_timer`.
pub(crate) const IBV_QP_MIN_RNR_TIMER: c_int = 1 << 15;
/// `IBV_QP_SQ_PSN`: `sq_psn`.
pub(crate) const IBV_QP_SQ_PSN: c_int = 1 << 16;
/// `IBV_QP_MAX_DEST_RD_ATOMIC`: `max_dest_rd_atomic`.
pub(crate) const IBV_QP_MAX_DEST_RD_ATOMIC: c_int = 1 << 17;
/// `IBV_QP_PATH_MIG_STATE`: `path_mig_state`.
pub(crate) const IBV_QP_PATH_MIG_STATE: c_int = 1 << 18;
/// `IBV_QP_CAP`: `cap`.
pub(crate) const IBV_QP_CAP: c_int = 1 << 19;
/// `IBV_QP_DEST_QPN`: `dest_qp_num`.
pub(crate) const IBV_QP_DEST_QPN: c_int = 1 << 20;
/// `IBV_QP_RATE_LIMIT`: `rate_limit`.
pub(crate) const IBV_QP_RATE_LIMIT: c_int = 1 << 25;

// enum ibv_access_flags (the classic ones; none is in
// IBV_ACCESS_OPTIONAL_RANGE, which is what lets us call `ibv_reg_mr`).
/// `IBV_ACCESS_LOCAL_WRITE`.
pub(crate) const IBV_ACCESS_LOCAL_WRITE: c_uint = 1;
/// `IBV_ACCESS_REMOTE_WRITE`.
pub(crate) const IBV_ACCESS_REMOTE_WRITE: c_uint = 1 << 1;
/// `IBV_ACCESS_REMOTE_READ`.
pub(crate) const IBV_ACCESS_REMOTE_READ: c_uint = 1 << 2;
/// `IBV_ACCESS_REMOTE_ATOMIC`.
pub(crate) const IBV_ACCESS_REMOTE_ATOMIC: c_uint = 1 << 3;

// enum ibv_mtu.
/// `IBV_MTU_256`.
pub(crate) const IBV_MTU_256: c_uint = 1;
/// `IBV_MTU_512`.
pub(crate) const IBV_MTU_512: c_uint = 2;
/// `IBV_MTU_1024`.
pub(crate) const IBV_MTU_1024: c_uint = 3;
/// `IBV_MTU_2048`.
pub(crate) const IBV_MTU_2048: c_uint = 4;
/// `IBV_MTU_4096`.
pub(crate) const IBV_MTU_4096: c_uint = 5;

// enum ibv_port_state.
/// `IBV_PORT_NOP`.
pub(crate) const IBV_PORT_NOP: c_uint = 0;
/// `IBV_PORT_DOWN`.
pub(crate) const IBV_PORT_DOWN: c_uint = 1;
/// `IBV_PORT_INIT`.
pub(crate) const IBV_PORT_INIT: c_uint = 2;
/// `IBV_PORT_ARMED`.
pub(crate) const IBV_PORT_ARMED: c_uint = 3;
/// `IBV_PORT_ACTIVE`.
pub(crate) const IBV_PORT_ACTIVE: c_uint = 4;
/// `IBV_PORT_ACTIVE_DEFER`.
pub(crate) const IBV_PORT_ACTIVE_DEFER: c_uint = 5;

// IBV_LINK_LAYER_* (an anonymous enum; `ibv_port_attr::link_layer` is u8).
/// `IBV_LINK_LAYER_UNSPECIFIED` (old kernels; means InfiniBand).
pub(crate) const IBV_LINK_LAYER_UNSPECIFIED: u8 = 0;
/// `IBV_LINK_LAYER_INFINIBAND`.
pub(crate) const IBV_LINK_LAYER_INFINIBAND: u8 = 1;
/// `IBV_LINK_LAYER_ETHERNET` (RoCE: addressing needs a GRH).
pub(crate) const IBV_LINK_LAYER_ETHERNET: u8 = 2;

// enum ibv_event_type: `ibv_async_event::event_type`.
/// `IBV_EVENT_CQ_ERR`: `element.cq`.
pub(crate) const IBV_EVENT_CQ_ERR: c_uint = 0;
/// `IBV_EVENT_QP_FATAL`: `element.qp`.
pub(crate) const IBV_EVENT_QP_FATAL: c_uint = 1;
/// `IBV_EVENT_QP_REQ_ERR`: `element.qp`.
pub(crate) const IBV_EVENT_QP_REQ_ERR: c_uint = 2;
/// `IBV_EVENT_QP_ACCESS_ERR`: `element.qp`.
pub(crate) const IBV_EVENT_QP_ACCESS_ERR: c_uint = 3;
/// `IBV_EVENT_COMM_EST`: `element.qp`.
pub(crate) const IBV_EVENT_COMM_EST: c_uint = 4;
/// `IBV_EVENT_SQ_DRAINED`: `element.qp`.
pub(crate) const IBV_EVENT_SQ_DRAINED: c_uint = 5;
/// `IBV_EVENT_PATH_MIG`: `element.qp`.
pub(crate) const IBV_EVENT_PATH_MIG: c_uint = 6;
/// `IBV_EVENT_PATH_MIG_ERR`: `element.qp`.
pub(crate) const IBV_EVENT_PATH_MIG_ERR: c_uint = 7;
/// `IBV_EVENT_DEVICE_FATAL`: no element.
pub(crate) const IBV_EVENT_DEVICE_FATAL: c_uint = 8;
/// `IBV_EVENT_PORT_ACTIVE`: `element.port_num`.
pub(crate) const IBV_EVENT_PORT_ACTIVE: c_uint = 9;
/// `IBV_EVENT_PORT_ERR`: `element.port_num`.
pub(crate) const IBV_EVENT_PORT_ERR: c_uint = 10;
/// `IBV_EVENT_LID_CHANGE`: `element.port_num`.
pub(crate) const IBV_EVENT_LID_CHANGE: c_uint = 11;
/// `IBV_EVENT_PKEY_CHANGE`: `element.port_num`.
pub(crate) const IBV_EVENT_PKEY_CHANGE: c_uint = 12;
/// `IBV_EVENT_SM_CHANGE`: `element.port_num`.
pub(crate) const IBV_EVENT_SM_CHANGE: c_uint = 13;
/// `IBV_EVENT_SRQ_ERR`: `element.srq`.
pub(crate) const IBV_EVENT_SRQ_ERR: c_uint = 14;
/// `IBV_EVENT_SRQ_LIMIT_REACHED`: `element.srq`.
pub(crate) const IBV_EVENT_SRQ_LIMIT_REACHED: c_uint = 15;
/// `IBV_EVENT_QP_LAST_WQE_REACHED`: `element.qp`.
pub(crate) const IBV_EVENT_QP_LAST_WQE_REACHED: c_uint = 16;
/// `IBV_EVENT_CLIENT_REREGISTER`: `element.port_num`.
pub(crate) const IBV_EVENT_CLIENT_REREGISTER: c_uint = 17;
/// `IBV_EVENT_GID_CHANGE`: `element.port_num`.
pub(crate) const IBV_EVENT_GID_CHANGE: c_uint = 18;
/// `IBV_EVENT_WQ_FATAL`: `element.wq`.
pub(crate) const IBV_EVENT_WQ_FATAL: c_uint = 19;

// enum mlx5dv_obj_type: the `obj_type` argument (a `uint64_t`).
/// `MLX5DV_OBJ_QP`.
pub(crate) const MLX5DV_OBJ_QP: u64 = 1 << 0;
/// `MLX5DV_OBJ_CQ`.
pub(crate) const MLX5DV_OBJ_CQ: u64 = 1 << 1;
/// `MLX5DV_OBJ_SRQ`.
pub(crate) const MLX5DV_OBJ_SRQ: u64 = 1 << 2;

// enum mlx5dv_qp_comp_mask / enum mlx5dv_srq_comp_mask.
/// `MLX5DV_QP_MASK_UAR_MMAP_OFFSET`: fill `mlx5dv_qp::uar_mmap_offset`.
pub(crate) const MLX5DV_QP_MASK_UAR_MMAP_OFFSET: u64 = 1 << 0;
/// `MLX5DV_QP_MASK_RAW_QP_HANDLES`: fill `tirn`, `tisn`, `rqn`, `sqn`.
pub(crate) const MLX5DV_QP_MASK_RAW_QP_HANDLES: u64 = 1 << 1;
/// `MLX5DV_QP_MASK_RAW_QP_TIR_ADDR`: fill `tir_icm_addr`.
pub(crate) const MLX5DV_QP_MASK_RAW_QP_TIR_ADDR: u64 = 1 << 2;
/// `MLX5DV_SRQ_MASK_SRQN`: fill `mlx5dv_srq::srqn` (not filled otherwise).
pub(crate) const MLX5DV_SRQ_MASK_SRQN: u64 = 1 << 0;

/// Resolves `name` in `lib` (opened from `soname`) as a `T`.
///
/// # Safety
///
/// `T` must be the function pointer type of the symbol's C prototype.
unsafe fn resolve<T: Copy>(lib: &Library, soname: &str, name: &str) -> Result<T, Error> {
    // SAFETY: the caller guarantees that `T` is the symbol's type; the
    // pointer is copied out and stays valid while `lib` is loaded, which
    // `Verbs` ensures by owning `lib` alongside the pointers.
    match unsafe { lib.get::<T>(name.as_bytes()) } {
        Ok(symbol) => Ok(*symbol),
        Err(e) => Err(Error::NoDevice {
            reason: format!(
                "{soname} does not export `{name}` ({e}); the installed rdma-core is too old"
            ),
        }),
    }
}

/// Opens `soname` with `dlopen`.
fn open(soname: &str, what: &str) -> Result<Library, Error> {
    // SAFETY: loading runs the library's initialisers. rdma-core's only set
    // up its own globals (libmlx5's registers the mlx5 provider with
    // libibverbs, which is what linking it would do too).
    unsafe { Library::new(soname) }.map_err(|e| Error::NoDevice {
        reason: format!("cannot load {soname} ({what}): {e}"),
    })
}

macro_rules! verbs {
    ($(
        $(#[$attr:meta])*
        $lib:ident $name:ident: $ty:ty;
    )*) => {
        /// rdma-core's libibverbs and libmlx5, opened at run time, with the
        /// functions the control path calls.
        ///
        /// Every pointer below stays valid while this value lives, and every
        /// object created through it (context, PD, MR, CQ, SRQ, QP) must be
        /// destroyed before it is dropped: dropping it may unload the code
        /// those objects depend on. The field types are the C prototypes
        /// of rdma-core v44; calling them is `unsafe` with the C API's
        /// contract.
        pub(crate) struct Verbs {
            $(
                $(#[$attr])*
                pub(crate) $name: $ty,
            )*
            // Dropped in this order: libmlx5 needs libibverbs.
            _mlx5: Library,
            _ibverbs: Library,
        }

        impl Verbs {
            /// Resolves every function in the two opened libraries (the
            /// names are for error messages).
            fn resolve_all(
                (ibverbs, ibverbs_name): (Library, &str),
                (mlx5, mlx5_name): (Library, &str),
            ) -> Result<Self, Error> {
                let ibverbs_lib = (&ibverbs, ibverbs_name);
                let mlx5_lib = (&mlx5, mlx5_name);
                Ok(Self {
                    $(
                        $name: {
                            let (lib, soname) = verbs!(@lib $lib, ibverbs_lib, mlx5_lib);
                            // SAFETY: the field's type is transcribed from the
                            // symbol's prototype in verbs.h / mlx5dv.h (the
                            // exported symbol's, where the header wraps it).
                            unsafe { resolve::<$ty>(lib, soname, stringify!($name))? }
                        },
                    )*
                    _mlx5: mlx5,
                    _ibverbs: ibverbs,
                })
            }

            /// Every resolved function's name and address.
            #[cfg(test)]
            fn addresses(&self) -> Vec<(&'static str, &'static str, usize)> {
                vec![$(
                    (
                        verbs!(@lib $lib, LIBIBVERBS, LIBMLX5),
                        stringify!($name),
                        self.$name as usize,
                    ),
                )*]
            }
        }
    };
    (@lib ibverbs, $ibverbs:expr, $mlx5:expr) => { $ibverbs };
    (@lib mlx5, $ibverbs:expr, $mlx5:expr) => { $mlx5 };
}

verbs! {
    /// `struct ibv_device **ibv_get_device_list(int *num_devices)`: null
    /// with `errno` set on failure.
    ibverbs ibv_get_device_list: unsafe extern "C" fn(num_devices: *mut c_int) -> *mut *mut ibv_device;
    /// `void ibv_free_device_list(struct ibv_device **list)`.
    ibverbs ibv_free_device_list: unsafe extern "C" fn(list: *mut *mut ibv_device);
    /// `const char *ibv_get_device_name(struct ibv_device *device)`.
    ibverbs ibv_get_device_name: unsafe extern "C" fn(device: *mut ibv_device) -> *const c_char;
    /// `struct ibv_context *ibv_open_device(struct ibv_device *device)`.
    ibverbs ibv_open_device: unsafe extern "C" fn(device: *mut ibv_device) -> *mut ibv_context;
    /// `int ibv_close_device(struct ibv_context *context)`.
    ibverbs ibv_close_device: unsafe extern "C" fn(context: *mut ibv_context) -> c_int;
    /// `struct ibv_pd *ibv_alloc_pd(struct ibv_context *context)`.
    ibverbs ibv_alloc_pd: unsafe extern "C" fn(context: *mut ibv_context) -> *mut ibv_pd;
    /// `int ibv_dealloc_pd(struct ibv_pd *pd)`.
    ibverbs ibv_dealloc_pd: unsafe extern "C" fn(pd: *mut ibv_pd) -> c_int;
    /// The exported `struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void
    /// *addr, size_t length, int access)` that verbs.h's `ibv_reg_mr` macro
    /// calls for access flags outside `IBV_ACCESS_OPTIONAL_RANGE`.
    ibverbs ibv_reg_mr: unsafe extern "C" fn(pd: *mut ibv_pd, addr: *mut c_void, length: usize, access: c_int) -> *mut ibv_mr;
    /// `int ibv_dereg_mr(struct ibv_mr *mr)`.
    ibverbs ibv_dereg_mr: unsafe extern "C" fn(mr: *mut ibv_mr) -> c_int;
    /// `struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe,
    /// void *cq_context, struct ibv_comp_channel *channel, int
    /// comp_vector)`.
    ibverbs ibv_create_cq: unsafe extern "C" fn(
        context: *mut ibv_context,
        cqe: c_int,
        cq_context: *mut c_void,
        channel: *mut ibv_comp_channel,
        comp_vector: c_int,
    ) -> *mut ibv_cq;
    /// `int ibv_destroy_cq(struct ibv_cq *cq)`.
    ibverbs ibv_destroy_cq: unsafe extern "C" fn(cq: *mut ibv_cq) -> c_int;
    /// `struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct
    /// ibv_qp_init_attr *qp_init_attr)`.
    ibverbs ibv_create_qp: unsafe extern "C" fn(pd: *mut ibv_pd, qp_init_attr: *mut ibv_qp_init_attr) -> *mut ibv_qp;
    /// `int ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int
    /// attr_mask)`: 0 or an errno value.
    ibverbs ibv_modify_qp: unsafe extern "C" fn(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, attr_mask: c_int) -> c_int;
    /// `int ibv_query_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int
    /// attr_mask, struct ibv_qp_init_attr *init_attr)`.
    ibverbs ibv_query_qp: unsafe extern "C" fn(
        qp: *mut ibv_qp,
        attr: *mut ibv_qp_attr,
        attr_mask: c_int,
        init_attr: *mut ibv_qp_init_attr,
    ) -> c_int;
    /// `int ibv_destroy_qp(struct ibv_qp *qp)`.
    ibverbs ibv_destroy_qp: unsafe extern "C" fn(qp: *mut ibv_qp) -> c_int;
    /// `struct ibv_srq *ibv_create_srq(struct ibv_pd *pd, struct
    /// ibv_srq_init_attr *srq_init_attr)`.
    ibverbs ibv_create_srq: unsafe extern "C" fn(pd: *mut ibv_pd, srq_init_attr: *mut ibv_srq_init_attr) -> *mut ibv_srq;
    /// `int ibv_destroy_srq(struct ibv_srq *srq)`.
    ibverbs ibv_destroy_srq: unsafe extern "C" fn(srq: *mut ibv_srq) -> c_int;
    /// The exported `int ibv_query_port(struct ibv_context *context,
    /// uint8_t port_num, struct _compat_ibv_port_attr *port_attr)` that
    /// verbs.h's inline `ibv_query_port` falls back to. It writes all of
    /// `ibv_port_attr` but `port_cap_flags2`; prefer [`Verbs::query_port`].
    ibverbs ibv_query_port: unsafe extern "C" fn(context: *mut ibv_context, port_num: u8, port_attr: *mut ibv_port_attr) -> c_int;
    /// `int ibv_query_gid(struct ibv_context *context, uint8_t port_num, int
    /// index, union ibv_gid *gid)`: 0 or -1.
    ibverbs ibv_query_gid: unsafe extern "C" fn(context: *mut ibv_context, port_num: u8, index: c_int, gid: *mut ibv_gid) -> c_int;
    /// `int ibv_get_async_event(struct ibv_context *context, struct
    /// ibv_async_event *event)`: 0, or -1 with `errno` (`EAGAIN` when
    /// `async_fd` is non-blocking and no event is queued). Every event got
    /// must be given to `ibv_ack_async_event`.
    ibverbs ibv_get_async_event: unsafe extern "C" fn(context: *mut ibv_context, event: *mut ibv_async_event) -> c_int;
    /// `void ibv_ack_async_event(struct ibv_async_event *event)`: counts
    /// the event as handled on its QP/CQ/SRQ, whose destroy waits for it.
    ibverbs ibv_ack_async_event: unsafe extern "C" fn(event: *mut ibv_async_event);
    /// `int mlx5dv_init_obj(struct mlx5dv_obj *obj, uint64_t obj_type)`: 0
    /// or an errno value.
    mlx5 mlx5dv_init_obj: unsafe extern "C" fn(obj: *mut mlx5dv_obj, obj_type: u64) -> c_int;
    /// `bool mlx5dv_is_supported(struct ibv_device *device)`: whether the
    /// device is an mlx5 device that direct verbs can drive.
    mlx5 mlx5dv_is_supported: unsafe extern "C" fn(device: *mut ibv_device) -> bool;
}

impl Verbs {
    /// Opens `libibverbs.so.1` and `libmlx5.so.1` and resolves the control
    /// path's functions. Fails with [`Error::NoDevice`] naming the library
    /// or symbol that is missing. Opening the libraries touches no device.
    pub(crate) fn load() -> Result<Self, Error> {
        Self::load_from(LIBIBVERBS, LIBMLX5)
    }

    /// [`Verbs::load`] with other file names (for tests).
    fn load_from(ibverbs_name: &str, mlx5_name: &str) -> Result<Self, Error> {
        let ibverbs = open(
            ibverbs_name,
            "rdma-core's verbs library; Debian/Ubuntu package libibverbs1",
        )?;
        let mlx5 = open(
            mlx5_name,
            "rdma-core's mlx5 provider; Debian/Ubuntu package ibverbs-providers",
        )?;
        Self::resolve_all((ibverbs, ibverbs_name), (mlx5, mlx5_name))
    }

    /// `ibv_query_port` done the way verbs.h's inline wrapper does it when
    /// it falls back to the exported symbol: the struct is zeroed first, so
    /// `port_cap_flags2`, which the exported symbol does not write, reads 0.
    ///
    /// # Safety
    ///
    /// `context` must be a live context opened through these `Verbs`.
    pub(crate) unsafe fn query_port(
        &self,
        context: *mut ibv_context,
        port_num: u8,
    ) -> Result<ibv_port_attr, Error> {
        let mut attr = ibv_port_attr::default();
        // SAFETY: the caller guarantees `context`; `attr` is a whole,
        // writable `ibv_port_attr`, larger than the compat struct the
        // symbol fills.
        let rc = unsafe { (self.ibv_query_port)(context, port_num, &mut attr) };
        if rc == 0 {
            Ok(attr)
        } else {
            Err(Error::Verb {
                verb: "ibv_query_port",
                source: if rc > 0 {
                    std::io::Error::from_raw_os_error(rc)
                } else {
                    std::io::Error::last_os_error()
                },
            })
        }
    }
}

/// The layout table (`super::layout_table`): test tooling, built for the
/// `testing` feature and this module's tests only.
#[cfg(any(test, feature = "testing"))]
mod layout {
    use super::*;

    /// The size of the field that `project` (a closure `|s: &T| &s.field`,
    /// never called) borrows: a field's size without an instance.
    fn field_size<T, F>(_project: fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    macro_rules! layout {
        ($out:ident; $($ty:ident { $($f0:ident $(. $fr:ident)*),* $(,)? })*) => {$(
            $out.push((concat!("sizeof(", stringify!($ty), ")"), size_of::<$ty>()));
            $out.push((concat!("alignof(", stringify!($ty), ")"), align_of::<$ty>()));
            $(
                $out.push((
                    concat!("offsetof(", stringify!($ty), ", ", stringify!($f0) $(, ".", stringify!($fr))*, ")"),
                    std::mem::offset_of!($ty, $f0 $(. $fr)*),
                ));
                $out.push((
                    concat!("sizeof(", stringify!($ty), ".", stringify!($f0) $(, ".", stringify!($fr))*, ")"),
                    field_size(|s: &$ty| &s.$f0 $(. $fr)*),
                ));
            )*
        )*};
    }

    macro_rules! constants {
        ($out:ident; $($name:ident),* $(,)?) => {$(
            // Every constant is small and non-negative (checked by the test
            // against the C value, which would differ if the cast wrapped).
            $out.push((stringify!($name), $name as usize));
        )*};
    }

    /// Size, alignment, field offset and field size of every struct above, and
    /// the value of every constant, keyed the way `tests/c/hw_layout.c` prints
    /// them from the real headers (`sizeof(T)`, `alignof(T)`,
    /// `offsetof(T, field)`, `sizeof(T.field)`, `NAME`).
    pub(crate) fn layout_table() -> Vec<(&'static str, usize)> {
        let mut t = Vec::new();
        layout! { t;
            ibv_gid { raw }
            ibv_context { device, ops, cmd_fd, async_fd, num_comp_vectors, mutex, abi_compat }
            ibv_async_event { element, event_type }
            ibv_pd { context, handle }
            ibv_mr { context, pd, addr, length, handle, lkey, rkey }
            ibv_srq_attr { max_wr, max_sge, srq_limit }
            ibv_srq_init_attr { srq_context, attr, attr.max_wr, attr.max_sge, attr.srq_limit }
            ibv_srq { context, srq_context, pd, handle, mutex, cond, events_completed }
            ibv_qp_cap { max_send_wr, max_recv_wr, max_send_sge, max_recv_sge, max_inline_data }
            ibv_qp_init_attr { qp_context, send_cq, recv_cq, srq, cap, qp_type, sq_sig_all }
            ibv_qp {
                context, qp_context, pd, send_cq, recv_cq, srq, handle, qp_num, state, qp_type,
                mutex, cond, events_completed,
            }
            ibv_global_route { dgid, flow_label, sgid_index, hop_limit, traffic_class }
            ibv_ah_attr { grh, grh.dgid, dlid, sl, src_path_bits, static_rate, is_global, port_num }
            ibv_qp_attr {
                qp_state, cur_qp_state, path_mtu, path_mig_state, qkey, rq_psn, sq_psn,
                dest_qp_num, qp_access_flags, cap, ah_attr, ah_attr.grh.dgid, ah_attr.grh.flow_label,
                ah_attr.grh.sgid_index, ah_attr.grh.hop_limit, ah_attr.grh.traffic_class,
                ah_attr.dlid, ah_attr.sl, ah_attr.is_global, ah_attr.port_num, alt_ah_attr,
                pkey_index, alt_pkey_index, en_sqd_async_notify, sq_draining, max_rd_atomic,
                max_dest_rd_atomic, min_rnr_timer, port_num, timeout, retry_cnt, rnr_retry,
                alt_port_num, alt_timeout, rate_limit,
            }
            ibv_port_attr {
                state, max_mtu, active_mtu, gid_tbl_len, port_cap_flags, max_msg_sz, bad_pkey_cntr,
                qkey_viol_cntr, pkey_tbl_len, lid, sm_lid, lmc, max_vl_num, sm_sl, subnet_timeout,
                init_type_reply, active_width, active_speed, phys_state, link_layer, flags,
                port_cap_flags2,
            }
            mlx5dv_qp {
                dbrec, sq, sq.buf, sq.wqe_cnt, sq.stride, rq, rq.buf, rq.wqe_cnt, rq.stride, bf,
                bf.reg, bf.size, comp_mask, uar_mmap_offset, tirn, tisn, rqn, sqn, tir_icm_addr,
            }
            mlx5dv_cq { buf, dbrec, cqe_cnt, cqe_size, cq_uar, cqn, comp_mask }
            mlx5dv_srq { buf, dbrec, stride, head, tail, comp_mask, srqn }
            mlx5dv_obj {
                qp, qp.out, cq, cq.out, srq, srq.out, rwq, rwq.out, dm, dm.out, ah, ah.out, pd, pd.out,
            }
        }
        // The `in` members are `in_` in Rust.
        macro_rules! obj_in {
            ($($m:ident),*) => {$(
                t.push((
                    concat!("offsetof(mlx5dv_obj, ", stringify!($m), ".in)"),
                    std::mem::offset_of!(mlx5dv_obj, $m.in_),
                ));
                t.push((
                    concat!("sizeof(mlx5dv_obj.", stringify!($m), ".in)"),
                    field_size(|s: &mlx5dv_obj| &s.$m.in_),
                ));
            )*};
        }
        obj_in!(qp, cq, srq, rwq, dm, ah, pd);
        // The members of the anonymous `element` union (reading one is unsafe,
        // so their sizes come from their types).
        macro_rules! element {
            ($($m:ident: $ty:ty),*) => {$(
                t.push((
                    concat!("offsetof(ibv_async_event, element.", stringify!($m), ")"),
                    std::mem::offset_of!(ibv_async_event, element)
                        + std::mem::offset_of!(ibv_async_event_element, $m),
                ));
                t.push((
                    concat!("sizeof(ibv_async_event.element.", stringify!($m), ")"),
                    size_of::<$ty>(),
                ));
            )*};
        }
        element!(cq: *mut ibv_cq, qp: *mut ibv_qp, srq: *mut ibv_srq, wq: *mut c_void, port_num: c_int);
        constants! { t;
            IBV_QPT_RC, IBV_QPT_UC, IBV_QPT_UD,
            IBV_QPS_RESET, IBV_QPS_INIT, IBV_QPS_RTR, IBV_QPS_RTS, IBV_QPS_SQD, IBV_QPS_SQE,
            IBV_QPS_ERR, IBV_QPS_UNKNOWN,
            IBV_QP_STATE, IBV_QP_CUR_STATE, IBV_QP_EN_SQD_ASYNC_NOTIFY, IBV_QP_ACCESS_FLAGS,
            IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_QKEY, IBV_QP_AV, IBV_QP_PATH_MTU, IBV_QP_TIMEOUT,
            IBV_QP_RETRY_CNT, IBV_QP_RNR_RETRY, IBV_QP_RQ_PSN, IBV_QP_MAX_QP_RD_ATOMIC,
            IBV_QP_ALT_PATH, IBV_QP_MIN_RNR_TIMER, IBV_QP_SQ_PSN, IBV_QP_MAX_DEST_RD_ATOMIC,
            IBV_QP_PATH_MIG_STATE, IBV_QP_CAP, IBV_QP_DEST_QPN, IBV_QP_RATE_LIMIT,
            IBV_ACCESS_LOCAL_WRITE, IBV_ACCESS_REMOTE_WRITE, IBV_ACCESS_REMOTE_READ,
            IBV_ACCESS_REMOTE_ATOMIC,
            IBV_MTU_256, IBV_MTU_512, IBV_MTU_1024, IBV_MTU_2048, IBV_MTU_4096,
            IBV_PORT_NOP, IBV_PORT_DOWN, IBV_PORT_INIT, IBV_PORT_ARMED, IBV_PORT_ACTIVE,
            IBV_PORT_ACTIVE_DEFER,
            IBV_LINK_LAYER_UNSPECIFIED, IBV_LINK_LAYER_INFINIBAND, IBV_LINK_LAYER_ETHERNET,
            IBV_EVENT_CQ_ERR, IBV_EVENT_QP_FATAL, IBV_EVENT_QP_REQ_ERR, IBV_EVENT_QP_ACCESS_ERR,
            IBV_EVENT_COMM_EST, IBV_EVENT_SQ_DRAINED, IBV_EVENT_PATH_MIG, IBV_EVENT_PATH_MIG_ERR,
            IBV_EVENT_DEVICE_FATAL, IBV_EVENT_PORT_ACTIVE, IBV_EVENT_PORT_ERR, IBV_EVENT_LID_CHANGE,
            IBV_EVENT_PKEY_CHANGE, IBV_EVENT_SM_CHANGE, IBV_EVENT_SRQ_ERR,
            IBV_EVENT_SRQ_LIMIT_REACHED, IBV_EVENT_QP_LAST_WQE_REACHED, IBV_EVENT_CLIENT_REREGISTER,
            IBV_EVENT_GID_CHANGE, IBV_EVENT_WQ_FATAL,
            MLX5DV_OBJ_QP, MLX5DV_OBJ_CQ, MLX5DV_OBJ_SRQ,
            MLX5DV_QP_MASK_UAR_MMAP_OFFSET, MLX5DV_QP_MASK_RAW_QP_HANDLES,
            MLX5DV_QP_MASK_RAW_QP_TIR_ADDR, MLX5DV_SRQ_MASK_SRQN,
        }
        t
    }
}

#[cfg(any(test, feature = "testing"))]
pub(crate) use layout::layout_table;

#[cfg(test)]
mod tests {
    use super::*;

    /// `Verbs::load` here (rdma-core's libraries may or may not be
    /// installed, no mlx5 device either way) loads or says why not, pointing
    /// at the software device; it never panics.
    #[test]
    fn load_succeeds_or_reports_no_device() {
        match Verbs::load() {
            Ok(verbs) => {
                // Listing devices must work without any RDMA hardware or
                // kernel support: an empty list, or null with errno set.
                let mut n: c_int = -1;
                // SAFETY: `n` is a writable int.
                let list = unsafe { (verbs.ibv_get_device_list)(&mut n) };
                if list.is_null() {
                    eprintln!("ibv_get_device_list: {}", std::io::Error::last_os_error());
                    return;
                }
                let n = usize::try_from(n).expect("device count is non-negative");
                for i in 0..n {
                    // SAFETY: the list holds `n` device pointers (then null).
                    let dev = unsafe { *list.add(i) };
                    // SAFETY: `dev` is a device of the live list.
                    let name =
                        unsafe { std::ffi::CStr::from_ptr((verbs.ibv_get_device_name)(dev)) };
                    // SAFETY: as above.
                    let mlx5 = unsafe { (verbs.mlx5dv_is_supported)(dev) };
                    eprintln!("device {name:?}: mlx5dv supported: {mlx5}");
                }
                // SAFETY: `list` came from `ibv_get_device_list` and is freed
                // once.
                unsafe { (verbs.ibv_free_device_list)(list) };
            }
            Err(e @ Error::NoDevice { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("MLX5_DEVICE=soft"), "{msg}");
                assert!(msg.contains(LIBIBVERBS) || msg.contains(LIBMLX5), "{msg}");
            }
            Err(e) => panic!("Verbs::load failed with an unexpected error: {e}"),
        }
    }

    #[test]
    fn missing_library_is_no_device() {
        let Err(e) = Verbs::load_from("libibverbs-missing.so.1", LIBMLX5) else {
            panic!("loaded a library that does not exist");
        };
        let msg = e.to_string();
        assert!(matches!(e, Error::NoDevice { .. }), "{msg}");
        assert!(msg.contains("libibverbs-missing.so.1"), "{msg}");
        assert!(msg.contains("MLX5_DEVICE=soft"), "{msg}");
    }

    #[test]
    fn missing_symbol_is_no_device() {
        // libc is loaded in every process and exports none of the verbs.
        let Ok(libc) = open("libc.so.6", "the C library") else {
            return; // Not glibc.
        };
        let libc2 = open("libc.so.6", "the C library").expect("opened once already");
        let Err(e) = Verbs::resolve_all((libc, "libc.so.6"), (libc2, "libc.so.6")) else {
            panic!("libc exports ibv_get_device_list?");
        };
        let msg = e.to_string();
        assert!(matches!(e, Error::NoDevice { .. }), "{msg}");
        assert!(
            msg.contains("libc.so.6 does not export `ibv_get_device_list`"),
            "{msg}"
        );
    }

    /// An unversioned `dlsym` must give the default symbol versions, the
    /// ones a C program compiled against today's headers calls, not the
    /// hidden `IBVERBS_1.0` compatibility ones.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn resolves_the_default_symbol_versions() {
        let Ok(verbs) = Verbs::load() else {
            eprintln!("rdma-core is not installed; nothing to check");
            return;
        };
        let addresses = verbs.addresses();
        assert_eq!(addresses.len(), 23);
        for (soname, name, addr) in addresses {
            let version = match name {
                "mlx5dv_init_obj" => c"MLX5_1.2",
                "mlx5dv_is_supported" => c"MLX5_1.8",
                _ => c"IBVERBS_1.1",
            };
            let soname_c = std::ffi::CString::new(soname).unwrap();
            let name_c = std::ffi::CString::new(name).unwrap();
            // SAFETY: `Verbs` holds the library open, so RTLD_NOLOAD returns
            // a counted handle to it (closed below); the strings are
            // NUL-terminated.
            let expected = unsafe {
                let handle = libc::dlopen(soname_c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
                assert!(!handle.is_null(), "{soname} is not loaded");
                let sym = libc::dlvsym(handle, name_c.as_ptr(), version.as_ptr());
                libc::dlclose(handle);
                sym as usize
            };
            assert_ne!(expected, 0, "{soname} has no {name}@{version:?}");
            assert_eq!(
                addr, expected,
                "{name} did not resolve to {name}@{version:?}"
            );
        }
    }

    #[test]
    fn layout_table_has_unique_keys() {
        let table = layout_table();
        let mut keys: Vec<_> = table.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate keys in layout_table");
    }

    #[test]
    fn compat_port_attr_stops_before_port_cap_flags2() {
        // rdma-core's private `_compat_ibv_port_attr` is `ibv_port_attr`
        // without `port_cap_flags2`: 48 bytes on every LP64 target.
        assert_eq!(std::mem::offset_of!(ibv_port_attr, port_cap_flags2), 48);
    }
}
