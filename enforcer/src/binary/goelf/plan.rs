//! The probe plan: which Go runtime map functions to probe, where, how the
//! kernel will execute the probed instruction, and where the map pointer is.
//!
//! Go ABIInternal on amd64 passes integer arguments in RAX, RBX, RCX, RDI,
//! RSI, R8–R11 (a method's receiver first); R14 holds the current `g`.

use std::fmt;

use serde::Serialize;

use super::disasm::{self, StepHandling};
use mapguard_api::vocab::{CrashMessage, Detector, Op};

use super::release::{self, Backstop, Candidate};
use super::{GoBinary, GoElfError};

/// An amd64 integer argument register of Go's ABIInternal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GoReg {
    Rax,
    Rbx,
    Rcx,
    Rdi,
    Rsi,
    R8,
    R9,
    R10,
    R11,
}

impl GoReg {
    /// Field name in the kernel's `struct pt_regs` (x86-64).
    pub fn pt_regs_field(&self) -> &'static str {
        match self {
            GoReg::Rax => "ax",
            GoReg::Rbx => "bx",
            GoReg::Rcx => "cx",
            GoReg::Rdi => "di",
            GoReg::Rsi => "si",
            GoReg::R8 => "r8",
            GoReg::R9 => "r9",
            GoReg::R10 => "r10",
            GoReg::R11 => "r11",
        }
    }
}

impl GoReg {
    /// The same register for the disassembler.
    pub(super) fn iced(self) -> iced_x86::Register {
        use iced_x86::Register as R;
        match self {
            GoReg::Rax => R::RAX,
            GoReg::Rbx => R::RBX,
            GoReg::Rcx => R::RCX,
            GoReg::Rdi => R::RDI,
            GoReg::Rsi => R::RSI,
            GoReg::R8 => R::R8,
            GoReg::R9 => R::R9,
            GoReg::R10 => R::R10,
            GoReg::R11 => R::R11,
        }
    }
}

impl fmt::Display for GoReg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GoReg::Rax => "rax",
            GoReg::Rbx => "rbx",
            GoReg::Rcx => "rcx",
            GoReg::Rdi => "rdi",
            GoReg::Rsi => "rsi",
            GoReg::R8 => "r8",
            GoReg::R9 => "r9",
            GoReg::R10 => "r10",
            GoReg::R11 => "r11",
        })
    }
}

/// Where the map pointer is when the probe fires (at the planned offset the
/// argument registers still hold the arguments: the prologue only compares,
/// branches and pushes rbp before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArgLoc {
    /// The register holds the map pointer.
    Reg { reg: GoReg },
    /// The register holds an iterator; the map pointer is at `offset` in it
    /// (`hiter.h` / `maps.Iter.m`, from the runtime layout).
    ViaIterator { reg: GoReg, offset: u64 },
}

impl fmt::Display for ArgLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgLoc::Reg { reg } => write!(f, "{reg}"),
            ArgLoc::ViaIterator { reg, offset } => write!(f, "[{reg}+{offset:#x}]"),
        }
    }
}

/// One probe to attach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedProbe {
    pub symbol: String,
    pub op: Op,
    /// ELF virtual address of the function's first instruction.
    pub func_vaddr: u64,
    /// Offset of the probed instruction from the function start.
    pub insn_offset: u64,
    /// Offset of the probed instruction in the ELF file: what a uprobe attaches to.
    pub file_offset: u64,
    pub insn_text: String,
    pub handling: StepHandling,
    pub map_arg: ArgLoc,
    /// Offsets of the function's RET instructions (informational).
    pub ret_offsets: Vec<u64>,
    /// Why the plan deviates from "emulated push rbp after the stack check".
    pub note: Option<String>,
}

/// A crash path probed at its entry (see [`Backstop`]), with the
/// map-race messages located in the binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedBackstop {
    pub symbol: &'static str,
    pub via: Detector,
    /// ELF virtual address of the function's first instruction (the probe).
    pub func_vaddr: u64,
    pub file_offset: u64,
    /// How the kernel runs the entry instruction (it does so once, as the
    /// process dies: the cost does not matter).
    pub handling: StepHandling,
    pub messages: Vec<LocatedMessage>,
}

