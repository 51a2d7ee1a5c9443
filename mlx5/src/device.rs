//! Opening a device: the software NIC or an mlx5 NIC through rdma-core, by
//! an explicit [`Selection`] or the `MLX5_DEVICE` environment variable.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use std::time::Duration;

use crate::backend::Backend;
use crate::error::Error;
use crate::event::AsyncEvent;
pub use crate::soft::{LinkInfo, LinkKind, Progress, SOFT_LINK_ENV, WireStats};

/// The environment variable tests, examples, benches and benchkv honour.
pub const ENV: &str = "MLX5_DEVICE";

/// Which device to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The software device (works anywhere). It reaches devices in other
    /// processes on this host through a unix socket.
    Soft(Progress),
    /// The software device listening on TCP at this address (port 0: any
    /// free port; IP 0.0.0.0: all interfaces, advertising the first
    /// non-loopback one), for devices on other hosts.
    SoftTcp(Progress, SocketAddrV4),
    /// An mlx5 NIC through rdma-core: by name (`mlx5_0`), or the first one.
    Hw(Option<String>),
    /// The first mlx5 NIC if rdma-core finds one, else the software device
    /// with background progress.
    Auto,
}

impl Selection {
    /// Parses a selection: `soft`, `soft:manual`, either followed by
    /// `@tcp`, `@tcp:IP` or `@tcp:IP:PORT` (listen on TCP), `hw` (first
    /// NIC), an rdma-core device name such as `mlx5_0`, or `auto` / empty.
    pub fn parse(s: &str) -> Result<Selection, Error> {
        let s = s.trim();
        if let Some((soft, tcp)) = s.split_once('@') {
            let bad = || Error::InvalidSelection(s.to_string());
            let Selection::Soft(p) = Selection::parse(soft)? else {
                return Err(bad());
            };
            let at = match tcp.strip_prefix("tcp") {
                Some("") => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                Some(rest) => {
                    let rest = rest.strip_prefix(':').ok_or_else(bad)?;
                    match rest.parse::<SocketAddrV4>() {
                        Ok(a) => a,
                        Err(_) => SocketAddrV4::new(rest.parse().map_err(|_| bad())?, 0),
                    }
                }
                None => return Err(bad()),
            };
            return Ok(Selection::SoftTcp(p, at));
        }
        match s {
            "" | "auto" => Ok(Selection::Auto),
            "soft" | "soft:background" => Ok(Selection::Soft(Progress::Background)),
            "soft:manual" => Ok(Selection::Soft(Progress::Manual)),
            "hw" => Ok(Selection::Hw(None)),
            name if !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                Ok(Selection::Hw(Some(name.to_string())))
            }
            other => Err(Error::InvalidSelection(other.to_string())),
        }
    }

    /// The selection named by `MLX5_DEVICE` ([`Selection::Auto`] when unset).
    pub fn from_env() -> Result<Selection, Error> {
        match std::env::var(ENV) {
            Ok(v) => Selection::parse(&v),
            Err(std::env::VarError::NotPresent) => Ok(Selection::Auto),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(Error::InvalidSelection(v.to_string_lossy().into_owned()))
            }
        }
    }
}

pub(crate) struct CtxInner {
    pub(crate) backend: Backend,
}

/// An opened device. Cloning is cheap and shares the device; resources
/// created from it keep it open.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<CtxInner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("device", &self.name())
            .finish()
    }
}

impl Context {
    /// Opens the device `sel` names.
    pub fn open(sel: Selection) -> Result<Context, Error> {
        let backend = match sel {
            Selection::Soft(p) => Backend::soft(p, None)?,
            Selection::SoftTcp(p, at) => Backend::soft(p, Some(at))?,
            Selection::Hw(name) => Backend::hw(name.as_deref())?,
            Selection::Auto => match Backend::hw(None) {
                Ok(b) => b,
                Err(Error::NoDevice { .. }) => Backend::soft(Progress::Background, None)?,
                Err(e) => return Err(e),
            },
        };
        Ok(Context {
            inner: Arc::new(CtxInner { backend }),
        })
    }

    /// Opens the device `MLX5_DEVICE` names (see [`Selection::parse`]).
    pub fn from_env() -> Result<Context, Error> {
        Context::open(Selection::from_env()?)
    }

