//! Builds the BPF program (`enforcer-ebpf`) for the BPF target with
//! aya-build (nightly toolchain with `rust-src`, `bpf-linker` on PATH).
//! Set `AYA_BUILD_SKIP=1` to skip it (the loader then refuses to start).

use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = PathBuf::from(manifest_dir).join("../enforcer-ebpf");
    let root_dir = root_dir
        .canonicalize()
        .with_context(|| format!("{}", root_dir.display()))?;
    println!("cargo:rerun-if-changed=../enforcer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mapguard-ebpf",
            root_dir: root_dir.to_str().context("non-UTF-8 path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
