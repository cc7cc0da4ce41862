//! Builds the BPF program (`enforcer-ebpf`) for the BPF target with
//! aya-build (nightly toolchain with `rust-src`, `bpf-linker` on PATH).
//! `MAPGUARD_BPF_TOOLCHAIN` picks the rustup toolchain (default
//! [`PINNED_NIGHTLY`], the one `.ci/install-deps.sh` installs and builds
//! `bpf-linker` against). The object is embedded in the binary, so the BPF
//! build cannot be skipped.

use std::path::PathBuf;

use anyhow::Context as _;

/// rustc 1.97.0-nightly e50aa6fba with LLVM 22: a newer nightly brings
/// another LLVM than the one `bpf-linker` was built against.
const PINNED_NIGHTLY: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = PathBuf::from(manifest_dir).join("../enforcer-ebpf");
    let root_dir = root_dir
        .canonicalize()
        .with_context(|| format!("{}", root_dir.display()))?;
    println!("cargo:rerun-if-changed=../enforcer-common/src");
    println!("cargo:rerun-if-env-changed=MAPGUARD_BPF_TOOLCHAIN");
    let toolchain = std::env::var("MAPGUARD_BPF_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        None | Some("") => aya_build::Toolchain::Custom(PINNED_NIGHTLY),
        Some("nightly") => aya_build::Toolchain::Nightly,
        Some(custom) => aya_build::Toolchain::Custom(custom),
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mapguard-ebpf",
            root_dir: root_dir.to_str().context("non-UTF-8 path")?,
            ..Default::default()
        }],
        toolchain,
    )
}
