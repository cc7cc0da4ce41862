//! Probe sets: which of a binary's probes, attached for whom, under which
//! probe ids (the attach cookies indexing `MG_PROBES` and `MG_HITS`).

use std::{ops::Range, path::PathBuf};

use mapguard_api::mode::Mode;
use mapguard_common::op;

use super::Link;
use crate::binary::target::AttachPoint;

/// Handle of a probe set in its [`super::Enforcer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeSetId(pub(super) usize);

/// Which of a binary's probes a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probes {
    /// The map functions: the hot path, where detection happens.
    MapOps,
    /// The map functions that write (assign, delete, clear) or grow a map.
    Writes,
    /// The runtime's crash paths (`runtime.fatal`, `runtime.throw`): hit
    /// only as a process dies, so they cost nothing.
    Backstops,
    /// The RET instructions of the map delete functions: the end of each
    /// delete, for its duration. Single-stepped by the kernel (~10 µs a
    /// hit): attached only in short windows.
    DeleteReturns,
}

impl Probes {
    pub(super) fn includes(self, point: &AttachPoint) -> bool {
        match self {
            Probes::Backstops => point.is_backstop(),
            Probes::DeleteReturns => point.is_return(),
            Probes::MapOps => !point.is_backstop() && !point.is_return(),
            Probes::Writes => op::is_write(point.cfg.op) || point.cfg.op == op::GROW,
        }
    }
}

/// Whom a set's probes act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One process (tgid), with this action: the kernel places the
    /// breakpoints in that process only.
    Process { pid: u32, mode: Mode },
    /// Every process running the binary, now or later, all with `mode`, or
    /// (`None`) each with its mode from the process table.
    AllProcesses { mode: Option<Mode> },
}

impl Scope {
    /// The probes' action number (`mapguard_common::action`; 0: the
    /// process table's).
    pub(super) fn kernel_mode(self) -> u8 {
        match self {
            Scope::Process { mode, .. } => mode.kernel(),
            Scope::AllProcesses { mode } => mode.map_or(0, Mode::kernel),
        }
    }

    pub(super) fn pid(self) -> Option<u32> {
        match self {
            Scope::Process { pid, .. } => Some(pid),
            Scope::AllProcesses { .. } => None,
        }
    }
}

/// A configured set of probes; attached while `links` is not empty.
pub(super) struct ProbeSet {
    /// The file analysed, attached through its descriptor (kept open
    /// while the set lives: sampled sets attach again and again).
    pub file: crate::binary::target::AnalysedFile,
    /// Its name, for messages.
    pub name: PathBuf,
    pub symbols: Vec<String>,
    /// Each probe's operation (`mapguard_common::op`), like `symbols`.
    pub ops: Vec<u8>,
    pub ids: Range<u32>,
    pub offsets: Vec<u64>,
    pub pid: Option<u32>,
    pub links: Vec<Link>,
}

/// Free probe ids, handed out in contiguous blocks (one per set).
pub(super) struct IdPool {
    free: Vec<Range<u32>>,
}

impl IdPool {
    pub fn new(capacity: u32) -> IdPool {
        IdPool {
            free: std::iter::once(0..capacity).collect(),
        }
    }

    /// `count` consecutive free ids, or `None` when no free block is long
    /// enough.
    pub fn take(&mut self, count: u32) -> Option<Range<u32>> {
        let at = self.free.iter().position(|r| r.len() as u32 >= count)?;
        let block = &mut self.free[at];
        let taken = block.start..block.start + count;
        block.start += count;
        if block.start == block.end {
            self.free.remove(at);
        }
        Some(taken)
    }

    /// Returns a block, merging it with its free neighbours.
    pub fn give_back(&mut self, ids: Range<u32>) {
        if ids.is_empty() {
            return;
        }
        let at = self.free.partition_point(|r| r.start < ids.start);
        self.free.insert(at, ids);
        if at + 1 < self.free.len() && self.free[at].end == self.free[at + 1].start {
            self.free[at].end = self.free[at + 1].end;
            self.free.remove(at + 1);
        }
        if at > 0 && self.free[at - 1].end == self.free[at].start {
            self.free[at - 1].end = self.free[at].end;
            self.free.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_handed_out_in_blocks_and_reused() {
        let mut pool = IdPool::new(100);
        let a = pool.take(30).expect("a");
        let b = pool.take(30).expect("b");
        let c = pool.take(30).expect("c");
        assert_eq!((a.clone(), b.clone(), c.clone()), (0..30, 30..60, 60..90));
        assert!(pool.take(11).is_none(), "only 10 left");
        pool.give_back(b);
        assert_eq!(pool.take(25), Some(30..55), "the freed block is reused");
        pool.give_back(a);
        pool.give_back(30..55);
        assert_eq!(pool.free, vec![0..60, 90..100], "neighbours merge");
        pool.give_back(c);
        assert_eq!(pool.take(100), Some(0..100), "one block again");
    }
}
