//! Fuzzing the frames a link delivers to the software device.
//!
//! The device under attack is a manual-progress software device, reused
//! across inputs (rebuilt every [`REBUILD_EVERY`] inputs). For each input
//! the harness connects a plain unix stream socket to the device's abstract
//! socket (the name `Context::soft_address()` prints), sends `HELLO` as
//! `src/soft/net.rs` documents it, reads `WELCOME`, and then writes the
//! fuzzer's bytes, in two pieces with a progress pass between them (frames
//! split across reads), stepping the device after each. Then it closes the
//! socket and steps the device again (the link dies: its QPs fail).
//!
//! So that `REQ` and `RESP` frames reach more than the "unknown QP" checks,
//! the `HELLO` may claim to come from a made-up device `F` (flag
//! [`flags::CLAIM_PEER`]), and a fresh QP `v` (number [`V_QPN`],
//! sequence numbers from 0; its epoch, which changes from one `v` to the
//! next, is read from its first request, and the epoch of every `RESP` in
//! the input counts from it: 0 is `v`'s) is connected to `F`'s QP [`FAKE_QPN`] over this
//! very link: `REQ`s from `FAKE_QPN` to `V_QPN` execute against `v` (it
//! has receives posted, and remote rights on a region mapped at the fixed
//! address [`REGION`], rkey [`REGION_RKEY`]), and with
//! [`flags::V_REQUESTS`] `v` first sends a READ, an atomic and a WRITE
//! (PSNs 0, 1, 2), so that `RESP`s can answer them. A REMOTE_READ-only
//! region follows at [`CANARY_ADDR`] (rkey [`CANARY_RKEY`]); it must never
//! change. With [`flags::RAW_HANDSHAKE`] the bytes replace the handshake
//! (the acceptor thread reads them as `HELLO`; [`flags::FIX_TO`] puts the
//! device's address where `HELLO` names the device it wants).
//!
//! After each input, a QP pair between this device and another one in the
//! process must still work: a signaled WRITE completes and lands. Memory is
//! bounded by libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb`.
//!
//! Input layout: `flags u8`, `split u16 LE` (where the bytes are cut in
//! two), then the bytes.

use std::cell::RefCell;
use std::io::{Read as _, Write as _};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::{Duration, Instant};

use mlx5::wqe::{AtomicFa, Read, Write, opcode};
use mlx5::{
    Access, ConnInfo, ConnectOpts, Context, Cq, Kind, Mr, Pd, Progress, Qp, QpCaps, Remote,
};

use crate::input::Reader;

/// Input flags (the first byte).
pub mod flags {
    /// `HELLO` claims to come from `F`, the device `v` is connected to.
    pub const CLAIM_PEER: u8 = 1;
    /// `v` sends three requests before the bytes are written.
    pub const V_REQUESTS: u8 = 2;
    /// No handshake: the bytes are the first thing on the socket.
    pub const RAW_HANDSHAKE: u8 = 4;
    /// With [`RAW_HANDSHAKE`]: bytes 32..48 (`HELLO`'s "to") are replaced
    /// by the device's address, which changes from run to run.
    pub const FIX_TO: u8 = 8;
}

/// The process id in the made-up devices' addresses as the seeds write
/// them (above any Linux `pid_max`). A device refuses a local connector
/// that is not the process its address names, so the harness claims the
/// made-up devices as its own (see [`live`]).
pub const FAKE_PID: u32 = 0x7fff_0001;
/// The made-up devices' numbers in this process: seed device `n` is
/// device `FAKE_ID_BASE + n` here, above any real device of the harness.
pub const FAKE_ID_BASE: u32 = 0x7fff_0000;
/// How many made-up devices there can be (`n` below this).
pub const FAKE_IDS: u32 = 0x1000;
/// The QP number of `v`'s peer at `F`.
pub const FAKE_QPN: u32 = 0x42;
/// The number `v` gets (the second QP of the device; the first is the
/// in-process pair's).
pub const V_QPN: u32 = 0x101;
/// Where `v`'s region is mapped (fixed, so that frames can name it).
pub const REGION: u64 = 0x5a5a_0000_0000;
/// Bytes of `v`'s region (every right).
pub const REGION_LEN: usize = 8192;
/// Its key (the device's first region).
pub const REGION_RKEY: u32 = 0x101;
/// The REMOTE_READ-only region right after it, of the same length.
pub const CANARY_ADDR: u64 = REGION + REGION_LEN as u64;
/// Its key (the device's second region).
pub const CANARY_RKEY: u32 = 0x201;
/// Inputs between two rebuilds of the device: a device keeps every link
/// it ever had (dead ones too), one more per input here.
pub const REBUILD_EVERY: u32 = 1000;
/// The byte pattern of the canary region.
const CANARY: u8 = 0x5c;
/// `WELCOME` with status 0.
const WELCOME_OK: [u8; 16] = [8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// How long the handshake and the adoption of the link may take.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// A software device address (`src/soft/net.rs`): unix kind.
pub fn unix_addr(pid: u32, id: u32) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..4].copy_from_slice(b"SOFT");
    g[4] = 1;
    g[8..12].copy_from_slice(&pid.to_le_bytes());
    g[12..16].copy_from_slice(&id.to_le_bytes());
    g
}

