//! Clear errors for what cannot be analysed: non-Go, non-ELF, non-x86-64,
//! unsupported Go versions, missing pclntab, contradictory builds; and the
//! section-header-less binaries that must still work.

use std::path::Path;

use mapguard_enforcer::goelf::{GoBinary, GoElfError, MapImpl};

use super::{VERSIONS, prog, repo_root, toolchain_version};

#[test]
fn non_go_non_elf_and_foreign_binaries_are_refused_clearly() {
    let err = GoBinary::open(Path::new("/bin/true")).expect_err("/bin/true is not Go");
    assert!(matches!(err, GoElfError::NotGo { .. }), "{err}");
    assert!(err.to_string().contains("not a Go binary"), "{err}");

    let text = repo_root().join("tests/go/go.mod");
    let err = GoBinary::open(&text).expect_err("text file");
    assert!(matches!(err, GoElfError::NotElf { .. }), "{err}");
    assert!(err.to_string().contains("not an ELF file"), "{err}");

    for v in VERSIONS {
        let err = GoBinary::open(&prog(v, "arm64/delete_assign")).expect_err("arm64 build");
        assert!(matches!(err, GoElfError::NotX86_64 { .. }), "{v}: {err}");
        assert!(err.to_string().contains("only x86-64"), "{err}");
    }

    let err = GoBinary::open(Path::new("/nonexistent/mapguard")).expect_err("missing file");
    assert!(matches!(err, GoElfError::Io { .. }), "{err}");

    // A truncated Go binary: still ELF magic, but the parser gives up cleanly.
    let data = std::fs::read(prog("go1.23", "racy/delete_assign")).expect("read");
    let err =
        GoBinary::from_bytes(Path::new("truncated"), data[..200].to_vec()).expect_err("truncated");
    assert!(
        matches!(err, GoElfError::BadElf { .. } | GoElfError::NotGo { .. }),
        "{err}"
    );
}

#[test]
fn unsupported_go_versions_are_refused_not_guessed() {
    for (v, fake) in [("go1.23", "go1.22"), ("go1.24", "go1.25")] {
        let mut data = std::fs::read(prog(v, "racy/delete_assign")).expect("read");
        let real = toolchain_version(v);
        // Rewrite the version in the build info, keeping its length.
        let fake_version = format!("{fake}{}", &real[fake.len()..]);
        // The inline version string follows the 32-byte header and a one-byte length.
        let magic = b"\xff Go buildinf:";
        let at = data
            .windows(magic.len())
            .position(|w| w == magic)
            .expect("build info in binary")
            + 33;
        assert_eq!(
            &data[at..at + real.len()],
            real.as_bytes(),
            "version string in the build info"
        );
        data[at..at + real.len()].copy_from_slice(fake_version.as_bytes());
        let err = GoBinary::from_bytes(Path::new("faked"), data).expect_err("faked version");
        match &err {
            GoElfError::UnsupportedGoVersion {
                found, supported, ..
            } => {
                assert_eq!(found, &fake_version);
                assert!(supported.starts_with("1.23.x, 1.24.x"), "{supported}");
            }
            other => panic!("{v}: expected UnsupportedGoVersion, got {other}"),
        }
        assert!(
            err.to_string()
                .contains("supported Go releases: 1.23.x, 1.24.x"),
            "{err}"
        );
    }
}

/// Removes the section header table reference from an ELF64 header
/// (`e_shoff`, `e_shnum`, `e_shstrndx`), as some packers and sstrip do.
fn drop_section_headers(data: &mut [u8]) {
    data[0x28..0x30].fill(0);
    data[0x3c..0x40].fill(0);
}

#[test]
fn binaries_without_section_headers_are_found_by_magic() {
    for v in VERSIONS {
        let mut data = std::fs::read(prog(v, "stripped/delete_assign")).expect("read");
        drop_section_headers(&mut data);
        let bin = GoBinary::from_bytes(Path::new("no-sections"), data.clone())
            .expect("analysable without sections");
        assert_eq!(bin.go_version().raw, toolchain_version(v));
        let plan = bin.probe_plan().expect("plan");
        let del = plan
            .get("runtime.mapdelete_fast64")
            .expect("mapdelete_fast64 planned");
        assert_eq!(data[del.file_offset as usize], 0x55, "{v}");
        assert!(bin.symbolizer().function("main.deleter").is_some(), "{v}");
    }
}

#[test]
fn missing_pclntab_is_reported() {
    let mut data = std::fs::read(prog("go1.23", "stripped/delete_assign")).expect("read");
    drop_section_headers(&mut data);
    // Destroy every copy of the pclntab header.
    let magic = [0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
    while let Some(at) = data.windows(8).position(|w| w == magic) {
        data[at] = 0;
    }
    let err = GoBinary::from_bytes(Path::new("no-pclntab"), data).expect_err("no pclntab");
    assert!(matches!(err, GoElfError::NoPclntab { .. }), "{err}");
    assert!(
        err.to_string().contains("without a usable pclntab"),
        "{err}"
    );
}

#[test]
fn version_contradicting_the_linked_runtime_is_refused() {
    // A noswissmap build whose recorded experiment is garbled: the version
    // now implies swiss maps, but the runtime has the classic functions.
    let mut data = std::fs::read(prog("go1.24", "noswiss/delete_assign")).expect("read");
    let (real, fake) = (b"X:noswissmap", b"X:noswissmaq");
    let info = data
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .expect("build info");
    let at = info
        + data[info..]
            .windows(real.len())
            .position(|w| w == real)
            .expect("experiment in build info");
    data[at..at + real.len()].copy_from_slice(fake);
    let err = GoBinary::from_bytes(Path::new("garbled"), data).expect_err("mismatch");
    match &err {
        GoElfError::MapImplMismatch {
            expected, found, ..
        } => {
            assert_eq!((*expected, *found), (MapImpl::Swiss, MapImpl::Classic));
        }
        other => panic!("expected MapImplMismatch, got {other}"),
    }
    assert!(err.to_string().contains("refusing to guess"), "{err}");
}
