//! The UCX backend: UCP active messages between the daemons of different
//! ranks (`ucp_am_send_nbx`, `ucp_worker_set_am_recv_handler`), bound with
//! bindgen against the system's UCX at build time. All of benchkv's FFI to
//! UCX is in this module, behind [`UcxNet`]'s safe API.
//!
//! Each daemon has its own UCP context and worker (single-threaded); its
//! blob is the worker address, and it creates one endpoint to every daemon
//! of the other ranks. `UCX_TLS` applies as usual; an explicit transport
//! list (`ucx-am:tcp`) overrides it through `ucp_config_modify`.
//!
//! Endpoints ask for peer error handling (a dead peer becomes an error
//! instead of a hang) unless every transport listed is a shared-memory one:
//! UCX 1.13's shared-memory transports have no peer failure handler, and
//! with the mode on UCX refuses them ("no active messages transport").
//! The transport line of the report says which mode a run used; with it
//! on and `UCX_TLS` unset, UCX leaves its shared-memory transports out.
//!
//! A message is one active message: a 16-byte header (kind: request or
//! response; the sender's global daemon id; the call's slot and
//! generation) and the request or response of [`crate::wire`] as data,
//! sent eagerly (so the receiver always has the data in its callback).
//!
//! # Lifetimes the C side relies on
//!
//! UCX 1.13 has no `UCP_AM_SEND_FLAG_COPY_HEADER`: the header, like the
//! data, must stay valid until the send completes. Every send therefore
//! owns a `SendSlot` (header and data in one buffer) that goes back to
//! the free list only when `ucp_am_send_nbx` completed at once or its
//! completion callback ran. Callbacks write only into the `Inbox` and
//! read only their slot's id; both live in allocations reached through raw
//! pointers, which no Rust reference covers while UCX runs (callbacks run
//! inside `ucp_worker_progress` on the daemon's thread), and are freed
//! after the worker is destroyed.

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/ucx.rs"));
}

use std::ffi::{CStr, CString, c_void};
use std::ptr;

use super::{Bootstrap, NetError, NetSetup, Network, Refused};

/// The active message id of every benchkv message.
const AM_ID: u32 = 7;
/// Header bytes.
const HDR: usize = 16;
const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
/// Bytes before each message's data in an inbox queue: from, slot,
/// generation, length (u32 each).
const FRAME: usize = 16;

/// `status` in words.
fn status_text(status: sys::ucs_status_t) -> String {
    // SAFETY: ucs_status_string returns a pointer to a static,
    // NUL-terminated string for any status value.
    let s = unsafe { CStr::from_ptr(sys::ucs_status_string(status)) };
    format!("{} ({status})", s.to_string_lossy())
}

fn check(status: sys::ucs_status_t, what: &str) -> Result<(), NetError> {
    if status == sys::UCS_OK {
        Ok(())
    } else {
        Err(NetError(format!("{what}: {}", status_text(status))))
    }
}

/// Whether `tls` lists a shared-memory transport (among others, when peer
/// failure detection is on: UCX may then leave it out, and the transport
/// line says so).
pub fn names_a_shared_memory_transport(tls: &str) -> bool {
    tls.split(',')
        .map(str::trim)
        .any(|t| !t.is_empty() && !peer_failure_detection(Some(t)))
}

/// Whether UCX can detect the failure of a peer with these transports:
/// not when all of them are shared-memory ones (see the module docs).
pub fn peer_failure_detection(tls: Option<&str>) -> bool {
    const SHM: [&str; 9] = [
        "shm", "sm", "posix", "sysv", "cma", "knem", "xpmem", "self", "mm",
    ];
    match tls {
        None => true,
        Some(t) => !t
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .all(|x| SHM.contains(&x)),
    }
}

/// `UCS_PTR_IS_ERR`.
fn is_err(p: *mut c_void) -> bool {
    p as usize >= sys::UCS_ERR_LAST as isize as usize
}

/// `UCS_PTR_STATUS`.
fn ptr_status(p: *mut c_void) -> sys::ucs_status_t {
    p as isize as sys::ucs_status_t
}

/// What callbacks deliver, drained after each progress call.
#[derive(Default)]
struct Inbox {
    /// Requests: frames of [`FRAME`] bytes then the data.
    requests: Vec<u8>,
    /// Responses, framed the same way.
    responses: Vec<u8>,
    /// Sends that completed: slot id and status.
    completions: Vec<(u32, sys::ucs_status_t)>,
    /// Endpoints that failed: global daemon id and status.
    failed: Vec<(u32, sys::ucs_status_t)>,
    /// A message no benchkv peer sends.
    bad: Option<String>,
}

