//! Reading the probed function's registers and user memory.

use core::ptr::read_volatile;

use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_user};
use mapguard_common::reg;

/// `values` below is indexed by `mapguard_common::reg` numbers.
const _: () = assert!(
    reg::RAX == 0
        && reg::RBX == 1
        && reg::RCX == 2
        && reg::RDI == 3
        && reg::RSI == 4
        && reg::R8 == 5
        && reg::R9 == 6
        && reg::R10 == 7
        && reg::R11 == 8
);

pub fn register(regs: *const pt_regs, which: u8) -> Option<u64> {
    // Load every candidate with its own constant offset first: the verifier
    // rejects context reads at computed offsets, which a plain `match` on
    // the fields compiles to.
    // SAFETY: context reads at constant offsets.
    let values = unsafe {
        let r = &*regs;
        [
            read_volatile(&r.rax),
            read_volatile(&r.rbx),
            read_volatile(&r.rcx),
            read_volatile(&r.rdi),
            read_volatile(&r.rsi),
            read_volatile(&r.r8),
            read_volatile(&r.r9),
            read_volatile(&r.r10),
            read_volatile(&r.r11),
        ]
    };
    values.get(usize::from(which)).copied()
}

pub fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user faults safely on bad addresses.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}
