//! Disassembly of Go function prologues: where to put a uprobe, and how the
//! x86-64 kernel will execute the instruction under the breakpoint.
//!
//! The classification mirrors `arch_uprobe_analyze_insn` in Linux 6.18
//! `arch/x86/kernel/uprobes.c`: `branch_setup_xol_ops` emulates the kernel's
//! own NOP encodings, `nop` (0x90 with any prefix), `jmp rel8/rel32`, `call
//! rel32` and `jcc rel8/rel32` (but refuses branches with a 0x66 prefix);
//! `push_setup_xol_ops` emulates `push r64` (0x50–0x57, alone or with the
//! single REX prefix 0x41). Everything else is copied to the XOL area and
//! single-stepped (about 15x slower per hit here). On this kernel
//! `/proc/kallsyms` has `push_emulate_op` and `branch_emulate_op` but no
//! `mov_emulate_op`, so `mov` is single-stepped.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, Instruction, IntelFormatter, Mnemonic,
    Register,
};
use serde::Serialize;

/// How the kernel runs the probed instruction after the breakpoint fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepHandling {
    /// Emulated in the kernel (~1 µs per hit here).
    Emulated,
    /// Executed out of line with a single-step trap (~15 µs per hit here).
    SingleStep,
    /// The kernel refuses to probe this instruction.
    Rejected,
}

/// The kernel's `x86_nops[len]` table (P6 NOPs, x86-64).
const KERNEL_NOPS: &[&[u8]] = &[
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// Prefix bytes `is_prefix_bad` refuses: es/cs/ss/ds segment overrides, lock.
const BAD_PREFIXES: &[u8] = &[0x26, 0x2e, 0x36, 0x3e, 0xf0];

/// Classifies one instruction's bytes as the x86-64 kernel does.
pub fn classify(bytes: &[u8]) -> StepHandling {
    if KERNEL_NOPS.contains(&bytes) {
        return StepHandling::Emulated;
    }
    let prefix_len = bytes
        .iter()
        .take_while(|b| {
            matches!(
                **b,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3
            )
        })
        .count();
    let prefixes = &bytes[..prefix_len];
    if prefixes.iter().any(|p| BAD_PREFIXES.contains(p)) {
        return StepHandling::Rejected;
    }
    let rest = &bytes[prefix_len..];
    let (rex, opcode) = match rest {
        [r @ 0x40..=0x4f, tail @ ..] => (Some(*r), tail),
        _ => (None, rest),
    };
    let Some(&opc1) = opcode.first() else {
        return StepHandling::SingleStep;
    };
    // branch_setup_xol_ops
    let is_branch = match opc1 {
        0x90 => return StepHandling::Emulated,
        0xeb | 0xe9 | 0xe8 | 0x70..=0x7f => true,
        0x0f => matches!(opcode.get(1), Some(0x80..=0x8f)),
        _ => false,
    };
    if is_branch {
        return if prefixes.contains(&0x66) {
            StepHandling::Rejected
        } else {
            StepHandling::Emulated
        };
    }
    // push_setup_xol_ops: length 1, or length 2 with exactly REX 0x41.
    if (0x50..=0x57).contains(&opc1) {
        let emulated = match (bytes.len(), rex) {
            (1, None) => true,
            (2, Some(0x41)) => prefix_len == 0,
            _ => false,
        };
        if emulated {
            return StepHandling::Emulated;
        }
    }
    StepHandling::SingleStep
}

/// One decoded instruction of a function.
#[derive(Debug, Clone)]
pub struct Insn {
    /// Offset from the function start.
    pub offset: u64,
    pub len: usize,
    pub text: String,
    pub handling: StepHandling,
    inner: Instruction,
}

/// Decodes a whole function. `vaddr` is its first instruction's address.
pub fn decode(code: &[u8], vaddr: u64) -> Vec<Insn> {
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut fmt = IntelFormatter::new();
    let mut out = Vec::new();
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        let offset = insn.ip() - vaddr;
        let start = usize::try_from(offset).expect("offset within code");
        let bytes = &code[start..start + insn.len()];
        let mut text = String::new();
        fmt.format(&insn, &mut text);
        let handling = if insn.is_invalid() {
            StepHandling::Rejected
        } else {
            classify(bytes)
        };
        out.push(Insn {
            offset,
            len: insn.len(),
            text,
            handling,
            inner: insn,
        });
    }
    out
}

/// Where to probe a function, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    pub offset: u64,
    pub text: String,
    pub handling: StepHandling,
    pub note: Option<String>,
}

