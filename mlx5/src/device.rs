//! Opening a device: the software NIC or an mlx5 NIC through rdma-core, by
//! an explicit [`Selection`] or the `MLX5_DEVICE` environment variable.

use std::sync::Arc;

use crate::error::Error;
use crate::{hw, soft};

/// The environment variable tests, examples, benches and benchkv honour.
pub const ENV: &str = "MLX5_DEVICE";

/// How the software device makes progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A device thread executes WQEs as doorbells ring; it spins briefly
    /// when work stops, then sleeps until the next doorbell.
    Background,
    /// Nothing happens until [`Context::progress`] is called: tests step
    /// the device deterministically.
    Manual,
}

/// Which device to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The software device (works anywhere).
    Soft(Progress),
    /// An mlx5 NIC through rdma-core: by name (`mlx5_0`), or the first one.
    Hw(Option<String>),
    /// The first mlx5 NIC if rdma-core finds one, else the software device
    /// with background progress.
    Auto,
}

impl Selection {
    /// Parses a selection: `soft`, `soft:manual`, `hw` (first NIC), an
    /// rdma-core device name such as `mlx5_0`, or `auto` / empty.
    pub fn parse(s: &str) -> Result<Selection, Error> {
        match s.trim() {
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

pub(crate) enum Backend {
    Soft(Arc<soft::Device>),
    Hw(Arc<hw::Device>),
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
            Selection::Soft(p) => Backend::Soft(soft::Device::open(p)),
            Selection::Hw(name) => Backend::Hw(hw::Device::open(name.as_deref())?),
            Selection::Auto => match hw::Device::open(None) {
                Ok(d) => Backend::Hw(d),
                Err(Error::NoDevice { .. }) => {
                    Backend::Soft(soft::Device::open(Progress::Background))
                }
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

    /// A software device with the given progress mode.
    pub fn soft(progress: Progress) -> Context {
        Context {
            inner: Arc::new(CtxInner {
                backend: Backend::Soft(soft::Device::open(progress)),
            }),
        }
    }

    /// The device's name: `soft<N>` for software devices, the rdma-core
    /// name (`mlx5_0`) for hardware.
    pub fn name(&self) -> String {
        match &self.inner.backend {
            Backend::Soft(d) => d.name(),
            Backend::Hw(d) => d.name().to_string(),
        }
    }

    /// Whether this is the software device.
    pub fn is_soft(&self) -> bool {
        matches!(self.inner.backend, Backend::Soft(_))
    }

    /// Steps the software device once: every QP with posted work executes
    /// what it can (RNR retries count one attempt per call). Returns the
    /// number of WQEs (send and flushed receive) processed. Hardware and
    /// background devices need no stepping; on hardware this is an error.
    pub fn progress(&self) -> Result<usize, Error> {
        match &self.inner.backend {
            Backend::Soft(d) => Ok(d.progress()),
            Backend::Hw(_) => Err(Error::Progress("hardware devices progress by themselves")),
        }
    }

    /// Calls [`Context::progress`] until it reports no work.
    pub fn progress_until_idle(&self) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            let n = self.progress()?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    pub(crate) fn same_device(&self, other: &Context) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
