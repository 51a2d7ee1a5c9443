//! The copyrpc backend: one endpoint (an RC QP with a ring pair) from each
//! daemon to each daemon of the other ranks, on the device `MLX5_DEVICE`
//! selects (each daemon opens its own, so a software device with manual
//! progress is stepped by its daemon's poll).

use copyrpc::{CallErrorKind, Config, Context, Endpoint, EndpointInfo, Limits, RpcError};

use super::{Bootstrap, NetError, NetSetup, Network, Refused};

/// A daemon's copyrpc context and its endpoints, by global daemon id.
pub struct CopyrpcNet<U> {
    ctx: Context<U>,
    eps: Vec<Option<Endpoint>>,
    setup: NetSetup,
    out: Vec<u8>,
    quiet: bool,
    selection: String,
}

/// Ring and message limits for a run: messages of one value, rings that
/// pass [`Limits::validate`] and hold at least twice `max_inflight` calls
/// of `max_call` bytes with their headers.
pub fn limits(setup: &NetSetup) -> Result<Limits, NetError> {
    let align8 = |x: usize| (x as u32).next_multiple_of(8);
    let mut l = Limits {
        ring: 64 << 10,
        max_inflight: setup.max_inflight,
        max_call: align8(setup.max_request()),
        max_reply: align8(setup.max_response()),
        max_batch: 16 << 10,
    };
    let wanted_room = u64::from(l.max_inflight) * (u64::from(l.max_call) + 32);
    while l.validate().is_err() || u64::from(l.ring) < 2 * wanted_room {
        if l.ring >= 1 << 28 {
            return Err(NetError(format!(
                "no copyrpc ring size up to 256 MiB fits {} calls of {} bytes in flight",
                l.max_inflight, l.max_call
            )));
        }
        l.ring *= 2;
    }
    Ok(l)
}

impl<U> Bootstrap for CopyrpcNet<U> {
    /// Opens the device and makes one unconnected endpoint per remote
    /// daemon. The blob holds, for every global daemon id `j`, the 80-byte
    /// info of the endpoint meant for `j` (zeros for daemons of this rank).
    fn prepare(setup: &NetSetup) -> Result<(CopyrpcNet<U>, Vec<u8>), NetError> {
        let selection = std::env::var(mlx5::ENV).unwrap_or_else(|_| "auto".into());
        let dev = mlx5::Context::from_env().map_err(|e| {
            NetError(format!(
                "opening the mlx5 device ({}={selection}): {e}",
                mlx5::ENV
            ))
        })?;
        let peers: Vec<usize> = setup.peers().collect();
        let mut cfg = Config {
            limits: limits(setup)?,
            ..Config::default()
        };
        cfg.cq_depth =
            (cfg.srq_depth + cfg.sq_depth * peers.len().max(1) as u32).next_power_of_two();
        let mut ctx = Context::new(&dev, cfg)
            .map_err(|e| NetError(format!("copyrpc context on {}: {e}", dev.name())))?;
        let n = setup.routing.shards() as usize;
        let mut eps = vec![None; n];
        let mut blob = vec![0u8; n * EndpointInfo::LEN];
        for j in peers {
            let ep = ctx
                .endpoint()
                .map_err(|e| NetError(format!("endpoint for daemon {j}: {e}")))?;
            let info = ctx
                .local_info(ep)
                .map_err(|e| NetError(format!("endpoint info for daemon {j}: {e}")))?;
            blob[j * EndpointInfo::LEN..(j + 1) * EndpointInfo::LEN]
                .copy_from_slice(&info.encode());
            eps[j] = Some(ep);
        }
        let out = vec![0u8; setup.max_response()];
        Ok((
            CopyrpcNet {
                ctx,
                eps,
                setup: setup.clone(),
                out,
                quiet: false,
                selection,
            },
            blob,
        ))
    }