/// Chooses the probe site: the first `push rbp` after the stack-check
/// conditional jump (`cmp rsp,[r14+0x10]; jbe morestack`), which every call
/// executes exactly once and the kernel emulates. Falls back to another
/// emulated instruction on the straight-line entry path, then to offset 0.
pub fn choose_probe_site(insns: &[Insn]) -> Option<ProbeSite> {
    let first = insns.first()?;
    // The entry path: instructions up to the first unconditional control transfer.
    let entry_path: Vec<&Insn> = insns
        .iter()
        .take_while(|i| {
            !matches!(
                i.inner.flow_control(),
                FlowControl::Return
                    | FlowControl::UnconditionalBranch
                    | FlowControl::IndirectBranch
            )
        })
        .take(24)
        .collect();
    let stack_check = entry_path
        .iter()
        .position(|i| i.inner.flow_control() == FlowControl::ConditionalBranch);
    let after_check = stack_check.map_or(0, |p| p + 1);
    let is_push_rbp =
        |i: &Insn| i.inner.mnemonic() == Mnemonic::Push && i.inner.op0_register() == Register::RBP;
    if let Some(i) = entry_path[after_check.min(entry_path.len())..]
        .iter()
        .find(|i| is_push_rbp(i))
    {
        return Some(ProbeSite {
            offset: i.offset,
            text: i.text.clone(),
            handling: i.handling,
            note: None,
        });
    }
    // No frame pointer push: a frameless leaf or an assembly function. Any
    // emulated non-branch instruction after the stack check still runs once per call.
    if let Some(i) = entry_path[after_check.min(entry_path.len())..]
        .iter()
        .find(|i| {
            i.handling == StepHandling::Emulated && i.inner.flow_control() == FlowControl::Next
        })
    {
        return Some(ProbeSite {
            offset: i.offset,
            text: i.text.clone(),
            handling: i.handling,
            note: Some(format!(
                "no push rbp in the prologue; probing the emulated `{}`",
                i.text
            )),
        });
    }
    Some(ProbeSite {
        offset: 0,
        text: first.text.clone(),
        handling: first.handling,
        note: Some("no frame (no push rbp) and no emulated instruction on the entry path: probing the entry, single-stepped".into()),
    })
}

/// Offsets of every `ret` in the function (informational: exit probes on
/// Go code must be RET probes, never uretprobes).
pub fn ret_offsets(insns: &[Insn]) -> Vec<u64> {
    insns
        .iter()
        .filter(|i| i.inner.flow_control() == FlowControl::Return)
        .map(|i| i.offset)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_matches_the_kernel() {
        use StepHandling::*;
        let cases: &[(&[u8], StepHandling, &str)] = &[
            (&[0x55], Emulated, "push rbp"),
            (&[0x41, 0x57], Emulated, "push r15"),
            (
                &[0x48, 0x55],
                SingleStep,
                "push rbp with REX.W is not emulated",
            ),
            (&[0x49, 0x3b, 0x66, 0x10], SingleStep, "cmp rsp,[r14+0x10]"),
            (&[0x48, 0x89, 0xe5], SingleStep, "mov rbp,rsp"),
            (&[0x5d], SingleStep, "pop rbp"),
            (&[0xc3], SingleStep, "ret"),
            (&[0x76, 0x20], Emulated, "jbe rel8"),
            (&[0x0f, 0x86, 0, 1, 0, 0], Emulated, "jbe rel32"),
            (&[0xe8, 0, 0, 0, 0], Emulated, "call rel32"),
            (&[0xeb, 0x05], Emulated, "jmp rel8"),
            (&[0x66, 0xe8, 0, 0], Rejected, "callw"),
            (&[0x90], Emulated, "nop"),
            (&[0x0f, 0x1f, 0x44, 0x00, 0x00], Emulated, "nopl 5"),
            (&[0xf0, 0x48, 0x0f, 0xb1, 0x0a], Rejected, "lock cmpxchg"),
        ];
        for (bytes, want, what) in cases {
            assert_eq!(classify(bytes), *want, "{what} ({bytes:02x?})");
        }
    }

    #[test]
    fn chooses_push_rbp_after_stack_check() {
        // cmp rsp,[r14+0x10]; jbe +0x20; push rbp; mov rbp,rsp; ... ; ret
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x0a, 0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3, 0x90, 0x90,
            0x90, 0x90, 0xeb, 0xee,
        ];
        let insns = decode(&code, 0x1000);
        let site = choose_probe_site(&insns).expect("a site");
        assert_eq!(
            (site.offset, site.handling, site.note),
            (6, StepHandling::Emulated, None)
        );
        assert_eq!(ret_offsets(&insns), vec![11]);
    }

    #[test]
    fn frameless_function_falls_back_with_a_note() {
        // mov rax,[rax]; ret
        let insns = decode(&[0x48, 0x8b, 0x00, 0xc3], 0x2000);
        let site = choose_probe_site(&insns).expect("a site");
        assert_eq!((site.offset, site.handling), (0, StepHandling::SingleStep));
        assert!(site.note.expect("a note").contains("no frame"));
    }
}
