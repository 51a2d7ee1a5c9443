//! The connection between a client and the server: a unix stream socket in
//! the abstract namespace, named after the segment and the user id
//! ([`address`]). It carries the handshake, the two memfds, wake-ups and the
//! server's last word; the kernel closes it when either process dies, which
//! is how each side learns that the other is gone.
//!
//! | step | from   | bytes                                   | when |
//! |------|--------|-----------------------------------------|------|
//! | 1    | client | [`Hello`] (16 bytes)                    | right after `connect` |
//! | 2    | server | [`Welcome`] (80 bytes) + text, with the header and region memfds as `SCM_RIGHTS` | when it has read the hello; a refusal carries no descriptors and is followed by close |
//! | 3    | client | [`WAKE`] bytes                          | after publishing a request while the header says the server sleeps |
//! | 4    | server | a [`Notice`], then close                | when it evicts the client or shuts down |
//!
//! The server refuses connections from other user ids (`SO_PEERCRED`), the
//! way a 0600 file would. A client that sends anything but wake bytes after
//! its hello is evicted. No client message carries descriptors: the
//! server's sockets refuse them where the kernel can (`SO_PASSRIGHTS`,
//! Linux 6.16), so a client's `sendmsg` with any fails; on older kernels a
//! hello that comes with any is refused, a client that sends any later is
//! evicted, and the server closes them (closing a peer's descriptor can
//! block: see [`crate::sys::pass_rights`]). All integers are
//! little-endian; the fixed parts are `zerocopy` structs with explicit byte
//! order, so parsing any input is total (every function here returns an
//! error, never panics).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::Error;
use crate::layout::{MAGIC, VERSION};

/// The socket name of segment `name` for user `uid` (the abstract
/// namespace has no permissions, so the uid keeps users apart; the server
/// still checks every peer's uid).
pub(crate) fn address(uid: u32, name: &str) -> String {
    format!("ipc.{uid}.{name}")
}

/// Longest segment name whose [`address`] fits a socket address.
pub(crate) const MAX_NAME: usize = 90;

/// Checks that `name` is 1 to 90 of `[A-Za-z0-9._-]`, not starting with a
/// dot, and returns this user's socket address for it.
pub(crate) fn validate_name(name: &str) -> Result<String, Error> {
    let bad = |reason| Error::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_NAME {
        return Err(bad("longer than 90 bytes"));
    }
    if name.starts_with('.') {
        return Err(bad("starts with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(address(crate::sys::euid(), name))
}

/// Client → server after the hello: "I published a request; wake up".
pub(crate) const WAKE: u8 = 0x57;

/// The client's first message.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Hello {
    magic: U64,
    version: U32,
    flags: U32,
}

const HELLO_BLOCKING: u32 = 1;

impl Hello {
    pub(crate) const LEN: usize = size_of::<Self>();

    pub(crate) fn new(blocking: bool) -> Self {
        Self {
            magic: MAGIC.into(),
            version: VERSION.into(),
            flags: if blocking { HELLO_BLOCKING } else { 0 }.into(),
        }
    }

    /// Parses a hello; the error says what is wrong with it.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let h = Self::read_from_bytes(bytes)
            .map_err(|_| format!("hello is {} bytes, not {}", bytes.len(), Self::LEN))?;
        if h.magic.get() != MAGIC {
            return Err(format!("hello magic {:#018x}", h.magic.get()));
        }
        if h.version.get() != VERSION {
            return Err(format!(
                "client speaks protocol version {}, this server {VERSION}",
                h.version.get()
            ));
        }
        if h.flags.get() & !HELLO_BLOCKING != 0 {
            return Err(format!("unknown hello flags {:#x}", h.flags.get()));
        }
        Ok(h)
    }

    /// Whether the client sleeps in futex waits (so replies must wake it).
    pub(crate) fn blocking(&self) -> bool {
        self.flags.get() & HELLO_BLOCKING != 0
    }
}

/// The server's answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Attached = 0,
    NoFreeSlot = 1,
    BadHello = 2,
    ForeignUser = 3,
    /// It could not create or send the client's memory.
    ServerError = 4,
}

/// Fixed part of the server's answer; `text_len` bytes of [`TypeText`]
/// follow it. An `Attached` welcome carries two descriptors: the header
/// memfd, then the client's region memfd.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Welcome {
    pub(crate) magic: U64,
    pub(crate) version: U32,
    pub(crate) status: U32,
    pub(crate) slot: U32,
    pub(crate) max_clients: U32,
    pub(crate) depth: U32,
    pub(crate) server_pid: U32,
    pub(crate) server_blocking: U32,
    pub(crate) header_len: U32,
    pub(crate) region_len: U64,
    pub(crate) req_size: U32,
    pub(crate) req_align: U32,
    pub(crate) resp_size: U32,
    pub(crate) resp_align: U32,
    pub(crate) req_slot: U32,
    pub(crate) resp_slot: U32,
    pub(crate) text_len: U32,
    pub(crate) reserved: U32,
}

/// Most bytes of type text a welcome may announce.
pub(crate) const MAX_TEXT: usize = 64 * 1024;

impl Welcome {
    pub(crate) const LEN: usize = size_of::<Self>();

    /// A refusal: no descriptors, no text.
    pub(crate) fn refusal(status: Status, max_clients: u32) -> Self {
        Self {
            magic: MAGIC.into(),
            version: VERSION.into(),
            status: (status as u32).into(),
            max_clients: max_clients.into(),
            ..Self::default()
        }
    }