/// `F`, the device `v` is connected to, as the seeds write it.
pub fn seed_peer() -> [u8; 16] {
    unix_addr(FAKE_PID, 1)
}

/// The address a made-up address of the seeds (pid [`FAKE_PID`], device
/// number `n` below [`FAKE_IDS`]) stands for in this process: this
/// process's pid and device number `FAKE_ID_BASE + n`. Other addresses
/// are left as they are.
pub fn live(a: [u8; 16]) -> [u8; 16] {
    let n = u32::from_le_bytes([a[12], a[13], a[14], a[15]]);
    if a[..8] != unix_addr(0, 0)[..8] || a[8..12] != FAKE_PID.to_le_bytes() || n >= FAKE_IDS {
        return a;
    }
    unix_addr(std::process::id(), FAKE_ID_BASE + n)
}

/// `F`, the device `v` is connected to.
pub fn fake_peer() -> [u8; 16] {
    live(seed_peer())
}

/// A device no QP knows.
pub fn stranger() -> [u8; 16] {
    live(unix_addr(FAKE_PID, 2))
}

/// A frame: `body length u32 LE`, `kind`, 3 zero bytes, the body.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&[kind, 0, 0, 0]);
    f.extend_from_slice(body);
    f
}

/// `HELLO` (kind 1) from `from` to `to`.
pub fn hello(from: [u8; 16], to: [u8; 16]) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(b"M5SW");
    b.extend_from_slice(&3u16.to_le_bytes()); // the wire version (mlx5/src/soft/wire.rs)
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&from);
    b.extend_from_slice(&to);
    frame(1, &b)
}

/// The fields of a `REQ` body.
#[derive(Clone, Copy, Debug, Default)]
pub struct Req {
    /// Requester QPN.
    pub src_qpn: u32,
    /// Target QPN.
    pub dst_qpn: u32,
    /// Sequence number.
    pub psn: u32,
    /// Requester's epoch.
    pub epoch: u32,
    /// WQE opcode.
    pub opcode: u8,
    /// Bit 0: solicited.
    pub flags: u8,
    /// Remote key.
    pub rkey: u32,
    /// Remote address.
    pub addr: u64,
    /// Payload or READ length.
    pub len: u32,
    /// Immediate.
    pub imm: u32,
    /// Swap or add operand.
    pub swap_add: u64,
    /// Compare operand.
    pub compare: u64,
}

/// `REQ` (kind 3) with `payload` after its 56 bytes.
pub fn req(r: &Req, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 56];
    b[0..4].copy_from_slice(&r.src_qpn.to_le_bytes());
    b[4..8].copy_from_slice(&r.dst_qpn.to_le_bytes());
    b[8..12].copy_from_slice(&r.psn.to_le_bytes());
    b[12..16].copy_from_slice(&r.epoch.to_le_bytes());
    b[16] = r.opcode;
    b[17] = r.flags;
    b[20..24].copy_from_slice(&r.rkey.to_le_bytes());
    b[24..32].copy_from_slice(&r.addr.to_le_bytes());
    b[32..36].copy_from_slice(&r.len.to_le_bytes());
    b[36..40].copy_from_slice(&r.imm.to_le_bytes());
    b[40..48].copy_from_slice(&r.swap_add.to_le_bytes());
    b[48..56].copy_from_slice(&r.compare.to_le_bytes());
    b.extend_from_slice(payload);
    frame(3, &b)
}

/// `RESP` (kind 4) to `qpn` with `status` (0 ACK, 1 RNR, 2 NAK, 3 out of
/// sequence), `arg`, the atomic's original value and READ `data`.
pub fn resp(
    qpn: u32,
    epoch: u32,
    psn: u32,
    status: u8,
    arg: u8,
    orig: u64,
    data: &[u8],
) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    b[0..4].copy_from_slice(&qpn.to_le_bytes());
    b[4..8].copy_from_slice(&epoch.to_le_bytes());
    b[8..12].copy_from_slice(&psn.to_le_bytes());
    b[12] = status;
    b[13] = arg;
    b[16..24].copy_from_slice(&orig.to_le_bytes());
    b[24..28].copy_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    frame(4, &b)
}