/// A copy of a runtime message in the binary's loaded data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocatedMessage {
    pub text: &'static str,
    pub class: CrashMessage,
    pub vaddr: u64,
}

/// A candidate left unprobed because all it does is call another candidate
/// of the same operation (Go 1.27's `mapaccess1*` call `mapaccess2*`, and
/// every release's `mapaccess*_fat` call `mapaccess1` or `mapaccess2`;
/// classic maps' `growWork*` only call `evacuate*`):
/// the probe on the function doing the work counts the operation once, and
/// a report's call site is the wrapper's caller (the wrapper is a runtime
/// frame, which call sites skip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedWrapper {
    pub symbol: String,
    pub op: Op,
    /// ELF virtual address of the wrapper's first instruction.
    pub func_vaddr: u64,
    /// The probed function that does the work.
    pub worker: String,
}

/// Every probe for one binary, in table order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbePlan {
    pub probes: Vec<PlannedProbe>,
    /// Candidates not probed because they only call a probed one.
    pub wrappers: Vec<PlannedWrapper>,
    pub backstops: Vec<PlannedBackstop>,
}

impl ProbePlan {
    pub fn probes_for(&self, op: Op) -> impl Iterator<Item = &PlannedProbe> {
        self.probes.iter().filter(move |p| p.op == op)
    }

    pub fn get(&self, symbol: &str) -> Option<&PlannedProbe> {
        self.probes.iter().find(|p| p.symbol == symbol)
    }

    pub fn wrapper(&self, symbol: &str) -> Option<&PlannedWrapper> {
        self.wrappers.iter().find(|w| w.symbol == symbol)
    }
}

/// Where to find the map pointer of a candidate function.
#[derive(Debug, Clone, Copy)]
pub enum MapArg {
    Reg(GoReg),
    ViaIter(GoReg),
}

/// Disassembles every candidate function `bin` has and plans its probe,
/// then locates its crash paths and their messages.
pub(super) fn build(bin: &GoBinary) -> Result<ProbePlan, GoElfError> {
    let maps = bin.maps();
    let mut runtime = Vec::new();
    for cand in release::candidates(maps) {
        if let Some(planned) = plan_one(bin, cand)? {
            runtime.push(planned);
        }
    }
    // A reflect function calling a wrapper reaches the wrapper's worker:
    // every runtime candidate counts here.
    let planned: Vec<u64> = runtime.iter().map(|p| p.probe.func_vaddr).collect();
    let (mut probes, wrappers) = split_wrappers(bin, runtime);
    for cand in release::REFLECT_COMMON.iter().chain(maps.reflect) {
        if let Some(p) = plan_one(bin, cand)?
            && !p.calls.iter().any(|target| planned.contains(target))
        {
            probes.push(p.probe);
        }
    }
    let backstops = maps
        .backstops
        .iter()
        .map(|b| plan_backstop(bin, b))
        .collect::<Result<_, _>>()?;
    Ok(ProbePlan {
        probes,
        wrappers,
        backstops,
    })
}

/// Separates the wrappers (see [`PlannedWrapper`]) from the functions to
/// probe: a candidate whose only direct calls, apart from the stack-growth
/// path (`runtime.morestack*`), go to one other candidate of the same
/// operation, and which calls nothing indirectly (a hasher, an equality
/// function: work of its own). A chain of wrappers ends at its worker; a
/// cycle (never seen) leaves its members probed.
fn split_wrappers(
    bin: &GoBinary,
    planned: Vec<Planned>,
) -> (Vec<PlannedProbe>, Vec<PlannedWrapper>) {
    let callee = |p: &Planned| -> Option<usize> {
        if p.indirect_calls {
            return None;
        }
        let mut targets = p.calls.iter().filter(|target| {
            !bin.symbolizer()
                .function_at(**target)
                .is_some_and(|f| f.name.starts_with("runtime.morestack"))
        });
        let first = *targets.next()?;
        if targets.any(|t| *t != first) {
            return None;
        }
        planned.iter().position(|q| {
            q.probe.func_vaddr == first
                && q.probe.op == p.probe.op
                && q.probe.func_vaddr != p.probe.func_vaddr
        })
    };
    let calls: Vec<Option<usize>> = planned.iter().map(callee).collect();
    // The function at the end of `i`'s chain of wrappers, if it ends.
    let worker = |i: usize| -> Option<usize> {
        let mut at = calls[i]?;
        for _ in 0..planned.len() {
            match calls[at] {
                Some(next) => at = next,
                None => return Some(at),
            }
        }
        None
    };
    let workers: Vec<Option<String>> = (0..planned.len())
        .map(|i| worker(i).map(|w| planned[w].probe.symbol.clone()))
        .collect();
    let mut probes = Vec::new();
    let mut wrappers = Vec::new();
    for (p, worker) in planned.into_iter().zip(workers) {
        match worker {
            Some(worker) => wrappers.push(PlannedWrapper {
                symbol: p.probe.symbol,
                op: p.probe.op,
                func_vaddr: p.probe.func_vaddr,
                worker,
            }),
            None => probes.push(p.probe),
        }
    }
    (probes, wrappers)
}