    /// Parses the fixed part. Magic and version are checked by the caller
    /// (a version mismatch has its own error).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let w = Self::read_from_bytes(bytes)
            .map_err(|_| format!("welcome is {} bytes, not {}", bytes.len(), Self::LEN))?;
        if w.magic.get() != MAGIC {
            return Err(format!(
                "the listener answered with magic {:#018x}: not an ipc server",
                w.magic.get()
            ));
        }
        if w.text_len.get() as usize > MAX_TEXT {
            return Err(format!(
                "welcome announces {} bytes of type text, more than {MAX_TEXT}",
                w.text_len.get()
            ));
        }
        Ok(w)
    }

    pub(crate) fn status(&self) -> Result<Status, String> {
        Ok(match self.status.get() {
            0 => Status::Attached,
            1 => Status::NoFreeSlot,
            2 => Status::BadHello,
            3 => Status::ForeignUser,
            4 => Status::ServerError,
            other => return Err(format!("unknown welcome status {other}")),
        })
    }
}

/// The server's message types, as the welcome's text carries them: four
/// NUL-terminated UTF-8 strings (request type name, its canonical layout,
/// response type name, its canonical layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeText {
    pub(crate) req_name: String,
    pub(crate) req_layout: String,
    pub(crate) resp_name: String,
    pub(crate) resp_layout: String,
}

impl TypeText {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for s in [
            &self.req_name,
            &self.req_layout,
            &self.resp_name,
            &self.resp_layout,
        ] {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        v
    }

    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut parts = bytes.split(|&b| b == 0);
        let mut next = |what: &str| -> Result<String, String> {
            let p = parts
                .next()
                .ok_or_else(|| format!("type text lacks the {what}"))?;
            String::from_utf8(p.to_vec()).map_err(|_| format!("the {what} is not UTF-8"))
        };
        let t = Self {
            req_name: next("request type name")?,
            req_layout: next("request layout")?,
            resp_name: next("response type name")?,
            resp_layout: next("response layout")?,
        };
        match parts.next() {
            Some([]) if parts.next().is_none() => Ok(t),
            _ => Err("type text is not four NUL-terminated strings".into()),
        }
    }
}

/// The server's last word on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// It shut down cleanly.
    Shutdown,
    /// It stopped serving this client, for this reason.
    Evicted(String),
}

const NOTICE_SHUTDOWN: u8 = 1;
const NOTICE_EVICTED: u8 = 2;

impl Notice {
    /// Kind byte, then a little-endian u16 length and that much UTF-8.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, text) = match self {
            Self::Shutdown => (NOTICE_SHUTDOWN, ""),
            Self::Evicted(reason) => (NOTICE_EVICTED, reason.as_str()),
        };
        let mut end = text.len().min(u16::MAX as usize);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut v = vec![kind];
        v.extend_from_slice(&(end as u16).to_le_bytes());
        v.extend_from_slice(&text.as_bytes()[..end]);
        v
    }

    /// Parses what the server sent before closing. `Ok(None)`: nothing (it
    /// died without a word); an error: bytes that are not a notice.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Option<Self>, String> {
        let Some((&kind, rest)) = bytes.split_first() else {
            return Ok(None);
        };
        let text = match rest {
            [a, b, text @ ..] if text.len() == usize::from(u16::from_le_bytes([*a, *b])) => {
                String::from_utf8_lossy(text).into_owned()
            }
            _ => return Err(format!("a {}-byte notice is malformed", bytes.len())),
        };
        match kind {
            NOTICE_SHUTDOWN => Ok(Some(Self::Shutdown)),
            NOTICE_EVICTED => Ok(Some(Self::Evicted(text))),
            other => Err(format!("unknown notice kind {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_garbage_is_refused() {
        let h = Hello::new(true);
        assert!(Hello::parse(h.as_bytes()).unwrap().blocking());
        assert!(
            !Hello::parse(Hello::new(false).as_bytes())
                .unwrap()
                .blocking()
        );
        assert!(Hello::parse(&[0; 16]).is_err());
        assert!(Hello::parse(&h.as_bytes()[..15]).is_err());
        let mut v = h.as_bytes().to_vec();
        v[8] = 9;
        assert!(Hello::parse(&v).unwrap_err().contains("version"));
    }

    #[test]
    fn welcome_and_type_text_round_trip() {
        let w = Welcome::refusal(Status::NoFreeSlot, 3);
        let back = Welcome::parse(w.as_bytes()).unwrap();
        assert_eq!(back.status(), Ok(Status::NoFreeSlot));
        assert_eq!(back.max_clients.get(), 3);
        let t = TypeText {
            req_name: "a::Req".into(),
            req_layout: "u64".into(),
            resp_name: "b".into(),
            resp_layout: String::new(),
        };
        assert_eq!(TypeText::parse(&t.encode()), Ok(t));
        assert!(TypeText::parse(b"a\0b\0c").is_err());
        assert!(TypeText::parse(b"a\0b\0c\0d\0e\0").is_err());
    }

    #[test]
    fn notices_round_trip_and_garbage_is_an_error() {
        for n in [Notice::Shutdown, Notice::Evicted("bad seq".into())] {
            assert_eq!(Notice::parse(&n.encode()), Ok(Some(n)));
        }
        assert_eq!(Notice::parse(&[]), Ok(None));
        assert!(Notice::parse(&[2, 5, 0, b'x']).is_err());
        assert!(Notice::parse(&[9, 0, 0]).is_err());
        let long = Notice::Evicted("é".repeat(40_000)).encode();
        assert!(matches!(Notice::parse(&long), Ok(Some(Notice::Evicted(_)))));
    }
}
