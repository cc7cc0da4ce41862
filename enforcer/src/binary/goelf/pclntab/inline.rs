//! Inlined calls: Go records, per function, an inline tree (funcdata
//! `FUNCDATA_InlTree`, in `go:func.*`) and a pc-value table
//! (`PCDATA_InlTreeIndex`) saying which inlined call each instruction belongs
//! to. With them a PC in inlined code symbolizes to the inlined function and
//! then to its call site, as Go's own tracebacks do.
//!
//! Funcdata offsets are relative to `moduledata.gofunc`, found through the
//! `runtime.firstmoduledata` record ([`Symbolizer::moduledata_magic`]): its
//! first word points at the pclntab header and its second at the
//! function-name table, which is how it is located without symbols.

use super::{FuncInfo, Symbolizer};

/// `abi.PCDATA_InlTreeIndex`.
const PCDATA_INL_TREE_INDEX: u32 = 2;
/// `abi.FUNCDATA_InlTree`.
const FUNCDATA_INL_TREE: u32 = 3;
/// Size of `runtime.inlinedCall {funcID u8; _ [3]u8; nameOff i32; parentPc i32; startLine i32}`.
const INLINED_CALL_LEN: usize = 16;
/// Bytes of `_func` before its `pcdata` array.
const FUNC_FIXED_LEN: usize = 44;

/// One entry of an inline tree.
pub(super) struct InlinedCall {
    /// Offset of the inlined function's name in the function-name table.
    pub name_off: u32,
    /// Offset from the function entry of an instruction at the call site.
    pub parent_pc: u64,
}

impl Symbolizer {
    /// Supplies `go:func.*` (its address and the bytes from there to the
    /// end of its segment), enabling inline-aware symbolization.
    pub fn set_gofunc(&mut self, vaddr: u64, bytes: Vec<u8>) {
        self.gofunc = Some((vaddr, bytes));
    }

    /// Whether inlined calls are expanded.
    pub fn has_inline_info(&self) -> bool {
        self.gofunc.is_some()
    }

    /// What starts the `runtime.moduledata` record of this pclntab (at
    /// `pclntab_vaddr`), 8-aligned: a word pointing at the pclntab header
    /// and one pointing at its function-name table. Its other field offsets
    /// are per release (`super::super::release::ModuledataLayout`).
    pub fn moduledata_magic(&self, pclntab_vaddr: u64) -> [u8; 16] {
        let mut magic = [0; 16];
        magic[..8].copy_from_slice(&pclntab_vaddr.to_le_bytes());
        magic[8..].copy_from_slice(&(pclntab_vaddr + self.funcname_off as u64).to_le_bytes());
        magic
    }

    /// The inlined call `pc` belongs to in `f`, if any.
    pub(super) fn inlined_call(&self, f: &FuncInfo, pc: u64) -> Option<InlinedCall> {
        let (_, bytes) = self.gofunc.as_ref()?;
        let table = self.pcdata_off(f, PCDATA_INL_TREE_INDEX)?;
        let index = self.pcvalue(table, f.entry, pc)?;
        let index = usize::try_from(index).ok()?; // -1: not inlined
        let tree = self.funcdata_off(f, FUNCDATA_INL_TREE)?;
        let at = (tree as usize).checked_add(index.checked_mul(INLINED_CALL_LEN)?)?;
        let rec = bytes.get(at..at + INLINED_CALL_LEN)?;
        let i32_at = |i: usize| i32::from_le_bytes(rec[i..i + 4].try_into().expect("4 bytes"));
        Some(InlinedCall {
            name_off: u32::try_from(i32_at(4)).ok()?,
            parent_pc: u64::try_from(i32_at(8)).ok()?,
        })
    }

    fn pcdata_off(&self, f: &FuncInfo, table: u32) -> Option<u32> {
        let npcdata = self.func_u32(f, 28);
        if table >= npcdata {
            return None;
        }
        self.u32_at(f.func_off + FUNC_FIXED_LEN + 4 * table as usize)
            .filter(|o| *o != 0)
    }

    fn funcdata_off(&self, f: &FuncInfo, index: u32) -> Option<u32> {
        let nfuncdata = u32::from(*self.data.get(f.func_off + 43)?);
        if index >= nfuncdata {
            return None;
        }
        let npcdata = self.func_u32(f, 28) as usize;
        self.u32_at(f.func_off + FUNC_FIXED_LEN + 4 * npcdata + 4 * index as usize)
            .filter(|o| *o != u32::MAX)
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let b = self.data.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }
}
