//! A binary prepared for enforcement: goscan's probe plan compiled into the
//! kernel's fixed-size [`ProbeConfig`] entries, plus the symbolizer used to
//! turn reported PCs into `function file:line`.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use mapguard_api::frame::Frame;
use mapguard_api::vocab::{Detector, Op};
use mapguard_common::{FatalMessage, ProbeConfig, arg, op, reg};

use crate::binary::goelf::{
    ArgLoc, GoBinary, GoElfError, GoReg, MapImpl, PlannedProbe, ReadLimits,
};

/// Why a binary cannot be enforced on.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    GoElf(#[from] GoElfError),
    #[error("{path}: no Go map functions found to probe (does the program use maps?)")]
    NothingToProbe { path: PathBuf },
}

impl TargetError {
    /// The `reason` label of `mapguard_attach_failures_total` for it.
    pub fn reason(&self) -> &'static str {
        match self {
            TargetError::GoElf(GoElfError::NotGo { .. }) => "not_go",
            TargetError::GoElf(GoElfError::UnsupportedGoVersion { .. }) => "unsupported_go",
            TargetError::GoElf(GoElfError::TooLarge { .. } | GoElfError::PieceTooLarge { .. }) => {
                "too_large"
            }
            _ => "not_enforceable",
        }
    }
}

/// One uprobe to attach.
#[derive(Debug, Clone)]
pub struct AttachPoint {
    pub symbol: String,
    /// File offset of the planned instruction.
    pub file_offset: u64,
    /// File offset of the function's first instruction (`--probe-at entry`).
    pub entry_file_offset: u64,
    pub cfg: ProbeConfig,
}

impl AttachPoint {
    /// Whether this probe is on a crash path (`runtime.fatal`,
    /// `runtime.throw`) rather than a map function.
    pub fn is_backstop(&self) -> bool {
        matches!(self.cfg.op, op::FATAL | op::THROW)
    }

    /// Whether this probe is on a RET of a map delete function (attached
    /// only while delete durations are measured).
    pub fn is_return(&self) -> bool {
        self.cfg.op == op::DELETE_RETURN
    }
}

/// The file a target was analysed from, kept open for as long as its
/// probes may be attached: they attach through this descriptor
/// (`/proc/self/fd/N`), which the kernel resolves to the very file
/// analysed, never through a path that may name another file by then (a
/// process that has exec'd since, a path replaced).
#[derive(Debug, Clone)]
pub struct AnalysedFile(Arc<File>);

impl AnalysedFile {
    /// The name to attach uprobes through.
    pub fn attach_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}

/// An analysed binary and its compiled probes.
#[derive(Debug)]
pub struct BinaryTarget {
    /// Index in the loader's binary table, carried by every probe.
    pub id: u32,
    /// The path it was analysed through (may be `/proc/PID/exe`), for
    /// messages; probes attach through [`BinaryTarget::file`].
    pub path: PathBuf,
    /// The file analysed, still open.
    pub file: AnalysedFile,
    /// The binary's own path, for reports (`/proc/PID/exe` resolved).
    pub name: PathBuf,
    pub points: Vec<AttachPoint>,
    /// The runtime's map-race messages, located relative to the crash path
    /// that prints them (see `mapguard_common::FatalMessage`): (key, class,
    /// one of `mapguard_common::message`).
    pub fatal_messages: Vec<(FatalMessage, u8)>,
    binary: GoBinary,
}

