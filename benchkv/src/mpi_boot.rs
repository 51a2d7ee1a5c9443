//! MPI as benchkv uses it: rank and size, barriers, and the exchange of a
//! few bytes (endpoint or worker addresses at start, results at the end).
//! It never carries a request. Only the main thread calls MPI
//! (`MPI_THREAD_FUNNELED`).
//!
//! Barriers are non-blocking (`MPI_Ibarrier`) and polled, so that a rank
//! waiting in one still notices a failure of its own threads, or a
//! deadline, and exits with an error instead of hanging.

use std::time::{Duration, Instant};

use mpi::Count;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::error::Error;

/// The MPI world of this process.
pub struct Mpi {
    // Dropping the universe finalises MPI; it must outlive `world`.
    world: SimpleCommunicator,
    universe: Universe,
    rank: u32,
    size: u32,
}

impl Mpi {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Mpi, Error> {
        let (universe, provided) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Mpi("MPI was already initialised in this process".into()))?;
        if provided < mpi::Threading::Funneled {
            return Err(Error::Mpi(format!(
                "the MPI library provides thread level {provided:?}; benchkv needs Funneled (threads that never call MPI)"
            )));
        }
        let world = universe.world();
        Ok(Mpi {
            rank: world.rank() as u32,
            size: world.size() as u32,
            world,
            universe,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Ranks in the world.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The MPI library's own version line.
    pub fn library(&self) -> String {
        mpi::environment::library_version()
            // Open MPI's string carries NUL bytes (C padding): drop them,
            // or they end up in the JSON and the report.
            .map(|s| {
                s.lines()
                    .next()
                    .unwrap_or("")
                    .replace('\0', "")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|_| "unknown".into())
    }

    /// A barrier that calls `check` while it waits (every millisecond) and
    /// gives up after `timeout`. On an error the pending barrier is
    /// abandoned: the caller must exit without finalising MPI.
    pub fn barrier(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<(), Error>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut req = self.world.immediate_barrier();
        loop {
            match req.test() {
                Ok(_) => return Ok(()),
                Err(pending) => req = pending,
            }
            let fail = match check() {
                Err(e) => Some(e),
                Ok(()) if Instant::now() > deadline => Some(Error::Aborted {
                    rank: self.rank,
                    reason: format!(
                        "{what}: the other ranks did not arrive within {} s (a rank died or hangs)",
                        timeout.as_secs()
                    ),
                }),
                Ok(()) => None,
            };
            if let Some(e) = fail {
                // Dropping a pending request aborts the process; the caller
                // exits without finalising instead.
                std::mem::forget(req);
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Every rank's `mine`, in rank order.
    pub fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        let n = self.size as usize;
        let mut counts = vec![0 as Count; n];
        self.world
            .all_gather_into(&(mine.len() as Count), &mut counts[..]);
        let displs = displacements(&counts);
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total == 0 {
            // Every rank knows the counts: all skip the gather alike (Open
            // MPI refuses one of nothing but empty buffers, MPI_ERR_ARG).
            return vec![Vec::new(); n];
        }
        let mut buf = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut part);
        }
        split(&buf, &counts)
    }

    /// Every rank's `mine` on rank 0, in rank order; `None` elsewhere.
    pub fn gather_bytes(&self, mine: &[u8]) -> Option<Vec<Vec<u8>>> {
        // The lengths go to every rank, not only to rank 0: a gather of
        // nothing at all must be skipped by every rank alike (see
        // `all_gather_bytes`), and only ranks that know the total can.
        let n = self.size as usize;
        let mut counts = vec![0 as Count; n];
        self.world
            .all_gather_into(&(mine.len() as Count), &mut counts[..]);
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total == 0 {
            return (self.rank == 0).then(|| vec![Vec::new(); n]);
        }
        let root = self.world.process_at_rank(0);
        if self.rank != 0 {
            root.gather_varcount_into(mine);
            return None;
        }
        let displs = displacements(&counts);
        let mut buf = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(mine, &mut part);
        }
        Some(split(&buf, &counts))
    }

    /// Runs `check` on rank 0 alone (it looks at what only rank 0 writes:
    /// the report's path, the sweep's directory) and makes its failure
    /// every rank's, as a bad parameter: each rank returns the same
    /// [`Error::Params`], so all stop before any work, say why, and exit
    /// with status 2. A collective: every rank calls it.
    pub fn rank0_check(&self, check: impl FnOnce() -> Result<(), Error>) -> Result<(), Error> {
        // One status byte first (`!` failed), the message after it.
        let mut mine = vec![b'.'];
        if self.rank == 0
            && let Err(e) = check()
        {
            mine[0] = b'!';
            mine.extend_from_slice(e.to_string().as_bytes());
        }
        let all = self.all_gather_bytes(&mine);
        match all.first().map(Vec::as_slice) {
            Some([b'!', why @ ..]) => Err(Error::Params(format!(
                "rank 0: {}",
                String::from_utf8_lossy(why)
            ))),
            _ => Ok(()),
        }
    }

    /// Rank 0's `value` on every rank.
    pub fn broadcast_u64(&self, value: u64) -> u64 {
        let mut v = value;
        self.world.process_at_rank(0).broadcast_into(&mut v);
        v
    }

    /// Finalises MPI (after a normal end, or an error every rank reached
    /// in the same state, such as bad parameters).
    pub fn finalize(self) {
        drop(self.world);
        drop(self.universe);
    }
}

fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let at = *acc;
            *acc += c;
            Some(at)
        })
        .collect()
}

fn split(buf: &[u8], counts: &[Count]) -> Vec<Vec<u8>> {
    let mut at = 0;
    counts
        .iter()
        .map(|&c| {
            let part = buf[at..at + c as usize].to_vec();
            at += c as usize;
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_parts_split_back_in_order() {
        let counts = [3 as Count, 0, 2];
        assert_eq!(displacements(&counts), vec![0, 3, 3]);
        assert_eq!(
            split(b"abcde", &counts),
            vec![b"abc".to_vec(), vec![], b"de".to_vec()]
        );
    }
}
