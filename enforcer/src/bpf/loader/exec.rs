//! The exec hook's user side (node agent only): attaches
//! `sched_process_exec` with the kernel struct offsets from BTF, and owns
//! the maps it reads and writes — the cgroups to act on, the files already
//! classified, the processes held — and the ring buffer of its events.

use std::{
    os::fd::{AsRawFd as _, RawFd},
    path::Path,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, RingBuf},
    programs::{RawTracePoint, raw_trace_point::RawTracePointLink},
};
use mapguard_common::{
    CgroupPolicy, ExecConfig, ExecEvent, FileKey, Hold, KnownFile, MAP_CGROUPS, MAP_EXEC_CONFIG,
    MAP_EXECS, MAP_FILES, MAP_HELD, PROG_EXEC, file_kind,
};

use super::{Enforcer, LoaderError, btf, map_error, program_error, take_map};

/// The tracepoint the hook runs on: after the new image is in place, in
/// the exec'ing task, before it returns to user space.
const TRACEPOINT: &str = "sched_process_exec";

/// The attached exec hook and its maps. Dropping it detaches the hook.
pub struct ExecHook {
    cgroups: HashMap<MapData, u64, CgroupPolicy>,
    files: HashMap<MapData, FileKey, KnownFile>,
    held: HashMap<MapData, u32, Hold>,
    events: RingBuf<MapData>,
    link: Option<RawTracePointLink>,
}

impl Enforcer {
    /// Loads and attaches the exec hook (once). `pin` is where the table
    /// of held processes is pinned (a bpffs path), so that an agent started
    /// after this one dies finds its holds (an error if it cannot be);
    /// `None`: not pinned.
    pub fn exec_hook(&mut self, pin: Option<&Path>) -> Result<ExecHook, LoaderError> {
        let offsets = btf::exec_config(Path::new(btf::VMLINUX_BTF))?;
        let config = take_map(&mut self.ebpf, MAP_EXEC_CONFIG)?;
        let mut config: Array<MapData, ExecConfig> =
            Array::try_from(config).map_err(|e| map_error(MAP_EXEC_CONFIG, e))?;
        config
            .set(0, offsets, 0)
            .map_err(|e| map_error(MAP_EXEC_CONFIG, e))?;
        let cgroups = take_map(&mut self.ebpf, MAP_CGROUPS)?;
        let cgroups = HashMap::try_from(cgroups).map_err(|e| map_error(MAP_CGROUPS, e))?;
        let files = take_map(&mut self.ebpf, MAP_FILES)?;
        // An LRU hash in the kernel: aya's HashMap reads and writes both.
        let files = HashMap::try_from(files).map_err(|e| map_error(MAP_FILES, e))?;
        let held = take_map(&mut self.ebpf, MAP_HELD)?;
        // Pinned before anything is held: a hold nobody could find after
        // this agent dies would leave its process stopped for good.
        if let (Some(path), Map::HashMap(data)) = (pin, &held) {
            data.pin(path).map_err(|e| LoaderError::Pin {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        let held = HashMap::try_from(held).map_err(|e| map_error(MAP_HELD, e))?;
        let events = take_map(&mut self.ebpf, MAP_EXECS)?;
        let events = RingBuf::try_from(events).map_err(|e| map_error(MAP_EXECS, e))?;
        let program: &mut RawTracePoint = self
            .ebpf
            .program_mut(PROG_EXEC)
            .ok_or(LoaderError::MissingProgram { name: PROG_EXEC })?
            .try_into()
            .map_err(|e| program_error(PROG_EXEC, e))?;
        program.load().map_err(|e| program_error(PROG_EXEC, e))?;
        let id = program
            .attach(TRACEPOINT)
            .map_err(|e| program_error(PROG_EXEC, e))?;
        let link = program
            .take_link(id)
            .map_err(|e| program_error(PROG_EXEC, e))?;
        Ok(ExecHook {
            cgroups,
            files,
            held,
            events,
            link: Some(link),
        })
    }
}

impl ExecHook {
    /// Makes the hook act on processes in cgroup `id` (and below).
    pub fn set_cgroup(&mut self, id: u64, policy: CgroupPolicy) -> Result<(), LoaderError> {
        self.cgroups
            .insert(id, policy, 0)
            .map_err(|e| map_error(MAP_CGROUPS, e))
    }

    pub fn remove_cgroup(&mut self, id: u64) {
        let _ = self.cgroups.remove(&id);
    }

    /// The cgroups the hook acts on.
    pub fn cgroups(&self) -> Vec<(u64, CgroupPolicy)> {
        self.cgroups.iter().filter_map(Result::ok).collect()
    }

    /// Tells the hook what file `key` is.
    pub fn set_file(&mut self, key: FileKey, file: KnownFile) -> Result<(), LoaderError> {
        self.files
            .insert(key, file, 0)
            .map_err(|e| map_error(MAP_FILES, e))
    }

    /// Forgets every file known as one of the Go `binaries` (their
    /// analyses dropped): their next processes are held again.
    pub fn forget_binaries(&mut self, binaries: &[u32]) {
        let keys: Vec<FileKey> = self
            .files
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, f)| f.kind == file_kind::GO && binaries.contains(&f.binary_id))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            let _ = self.files.remove(&key);
        }
    }

    pub fn file(&self, key: &FileKey) -> Option<KnownFile> {
        self.files.get(key, 0).ok()
    }

    /// The processes held now, as the kernel recorded them.
    pub fn holds(&self) -> Vec<(u32, Hold)> {
        self.held.iter().filter_map(Result::ok).collect()
    }

    /// Drops a hold from the table (its process released or gone).
    pub fn forget_hold(&mut self, pid: u32) {
        let _ = self.held.remove(&pid);
    }

    /// The next event the hook sent, if any is waiting.
    pub fn next_event(&mut self) -> Option<ExecEvent> {
        let item = self.events.next()?;
        (item.len() >= std::mem::size_of::<ExecEvent>()).then(|| {
            // SAFETY: the kernel wrote an ExecEvent (plain data, any bit
            // pattern valid); read unaligned from the ring's bytes.
            unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExecEvent>()) }
        })
    }

    /// The ring buffer's descriptor, to wait on.
    pub fn fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }

    /// Detaches the hook: no new process is held or enforced at exec.
    pub fn detach(&mut self) {
        self.link.take();
    }
}

/// The holds an agent pinned at `path` (one that is gone: its hook and
/// probes went with it), removing the pin. `None` when there is none.
pub fn take_pinned_holds(path: &Path) -> Option<Vec<(u32, Hold)>> {
    let data = MapData::from_pin(path).ok()?;
    let map: HashMap<MapData, u32, Hold> = HashMap::try_from(Map::HashMap(data)).ok()?;
    let holds = map.iter().filter_map(Result::ok).collect();
    let _ = std::fs::remove_file(path);
    Some(holds)
}
