//! The `scan` report: what mapguard would do with a binary, without running
//! it. Go version, map implementation, runtime layout and the probe plan
//! (every map function found, the probed instruction and whether the kernel
//! emulates or single-steps it). Text for people (`Display`), JSON for tools
//! (`Serialize`).

use std::fmt;
use std::path::Path;

use serde::Serialize;

use mapguard_api::vocab::Op;

use crate::binary::goelf::{
    GoBinary, GoElfError, MapImpl, PlannedBackstop, PlannedProbe, PlannedWrapper, ProbePlan,
    ReadLimits, RuntimeLayout, StepHandling,
};

/// The operations no probe covers, each word once (`iterate` is both the
/// start and the steps of an iteration: missing when neither is probed).
fn ops_without_probe(plan: &ProbePlan) -> Vec<Op> {
    let probed = |word: &str| {
        Op::KNOWN
            .iter()
            .any(|&op| op.as_str() == word && plan.probes_for(op).next().is_some())
    };
    let mut missing: Vec<Op> = Vec::new();
    for &op in Op::KNOWN {
        if !probed(op.as_str()) && !missing.iter().any(|m| m.as_str() == op.as_str()) {
            missing.push(op);
        }
    }
    missing
}

fn handling(h: StepHandling) -> &'static str {
    match h {
        StepHandling::Emulated => "emulated",
        StepHandling::SingleStep => "single-step",
        StepHandling::Rejected => "REJECTED",
    }
}

/// Everything `mapguard-enforcer scan` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub path: String,
    pub go_version: String,
    /// The release-table row the binary was matched to (`1.25`).
    pub release: String,
    pub map_impl: MapImpl,
    pub pie: bool,
    /// No DWARF: layouts come from the verified table, symbols from pclntab.
    pub stripped: bool,
    pub functions_in_pclntab: usize,
    pub layout: RuntimeLayout,
    pub layout_corrections: Vec<String>,
    pub probes: Vec<PlannedProbe>,
    /// Map functions not probed because they only call a probed one.
    pub wrappers: Vec<PlannedWrapper>,
    /// Crash paths probed at their entry, with the messages located.
    pub backstops: Vec<PlannedBackstop>,
    pub summary: Summary,
}

/// Counts over the plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub probes: usize,
    pub emulated: usize,
    pub single_stepped: usize,
    pub rejected: usize,
    /// Operation classes with no probe (their functions are not linked in).
    pub ops_without_probe: Vec<Op>,
}

impl ScanReport {
    /// Opens and analyses `path` within `limits`.
    pub fn for_path(path: &Path, limits: ReadLimits) -> Result<ScanReport, GoElfError> {
        ScanReport::new(&GoBinary::open_limited(path, path, limits)?)
    }

    pub fn new(bin: &GoBinary) -> Result<ScanReport, GoElfError> {
        let plan = bin.probe_plan()?;
        let count = |h: StepHandling| plan.probes.iter().filter(|p| p.handling == h).count();
        let summary = Summary {
            probes: plan.probes.len(),
            emulated: count(StepHandling::Emulated),
            single_stepped: count(StepHandling::SingleStep),
            rejected: count(StepHandling::Rejected),
            ops_without_probe: ops_without_probe(&plan),
        };
        Ok(ScanReport {
            path: bin.path().display().to_string(),
            go_version: bin.go_version().raw.clone(),
            release: bin.release().name(),
            map_impl: bin.map_impl(),
            pie: bin.is_pie(),
            stripped: bin.is_stripped(),
            functions_in_pclntab: bin.symbolizer().functions().len(),
            layout: *bin.layout(),
            layout_corrections: bin.layout_corrections().to_vec(),
            probes: plan.probes,
            wrappers: plan.wrappers,
            backstops: plan.backstops,
            summary,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("ScanReport serializes")
    }
}

impl fmt::Display for ScanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.layout;
        writeln!(f, "binary:      {}", self.path)?;
        writeln!(
            f,
            "Go binary:   yes, {} ({} maps; release table row {})",
            self.go_version, self.map_impl, self.release
        )?;
        writeln!(
            f,
            "ELF:         x86-64, {}, {}",
            if self.pie {
                "PIE (addresses are relative to the load bias)"
            } else {
                "fixed addresses"
            },
            if self.stripped {
                "stripped (symbols from .gopclntab)"
            } else {
                "with DWARF"
            },
        )?;
        writeln!(
            f,
            "functions:   {} in .gopclntab",
            self.functions_in_pclntab
        )?;
        let (flag_off, flag_mask) = l.map.writing_flag();
        writeln!(
            f,
            "layout:      from {}: writing flag at map+{flag_off} mask {flag_mask:#x}, count at map+{}, iterator map at it+{}, g.goid at g+{}, g.m at g+{}",
            l.source,
            l.map.count_offset(),
            l.iter_map,
            l.g_goid,
            l.g_m
        )?;
        for c in &self.layout_corrections {
            writeln!(f, "  warning: DWARF differs from the verified table: {c}")?;
        }
        writeln!(f, "probe plan:  {} probes", self.probes.len())?;
        writeln!(
            f,
            "  {:<46} {:<10} {:>10} {:>5} {:>10}  {:<22} {:<11} {:<10} rets",
            "function", "op", "vaddr", "+off", "file off", "instruction", "handling", "map"
        )?;
        for p in &self.probes {
            let rets: Vec<String> = p.ret_offsets.iter().map(|r| format!("{r:#x}")).collect();
            writeln!(
                f,
                "  {:<46} {:<10} {:>#10x} {:>#5x} {:>#10x}  {:<22} {:<11} {:<10} {}",
                p.symbol,
                p.op.as_str(),
                p.func_vaddr,
                p.insn_offset,
                p.file_offset,
                p.insn_text,
                handling(p.handling),
                p.map_arg.to_string(),
                rets.join(",")
            )?;
            if let Some(note) = &p.note {
                writeln!(f, "      note: {note}")?;
            }
        }
        for w in &self.wrappers {
            writeln!(
                f,
                "wrapper:     {} at {:#x} ({}): not probed, only calls {} (probed)",
                w.symbol,
                w.func_vaddr,
                w.op.as_str(),
                w.worker
            )?;
        }
        for b in &self.backstops {
            let mut texts: Vec<&str> = b.messages.iter().map(|m| m.text).collect();
            texts.dedup();
            writeln!(
                f,
                "backstop:    {} at {:#x} (file off {:#x}, entry {}): {} located message(s){}{}",
                b.symbol,
                b.func_vaddr,
                b.file_offset,
                handling(b.handling),
                b.messages.len(),
                if texts.is_empty() { "" } else { ": " },
                texts.join("; ")
            )?;
        }
        let s = &self.summary;
        write!(
            f,
            "summary:     {} emulated, {} single-stepped, {} rejected",
            s.emulated, s.single_stepped, s.rejected
        )?;
        if !s.ops_without_probe.is_empty() {
            let ops: Vec<&str> = s.ops_without_probe.iter().map(|op| op.as_str()).collect();
            write!(
                f,
                "; not linked in (program never does them): {}",
                ops.join(", ")
            )?;
        }
        writeln!(f)
    }
}
