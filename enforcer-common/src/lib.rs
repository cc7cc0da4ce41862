//! Layout shared by the mapguard BPF program (`enforcer-ebpf`) and its
//! user-space loader (`enforcer`): events, per-binary configuration and the
//! names of BPF maps and programs.
#![no_std]