/// `RESP` with `more` = `more` (bytes 14..16): with status 0, no original
/// value and no data, the folded plain ACK that answers the `more + 1`
/// oldest requests unanswered on the link, naming the newest (`psn`); with
/// anything else, a malformed frame.
pub fn resp_more(qpn: u32, epoch: u32, psn: u32, status: u8, more: u16) -> Vec<u8> {
    let mut f = resp(qpn, epoch, psn, status, 0, 0, &[]);
    // The 8-byte frame header, then the body's bytes 14..16.
    f[8 + 14..8 + 16].copy_from_slice(&more.to_le_bytes());
    f
}

/// The epoch of the first `REQ` the device sent on `s` (`v`'s first
/// request).
fn first_req_epoch(s: &mut UnixStream) -> u32 {
    use std::io::Read as _;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut h = [0u8; 8];
    s.read_exact(&mut h).expect("v's REQ header");
    assert_eq!(h[4], 3, "v's first frame is a REQ");
    let mut body = vec![0u8; u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize];
    s.read_exact(&mut body).expect("v's REQ");
    s.set_read_timeout(None).expect("timeout");
    u32::from_le_bytes([body[12], body[13], body[14], body[15]])
}

/// Adds `epoch` to the epoch of every whole `RESP` frame at the front of
/// `b` (up to the first frame that does not parse).
fn rebase_resp_epochs(b: &mut [u8], epoch: u32) {
    let mut i = 0usize;
    while let Some(h) = b.get(i..i + 8) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let Some(end) = (i + 8).checked_add(len).filter(|&e| e <= b.len()) else {
            break;
        };
        if h[4] == 4 && len >= 8 {
            let at = i + 8 + 4;
            let e = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            b[at..at + 4].copy_from_slice(&e.wrapping_add(epoch).to_le_bytes());
        }
        i = end;
    }
}

/// Anonymous memory at a fixed address, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn at(addr: u64, len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping; MAP_FIXED_NOREPLACE fails
        // instead of replacing anything already mapped there.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert!(
            p as u64 == addr,
            "cannot map {len} bytes at {addr:#x}: {}",
            std::io::Error::last_os_error()
        );
        Mapping { ptr: p.cast(), len }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `at`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One end of the in-process pair.
struct End {
    ctx: Context,
    qp: Qp,
    cq: Cq,
    mr: Mr,
    _pd: Pd,
}

/// The device under attack and what it keeps between inputs.
struct Fixture {
    /// Inputs run on this device.
    inputs: u32,
    /// The device's socket name and address.
    name: String,
    addr: [u8; 16],
    /// The address of the in-process pair's other device.
    other_addr: [u8; 16],
    /// The in-process pair: `a` on the device, `b` on another one.
    a: End,
    b: End,
    /// `v`'s CQ and PD (the QP is made per input).
    v_cq: Cq,
    v_pd: Pd,
    // The regions are deregistered before the mapping goes (field order).
    region: Mr,
    canary: Mr,
    _mapping: Mapping,
}

impl Fixture {
    fn new() -> Fixture {
        let dev = Context::soft(Progress::Manual);
        let other = Context::soft(Progress::Manual);
        let v_pd = Pd::new(&dev).expect("pd");
        let mapping = Mapping::at(REGION, 2 * REGION_LEN);
        // SAFETY: the mapping outlives both regions (dropped after them,
        // field order of Fixture); the harness reads the canary only
        // between progress passes, when the device is not running.
        let (region, canary) = unsafe {
            (
                v_pd.register(mapping.ptr, REGION_LEN, Access::ALL)
                    .expect("mr"),
                v_pd.register(mapping.ptr.add(REGION_LEN), REGION_LEN, Access::REMOTE_READ)
                    .expect("mr"),
            )
        };
        assert_eq!((region.rkey(), canary.rkey()), (REGION_RKEY, CANARY_RKEY));
        // SAFETY: a fresh region no WQE or peer has been told about; the
        // devices are manual and only this thread steps them.
        unsafe { canary.write(0, &[CANARY; REGION_LEN]) };
        let end = |ctx: &Context| {
            let pd = Pd::new(ctx).expect("pd");
            let cq = Cq::new(ctx, 16).expect("cq");
            let qp = Qp::builder(&pd, &cq, &cq).build().expect("qp");
            let mr = pd.alloc_mr(64, Access::ALL).expect("mr");
            End {
                ctx: ctx.clone(),
                qp,
                cq,
                mr,
                _pd: pd,
            }
        };
        let (mut a, mut b) = (end(&dev), end(&other));
        let opts = ConnectOpts::default();
        // local_info binds the device's socket.
        let ia = a.qp.local_info(&opts).expect("info");
        let ib = b.qp.local_info(&opts).expect("info");
        a.qp.connect(&ib, &opts).expect("connect");
        b.qp.connect(&ia, &opts).expect("connect");
        let name = dev.soft_address().expect("a software device");
        let name = name
            .strip_prefix("unix:@")
            .unwrap_or_else(|| panic!("not a unix address: {name}"))
            .to_string();
        Fixture {
            inputs: 0,
            name,
            addr: ia.gid,
            other_addr: ib.gid,
            a,
            b,
            v_cq: Cq::new(&dev, 64).expect("cq"),
            v_pd,
            region,
            canary,
            _mapping: mapping,
        }
    }

