//! Parser for the Go 1.20+ `pclntab` (magic `0xFFFFFFF1`): function table,
//! function names, compilation-unit file table and pc-value tables.
//!
//! The pclntab is what the Go runtime itself uses for tracebacks, so it is in
//! every Go binary, stripped or not. Layout (all offsets from the table
//! start): a header `{magic u32, 0, 0, minLC u8, ptrSize u8, nfunc, nfiles,
//! textStart, funcnameOff, cuOff, filetabOff, pctabOff, pclnOff}`; at
//! `pclnOff` the functab (`nfunc+1` pairs `{entryOff u32, funcOff u32}`),
//! then each `_func` record at `pclnOff + funcOff`.

use std::collections::HashMap;

use super::version::read_uvarint;

mod inline;

/// Magic of the Go 1.20+ table format (1.20 through 1.24 share it).
pub const PCLNTAB_MAGIC_120: u32 = 0xFFFF_FFF1;
const HEADER_LEN: usize = 8 + 8 * 8;
/// Bytes of `_func` read here: entryOff..startLine + funcID/flag/pad/nfuncdata.
const FUNC_RECORD_LEN: usize = 44;
/// Longest function or file name read (Go's longest, generic
/// instantiations, are a few KiB).
const MAX_NAME_LEN: usize = 64 << 10;

/// Why a pclntab could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("pclntab magic {0:#x} is not the Go 1.20+ format 0xfffffff1")]
    BadMagic(u32),
    #[error("pclntab is truncated or corrupt: {0}")]
    Corrupt(&'static str),
    #[error(
        "pclntab header claims {nfunc} functions, more than its {len} bytes can hold (forged or corrupt)"
    )]
    TooManyFunctions { nfunc: u64, len: usize },
    #[error("pclntab is for pointer size {0}, expected 8 (amd64)")]
    PtrSize(u8),
}

/// One function from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncInfo {
    pub name: String,
    /// First instruction (ELF virtual address).
    pub entry: u64,
    /// One past the last instruction.
    pub end: u64,
    /// Line of the `func` keyword.
    pub start_line: u32,
    func_off: usize,
}

/// A symbolized program counter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.function, self.file, self.line)
    }
}

/// Maps program counters to Go functions, files and lines, from the pclntab
/// alone (so it works on stripped binaries).
#[derive(Debug, Clone)]
pub struct Symbolizer {
    data: Vec<u8>,
    min_lc: u64,
    text_start: u64,
    funcname_off: usize,
    cu_off: usize,
    filetab_off: usize,
    pctab_off: usize,
    /// Sorted by entry.
    funcs: Vec<FuncInfo>,
    by_name: HashMap<String, usize>,
    /// `go:func.*` (moduledata.gofunc) and the bytes from there to the end
    /// of its segment: where funcdata such as inline trees live.
    gofunc: Option<(u64, Vec<u8>)>,
}