/// One send's header and data, alive until the send completes.
struct SendSlot {
    id: u32,
    inbox: *mut Inbox,
    /// Header then data.
    buf: Vec<u8>,
    /// The pending request (null when the slot is free).
    req: *mut c_void,
    /// The daemon it went to.
    peer: u32,
}

/// What an endpoint's error callback needs.
struct ErrArg {
    inbox: *mut Inbox,
    peer: u32,
}

struct Call<U> {
    user: Option<U>,
    peer: u32,
    generation: u32,
}

/// A daemon's UCP context, worker and endpoints.
pub struct UcxNet<U> {
    context: sys::ucp_context_h,
    worker: sys::ucp_worker_h,
    inbox: *mut Inbox,
    /// Endpoints by global daemon id (null: none, a daemon of this rank).
    eps: Vec<sys::ucp_ep_h>,
    err_args: Vec<*mut ErrArg>,
    slots: Vec<*mut SendSlot>,
    free_slots: Vec<u32>,
    calls: Vec<Call<U>>,
    free_calls: Vec<u32>,
    inflight: Vec<u32>,
    setup: NetSetup,
    out: Vec<u8>,
    drained: Vec<u8>,
    /// Swapped with the inbox's completions each drain, so neither vector
    /// gives up its capacity (no allocation per poll).
    spare_completions: Vec<(u32, sys::ucs_status_t)>,
    failed: Option<String>,
    quiet: bool,
    peer_errors: bool,
    /// What was asked: UCX's version and `UCX_TLS`.
    asked: String,
    /// The lanes UCX chose at endpoint creation (see [`lanes`]); empty
    /// before `connect`.
    lanes: String,
    /// Whether peer failure detection is on, and why.
    detection: &'static str,
}

unsafe extern "C" {
    /// UCP's description of an endpoint: its lanes and the transport of
    /// each (`ucp/api/ucp.h`; not bound by bindgen, whose `FILE` would be
    /// its own type).
    fn ucp_ep_print_info(ep: sys::ucp_ep_h, stream: *mut libc::FILE);
}

/// What a UCP lane can be for, as `ucp_ep_print_info` names it.
const LANE_USES: [&str; 10] = [
    "am",
    "am_bw",
    "rma",
    "rma_bw",
    "amo",
    "rkey_ptr",
    "tag",
    "tag_offload",
    "keepalive",
    "wireup",
];

