//! The kernel's own account of the uprobes attached: every uprobe_multi
//! BPF link of the machine, with the file it probes (as the kernel
//! resolved it at attach time), its pid filter and its file offsets.
//!
//! Include it with `#[path = "support/links.rs"] mod links;`.

#![allow(dead_code)]

use std::path::PathBuf;

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_TYPE_UPROBE_MULTI: u32 = 12;

/// One uprobe_multi link.
#[derive(Debug, Clone)]
pub struct UprobeLink {
    pub id: u32,
    /// The file probed (`d_path` of what the attach path resolved to).
    pub path: PathBuf,
    /// The process it is limited to (0: every process).
    pub pid: u32,
    pub offsets: Vec<u64>,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> libc::c_long {
    // SAFETY: `attr` is a zeroed bpf_attr-sized buffer the kernel reads
    // (and for some commands writes) within its length.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) }
}

/// Every uprobe_multi link of the machine.
pub fn uprobe_multi_links() -> Vec<UprobeLink> {
    let mut links = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        if bpf(BPF_LINK_GET_NEXT_ID, &mut attr) != 0 {
            return links;
        }
        id = u32::from_ne_bytes(attr[4..8].try_into().expect("4"));
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr);
        if fd < 0 {
            continue;
        }
        links.extend(info(fd as i32, id));
        // SAFETY: closes the descriptor just opened.
        unsafe { libc::close(fd as i32) };
    }
}

fn info(fd: i32, id: u32) -> Option<UprobeLink> {
    let mut path = vec![0u8; 4096];
    let mut offsets = vec![0u64; 4096];
    // struct bpf_link_info: type, id, prog_id, (pad), then the union; its
    // uprobe_multi member: path, offsets, ref_ctr_offsets, cookies (user
    // pointers), path_size, count, flags, pid.
    let mut info = [0u8; 64];
    info[16..24].copy_from_slice(&(path.as_mut_ptr() as u64).to_ne_bytes());
    info[24..32].copy_from_slice(&(offsets.as_mut_ptr() as u64).to_ne_bytes());
    info[48..52].copy_from_slice(&(path.len() as u32).to_ne_bytes());
    info[52..56].copy_from_slice(&(offsets.len() as u32).to_ne_bytes());
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) != 0 {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().expect("4"));
    if u32_at(0) != BPF_LINK_TYPE_UPROBE_MULTI {
        return None;
    }
    let count = u32_at(52) as usize;
    let path_len = path.iter().position(|b| *b == 0).unwrap_or(0);
    offsets.truncate(count.min(offsets.len()));
    Some(UprobeLink {
        id,
        path: PathBuf::from(String::from_utf8_lossy(&path[..path_len]).into_owned()),
        pid: u32_at(60),
        offsets,
    })
}