    fn dev(&self) -> &Context {
        &self.a.ctx
    }

    fn connect(&self) -> UnixStream {
        let a = SocketAddr::from_abstract_name(self.name.as_bytes()).expect("name");
        let s = UnixStream::connect_addr(&a).expect("connect to the device");
        s.set_read_timeout(Some(HANDSHAKE)).expect("timeout");
        s
    }

    /// Steps the device until it has adopted the link the acceptor handed
    /// over: the link is up, or it died already (the device closed our
    /// socket) or answered (bytes for us), which only an adopted link can.
    fn wait_adopted(&self, s: &mut UnixStream, links: usize) {
        let start = Instant::now();
        s.set_nonblocking(true).expect("nonblocking");
        loop {
            self.dev().progress().expect("progress");
            if self.dev().wire_stats().expect("stats").links > links {
                return;
            }
            match s.read(&mut [0u8; 64]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => return,
            }
            assert!(
                start.elapsed() < HANDSHAKE,
                "the device never adopted the link"
            );
            std::thread::yield_now();
        }
    }

    fn run(&mut self, data: &[u8]) {
        let mut r = Reader::new(data);
        let f = r.u8();
        let split = usize::from(r.u16());
        let bytes = r.rest();
        let links = self.dev().wire_stats().expect("stats").links;
        let mut s = self.connect();
        let mut v = None;
        if f & flags::RAW_HANDSHAKE != 0 {
            self.raw_handshake(&mut s, bytes, f & flags::FIX_TO != 0, links);
        } else {
            let from = if f & flags::CLAIM_PEER != 0 {
                fake_peer()
            } else {
                stranger()
            };
            s.write_all(&hello(from, self.addr)).expect("HELLO");
            let mut w = [0u8; 16];
            s.read_exact(&mut w).expect("WELCOME");
            assert_eq!(w, WELCOME_OK, "the device refused a well-formed HELLO");
            self.wait_adopted(&mut s, links);
            let mut bytes = bytes.to_vec();
            if f & flags::CLAIM_PEER != 0 {
                let requests = f & flags::V_REQUESTS != 0;
                v = Some(self.make_v(requests));
                if requests {
                    rebase_resp_epochs(&mut bytes, first_req_epoch(&mut s));
                }
            }
            let (first, second) = bytes.split_at(split.min(bytes.len()));
            for part in [first, second] {
                if !self.send_all(&mut s, part) {
                    break; // the device closed the link
                }
                self.dev().progress_until_idle().expect("progress");
            }
        }
        drop(s);
        self.dev().progress_until_idle().expect("progress");
        self.drain_v();
        drop(v);
        self.check();
        self.inputs += 1;
    }