/// The lanes of an endpoint as `ucp_ep_print_info` describes them, one
/// entry per transport with what UCX uses it for, as in
/// `sysv/memory (am, am_bw) + cma/memory (rma_bw)`, read from lines such
/// as `lane[0]:  0:sysv/memory.0 md[0] -> md[0]/sysv/sysdev[255] am
/// am_bw#0`. Only the uses in [`LANE_USES`] are kept (`#N` and `{...}`
/// suffixes dropped; other words, such as a segment size newer UCX
/// prints, skipped). `unknown` when the text has no lane this reads.
pub fn lanes(info: &str) -> String {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for line in info.lines() {
        let Some((_, rest)) = line.split_once("lane[") else {
            continue;
        };
        let Some((_, rest)) = rest.split_once("]:") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        // `INDEX:TRANSPORT/DEVICE.PATH`
        let Some(tl) = words
            .next()
            .and_then(|w| w.split_once(':'))
            .map(|(_, t)| t.rsplit_once('.').map_or(t, |(t, _)| t).to_string())
        else {
            continue;
        };
        // After `-> REMOTE`: what the lane is for.
        let uses = words.skip_while(|w| *w != "->").skip(2).filter_map(|w| {
            let w = w.split(['#', '{']).next().unwrap_or(w);
            LANE_USES.iter().copied().find(|u| *u == w)
        });
        match out.iter_mut().find(|(t, _)| *t == tl) {
            Some((_, u)) => {
                for x in uses {
                    if !u.contains(&x) {
                        u.push(x);
                    }
                }
            }
            None => out.push((tl, uses.collect())),
        }
    }
    if out.is_empty() {
        return "unknown".into();
    }
    out.iter()
        .map(|(t, u)| {
            if u.is_empty() {
                t.clone()
            } else {
                format!("{t} ({})", u.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// What `ucp_ep_print_info` writes for `ep`.
fn ep_info(ep: sys::ucp_ep_h) -> String {
    let mut buf: *mut libc::c_char = ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: out-pointers for the stream's buffer; the stream is closed
    // (which sets them) before they are read, and the buffer freed once.
    unsafe {
        let f = libc::open_memstream(&mut buf, &mut len);
        if f.is_null() {
            return String::new();
        }
        ucp_ep_print_info(ep, f);
        libc::fclose(f);
        if buf.is_null() {
            return String::new();
        }
        let text =
            String::from_utf8_lossy(std::slice::from_raw_parts(buf.cast::<u8>(), len)).into_owned();
        libc::free(buf.cast());
        text
    }
}

unsafe extern "C" fn on_am(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: `arg` is the inbox registered with the handler, alive until
    // after the worker is destroyed; callbacks run inside progress calls
    // made by the owning thread, which holds no reference to the inbox
    // then.
    let inbox = unsafe { &mut *arg.cast::<Inbox>() };
    // SAFETY: UCX passes a valid parameter block for the callback's
    // duration.
    let attr = unsafe { (*param).recv_attr };
    if attr & u64::from(sys::UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 {
        inbox
            .bad
            .get_or_insert_with(|| "a rendezvous active message (benchkv sends eagerly)".into());
        return sys::UCS_OK;
    }
    if header_length != HDR || header.is_null() {
        inbox
            .bad
            .get_or_insert_with(|| format!("an active message header of {header_length} bytes"));
        return sys::UCS_OK;
    }
    // SAFETY: UCX guarantees `header_length` readable bytes at `header`
    // and `length` at `data` (eager data) during the callback.
    let (h, d) = unsafe {
        (
            std::slice::from_raw_parts(header.cast::<u8>(), HDR),
            if length == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(data.cast::<u8>().cast_const(), length)
            },
        )
    };
    let q = match h[0] {
        KIND_REQUEST => &mut inbox.requests,
        KIND_RESPONSE => &mut inbox.responses,
        k => {
            inbox
                .bad
                .get_or_insert_with(|| format!("an active message of kind {k}"));
            return sys::UCS_OK;
        }
    };
    q.extend_from_slice(&h[4..16]);
    q.extend_from_slice(&(length as u32).to_le_bytes());
    q.extend_from_slice(d);
    sys::UCS_OK
}

unsafe extern "C" fn on_sent(_request: *mut c_void, status: sys::ucs_status_t, user: *mut c_void) {
    // SAFETY: `user` is the send's slot (Box::into_raw), freed only after
    // the worker is destroyed; its `id` and `inbox` do not change while
    // the send is pending, and the inbox is not referenced elsewhere
    // during progress (see on_am).
    unsafe {
        let slot = &*user.cast::<SendSlot>();
        (*slot.inbox).completions.push((slot.id, status));
    }
}

unsafe extern "C" fn on_ep_error(arg: *mut c_void, _ep: sys::ucp_ep_h, status: sys::ucs_status_t) {
    // SAFETY: `arg` is the endpoint's ErrArg (Box::into_raw), freed after
    // the worker is destroyed; the inbox as in on_am.
    unsafe {
        let a = &*arg.cast::<ErrArg>();
        (*a.inbox).failed.push((a.peer, status));
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl<U> UcxNet<U> {
    fn where_(&self, peer: usize) -> String {
        let (r, d) = self.setup.locate(peer);
        format!("rank {r} daemon {d}")
    }

    /// Sends one active message to `peer`; its slot is busy until the
    /// send completes.
    fn send(&mut self, peer: usize, header: [u8; HDR], data: &[u8]) -> Result<(), NetError> {
        let ep = self.eps[peer];
        if ep.is_null() {
            return Err(NetError(format!("no endpoint to daemon {peer}")));
        }
        let id = match self.free_slots.pop() {
            Some(id) => id,
            None => {
                let id = self.slots.len() as u32;
                let cap = HDR + self.setup.max_request().max(self.setup.max_response());
                self.slots.push(Box::into_raw(Box::new(SendSlot {
                    id,
                    inbox: self.inbox,
                    buf: vec![0; cap],
                    req: ptr::null_mut(),
                    peer: 0,
                })));
                id
            }
        };
        let slot_ptr = self.slots[id as usize];
        let (hp, dp) = {
            // SAFETY: a free slot: no send is pending on it, so neither UCX
            // nor a callback reads it; this is the only reference.
            let slot = unsafe { &mut *slot_ptr };
            slot.buf[..HDR].copy_from_slice(&header);
            slot.buf[HDR..HDR + data.len()].copy_from_slice(data);
            slot.peer = peer as u32;
            (slot.buf.as_ptr(), slot.buf[HDR..].as_ptr())
        };
        let mut param = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_CALLBACK
                | sys::UCP_OP_ATTR_FIELD_USER_DATA
                | sys::UCP_OP_ATTR_FIELD_FLAGS,
            flags: sys::UCP_AM_SEND_FLAG_EAGER,
            user_data: slot_ptr.cast(),
            ..Default::default()
        };
        param.cb.send = Some(on_sent);
        // SAFETY: `ep` is a live endpoint of our worker; header and data
        // point into the slot's buffer, which stays allocated and unchanged
        // until the send completes (the slot is reused only after that);
        // `param` is read during the call only.
        let r = unsafe {
            sys::ucp_am_send_nbx(ep, AM_ID, hp.cast(), HDR, dp.cast(), data.len(), &param)
        };
        if r.is_null() {
            self.free_slots.push(id);
            Ok(())
        } else if is_err(r) {
            self.free_slots.push(id);
            Err(NetError(format!(
                "sending to {}: {}",
                self.where_(peer),
                status_text(ptr_status(r))
            )))
        } else {
            // SAFETY: as above; the slot is ours until its completion.
            unsafe { (*slot_ptr).req = r };
            Ok(())
        }
    }

    /// Takes what the callbacks left: completed sends first (their slots
    /// are free again), failures, then responses and requests.
    fn drain(
        &mut self,
        serve: &mut impl FnMut(&[u8], &mut [u8]) -> usize,
        done: &mut impl FnMut(U, &[u8]),
    ) -> Result<usize, NetError> {
        let mut completions = std::mem::take(&mut self.spare_completions);
        let (failed, bad) = {
            // SAFETY: no progress call is running, so no callback holds the
            // inbox; this reference ends with the block.
            let inbox = unsafe { &mut *self.inbox };
            std::mem::swap(&mut inbox.completions, &mut completions);
            (std::mem::take(&mut inbox.failed), inbox.bad.take())
        };
        for (id, status) in completions.drain(..) {
            let slot = self.slots[id as usize];
            // SAFETY: the send completed: UCX no longer reads the slot and
            // its callback has run; we are the only user.
            let (req, peer) = unsafe {
                (
                    std::mem::replace(&mut (*slot).req, ptr::null_mut()),
                    (*slot).peer,
                )
            };
            if !req.is_null() {
                // SAFETY: a request UCX returned for this send, completed.
                unsafe { sys::ucp_request_free(req) };
            }
            self.free_slots.push(id);
            if status != sys::UCS_OK && self.failed.is_none() {
                self.failed = Some(format!(
                    "a send to {} failed: {}",
                    self.where_(peer as usize),
                    status_text(status)
                ));
            }
        }
        self.spare_completions = completions;
        for (peer, status) in failed {
            if self.failed.is_none() {
                self.failed = Some(format!(
                    "the endpoint to {} failed: {}",
                    self.where_(peer as usize),
                    status_text(status)
                ));
            }
        }
        if let Some(b) = bad
            && self.failed.is_none()
        {
            self.failed = Some(format!("received {b}"));
        }
        let mut n = 0;
        // Responses.
        self.swap_queue(false);
        let mut at = 0;
        let q = std::mem::take(&mut self.drained);
        while at + FRAME <= q.len() {
            let (from, slot, generation, len) = (
                u32_at(&q, at),
                u32_at(&q, at + 4),
                u32_at(&q, at + 8),
                u32_at(&q, at + 12) as usize,
            );
            let body = &q[at + FRAME..at + FRAME + len];
            at += FRAME + len;
            match self.calls.get_mut(slot as usize) {
                Some(c) if c.generation == generation && c.peer == from && c.user.is_some() => {
                    let user = c.user.take().expect("checked");
                    self.inflight[from as usize] -= 1;
                    self.free_calls.push(slot);
                    done(user, body);
                    n += 1;
                }
                _ => {
                    self.failed.get_or_insert_with(|| {
                        format!("a response from daemon {from} for call {slot}/{generation}, which is not in flight")
                    });
                }
            }
        }
        self.drained = q;
        self.drained.clear();
        // Requests.
        self.swap_queue(true);
        let mut at = 0;
        let q = std::mem::take(&mut self.drained);
        let mut out = std::mem::take(&mut self.out);
        let mut result = Ok(());
        while at + FRAME <= q.len() {
            let from = u32_at(&q, at) as usize;
            let len = u32_at(&q, at + 12) as usize;
            let body = &q[at + FRAME..at + FRAME + len];
            let mut h = [0u8; HDR];
            h[0] = KIND_RESPONSE;
            h[4..8].copy_from_slice(&(self.setup.me() as u32).to_le_bytes());
            h[8..16].copy_from_slice(&q[at + 4..at + 12]);
            at += FRAME + len;
            // A request from a daemon this rank has no endpoint to is not
            // executed (it could not be answered either).
            if from >= self.eps.len() {
                self.failed
                    .get_or_insert_with(|| format!("a request from unknown daemon {from}"));
                continue;
            }
            let m = serve(body, &mut out);
            n += 1;
            if let Err(e) = self.send(from, h, &out[..m]) {
                result = Err(e);
                break;
            }
        }
        self.out = out;
        self.drained = q;
        self.drained.clear();
        result?;
        match &self.failed {
            Some(f) if !self.quiet => Err(NetError(f.clone())),
            _ => Ok(n),
        }
    }

    /// Moves the inbox's request (or response) queue into `drained`,
    /// leaving the inbox an empty buffer with capacity.
    fn swap_queue(&mut self, requests: bool) {
        // SAFETY: as in drain: no callback runs now.
        let inbox = unsafe { &mut *self.inbox };
        let q = if requests {
            &mut inbox.requests
        } else {
            &mut inbox.responses
        };
        std::mem::swap(q, &mut self.drained);
    }
}

impl<U> Bootstrap for UcxNet<U> {
    /// A context and worker with the active message handler; the blob is
    /// the worker's address.
    fn prepare(setup: &NetSetup) -> Result<(UcxNet<U>, Vec<u8>), NetError> {
        let env_tls = std::env::var("UCX_TLS").ok();
        let chosen = setup.ucx_tls.clone().or(env_tls);
        let peer_errors = peer_failure_detection(chosen.as_deref());
        let tls = chosen.unwrap_or_else(|| "all (UCX default)".into());
        // SAFETY: returns a static string.
        let version = unsafe { CStr::from_ptr(sys::ucp_get_version_string()) }
            .to_string_lossy()
            .into_owned();
        let mut net = UcxNet {
            context: ptr::null_mut(),
            worker: ptr::null_mut(),
            inbox: Box::into_raw(Box::default()),
            eps: vec![ptr::null_mut(); setup.routing.shards() as usize],
            err_args: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            calls: Vec::new(),
            free_calls: Vec::new(),
            inflight: vec![0; setup.routing.shards() as usize],
            setup: setup.clone(),
            out: vec![0; setup.max_response()],
            drained: Vec::new(),
            spare_completions: Vec::new(),
            failed: None,
            quiet: false,
            peer_errors,
            asked: format!("UCX {version}, UCX_TLS={tls}"),
            lanes: String::new(),
            detection: if !peer_errors {
                "off (shared-memory transports have none)"
            } else if names_a_shared_memory_transport(&tls) {
                "on (so UCX may leave out the shared-memory transports asked for: they cannot detect it)"
            } else {
                "on"
            },
        };
        // Dropping `net` on an error below releases what was made.
        let mut config: *mut sys::ucp_config_t = ptr::null_mut();
        // SAFETY: null prefix and file read the environment; `config` is an
        // out-pointer.
        let status = unsafe { sys::ucp_config_read(ptr::null(), ptr::null(), &mut config) };
        check(status, "ucp_config_read")?;
        let result = (|| {
            if let Some(t) = &setup.ucx_tls {
                let v = CString::new(t.as_str())
                    .map_err(|_| NetError(format!("UCX transports {t:?} contain a NUL")))?;
                // SAFETY: `config` is live; both strings are NUL-terminated
                // and outlive the call.
                let status = unsafe { sys::ucp_config_modify(config, c"TLS".as_ptr(), v.as_ptr()) };
                check(status, &format!("setting UCX transports to {t:?}"))?;
            }
            let params = sys::ucp_params_t {
                field_mask: u64::from(sys::UCP_PARAM_FIELD_FEATURES),
                features: u64::from(sys::UCP_FEATURE_AM),
                ..Default::default()
            };
            // SAFETY: params and config are valid for the call; `context` is
            // an out-pointer.
            let status = unsafe {
                sys::ucp_init_version(
                    sys::UCP_API_MAJOR,
                    sys::UCP_API_MINOR,
                    &params,
                    config,
                    &mut net.context,
                )
            };
            check(status, &format!("ucp_init (UCX_TLS={tls})"))
        })();
        // SAFETY: read above, released once.
        unsafe { sys::ucp_config_release(config) };
        result?;
        let wp = sys::ucp_worker_params_t {
            field_mask: u64::from(sys::UCP_WORKER_PARAM_FIELD_THREAD_MODE),
            thread_mode: sys::UCS_THREAD_MODE_SINGLE,
            ..Default::default()
        };
        // SAFETY: a live context; `worker` is an out-pointer.
        let status = unsafe { sys::ucp_worker_create(net.context, &wp, &mut net.worker) };
        check(status, "ucp_worker_create")?;
        let hp = sys::ucp_am_handler_param_t {
            field_mask: u64::from(
                sys::UCP_AM_HANDLER_PARAM_FIELD_ID
                    | sys::UCP_AM_HANDLER_PARAM_FIELD_CB
                    | sys::UCP_AM_HANDLER_PARAM_FIELD_ARG
                    | sys::UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
            ),
            id: AM_ID,
            flags: sys::UCP_AM_FLAG_WHOLE_MSG,
            cb: Some(on_am),
            arg: net.inbox.cast(),
        };
        // SAFETY: a live worker; the inbox outlives it (freed in Drop after
        // the worker).
        let status = unsafe { sys::ucp_worker_set_am_recv_handler(net.worker, &hp) };
        check(status, "ucp_worker_set_am_recv_handler")?;
        let mut addr: *mut sys::ucp_address_t = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: a live worker; out-pointers.
        let status = unsafe { sys::ucp_worker_get_address(net.worker, &mut addr, &mut len) };
        check(status, "ucp_worker_get_address")?;
        // SAFETY: UCX returned `len` bytes at `addr`, valid until released.
        let blob = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) }.to_vec();
        // SAFETY: the address this worker gave, released once.
        unsafe { sys::ucp_worker_release_address(net.worker, addr) };
        Ok((net, blob))
    }

    /// One endpoint to every daemon of the other ranks.
    fn connect(&mut self, blobs: &[Vec<u8>]) -> Result<(), NetError> {
        let peers: Vec<usize> = self.setup.peers().collect();
        for j in peers {
            let addr = blobs
                .get(j)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| NetError(format!("no worker address from {}", self.where_(j))))?;
            let arg = Box::into_raw(Box::new(ErrArg {
                inbox: self.inbox,
                peer: j as u32,
            }));
            self.err_args.push(arg);
            let params = sys::ucp_ep_params_t {
                field_mask: u64::from(
                    sys::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS
                        | sys::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE
                        | sys::UCP_EP_PARAM_FIELD_ERR_HANDLER,
                ),
                address: addr.as_ptr().cast(),
                err_mode: if self.peer_errors {
                    sys::UCP_ERR_HANDLING_MODE_PEER
                } else {
                    sys::UCP_ERR_HANDLING_MODE_NONE
                },
                err_handler: sys::ucp_err_handler_t {
                    cb: Some(on_ep_error),
                    arg: arg.cast(),
                },
                ..Default::default()
            };
            // SAFETY: a live worker; the address bytes are the peer's worker
            // address and are read during the call; `arg` outlives the
            // endpoint (freed in Drop after the worker).
            let status = unsafe { sys::ucp_ep_create(self.worker, &params, &mut self.eps[j]) };
            check(status, &format!("ucp_ep_create to {}", self.where_(j)))?;
        }
        // What UCX chose, not only what was asked: the lanes of every
        // endpoint as created (the same, unless peers differ).
        let mut chosen: Vec<String> = Vec::new();
        for &ep in self.eps.iter().filter(|e| !e.is_null()) {
            let l = lanes(&ep_info(ep));
            if !chosen.contains(&l) {
                chosen.push(l);
            }
        }
        self.lanes = chosen.join(" | ");
        Ok(())
    }
}

impl<U> Network<U> for UcxNet<U> {
    const NAME: &'static str = "ucx-am";

    fn call(&mut self, to: usize, req: &[u8], user: U) -> Result<(), Refused<U>> {
        if let Some(f) = &self.failed {
            return Err(Refused::Failed(user, NetError(f.clone())));
        }
        if to >= self.eps.len() || self.eps[to].is_null() {
            return Err(Refused::Failed(
                user,
                NetError(format!("no endpoint to daemon {to}")),
            ));
        }
        if self.inflight[to] >= self.setup.max_inflight {
            return Err(Refused::Busy(user));
        }
        let slot = match self.free_calls.pop() {
            Some(s) => s,
            None => {
                self.calls.push(Call {
                    user: None,
                    peer: 0,
                    generation: 0,
                });
                (self.calls.len() - 1) as u32
            }
        };
        let c = &mut self.calls[slot as usize];
        c.generation = c.generation.wrapping_add(1);
        c.peer = to as u32;
        let mut h = [0u8; HDR];
        h[0] = KIND_REQUEST;
        h[4..8].copy_from_slice(&(self.setup.me() as u32).to_le_bytes());
        h[8..12].copy_from_slice(&slot.to_le_bytes());
        h[12..16].copy_from_slice(&c.generation.to_le_bytes());
        if let Err(e) = self.send(to, h, req) {
            self.free_calls.push(slot);
            return Err(Refused::Failed(user, e));
        }
        self.calls[slot as usize].user = Some(user);
        self.inflight[to] += 1;
        Ok(())
    }

    fn poll(
        &mut self,
        serve: &mut impl FnMut(&[u8], &mut [u8]) -> usize,
        done: &mut impl FnMut(U, &[u8]),
    ) -> Result<usize, NetError> {
        // SAFETY: a live worker; callbacks run inside and touch only the
        // inbox and slots (see the module docs).
        unsafe { sys::ucp_worker_progress(self.worker) };
        self.drain(serve, done)
    }

    fn quiesce(&mut self) {
        self.quiet = true;
    }

    fn transport(&self) -> String {
        if self.lanes.is_empty() {
            format!("{}, peer failure detection {}", self.asked, self.detection)
        } else {
            format!(
                "{}, lanes {}, peer failure detection {}",
                self.asked, self.lanes, self.detection
            )
        }
    }
}

impl<U> Drop for UcxNet<U> {
    fn drop(&mut self) {
        // SAFETY: every handle below was made by this UcxNet and is
        // released once, endpoints before the worker before the context;
        // the slots, error arguments and inbox the callbacks use are freed
        // only after the worker, when no callback can run any more.
        unsafe {
            for ep in self.eps.iter_mut().filter(|e| !e.is_null()) {
                let param = sys::ucp_request_param_t {
                    op_attr_mask: sys::UCP_OP_ATTR_FIELD_FLAGS,
                    flags: sys::UCP_EP_CLOSE_FLAG_FORCE,
                    ..Default::default()
                };
                let r = sys::ucp_ep_close_nbx(*ep, &param);
                if !r.is_null() && !is_err(r) {
                    // Bounded: a forced close does not wait for the peer.
                    for _ in 0..1_000_000 {
                        if sys::ucp_request_check_status(r) != sys::UCS_INPROGRESS {
                            break;
                        }
                        sys::ucp_worker_progress(self.worker);
                    }
                    sys::ucp_request_free(r);
                }
                *ep = ptr::null_mut();
            }
            for &slot in &self.slots {
                let req = std::mem::replace(&mut (*slot).req, ptr::null_mut());
                if !req.is_null() {
                    sys::ucp_request_free(req);
                }
            }
            if !self.worker.is_null() {
                sys::ucp_worker_destroy(self.worker);
            }
            if !self.context.is_null() {
                sys::ucp_cleanup(self.context);
            }
            for &slot in &self.slots {
                drop(Box::from_raw(slot));
            }
            for &arg in &self.err_args {
                drop(Box::from_raw(arg));
            }
            drop(Box::from_raw(self.inbox));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Routing;

    fn setup(rank: u32, tls: &str) -> NetSetup {
        NetSetup {
            routing: Routing::new(2, 1, 16),
            rank,
            daemon: 0,
            value_size: 64,
            max_inflight: 4,
            ucx_tls: Some(tls.into()),
        }
    }

    /// The lanes as UCX 1.13.1 printed them for two endpoints of this
    /// benchmark (`UCX_TLS=shm`, then `tcp`), and text with none.
    #[test]
    fn lanes_are_read_off_the_endpoint_description() {
        let shm = "#\n# UCP endpoint \n#\n#               peer: <no debug data>\n\
            #                 lane[0]:  0:sysv/memory.0 md[0]           -> md[0]/sysv/sysdev[255] am am_bw#0\n\
            #                 lane[1]:  2:cma/memory.0 md[2]            -> md[2]/cma/sysdev[255] rma_bw#0\n\
            #\n#                 am_send: 0..<egr/short>..93..<egr/bcopy>..8256..<rndv>..(inf)\n";
        assert_eq!(lanes(shm), "sysv/memory (am, am_bw) + cma/memory (rma_bw)");
        let tcp = "#                 lane[0]:  1:tcp/lo.0 md[1]      -> md[1]/tcp/sysdev[255] am am_bw#0 keepalive\n\
            #                 lane[1]:  1:tcp/lo.0 md[1]      -> md[1]/tcp/sysdev[255] wireup\n";
        assert_eq!(lanes(tcp), "tcp/lo (am, am_bw, keepalive, wireup)");
        // Newer UCX adds a segment size after the remote; a wireup lane
        // names its auxiliary transport in braces.
        let newer = "lane[0]:  3:rc_mlx5/mlx5_0:1.0 md[3] -> md[3]/ib/sysdev[255] seg 8256 am am_bw#0\n\
            lane[1]:  4:ud_mlx5/mlx5_0:1.0 md[3] -> md[3]/ib/sysdev[255] seg 4096 wireup{ud_mlx5/mlx5_0:1}\n";
        assert_eq!(
            lanes(newer),
            "rc_mlx5/mlx5_0:1 (am, am_bw) + ud_mlx5/mlx5_0:1 (wireup)"
        );
        assert_eq!(lanes("# no lanes here\n"), "unknown");
        assert_eq!(lanes("lane[0]: garbage"), "unknown");
    }

    /// Two workers in one process over the shared-memory transports: calls
    /// both ways, each answered, the in-flight limit refusing the fifth.
    #[test]
    fn two_workers_call_each_other() {
        let (mut a, blob_a) = UcxNet::<u32>::prepare(&setup(0, "tcp")).unwrap();
        let (mut b, blob_b) = UcxNet::<u32>::prepare(&setup(1, "tcp")).unwrap();
        let blobs = vec![blob_a, blob_b];
        a.connect(&blobs).unwrap();
        b.connect(&blobs).unwrap();
        assert!(a.transport().contains("UCX_TLS=tcp"));
        for i in 0..4u32 {
            a.call(1, &i.to_le_bytes(), i).unwrap();
        }
        assert!(matches!(a.call(1, b"x", 99), Err(Refused::Busy(99))));
        b.call(0, b"ping", 100).unwrap();
        let mut got_a = Vec::new();
        let mut got_b = Vec::new();
        let start = std::time::Instant::now();
        while (got_a.len() < 4 || got_b.is_empty()) && start.elapsed().as_secs() < 10 {
            a.poll(
                &mut |req, out| {
                    out[..req.len()].copy_from_slice(req);
                    out[..req.len()].reverse();
                    req.len()
                },
                &mut |u, resp| got_a.push((u, resp.to_vec())),
            )
            .unwrap();
            b.poll(
                &mut |req, out| {
                    let n = req.len();
                    out[..n].copy_from_slice(req);
                    out[n] = 0xee;
                    n + 1
                },
                &mut |u, resp| got_b.push((u, resp.to_vec())),
            )
            .unwrap();
        }
        got_a.sort();
        let want: Vec<(u32, Vec<u8>)> = (0..4u32)
            .map(|i| {
                let mut v = i.to_le_bytes().to_vec();
                v.push(0xee);
                (i, v)
            })
            .collect();
        assert_eq!(got_a, want);
        assert_eq!(got_b, vec![(100, b"gnip".to_vec())]);
        // Room again after the responses.
        a.call(1, b"x", 5).unwrap();
    }

    /// Over tcp (peer failure detection on), a call to a worker that is
    /// gone fails the caller's poll within seconds.
    #[test]
    fn a_call_to_a_dead_peer_fails_the_poll_within_seconds() {
        let (mut a, blob_a) = UcxNet::<u32>::prepare(&setup(0, "tcp")).unwrap();
        let (mut b, blob_b) = UcxNet::<u32>::prepare(&setup(1, "tcp")).unwrap();
        let blobs = vec![blob_a, blob_b];
        a.connect(&blobs).unwrap();
        b.connect(&blobs).unwrap();
        drop(b);
        a.call(1, b"x", 7).unwrap();
        let e = crate::net::testing::error_within(&mut a, std::time::Duration::from_secs(10))
            .expect("no error 10 s after the peer went away");
        assert!(!e.is_empty());
    }

    #[test]
    fn a_shared_memory_transport_among_others_is_noticed() {
        assert!(names_a_shared_memory_transport("tcp,shm"));
        assert!(names_a_shared_memory_transport("shm"));
        assert!(!names_a_shared_memory_transport("tcp"));
        assert!(!names_a_shared_memory_transport("all (UCX default)"));
    }

    #[test]
    fn peer_failure_detection_is_off_only_for_shared_memory_alone() {
        assert!(peer_failure_detection(None));
        assert!(peer_failure_detection(Some("tcp")));
        assert!(peer_failure_detection(Some("shm,tcp")));
        assert!(!peer_failure_detection(Some("shm")));
        assert!(!peer_failure_detection(Some("posix,sysv,cma")));
    }

    /// Two workers of one process over shared memory (no peer failure
    /// detection there): a call and its response.
    #[test]
    fn shared_memory_works_without_peer_failure_detection() {
        let (mut a, blob_a) = UcxNet::<u32>::prepare(&setup(0, "posix,sysv,self")).unwrap();
        let (mut b, blob_b) = UcxNet::<u32>::prepare(&setup(1, "posix,sysv,self")).unwrap();
        let blobs = vec![blob_a, blob_b];
        a.connect(&blobs).unwrap();
        b.connect(&blobs).unwrap();
        assert!(a.transport().contains("peer failure detection off"));
        a.call(1, b"abc", 1).unwrap();
        let mut got = None;
        let start = std::time::Instant::now();
        while got.is_none() && start.elapsed().as_secs() < 10 {
            a.poll(&mut |_, _| 0, &mut |u, r| got = Some((u, r.to_vec())))
                .unwrap();
            b.poll(
                &mut |req, out| {
                    out[..req.len()].copy_from_slice(req);
                    req.len()
                },
                &mut |_, _| {},
            )
            .unwrap();
        }
        assert_eq!(got, Some((1, b"abc".to_vec())));
    }

    #[test]
    fn an_unknown_transport_is_an_error_naming_it() {
        match UcxNet::<u32>::prepare(&setup(0, "no_such_transport")) {
            Ok(_) => panic!("an unknown transport was accepted"),
            Err(e) => assert!(e.0.contains("no_such_transport"), "{e}"),
        }
    }
}
