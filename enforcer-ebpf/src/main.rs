//! mapguard's BPF program: uprobes on the Go runtime's map functions that
//! detect a conflicting map operation at the moment it starts and apply the
//! process's action (audit, SIGSTOP, SIGKILL) before it proceeds.
//!
//! Every probe sits on the `push %rbp` after a map function's stack check
//! (emulated by the kernel, ~1 µs per hit) and carries its configuration
//! index as attach cookie. At entry it reads the runtime's own "writing" flag
//! of the map (classic `hmap.flags & hashWriting`, swiss `Map.writing`): if
//! it is set, another goroutine is inside a write of this map right now. The
//! other goroutine and its stack come from its own per-goroutine record of
//! its latest write (each goroutine writes only its own record), found
//! through a per-map ring of recent writers. A probe on `runtime.fatal` catches
//! the races the entry check misses (both goroutines passed the check before
//! either set the flag) before the runtime prints anything.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod exec;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod program;
#[cfg(target_arch = "bpf")]
mod regs;
#[cfg(target_arch = "bpf")]
mod report;
#[cfg(target_arch = "bpf")]
mod stack;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