    /// The bytes are the handshake (and whatever follows it): the acceptor
    /// thread reads them. If it accepts them, the link is adopted as any.
    fn raw_handshake(&self, s: &mut UnixStream, bytes: &[u8], fix_to: bool, links: usize) {
        let mut bytes = bytes.to_vec();
        if bytes.len() >= 32 {
            let mut from = [0u8; 16];
            from.copy_from_slice(&bytes[16..32]);
            // The addresses of the harness's real devices would pass for
            // theirs (a device tells processes apart, not the devices of
            // one process).
            let from = live(from);
            let from = if from == self.other_addr || from == self.addr {
                stranger()
            } else {
                from
            };
            bytes[16..32].copy_from_slice(&from);
        }
        if fix_to && bytes.len() >= 48 {
            bytes[32..48].copy_from_slice(&self.addr);
        }
        s.set_nonblocking(true).expect("nonblocking");
        let _ = self.send_all(s, &bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_nonblocking(false).expect("blocking");
        let mut w = [0u8; 16];
        let mut got = 0;
        while got < w.len() {
            match s.read(&mut w[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        if got == w.len() && w == WELCOME_OK {
            self.wait_adopted(s, links);
        }
    }

    /// Writes `b` without blocking the device: while the socket is full,
    /// the device runs (and reads). False if the device closed the link.
    fn send_all(&self, s: &mut UnixStream, mut b: &[u8]) -> bool {
        while !b.is_empty() {
            match s.write(b) {
                Ok(n) => b = &b[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.dev().progress().expect("progress");
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// A fresh `v` connected to `F` over the link just adopted (the only
    /// one up with `F`'s address), with receives posted and, if asked,
    /// three requests in flight.
    fn make_v(&mut self, requests: bool) -> Qp {
        let caps = QpCaps {
            max_send_wr: 8,
            max_recv_wr: 8,
            ..QpCaps::default()
        };
        let mut v = Qp::builder(&self.v_pd, &self.v_cq, &self.v_cq)
            .caps(caps)
            .build()
            .expect("qp");
        assert_eq!(v.qpn(), V_QPN);
        let peer = ConnInfo {
            qpn: FAKE_QPN,
            psn: 0,
            lid: 0,
            gid: fake_peer(),
        };
        v.connect(&peer, &ConnectOpts::default())
            .expect("connect v");
        for i in 0..2 {
            v.post_recv(&[self.region.sge(i * 1024, 1024)])
                .expect("recv");
        }
        if requests {
            let far = Remote {
                addr: 0x1000,
                rkey: 0x1234,
            };
            v.post(&Read::new(far, &[self.region.sge(4096, 64)]).signaled())
                .expect("post");
            v.post(&AtomicFa::new(far, self.region.sge(4160, 8), 1).signaled())
                .expect("post");
            v.post(&Write::inline(far, b"from v").signaled())
                .expect("post");
            v.ring_doorbell();
            self.dev().progress().expect("progress");
        }
        v
    }

    fn drain_v(&mut self) {
        let n = self
            .v_cq
            .poll(usize::MAX, |c| {
                assert_eq!(c.qpn, V_QPN, "a completion of another QP: {c:?}");
            })
            .unwrap_or_else(|e| panic!("v's CQ: {e} (it has room for every WQE)"));
        assert!(n <= 8 + 3, "{n} completions for at most 11 WQEs");
    }

    /// The device still works, and wrote nothing it may not.
    fn check(&mut self) {
        let mut b = vec![0u8; REGION_LEN];
        // SAFETY: manual devices, stepped only by this thread: nothing
        // executes while this reads.
        unsafe { self.canary.read(0, &mut b) };
        if let Some(i) = b.iter().position(|&x| x != CANARY) {
            panic!("the REMOTE_READ-only region changed at byte {i}");
        }
        let stamp = u64::from(self.inputs).to_le_bytes();
        let w = Write::inline(self.b.mr.remote(0), &stamp).signaled();
        self.a.qp.post_and_ring(&w).expect("post");
        self.a.ctx.progress_until_idle().expect("progress");
        let mut got = Vec::new();
        self.a.cq.poll(16, |c| got.push(*c)).expect("the pair's CQ");
        assert_eq!(got.len(), 1, "the pair's WRITE completes: {got:?}");
        assert_eq!(
            (got[0].kind, got[0].status()),
            (
                Kind::Send {
                    opcode: opcode::RDMA_WRITE
                },
                Ok(())
            )
        );
        let mut landed = [0u8; 8];
        // SAFETY: the WRITE completed (polled above) and the devices are
        // manual, stepped only by this thread.
        unsafe { self.b.mr.read(0, &mut landed) };
        assert_eq!(landed, stamp, "the pair's WRITE landed");
        assert_eq!(self.b.cq.poll(16, |_| {}).expect("b's CQ"), 0);
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// Runs one input against the shared device (the fuzz target).
pub fn run(data: &[u8]) {
    FIXTURE.with(|f| {
        let mut f = f.borrow_mut();
        if f.as_ref().is_some_and(|x| x.inputs >= REBUILD_EVERY) {
            // The old device must go first: its mapping sits at REGION.
            *f = None;
        }
        f.get_or_insert_with(Fixture::new).run(data);
    });
}
