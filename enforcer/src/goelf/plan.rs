//! The probe plan: which Go runtime map functions to probe, where, how the
//! kernel will execute the probed instruction, and where the map pointer is.
//!
//! Go ABIInternal on amd64 passes integer arguments in RAX, RBX, RCX, RDI,
//! RSI, R8–R11 (a method's receiver first); R14 holds the current `g`.

use std::fmt;

use serde::Serialize;

use super::disasm::{self, StepHandling};
use super::{GoBinary, GoElfError, MapImpl};

/// What a probed function does to the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapOp {
    Delete,
    Assign,
    Clear,
    Read,
    IterStart,
    IterNext,
    Grow,
}

impl MapOp {
    pub const ALL: [MapOp; 7] = [
        MapOp::Delete,
        MapOp::Assign,
        MapOp::Clear,
        MapOp::Read,
        MapOp::IterStart,
        MapOp::IterNext,
        MapOp::Grow,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            MapOp::Delete => "delete",
            MapOp::Assign => "assign",
            MapOp::Clear => "clear",
            MapOp::Read => "read",
            MapOp::IterStart => "iter_start",
            MapOp::IterNext => "iter_next",
            MapOp::Grow => "grow",
        }
    }
}

impl fmt::Display for MapOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub op: MapOp,
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

/// Every probe for one binary, in table order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbePlan {
    pub probes: Vec<PlannedProbe>,
}

impl ProbePlan {
    pub fn probes_for(&self, op: MapOp) -> impl Iterator<Item = &PlannedProbe> {
        self.probes.iter().filter(move |p| p.op == op)
    }

    pub fn get(&self, symbol: &str) -> Option<&PlannedProbe> {
        self.probes.iter().find(|p| p.symbol == symbol)
    }
}

/// Where to find the map pointer of a candidate function.
#[derive(Debug, Clone, Copy)]
pub(super) enum MapArg {
    Reg(GoReg),
    ViaIter(GoReg),
}

/// A function worth probing if the binary has it.
pub(super) struct Candidate {
    pub symbol: &'static str,
    pub op: MapOp,
    pub arg: MapArg,
}

const fn c(symbol: &'static str, op: MapOp, arg: MapArg) -> Candidate {
    Candidate { symbol, op, arg }
}

use GoReg::{Rax, Rbx, Rcx};
use MapArg::{Reg, ViaIter};
use MapOp::*;

/// Entry points the compiler calls for map operations, same names and
/// `(type, map, key...)` signature (map in RBX) in both implementations.
const COMMON: &[Candidate] = &[
    c("runtime.mapdelete", Delete, Reg(Rbx)),
    c("runtime.mapdelete_fast32", Delete, Reg(Rbx)),
    c("runtime.mapdelete_fast64", Delete, Reg(Rbx)),
    c("runtime.mapdelete_faststr", Delete, Reg(Rbx)),
    c("runtime.mapassign", Assign, Reg(Rbx)),
    c("runtime.mapassign_fast32", Assign, Reg(Rbx)),
    c("runtime.mapassign_fast32ptr", Assign, Reg(Rbx)),
    c("runtime.mapassign_fast64", Assign, Reg(Rbx)),
    c("runtime.mapassign_fast64ptr", Assign, Reg(Rbx)),
    c("runtime.mapassign_faststr", Assign, Reg(Rbx)),
    c("runtime.mapclear", Clear, Reg(Rbx)),
    c("runtime.mapaccess1", Read, Reg(Rbx)),
    c("runtime.mapaccess1_fast32", Read, Reg(Rbx)),
    c("runtime.mapaccess1_fast64", Read, Reg(Rbx)),
    c("runtime.mapaccess1_faststr", Read, Reg(Rbx)),
    c("runtime.mapaccess1_fat", Read, Reg(Rbx)),
    c("runtime.mapaccess2", Read, Reg(Rbx)),
    c("runtime.mapaccess2_fast32", Read, Reg(Rbx)),
    c("runtime.mapaccess2_fast64", Read, Reg(Rbx)),
    c("runtime.mapaccess2_faststr", Read, Reg(Rbx)),
    c("runtime.mapaccess2_fat", Read, Reg(Rbx)),
];

/// Go ≤ 1.23 (`runtime/map.go`).
const CLASSIC: &[Candidate] = &[
    c("runtime.mapaccessK", Read, Reg(Rbx)),
    c("runtime.mapiterinit", IterStart, Reg(Rbx)),
    c("runtime.mapiternext", IterNext, ViaIter(Rax)),
    c("runtime.hashGrow", Grow, Reg(Rbx)),
    c("runtime.growWork", Grow, Reg(Rbx)),
    c("runtime.growWork_fast32", Grow, Reg(Rbx)),
    c("runtime.growWork_fast64", Grow, Reg(Rbx)),
    c("runtime.growWork_faststr", Grow, Reg(Rbx)),
    c("runtime.evacuate", Grow, Reg(Rbx)),
    c("runtime.evacuate_fast32", Grow, Reg(Rbx)),
    c("runtime.evacuate_fast64", Grow, Reg(Rbx)),
    c("runtime.evacuate_faststr", Grow, Reg(Rbx)),
];