impl BinaryTarget {
    /// Analyses `path` within `limits` and compiles its probe plan. `id` is
    /// the index the loader's binary table will give it.
    pub fn analyse(path: &Path, id: u32, limits: ReadLimits) -> Result<BinaryTarget, TargetError> {
        let file = File::open(path).map_err(|source| GoElfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::analyse_file(file, path, id, limits)
    }

    /// [`BinaryTarget::analyse`] of `file`, opened through `path` (which
    /// may be `/proc/PID/exe`); named as the file it is. The descriptor is
    /// kept: the probes attach through it.
    pub fn analyse_file(
        file: File,
        path: &Path,
        id: u32,
        limits: ReadLimits,
    ) -> Result<BinaryTarget, TargetError> {
        let own = format!("/proc/self/fd/{}", file.as_raw_fd());
        let name = std::fs::read_link(&own)
            .or_else(|_| std::fs::read_link(path))
            .unwrap_or_else(|_| path.to_path_buf());
        let mut binary = GoBinary::of_file(file, &name, limits)?;
        let plan = binary.probe_plan()?;
        // Everything read from the file from now on is in the plan and the
        // symbolizer: what stays open is the descriptor to attach through.
        let file = binary
            .take_file()
            .map(|f| AnalysedFile(Arc::new(f)))
            .expect("an analysis of an opened file keeps it until taken");
        let layout = binary.layout();
        let (writing_offset, writing_mask) = layout.map.writing_flag();
        let base = ProbeConfig {
            writing_offset: writing_offset as u32,
            writing_mask,
            goid_offset: layout.g_goid as u32,
            binary_id: id,
            ..ProbeConfig::default()
        };
        let mut points: Vec<AttachPoint> = plan.probes.iter().map(|p| compile(p, base)).collect();
        if points.is_empty() {
            return Err(TargetError::NothingToProbe { path: path.into() });
        }
        // The RETs of the map delete functions, for their duration
        // (single-stepped: attached only in short windows).
        let returns: Vec<AttachPoint> = plan
            .probes
            .iter()
            .filter(|p| p.op == Op::Delete)
            .flat_map(|p| {
                let entry = p.file_offset - p.insn_offset;
                p.ret_offsets.iter().map(move |ret| AttachPoint {
                    symbol: p.symbol.clone(),
                    file_offset: entry + ret,
                    entry_file_offset: entry + ret,
                    cfg: ProbeConfig {
                        op: op::DELETE_RETURN,
                        arg_kind: arg::NONE,
                        ..base
                    },
                })
            })
            .collect();
        let mut fatal_messages = Vec::new();
        for backstop in &plan.backstops {
            points.push(AttachPoint {
                symbol: backstop.symbol.to_string(),
                file_offset: backstop.file_offset,
                entry_file_offset: backstop.file_offset,
                cfg: ProbeConfig {
                    op: match backstop.via {
                        Detector::RuntimeFatal => op::FATAL,
                        Detector::RuntimeThrow => op::THROW,
                        other => unreachable!(
                            "the release table's backstops are crash paths, not {other}"
                        ),
                    },
                    arg_kind: arg::NONE,
                    ..base
                },
            });
            // Keyed by where each copy lies relative to the probed entry.
            fatal_messages.extend(backstop.messages.iter().map(|m| {
                let key = FatalMessage {
                    binary_id: id,
                    len: m.text.len() as u32,
                    delta: m.vaddr.wrapping_sub(backstop.func_vaddr) as i64,
                };
                (key, kernel_number(m.class.kernel()))
            }));
        }
        points.extend(returns);
        tracing::debug!(
            count = fatal_messages.len(),
            "runtime map-race messages located"
        );
        tracing::info!(
            path = %path.display(),
            go = %binary.go_version().raw,
            maps = %binary.map_impl(),
            probes = points.len(),
            "analysed"
        );
        Ok(BinaryTarget {
            id,
            path: path.to_path_buf(),
            file,
            name,
            points,
            fatal_messages,
            binary,
        })
    }

    pub fn go_version(&self) -> &str {
        &self.binary.go_version().raw
    }

    pub fn map_impl(&self) -> MapImpl {
        self.binary.map_impl()
    }

    /// Load bias of the process an event came from. For a PIE binary it
    /// follows from the event itself: its first PC (`probe_pc`) is the
    /// instruction of probe `point` (the planned one, or the function entry
    /// for `--probe-at entry`: the load bias is page-aligned, which tells
    /// them apart); so it holds even when the process is gone (kill mode).
    /// `/proc/PID/maps` is the fallback.
    pub fn load_bias(&self, pid: u32, point: u32, probe_pc: u64) -> u64 {
        if !self.binary.is_pie() {
            return 0;
        }
        self.points
            .get(point as usize)
            .into_iter()
            .flat_map(|p| [p.file_offset, p.entry_file_offset])
            .filter_map(|offset| self.binary.vaddr_of(offset))
            .map(|vaddr| probe_pc.wrapping_sub(vaddr))
            .find(|bias| bias % 4096 == 0)
            .or_else(|| self.binary.load_bias_of(pid, &self.path))
            .unwrap_or(0)
    }

    /// The function, file and line of the instruction at `pc` (already
    /// adjusted for return addresses) in a process loaded with `bias`, or
    /// `pc` itself when the binary does not describe it.
    pub fn describe_pc(&self, bias: u64, pc: u64) -> Frame {
        let vaddr = pc.wrapping_sub(bias);
        match self.binary.symbolizer().frame(vaddr) {
            Some(f) => Frame::source(f.function, f.file, f.line),
            None => Frame::Address(pc),
        }
    }
}

fn compile(p: &PlannedProbe, base: ProbeConfig) -> AttachPoint {
    let (arg_kind, arg_reg, arg_offset) = match p.map_arg {
        ArgLoc::Reg { reg } => (arg::REGISTER, reg_number(reg), 0),
        ArgLoc::ViaIterator { reg, offset } => (arg::INDIRECT, reg_number(reg), offset as u32),
    };
    AttachPoint {
        symbol: p.symbol.clone(),
        file_offset: p.file_offset,
        entry_file_offset: p.file_offset - p.insn_offset,
        cfg: ProbeConfig {
            op: kernel_number(p.op.kernel()),
            arg_kind,
            arg_reg,
            arg_offset,
            ..base
        },
    }
}

/// The kernel's number of a vocabulary value the release table names (the
/// table names no unknown value: `vocab`'s tests and the release tests).
fn kernel_number(n: Option<u8>) -> u8 {
    n.expect("the release table names only values the kernel numbers")
}

fn reg_number(r: GoReg) -> u8 {
    match r {
        GoReg::Rax => reg::RAX,
        GoReg::Rbx => reg::RBX,
        GoReg::Rcx => reg::RCX,
        GoReg::Rdi => reg::RDI,
        GoReg::Rsi => reg::RSI,
        GoReg::R8 => reg::R8,
        GoReg::R9 => reg::R9,
        GoReg::R10 => reg::R10,
        GoReg::R11 => reg::R11,
    }
}

/// `scan`: prints what mapguard would probe in a binary (goscan's
/// [`crate::scan::ScanReport`]: a table, or JSON with `json`); exit status 0.
pub fn scan(path: &Path, json: bool, limits: ReadLimits) -> Result<i32, TargetError> {
    let report = crate::scan::ScanReport::for_path(path, limits)?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A file over `--max-binary-size` is refused as `too_large` before it
    /// is read (its content here is not even an ELF header).
    #[test]
    fn over_the_size_cap_counts_as_too_large() {
        let path = std::env::temp_dir().join(format!("mapguard-too-large-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(&[0u8; 8192]).expect("write");
        let limits = ReadLimits::with_max_file(4096);
        let err = BinaryTarget::analyse(&path, 0, limits).expect_err("over the cap");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(err.reason(), "too_large", "{err}");
        assert!(
            err.to_string()
                .contains("8 KiB executable, over the --max-binary-size limit of 4 KiB"),
            "{err}"
        );
        let not_go = TargetError::GoElf(GoElfError::NotGo { path: path.clone() });
        assert_eq!(not_go.reason(), "not_go");
    }
}
