//! Clear errors for what cannot be analysed: non-Go, non-ELF, non-x86-64,
//! unsupported Go versions, missing pclntab, contradictory builds; and the
//! section-header-less binaries that must still work.

use std::path::Path;

use mapguard_enforcer::binary::goelf::{GoBinary, GoElfError, MapImpl};

use super::{noswiss_versions, prog, repo_root, support, toolchain_version, versions};

#[test]
fn non_go_non_elf_and_foreign_binaries_are_refused_clearly() {
    let err = GoBinary::open(Path::new("/bin/true")).expect_err("/bin/true is not Go");
    assert!(matches!(err, GoElfError::NotGo { .. }), "{err}");
    assert!(err.to_string().contains("not a Go binary"), "{err}");

    let text = repo_root().join("tests/go/go.mod");
    let err = GoBinary::open(&text).expect_err("text file");
    assert!(matches!(err, GoElfError::NotElf { .. }), "{err}");
    assert!(err.to_string().contains("not an ELF file"), "{err}");

    for &v in versions() {
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

/// `data` with the Go version in its build info replaced by `fake`, which
/// must be as long as the real one.
fn with_version(mut data: Vec<u8>, real: &str, fake: &str) -> Vec<u8> {
    assert_eq!(real.len(), fake.len(), "{real:?} -> {fake:?}");
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
    data[at..at + real.len()].copy_from_slice(fake.as_bytes());
    data
}

fn assert_unsupported(err: &GoElfError, found: &str) {
    let supported = mapguard_enforcer::binary::goelf::release::supported_list();
    match err {
        GoElfError::UnsupportedGoVersion {
            found: f,
            supported: s,
            ..
        } => {
            assert_eq!(f, found);
            assert_eq!(s, &supported);
        }
        other => panic!("{found}: expected UnsupportedGoVersion, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("supported Go releases: {supported}"))
            && text.contains("Rebuild it"),
        "{text}"
    );
}

/// A real binary of a release older than the table (Go 1.22, from Debian's
/// toolchain) is refused with the supported list and what to do.
#[test]
fn a_go_release_older_than_the_table_is_refused() {
    let old: Vec<_> = support::toolchains()
        .into_iter()
        .filter(|t| t.extra.as_deref() == Some("refused"))
        .collect();
    assert!(
        !old.is_empty(),
        "tests/go/toolchains has no refused release"
    );
    for t in old {
        let path = prog(&t.tag, "racy/delete_assign");
        let err = GoBinary::open(&path).expect_err("an old release");
        assert_unsupported(&err, &toolchain_version(&t.tag));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mapguard-enforcer"))
            .arg("scan")
            .arg(&path)
            .output()
            .expect("run scan");
        assert_eq!(out.status.code(), Some(2), "{}", t.tag);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("supported Go releases: 1.23.x"), "{stderr}");
    }
}

/// A version string claiming a release the table does not have (an older
/// one, a future one) is refused, whatever the code looks like.
#[test]
fn a_version_claiming_a_release_not_in_the_table_is_refused() {
    let newest = *versions().last().expect("a release");
    let real = toolchain_version(newest);
    let next = {
        let minor: u32 = newest["go1.".len()..].parse().expect("minor");
        format!("go1.{}", minor + 1)
    };
    for fake in ["go1.22", "go1.19", next.as_str()] {
        let data = std::fs::read(prog(newest, "racy/delete_assign")).expect("read");
        let fake_version = format!("{fake}{}", &real[fake.len()..]);
        let err =
            GoBinary::from_bytes(Path::new("faked"), with_version(data, &real, &fake_version))
                .expect_err("faked version");
        assert_unsupported(&err, &fake_version);
    }
}

/// A build with a map experiment a release refuses (`swissmap` on Go 1.23,
/// an unfinished prototype) is refused, naming the experiment.
#[test]
fn a_refused_map_experiment_is_refused() {
    let v = noswiss_versions()
        .into_iter()
        .next()
        .expect("a noswiss build");
    let data = std::fs::read(prog(&v, "noswiss/delete_assign")).expect("read");
    let real = toolchain_version(&v);
    // "go1.24.4 X:noswissmap" -> "go1.23.4 X:swissmap" padded to the same length.
    let with_experiment = format!("{real} X:noswissmap");
    let fake = format!(
        "go1.23.{} X:swissmap",
        "9".repeat(with_experiment.len() - "go1.23. X:swissmap".len())
    );
    let info_at = data
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .expect("build info");
    assert_eq!(
        &data[info_at + 33..info_at + 33 + with_experiment.len()],
        with_experiment.as_bytes()
    );
    let err = GoBinary::from_bytes(
        Path::new("swissmap-1.23"),
        with_version(data, &with_experiment, &fake),
    )
    .expect_err("refused experiment");
    assert!(
        matches!(
            err,
            GoElfError::UnsupportedExperiment {
                experiment: "swissmap",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("GOEXPERIMENT=swissmap"), "{err}");
}

/// Removes the section header table reference from an ELF64 header
/// (`e_shoff`, `e_shnum`, `e_shstrndx`), as some packers and sstrip do.
fn drop_section_headers(data: &mut [u8]) {
    data[0x28..0x30].fill(0);
    data[0x3c..0x40].fill(0);
}

#[test]
fn binaries_without_section_headers_are_found_by_magic() {
    for &v in versions() {
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
    let v = noswiss_versions()
        .into_iter()
        .next()
        .expect("a noswiss build");
    let mut data = std::fs::read(prog(&v, "noswiss/delete_assign")).expect("read");
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
