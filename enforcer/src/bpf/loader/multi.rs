//! uprobe_multi links (Linux 6.6+): every probe of a binary in one BPF
//! link, attached with one syscall and removed with one kernel grace
//! period. A perf-event uprobe costs one grace period (~0.08 s here,
//! serialized kernel-wide) each to remove, so a binary's 25 probes took two
//! seconds; as one link they take one grace period. That is what makes
//! switching a process's probes on and off affordable (sampled coverage)
//! and detaching quick.
//!
//! aya 0.14 loads uprobe programs for perf-event attachment only (no
//! expected attach type), so the program for links is loaded here: aya-obj
//! (aya's own object parser) links the same BPF object against the maps
//! aya created, and `BPF_PROG_LOAD` runs with `BPF_TRACE_UPROBE_MULTI`.

use std::{
    collections::HashSet,
    ffi::{CString, c_char},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};

/// Why a program for uprobe_multi links could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("cannot parse the BPF object: {0}")]
    Parse(#[from] aya_obj::ParseError),
    #[error("cannot link the BPF object: {0}")]
    Relocate(#[from] aya_obj::relocation::EbpfRelocationError),
    #[error("BPF program {0} missing from the object")]
    MissingProgram(String),
    #[error("BPF map {0} has no file descriptor")]
    MissingMap(String),
    #[error(
        "the BPF object needs BTF (CO-RE) relocations, which the uprobe_multi loader does not do"
    )]
    BtfRelocations,
    #[error("the kernel refused BPF program {name}: {source}\n{log}")]
    Load {
        name: String,
        source: std::io::Error,
        log: String,
    },
    #[error("cannot attach {count} uprobes to {path} as one link: {source}")]
    Attach {
        path: String,
        count: usize,
        source: std::io::Error,
    },
}

/// A program loaded for uprobe_multi links.
#[derive(Debug)]
pub struct MultiProgram {
    fd: OwnedFd,
}

/// One uprobe_multi link: probes on one file. Dropping it removes them all.
#[derive(Debug)]
pub struct MultiLink {
    _fd: OwnedFd,
}

impl MultiProgram {
    /// Links program `name` of `object` against `maps` (the descriptors of
    /// the maps aya created from the same object, by name) and loads it for
    /// uprobe_multi links.
    pub fn load(object: &[u8], name: &str, maps: &[(String, RawFd)]) -> Result<Self, MultiError> {
        let mut obj = aya_obj::Object::parse(object)?;
        if obj.has_btf_relocations() {
            return Err(MultiError::BtfRelocations);
        }
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|(section, _)| *section).collect();
        let defs: Vec<(String, RawFd, aya_obj::Map)> = obj
            .maps
            .iter()
            .map(|(map_name, def)| {
                let fd = maps
                    .iter()
                    .find(|(n, _)| n == map_name)
                    .map(|(_, fd)| *fd)
                    .ok_or_else(|| MultiError::MissingMap(map_name.clone()))?;
                Ok((map_name.clone(), fd, def.clone()))
            })
            .collect::<Result<_, MultiError>>()?;
        obj.relocate_maps(
            defs.iter().map(|(n, fd, def)| (n.as_str(), *fd, def)),
            &text_sections,
        )?;
        obj.relocate_calls(&text_sections)?;
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| MultiError::MissingProgram(name.to_string()))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| MultiError::MissingProgram(name.to_string()))?;
        let fd = prog_load(
            name,
            &function.instructions,
            &program.license,
            program.kernel_version.unwrap_or(0),
        )?;
        Ok(MultiProgram { fd })
    }

    /// Attaches the program at every file offset of `offsets` in `path`,
    /// each with its cookie, for every process (`pid` `None`) or one.
    pub fn attach(
        &self,
        path: &Path,
        offsets: &[u64],
        cookies: &[u64],
        pid: Option<u32>,
    ) -> Result<MultiLink, MultiError> {
        assert_eq!(offsets.len(), cookies.len(), "one cookie per offset");
        let attach_error = |source| MultiError::Attach {
            path: path.display().to_string(),
            count: offsets.len(),
            source,
        };
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| attach_error(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        // SAFETY: bpf_attr is plain data; all-zero is its empty value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writes to the link_create member of the union, the one
        // BPF_LINK_CREATE reads; the pointers outlive the syscall.
        unsafe {
            let link = &mut attr.link_create;
            link.__bindgen_anon_1.prog_fd = self.fd.as_raw_fd() as u32;
            link.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
            let multi = &mut link.__bindgen_anon_3.uprobe_multi;
            multi.path = c_path.as_ptr() as u64;
            multi.offsets = offsets.as_ptr() as u64;
            multi.cookies = cookies.as_ptr() as u64;
            multi.cnt = offsets.len() as u32;
            multi.pid = pid.unwrap_or(0);
        }
        let fd = sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(attach_error)?;
        Ok(MultiLink { _fd: fd })
    }
}

/// `BPF_PROG_LOAD` as a kprobe-type program with the uprobe_multi attach
/// type; the verifier's log is returned on failure.
fn prog_load(
    name: &str,
    insns: &[aya_obj::generated::bpf_insn],
    license: &CString,
    kernel_version: u32,
) -> Result<OwnedFd, MultiError> {
    let mut log = vec![0u8; 1 << 20];
    let load = |log: &mut [u8]| {
        // SAFETY: bpf_attr is plain data; all-zero is its empty value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writes to the program-load member of the union, the one
        // BPF_PROG_LOAD reads; the pointers outlive the syscall.
        unsafe {
            let load = &mut attr.__bindgen_anon_3;
            load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
            load.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
            load.insns = insns.as_ptr() as u64;
            load.insn_cnt = insns.len() as u32;
            load.license = license.as_ptr() as u64;
            load.kern_version = kernel_version;
            for (to, from) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
                *to = from as c_char;
            }
            if !log.is_empty() {
                load.log_level = 1;
                load.log_buf = log.as_mut_ptr() as u64;
                load.log_size = log.len() as u32;
            }
        }
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    // First without a log (cheaper); with one only to explain a refusal.
    load(&mut []).or_else(|_| load(&mut log)).map_err(|source| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        MultiError::Load {
            name: name.to_string(),
            source,
            log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
        }
    })
}

/// The bpf(2) system call for the commands that return a new descriptor.
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}