/// Go ≥ 1.24 swiss maps (`runtime/map_swiss.go`, `internal/runtime/maps`).
/// `(*table)` methods take `(t, typ, m, ...)`: the map is the third argument.
const SWISS: &[Candidate] = &[
    c("runtime.mapIterStart", IterStart, Reg(Rbx)),
    c("runtime.mapIterNext", IterNext, ViaIter(Rax)),
    c("internal/runtime/maps.(*table).rehash", Grow, Reg(Rcx)),
    c("internal/runtime/maps.(*table).grow", Grow, Reg(Rcx)),
    c("internal/runtime/maps.(*table).split", Grow, Reg(Rcx)),
    c("internal/runtime/maps.(*Map).growToSmall", Grow, Reg(Rax)),
    c("internal/runtime/maps.(*Map).growToTable", Grow, Reg(Rax)),
    c(
        "internal/runtime/maps.(*Map).installTableSplit",
        Grow,
        Reg(Rax),
    ),
];

/// reflect's linknamed entry points (`reflect.Value.SetMapIndex`,
/// `MapRange`, `Clear`, and so fmt and encoding/json on maps). Some call the
/// runtime entry points above, some inline them (Go 1.24's
/// `reflect.mapdelete` calls `(*Map).Delete` directly): one is planned only
/// if it calls no planned function, so an operation is never counted twice.
const REFLECT_COMMON: &[Candidate] = &[
    c("reflect.mapdelete", Delete, Reg(Rbx)),
    c("reflect.mapdelete_faststr", Delete, Reg(Rbx)),
    c("reflect.mapassign0", Assign, Reg(Rbx)),
    c("reflect.mapassign_faststr0", Assign, Reg(Rbx)),
    c("reflect.mapclear", Clear, Reg(Rbx)),
    c("reflect.mapaccess", Read, Reg(Rbx)),
    c("reflect.mapaccess_faststr", Read, Reg(Rbx)),
    c("reflect.mapiterinit", IterStart, Reg(Rbx)),
];

/// Iterator wrappers whose iterator layout is the runtime's own (`hiter` /
/// `maps.Iter`); Go 1.24's `reflect.mapiternext` takes a different
/// (linkname compatibility) iterator and is left out.
const REFLECT_CLASSIC: &[Candidate] = &[c("reflect.mapiternext", IterNext, ViaIter(Rax))];
const REFLECT_SWISS: &[Candidate] = &[
    c("reflect.mapIterStart", IterStart, Reg(Rbx)),
    c("reflect.mapIterNext", IterNext, ViaIter(Rax)),
];

/// Candidate functions for a map implementation.
pub(super) fn candidates(imp: MapImpl) -> impl Iterator<Item = &'static Candidate> {
    let specific = match imp {
        MapImpl::Classic => CLASSIC,
        MapImpl::Swiss => SWISS,
    };
    COMMON.iter().chain(specific.iter())
}

/// Disassembles every candidate function `bin` has and plans its probe.
pub(super) fn build(bin: &GoBinary) -> Result<ProbePlan, GoElfError> {
    let mut probes = Vec::new();
    for cand in candidates(bin.map_impl()) {
        if let Some((probe, _)) = plan_one(bin, cand)? {
            probes.push(probe);
        }
    }
    let reflect = match bin.map_impl() {
        MapImpl::Classic => REFLECT_CLASSIC,
        MapImpl::Swiss => REFLECT_SWISS,
    };
    let planned: Vec<u64> = probes.iter().map(|p| p.func_vaddr).collect();
    for cand in REFLECT_COMMON.iter().chain(reflect) {
        if let Some((probe, calls)) = plan_one(bin, cand)?
            && !calls.iter().any(|target| planned.contains(target))
        {
            probes.push(probe);
        }
    }
    Ok(ProbePlan { probes })
}

/// Plans one candidate, if the binary has it; also returns the targets of
/// its direct calls.
fn plan_one(
    bin: &GoBinary,
    cand: &Candidate,
) -> Result<Option<(PlannedProbe, Vec<u64>)>, GoElfError> {
    let Some(func) = bin.symbolizer().function(cand.symbol) else {
        return Ok(None);
    };
    let unmapped = || GoElfError::Unmapped {
        path: bin.path().to_path_buf(),
        symbol: cand.symbol.to_string(),
        vaddr: func.entry,
    };
    let code = bin.function_code(func).ok_or_else(unmapped)?;
    let insns = disasm::decode(code, func.entry);
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
    Ok(Some((probe, disasm::call_targets(&insns))))
}
