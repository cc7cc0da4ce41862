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
    Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory,
    IntelFormatter, Mnemonic, OpAccess, OpKind, Register,
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
/// executes exactly once (the morestack path jumps back to the entry, before
/// it) and the kernel emulates. Without one (frameless or assembly
/// functions), another emulated instruction that every call executes once;
/// else the entry (single-stepped, said in the note). In every case no
/// instruction before the site may write `preserve`, the register holding
/// the map (or iterator) pointer, so the probe still reads the argument.
pub fn choose_probe_site(insns: &[Insn], preserve: Register) -> Option<ProbeSite> {
    let first = insns.first()?;
    let start = stack_check(insns).map_or(0, |p| p + 1);
    // Instructions every call executes once after the stack check: up to and
    // including the first that is not plain fall-through.
    let mut path_len = 0;
    for i in &insns[start..] {
        path_len += 1;
        if i.inner.flow_control() != FlowControl::Next || path_len == 32 {
            break;
        }
    }
    let path = start..start + path_len;
    let preserved = |idx: usize| !insns[..idx].iter().any(|i| writes(&i.inner, preserve));
    let site = |i: &Insn, note: Option<String>| ProbeSite {
        offset: i.offset,
        text: i.text.clone(),
        handling: i.handling,
        note,
    };
    let is_push_rbp =
        |i: &Insn| i.inner.mnemonic() == Mnemonic::Push && i.inner.op0_register() == Register::RBP;
    if let Some(idx) = path
        .clone()
        .find(|k| is_push_rbp(&insns[*k]) && preserved(*k))
    {
        let note = (start == 0).then(|| "no stack check: probing the frame push".to_string());
        return Some(site(&insns[idx], note));
    }
    let emulated = path
        .clone()
        .find(|k| insns[*k].handling == StepHandling::Emulated && preserved(*k));
    if let Some(idx) = emulated {
        let note = format!(
            "no push rbp in the prologue; probing the emulated `{}`",
            insns[idx].text
        );
        return Some(site(&insns[idx], Some(note)));
    }
    Some(site(
        first,
        Some(format!(
            "no frame push and no emulated instruction every call executes with {preserve:?} intact: probing the entry, single-stepped"
        )),
    ))
}

/// Index of the stack-check branch: a conditional jump right after a
/// comparison with the goroutine's stack guard, `[r14+0x10]`.
fn stack_check(insns: &[Insn]) -> Option<usize> {
    insns.iter().take(8).enumerate().skip(1).find_map(|(k, i)| {
        let prev = &insns[k - 1].inner;
        let guard = prev.mnemonic() == Mnemonic::Cmp
            && (0..prev.op_count()).any(|op| prev.op_kind(op) == OpKind::Memory)
            && prev.memory_base() == Register::R14
            && prev.memory_displacement64() == 0x10;
        (guard && i.inner.flow_control() == FlowControl::ConditionalBranch).then_some(k)
    })
}

/// Whether `insn` may write any part of the 64-bit register `reg`.
fn writes(insn: &Instruction, reg: Register) -> bool {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(insn);
    info.used_registers().iter().any(|u| {
        u.register().full_register() == reg.full_register()
            && !matches!(
                u.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess
            )
    }) || (insn.flow_control() == FlowControl::Call)
}

/// Targets of the function's direct calls.
pub fn call_targets(insns: &[Insn]) -> Vec<u64> {
    insns
        .iter()
        .filter(|i| {
            i.inner.flow_control() == FlowControl::Call
                && i.inner.op0_kind() == OpKind::NearBranch64
        })
        .map(|i| i.inner.near_branch_target())
        .collect()
}

/// Whether the function calls through a register or memory.
pub fn has_indirect_call(insns: &[Insn]) -> bool {
    insns.iter().any(|i| {
        matches!(
            i.inner.flow_control(),
            FlowControl::IndirectCall | FlowControl::Call
        ) && i.inner.op0_kind() != OpKind::NearBranch64
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
        let site = choose_probe_site(&insns, Register::RBX).expect("a site");
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
        let site = choose_probe_site(&insns, Register::RBX).expect("a site");
        assert_eq!((site.offset, site.handling), (0, StepHandling::SingleStep));
        assert!(site.note.expect("a note").contains("no frame push"));
    }

    #[test]
    fn never_probes_after_the_map_register_is_overwritten() {
        // mov rbx,[rbx]; push rbp; mov rbp,rsp; pop rbp; ret  (no stack check)
        let code = [0x48, 0x8b, 0x1b, 0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3];
        let insns = decode(&code, 0x3000);
        let rbx = choose_probe_site(&insns, Register::RBX).expect("a site");
        assert_eq!(
            (rbx.offset, rbx.handling),
            (0, StepHandling::SingleStep),
            "RBX clobbered before push"
        );
        let rax = choose_probe_site(&insns, Register::RAX).expect("a site");
        assert_eq!(
            (rax.offset, rax.handling),
            (3, StepHandling::Emulated),
            "RAX intact at push rbp"
        );
        assert!(rax.note.expect("note").contains("no stack check"));
    }

    #[test]
    fn the_stack_check_branch_is_not_the_site() {
        // cmp rsp,[r14+0x10]; jbe; mov rax,[rax]; test rax,rax; je +0; ret
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x09, 0x48, 0x8b, 0x00, 0x48, 0x85, 0xc0, 0x74, 0x00,
            0xc3,
        ];
        let insns = decode(&code, 0x4000);
        let site = choose_probe_site(&insns, Register::RBX).expect("a site");
        assert_eq!(
            (site.offset, site.handling),
            (12, StepHandling::Emulated),
            "the je after the check"
        );
    }
}