    /// A software device with the given progress mode (reachable from
    /// other processes on this host through a unix socket).
    ///
    /// # Panics
    ///
    /// If the operating system refuses an eventfd or a thread (descriptor
    /// or thread exhaustion); `Context::open(Selection::Soft(progress))`
    /// returns that as an error instead.
    pub fn soft(progress: Progress) -> Context {
        let backend = Backend::soft(progress, None)
            .unwrap_or_else(|e| panic!("opening a software device: {e}"));
        Context {
            inner: Arc::new(CtxInner { backend }),
        }
    }

    /// The device's name: `soft<N>` for software devices, the rdma-core
    /// name (`mlx5_0`) for hardware.
    pub fn name(&self) -> String {
        self.inner.backend.name()
    }

    /// Whether this is the software device.
    pub fn is_soft(&self) -> bool {
        self.inner.backend.soft_device().is_some()
    }

    /// The software device's progress mode (`None` on hardware): with
    /// [`Progress::Manual`], nothing happens until [`Context::progress`].
    pub fn progress_mode(&self) -> Option<Progress> {
        self.inner.backend.progress_mode()
    }

    /// Steps the software device once: every QP with posted work executes
    /// what it can (RNR retries count one attempt per call). Returns the
    /// number of WQEs (send and flushed receive) processed. Hardware and
    /// background devices need no stepping; on hardware this is
    /// [`Error::SoftOnly`]. The answers to the requests a step receives
    /// from another process may leave with the next step (see
    /// [`Progress::Manual`]).
    pub fn progress(&self) -> Result<usize, Error> {
        self.inner.backend.progress()
    }

    /// Whether a manual software device holds answers (ACKs, short READ
    /// data), as its last step left them, back for a later
    /// [`Context::progress`]: the next one, which sends them whatever it
    /// does, or, for plain ACKs of requests that asked for no completion,
    /// one about 20 µs later (see [`Progress::Manual`]). What is posted
    /// before that step leaves with them, in one ring record or `write`. A
    /// caller that batches its posts may post now rather than after the
    /// step. Always false on hardware and with background progress.
    pub fn answers_held(&self) -> bool {
        self.inner.backend.answers_held()
    }

    /// Calls [`Context::progress`] until it reports no work, then, if
    /// answers are still held back ([`Context::answers_held`]), makes one
    /// more step that sends them all.
    pub fn progress_until_idle(&self) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            let n = self.progress()?;
            if n == 0 {
                break;
            }
            total += n;
        }
        if self.answers_held() {
            total += self.inner.backend.progress_sending_all()?;
        }
        Ok(total)
    }

    /// The software device's address as peers reach it (`unix:@…` or
    /// `tcp:IP:PORT`); `None` on hardware.
    pub fn soft_address(&self) -> Option<String> {
        self.inner.backend.soft_address()
    }

    /// Counters of the software device's traffic with devices in other
    /// processes (frames, `read`/`write` calls, bytes, links up);
    /// [`Error::SoftOnly`] on hardware.
    pub fn wire_stats(&self) -> Result<WireStats, Error> {
        self.inner.backend.wire_stats()
    }

    /// The software device's links to devices in other processes or
    /// hosts, each with its peer and kind (shared memory, unix or tcp
    /// socket); [`Error::SoftOnly`] on hardware.
    pub fn soft_links(&self) -> Result<Vec<LinkInfo>, Error> {
        let d = self
            .inner
            .backend
            .soft_device()
            .ok_or(Error::SoftOnly("soft_links"))?;
        Ok(d.links())
    }

    /// The next asynchronous event of the device, without waiting
    /// (`ibv_get_async_event` on a non-blocking descriptor): `None` when
    /// there is none. See [`crate::event`] for which events the software
    /// device raises.
    pub fn async_event(&self) -> Result<Option<AsyncEvent>, Error> {
        self.inner.backend.async_event(None)
    }

    /// The next asynchronous event, waiting up to `timeout` for one.
    pub fn wait_async_event(&self, timeout: Duration) -> Result<Option<AsyncEvent>, Error> {
        self.inner.backend.async_event(Some(timeout))
    }

    pub(crate) fn same_device(&self, other: &Context) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