impl Symbolizer {
    /// Parses the table. `data` starts at the magic; `text_start_hint`
    /// replaces a zero `textStart` header field (Go 1.26 on leaves it zero:
    /// the runtime reads `moduledata.text` instead).
    ///
    /// Linear in the table's size whatever its content: every count is
    /// bounded by the bytes it indexes, and the names read by the bytes of
    /// the name table.
    pub fn parse(
        data: impl Into<Vec<u8>>,
        text_start_hint: Option<u64>,
    ) -> Result<Symbolizer, PclntabError> {
        let data: Vec<u8> = data.into();
        if data.len() < HEADER_LEN {
            return Err(PclntabError::Corrupt("shorter than its header"));
        }
        let magic = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes"));
        if magic != PCLNTAB_MAGIC_120 {
            return Err(PclntabError::BadMagic(magic));
        }
        if data[7] != 8 {
            return Err(PclntabError::PtrSize(data[7]));
        }
        let word =
            |i: usize| u64::from_le_bytes(data[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
        let off = |i: usize| usize::try_from(word(i)).ok().filter(|o| *o <= data.len());
        let corrupt = PclntabError::Corrupt;
        let nfunc = word(0);
        // Each function has a functab pair and a `_func` record of its own.
        if nfunc.saturating_mul((8 + FUNC_RECORD_LEN) as u64) > data.len() as u64 {
            return Err(PclntabError::TooManyFunctions {
                nfunc,
                len: data.len(),
            });
        }
        let nfunc = nfunc as usize;
        let mut text_start = word(2);
        if text_start == 0 {
            text_start = text_start_hint.unwrap_or(0);
        }
        let funcname_off = off(3).ok_or(corrupt("funcnametab offset"))?;
        let cu_off = off(4).ok_or(corrupt("cutab offset"))?;
        let filetab_off = off(5).ok_or(corrupt("filetab offset"))?;
        let pctab_off = off(6).ok_or(corrupt("pctab offset"))?;
        let pcln_off = off(7).ok_or(corrupt("functab offset"))?;
        let functab_len = (nfunc + 1) * 8;
        let functab = data
            .get(
                pcln_off
                    ..pcln_off
                        .checked_add(functab_len)
                        .ok_or(corrupt("functab"))?,
            )
            .ok_or(corrupt("functab past end"))?;
        let u32_at =
            |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        // The name table ends where the next table starts (Go lays them out
        // in header order); names read may total twice its size (a real
        // table stores each once), so that forged offsets pointing many
        // functions at one long name cost linear time, not quadratic.
        let names_end = if cu_off > funcname_off {
            cu_off
        } else {
            data.len()
        };
        let mut name_budget = 2 * (names_end - funcname_off);

        let mut funcs = Vec::with_capacity(nfunc);
        for i in 0..nfunc {
            let entry = text_start.wrapping_add(u64::from(u32_at(functab, 8 * i)));
            let end = text_start.wrapping_add(u64::from(u32_at(functab, 8 * (i + 1))));
            let func_off = pcln_off + u32_at(functab, 8 * i + 4) as usize;
            let rec = data
                .get(func_off..func_off + FUNC_RECORD_LEN)
                .ok_or(corrupt("_func past end"))?;
            let name_at = funcname_off
                .checked_add(u32_at(rec, 4) as usize)
                .filter(|at| *at < names_end)
                .ok_or(corrupt("function name outside the name table"))?;
            let room = (names_end - name_at).min(name_budget).min(MAX_NAME_LEN);
            let name = cstr_in(&data[name_at..name_at + room]).ok_or(corrupt(
                "function name unterminated, too long or past the name table",
            ))?;
            name_budget -= name.len() + 1;
            let start_line = u32_at(rec, 36);
            funcs.push(FuncInfo {
                name,
                entry,
                end,
                start_line,
                func_off,
            });
        }
        if funcs.windows(2).any(|w| w[0].entry > w[1].entry) {
            return Err(corrupt("functab not sorted"));
        }
        let mut by_name = HashMap::with_capacity(nfunc);
        for (i, f) in funcs.iter().enumerate() {
            by_name.entry(f.name.clone()).or_insert(i);
        }
        Ok(Symbolizer {
            min_lc: u64::from(data[6].max(1)),
            data,
            text_start,
            funcname_off,
            cu_off,
            filetab_off,
            pctab_off,
            funcs,
            by_name,
            gofunc: None,
        })
    }

    /// The same table with another text start (when the header's is zero
    /// and the module data's is found after parsing).
    pub fn with_text_start(self, text_start: u64) -> Result<Symbolizer, PclntabError> {
        Symbolizer::parse(self.data, Some(text_start))
    }

    /// Start of the text the table describes (ELF virtual address).
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// All functions, sorted by entry address.
    pub fn functions(&self) -> &[FuncInfo] {
        &self.funcs
    }

    /// The function with this exact Go symbol name, e.g. `runtime.mapdelete_fast64`.
    pub fn function(&self, name: &str) -> Option<&FuncInfo> {
        self.by_name.get(name).map(|i| &self.funcs[*i])
    }

    /// The function containing `pc`.
    pub fn function_at(&self, pc: u64) -> Option<&FuncInfo> {
        let i = self
            .funcs
            .partition_point(|f| f.entry <= pc)
            .checked_sub(1)?;
        let f = &self.funcs[i];
        (pc < f.end).then_some(f)
    }

    /// Function, file and line of the instruction at `pc`: the innermost
    /// frame, i.e. the inlined function if `pc` is in inlined code (when the
    /// inline tree is available). For a return address (every stack frame
    /// but the innermost), pass `pc - 1`.
    pub fn frame(&self, pc: u64) -> Option<Frame> {
        self.frames(pc).into_iter().next()
    }

    /// All frames at `pc`, innermost first: the functions inlined at `pc`
    /// (each at its own file:line), then the physical function at the call
    /// site of the outermost inlined call. Empty if `pc` is outside text.
    pub fn frames(&self, pc: u64) -> Vec<Frame> {
        let Some(f) = self.function_at(pc) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut at = pc;
        // Bounded: inline trees are shallow; a corrupt table must not loop.
        for _ in 0..64 {
            let (name, next) = match self.inlined_call(f, at) {
                Some(call) => (
                    self.cstr(self.funcname_off + call.name_off as usize),
                    Some(f.entry + call.parent_pc),
                ),
                None => (Some(f.name.clone()), None),
            };
            let Some(frame) = self.position(f, at, name.unwrap_or_else(|| "?".into())) else {
                break;
            };
            out.push(frame);
            match next {
                Some(parent) => at = parent,
                None => break,
            }
        }
        out
    }

    /// Symbolizes a stack of PCs innermost first, expanding inlined calls:
    /// the first PC is the interrupted instruction, the others are return
    /// addresses (looked up at `pc - 1`). Unknown PCs come back as `Err(pc)`.
    pub fn stack(&self, pcs: &[u64]) -> Vec<Result<Frame, u64>> {
        let mut out = Vec::new();
        for (i, pc) in pcs.iter().enumerate() {
            let frames = self.frames(if i == 0 { *pc } else { pc.saturating_sub(1) });
            if frames.is_empty() {
                out.push(Err(*pc));
            }
            out.extend(frames.into_iter().map(Ok));
        }
        out
    }

    /// File and line of `pc` in `f` (whatever function it is attributed to).
    fn position(&self, f: &FuncInfo, pc: u64, function: String) -> Option<Frame> {
        let (pcfile, pcln, cu) = (
            self.func_u32(f, 20),
            self.func_u32(f, 24),
            self.func_u32(f, 32),
        );
        let line = self.pcvalue(pcln, f.entry, pc)?;
        let file_no = self.pcvalue(pcfile, f.entry, pc)?;
        let file = self
            .file_name(cu, file_no)
            .unwrap_or_else(|| "?".to_string());
        Some(Frame {
            function,
            file,
            line: u32::try_from(line).unwrap_or(0),
        })
    }

    /// A `u32` field of the function's `_func` record (validated at parse time).
    fn func_u32(&self, f: &FuncInfo, at: usize) -> u32 {
        let b = &self.data[f.func_off + at..f.func_off + at + 4];
        u32::from_le_bytes(b.try_into().expect("4 bytes"))
    }

    fn file_name(&self, cu: u32, file_no: i64) -> Option<String> {
        let idx = self.cu_off + 4 * (cu as usize + usize::try_from(file_no).ok()?);
        let b = self.data.get(idx..idx + 4)?;
        let off = u32::from_le_bytes(b.try_into().ok()?);
        if off == u32::MAX {
            return None;
        }
        self.cstr(self.filetab_off + off as usize)
    }

    /// Walks the pc-value table at `pctab + off` and returns the value for `target`.
    fn pcvalue(&self, off: u32, entry: u64, target: u64) -> Option<i64> {
        if off == 0 {
            return None;
        }
        let mut p = self.data.get(self.pctab_off + off as usize..)?;
        let (mut val, mut pc, mut first) = (-1i64, entry, true);
        loop {
            let (uv, n) = read_uvarint(p)?;
            if uv == 0 && !first {
                return None;
            }
            first = false;
            p = &p[n..];
            let delta = if uv & 1 != 0 {
                !(uv >> 1) as i64
            } else {
                (uv >> 1) as i64
            };
            val = val.checked_add(delta)?;
            let (pcdelta, n) = read_uvarint(p)?;
            p = &p[n..];
            pc = pc.checked_add(pcdelta.checked_mul(self.min_lc)?)?;
            if target < pc {
                return Some(val);
            }
        }
    }

    fn cstr(&self, at: usize) -> Option<String> {
        let tail = self.data.get(at..)?;
        cstr_in(&tail[..tail.len().min(MAX_NAME_LEN)])
    }
}

/// The NUL-terminated string at the start of `bytes`, if it ends there.
fn cstr_in(bytes: &[u8]) -> Option<String> {
    let len = memchr::memchr(0, bytes)?;
    Some(String::from_utf8_lossy(&bytes[..len]).into_owned())
}

/// The first bytes of an amd64 pclntab (magic, two zero pads, minLC 1,
/// pointer size 8), 8-aligned: how it is found when the section headers
/// were removed.
pub const HEADER_MAGIC: [u8; 8] = [0xF1, 0xFF, 0xFF, 0xFF, 0, 0, 1, 8];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_magic_and_truncation() {
        assert!(matches!(
            Symbolizer::parse([0u8; 10], None),
            Err(PclntabError::Corrupt(_))
        ));
        let mut old = [0u8; HEADER_LEN];
        old[0..4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert_eq!(
            Symbolizer::parse(&old[..], None).unwrap_err(),
            PclntabError::BadMagic(0xFFFF_FFF0)
        );
        let mut hdr = vec![0u8; HEADER_LEN];
        hdr[0..4].copy_from_slice(&PCLNTAB_MAGIC_120.to_le_bytes());
        hdr[6] = 1;
        hdr[7] = 8;
        hdr[8] = 200; // nfunc = 200 in a table of 72 bytes
        hdr[64] = 72; // pcln offset inside the data
        assert_eq!(
            Symbolizer::parse(&hdr[..], None).unwrap_err(),
            PclntabError::TooManyFunctions {
                nfunc: 200,
                len: 72
            }
        );
        hdr[8] = 1; // one function: room for it, but no functab
        hdr.resize(HEADER_LEN + 8 + FUNC_RECORD_LEN, 0);
        hdr[64] = 200;
        assert!(matches!(
            Symbolizer::parse(&hdr[..], None),
            Err(PclntabError::Corrupt(_))
        ));
    }

    /// Every function named by one long unterminated run of bytes: each
    /// name would be read to the end of the table, n times over.
    #[test]
    fn names_cost_linear_time() {
        let nfunc = 20_000usize;
        let names = 1 << 20;
        let functab_at = HEADER_LEN + names;
        let recs_at = functab_at + (nfunc + 1) * 8;
        let mut t = vec![0u8; recs_at + nfunc * FUNC_RECORD_LEN];
        t[0..4].copy_from_slice(&PCLNTAB_MAGIC_120.to_le_bytes());
        t[6] = 1;
        t[7] = 8;
        let put =
            |t: &mut Vec<u8>, at: usize, v: u64| t[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut t, 8, nfunc as u64);
        put(&mut t, 8 + 8 * 3, HEADER_LEN as u64); // funcnametab
        for i in 4..7 {
            put(&mut t, 8 + 8 * i, (HEADER_LEN + names) as u64); // cu, file, pc tables after it
        }
        put(&mut t, 8 + 8 * 7, functab_at as u64);
        t[HEADER_LEN..HEADER_LEN + names - 1].fill(b'a');
        for i in 0..=nfunc {
            let at = functab_at + 8 * i;
            t[at..at + 4].copy_from_slice(&(i as u32).to_le_bytes());
            let rec = (recs_at + i.min(nfunc - 1) * FUNC_RECORD_LEN - functab_at) as u32;
            t[at + 4..at + 8].copy_from_slice(&rec.to_le_bytes());
        }
        let started = std::time::Instant::now();
        let err = Symbolizer::parse(&t[..], None).unwrap_err();
        assert_eq!(
            err,
            PclntabError::Corrupt("function name unterminated, too long or past the name table")
        );
        // Linear: a few MB of names read; quadratic would be 20 GB.
        eprintln!("refused in {:?}", started.elapsed());
    }
}
