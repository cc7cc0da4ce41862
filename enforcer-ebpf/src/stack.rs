//! The frame-pointer stack walk behind every report's call sites.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated},
    macros::map,
    maps::PerCpuArray,
};

use crate::regs::read_u64;

/// Bytes of the stack above RSP copied in one read for the frame-pointer
/// walk; frames beyond it are read one by one.
const STACK_COPY: usize = 1024;
const STACK_COPY_WORDS: usize = STACK_COPY / 8;
const _: () = assert!(STACK_COPY_WORDS.is_power_of_two());

/// Index 0: the top of the stack being walked.
#[map(name = "MG_STACK")]
static STACK: PerCpuArray<[u64; STACK_COPY_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Walk the frame-pointer chain from a probe on a function's first
/// instructions (before `push %rbp`): the return address is at [RSP], then
/// each frame holds the caller's frame pointer at [fp] and return address
/// at [fp+8]. The top [`STACK_COPY`] bytes of the stack are copied in one
/// read (user-memory reads, not bytes, are what costs); a frame beyond
/// them is read with one 16-byte copy. Fills at most all of `out` and
/// returns how many PCs it wrote.
pub fn walk_stack<const N: usize>(ip: u64, sp: u64, mut fp: u64, out: &mut [u64; N]) -> u8 {
    out[0] = ip;
    let Some(copy) = STACK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value pointer, valid for this program run.
    let copy = unsafe { &mut *copy };
    // SAFETY: the helper writes at most STACK_COPY bytes into `copy` and
    // faults safely; on failure (the stack ends within STACK_COPY bytes)
    // nothing is taken from the copy.
    let copied = unsafe {
        generated::bpf_probe_read_user(
            copy.as_mut_ptr().cast(),
            STACK_COPY as u32,
            sp as *const core::ffi::c_void,
        )
    } == 0;
    let ret = if copied { Some(copy[0]) } else { read_u64(sp) };
    let Some(ret) = ret else {
        return 1;
    };
    out[1] = ret;
    let mut depth = 2u8;
    for slot in out.iter_mut().skip(2) {
        if fp == 0 {
            break;
        }
        let offset = fp.wrapping_sub(sp);
        let pair = if copied && offset.is_multiple_of(8) && offset <= (STACK_COPY - 16) as u64 {
            // The masks only restate the bound for the verifier.
            let word = (offset / 8) as usize & (STACK_COPY_WORDS - 1);
            Some([copy[word], copy[(word + 1) & (STACK_COPY_WORDS - 1)]])
        } else {
            // SAFETY: bpf_probe_read_user faults safely on bad addresses.
            unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }.ok()
        };
        let Some([next, ret]) = pair else { break };
        if ret == 0 {
            break;
        }
        *slot = ret;
        depth += 1;
        fp = next;
    }
    depth
}