/// Locates a crash path and every copy of its messages. The linker may
/// share one string's bytes with a longer one, so the search is over raw
/// bytes, not symbols.
fn plan_backstop(bin: &GoBinary, backstop: &Backstop) -> Result<PlannedBackstop, GoElfError> {
    let func =
        bin.symbolizer()
            .function(backstop.symbol)
            .ok_or_else(|| GoElfError::NoBackstop {
                path: bin.path().to_path_buf(),
                symbol: backstop.symbol,
            })?;
    let unmapped = || GoElfError::Unmapped {
        path: bin.path().to_path_buf(),
        symbol: backstop.symbol.to_string(),
        vaddr: func.entry,
    };
    let file_offset = bin.file_offset(func.entry).ok_or_else(unmapped)?;
    let code = bin.function_code(func).ok_or_else(unmapped)?;
    let handling = disasm::decode(&code, func.entry)
        .first()
        .map_or(StepHandling::Rejected, |i| i.handling);
    let messages = backstop
        .messages
        .iter()
        .flat_map(|m| {
            bin.find_data(m.text.as_bytes())
                .into_iter()
                .map(|vaddr| LocatedMessage {
                    text: m.text,
                    class: m.class,
                    vaddr,
                })
        })
        .collect();
    Ok(PlannedBackstop {
        symbol: backstop.symbol,
        via: backstop.via,
        func_vaddr: func.entry,
        file_offset,
        handling,
        messages,
    })
}

/// A candidate's probe and what the function calls.
struct Planned {
    probe: PlannedProbe,
    /// Targets of its direct calls.
    calls: Vec<u64>,
    /// Whether it calls through a register or memory.
    indirect_calls: bool,
}

/// Plans one candidate, if the binary has it.
fn plan_one(bin: &GoBinary, cand: &Candidate) -> Result<Option<Planned>, GoElfError> {
    let Some(func) = bin.symbolizer().function(cand.symbol) else {
        return Ok(None);
    };
    let unmapped = || GoElfError::Unmapped {
        path: bin.path().to_path_buf(),
        symbol: cand.symbol.to_string(),
        vaddr: func.entry,
    };
    let code = bin.function_code(func).ok_or_else(unmapped)?;
    let insns = disasm::decode(&code, func.entry);
    let reg = match cand.arg {
        MapArg::Reg(reg) | MapArg::ViaIter(reg) => reg,
    };
    let Some(site) = disasm::choose_probe_site(&insns, reg.iced()) else {
        return Ok(None);
    };
    let file_offset = bin
        .file_offset(func.entry + site.offset)
        .ok_or_else(unmapped)?;
    let map_arg = match cand.arg {
        MapArg::Reg(reg) => ArgLoc::Reg { reg },
        MapArg::ViaIter(reg) => ArgLoc::ViaIterator {
            reg,
            offset: bin.layout().iter_map,
        },
    };
    let probe = PlannedProbe {
        symbol: cand.symbol.to_string(),
        op: cand.op,
        func_vaddr: func.entry,
        insn_offset: site.offset,
        file_offset,
        insn_text: site.text,
        handling: site.handling,
        map_arg,
        ret_offsets: disasm::ret_offsets(&insns),
        note: site.note,
    };
    Ok(Some(Planned {
        probe,
        calls: disasm::call_targets(&insns),
        indirect_calls: disasm::has_indirect_call(&insns),
    }))
}
