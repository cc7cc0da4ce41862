//! The few kernel struct offsets the exec hook reads, taken from the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`) when the hook is
//! loaded: the BPF program is built without CO-RE relocations, so user
//! space looks the offsets up and hands them over in a map, as it hands
//! over every other fact the kernel side needs.
//!
//! A reader of just what that needs: the type section (to skip every
//! kind), struct and union members, and the string section. Members of
//! anonymous structs and unions are found through them.

use std::path::{Path, PathBuf};

use mapguard_common::{ExecConfig, TaskConfig};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the offsets could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not BTF ({what})")]
    Malformed { path: PathBuf, what: &'static str },
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no member {1} in struct {0}")]
    NoMember(String, String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// One type's header and where its kind-specific data starts.
#[derive(Debug, Clone, Copy)]
struct Type {
    name: u32,
    info: u32,
    size_or_type: u32,
    data: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// Parsed BTF: types by id (id 0 is `void`) and the string section.
pub struct Btf {
    bytes: Vec<u8>,
    types: Vec<Type>,
    strings: (usize, usize),
}

impl Btf {
    pub fn read(path: &Path) -> Result<Btf, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Btf::parse(bytes).map_err(|what| BtfError::Malformed {
            path: path.to_path_buf(),
            what,
        })
    }

    fn parse(bytes: Vec<u8>) -> Result<Btf, &'static str> {
        let u32_at = |at: usize| -> Result<u32, &'static str> {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or("truncated")
        };
        if bytes.len() < 24 || u16::from_le_bytes([bytes[0], bytes[1]]) != MAGIC {
            return Err("bad magic (or not little-endian)");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = (hdr_len + str_off, hdr_len + str_off + str_len);
        if types_end > bytes.len() || strings.1 > bytes.len() {
            return Err("sections beyond the end");
        }
        let mut types = vec![Type {
            name: 0,
            info: 0,
            size_or_type: 0,
            data: 0,
        }];
        let mut at = types_start;
        while at < types_end {
            let t = Type {
                name: u32_at(at)?,
                info: u32_at(at + 4)?,
                size_or_type: u32_at(at + 8)?,
                data: at + 12,
            };
            let extra = match t.kind() {
                1 | 14 | 17 => 4,                 // int, var, decl_tag
                3 => 12,                          // array
                4 | 5 | 15 | 19 => 12 * t.vlen(), // struct, union, datasec, enum64
                6 | 13 => 8 * t.vlen(),           // enum, func_proto
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, modifiers, func, float, type_tag
                _ => return Err("unknown type kind"),
            };
            types.push(t);
            at = t.data + extra;
        }
        Ok(Btf {
            bytes,
            types,
            strings,
        })
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = &self.bytes[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn name(&self, offset: u32) -> &[u8] {
        let start = self.strings.0 + offset as usize;
        let rest = self.bytes.get(start..self.strings.1).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The id of the struct named `name` that has members (not a
    /// forward declaration).
    fn struct_id(&self, name: &str) -> Option<usize> {
        self.types.iter().position(|t| {
            t.kind() == KIND_STRUCT && t.vlen() > 0 && self.name(t.name) == name.as_bytes()
        })
    }

    /// Follows typedefs and modifiers.
    fn resolve(&self, mut id: usize) -> usize {
        for _ in 0..32 {
            match self.types.get(id).map(Type::kind) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = self.types[id].size_or_type as usize
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in struct or union `id`, looking inside
    /// anonymous members.
    fn member_in(&self, id: usize, member: &[u8]) -> Option<u32> {
        let t = *self.types.get(id)?;
        if t.kind() != KIND_STRUCT && t.kind() != KIND_UNION {
            return None;
        }
        for i in 0..t.vlen() {
            let at = t.data + 12 * i;
            let (name, ty, offset) = (self.u32_at(at), self.u32_at(at + 4), self.u32_at(at + 8));
            let bits = if t.kind_flag() {
                offset & 0xff_ffff
            } else {
                offset
            };
            if name != 0 && self.name(name) == member {
                return Some(bits / 8);
            }
            if name == 0
                && let Some(inner) = self.member_in(self.resolve(ty as usize), member)
            {
                return Some(bits / 8 + inner);
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .struct_id(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))?;
        self.member_in(id, member.as_bytes())
            .ok_or_else(|| BtfError::NoMember(name.to_string(), member.to_string()))
    }
}

/// The exec hook's offsets from the kernel's BTF at `path`.
pub fn exec_config(path: &Path) -> Result<ExecConfig, BtfError> {
    let btf = Btf::read(path)?;
    Ok(ExecConfig {
        bprm_file: btf.member_offset("linux_binprm", "file")?,
        file_inode: btf.member_offset("file", "f_inode")?,
        inode_ino: btf.member_offset("inode", "i_ino")?,
        inode_sb: btf.member_offset("inode", "i_sb")?,
        sb_dev: btf.member_offset("super_block", "s_dev")?,
        enabled: 1,
    })
}

/// Where a process's start time lies in `task_struct`, from the kernel's
/// BTF at `path` (the probes check it against the process table's).
pub fn task_config(path: &Path) -> Result<TaskConfig, BtfError> {
    let btf = Btf::read(path)?;
    Ok(TaskConfig {
        group_leader: btf.member_offset("task_struct", "group_leader")?,
        start_boottime: btf.member_offset("task_struct", "start_boottime")?,
        ..TaskConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernels_offsets_are_found() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("\n*** SKIPPED: no {VMLINUX_BTF} on this kernel ***\n");
            return;
        }
        let cfg = exec_config(path).expect("offsets from the kernel's BTF");
        // Fields that have sat at the very start of their struct for
        // many releases: a parser that misreads members would not give 0.
        let btf = Btf::read(path).expect("btf");
        assert_eq!(btf.member_offset("list_head", "next").expect("next"), 0);
        assert_eq!(btf.member_offset("list_head", "prev").expect("prev"), 8);
        assert!(cfg.inode_sb > 0 && cfg.inode_ino > 0 && cfg.file_inode > 0);
        assert_ne!(cfg.inode_sb, cfg.inode_ino);
        let task = task_config(path).expect("task_struct offsets");
        assert!(task.group_leader > 0 && task.start_boottime > 0);
        assert_ne!(task.group_leader, task.start_boottime);
        assert!(matches!(
            btf.member_offset("inode", "no_such_member"),
            Err(BtfError::NoMember(..))
        ));
    }
}