    /// Connects every endpoint with the blobs of all daemons (by global
    /// id).
    fn connect(&mut self, blobs: &[Vec<u8>]) -> Result<(), NetError> {
        let me = self.setup.me();
        let at = me * EndpointInfo::LEN..(me + 1) * EndpointInfo::LEN;
        for (j, ep) in self.eps.iter().enumerate() {
            let Some(ep) = *ep else { continue };
            let (rank, d) = self.setup.locate(j);
            let theirs = blobs
                .get(j)
                .and_then(|b| b.get(at.clone()))
                .ok_or_else(|| NetError(format!("no endpoint info from rank {rank} daemon {d}")))?;
            let info = EndpointInfo::decode(theirs)
                .map_err(|e| NetError(format!("endpoint info from rank {rank} daemon {d}: {e}")))?;
            self.ctx
                .connect(ep, &info)
                .map_err(|e| NetError(format!("connecting to rank {rank} daemon {d}: {e}")))?;
        }
        Ok(())
    }
}

impl<U> Network<U> for CopyrpcNet<U> {
    const NAME: &'static str = "copyrpc";

    #[inline]
    fn call(&mut self, to: usize, req: &[u8], user: U) -> Result<(), Refused<U>> {
        let Some(Some(ep)) = self.eps.get(to) else {
            return Err(Refused::Failed(
                user,
                NetError(format!("no endpoint to daemon {to}")),
            ));
        };
        self.ctx.call(*ep, req, user).map_err(|e| match e.kind {
            CallErrorKind::NoRoom => Refused::Busy(e.user_data),
            kind => {
                let (rank, d) = self.setup.locate(to);
                Refused::Failed(
                    e.user_data,
                    NetError(format!("call to rank {rank} daemon {d}: {kind}")),
                )
            }
        })
    }

    #[inline]
    fn poll(
        &mut self,
        serve: &mut impl FnMut(&[u8], &mut [u8]) -> usize,
        done: &mut impl FnMut(U, &[u8]),
    ) -> Result<usize, NetError> {
        let mut failed: Option<RpcError> = None;
        let mut n = self
            .ctx
            .poll(|user, r| match r {
                Ok(bytes) => done(user, bytes),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            })
            .map_err(|e| NetError(format!("polling: {e}")))?;
        while let Some(req) = self.ctx.recv() {
            let len = serve(req.data(), &mut self.out);
            let from = req.endpoint();
            if let Err(e) = self.ctx.reply(req, &self.out[..len])
                && !self.quiet
            {
                return Err(NetError(format!("reply on endpoint {}: {e}", from.index())));
            }
            n += 1;
        }
        match failed {
            Some(e) if !self.quiet => Err(NetError(format!("a call failed: {e}"))),
            _ => Ok(n),
        }
    }

    fn quiesce(&mut self) {
        self.quiet = true;
    }

    fn transport(&self) -> String {
        format!(
            "mlx5 {} ({}={})",
            self.ctx.device().name(),
            mlx5::ENV,
            self.selection
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testing::error_within;
    use crate::route::Routing;

    fn setup(value_size: usize) -> NetSetup {
        NetSetup {
            routing: Routing::new(2, 1, 16),
            rank: 0,
            daemon: 0,
            value_size,
            max_inflight: 256,
            ucx_tls: None,
        }
    }

    /// Two ranks' daemons in this process, on two software devices: a
    /// call to a daemon whose side is gone fails the caller's poll within
    /// seconds (what makes a rank exit when its peer dies, rather than
    /// hang; under mpirun the launcher may end the job first).
    #[test]
    fn a_call_to_a_dead_peer_fails_the_poll_within_seconds() {
        let mut s1 = setup(64);
        s1.rank = 1;
        let (mut a, blob_a) = CopyrpcNet::<u32>::prepare(&setup(64)).unwrap();
        let (mut b, blob_b) = CopyrpcNet::<u32>::prepare(&s1).unwrap();
        let blobs = vec![blob_a, blob_b];
        a.connect(&blobs).unwrap();
        b.connect(&blobs).unwrap();
        drop(b);
        a.call(1, &[0u8; 24], 7).unwrap();
        let e = error_within(&mut a, std::time::Duration::from_secs(10))
            .expect("no error 10 s after the peer went away");
        assert!(e.contains("endpoint 0"), "{e}");
    }

    #[test]
    fn limits_fit_every_value_size() {
        for v in [8, 100, 4096] {
            let l = limits(&setup(v)).unwrap();
            l.validate().unwrap();
            assert!(l.max_call as usize >= 16 + v && l.max_reply as usize >= 8 + v);
        }
    }
}
