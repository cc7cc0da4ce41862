//! The table of processes the probes stopped (`stop` mode): written by
//! the kernel before each SIGSTOP, pinned by the node agent so that the
//! stops of an agent that died are found by the next one, which applies
//! their deadline (`daemon::reconcile::stops`).

use std::path::Path;

use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use mapguard_common::{MAP_STOPPED, Stop};

use super::{Enforcer, LoaderError, map_error, take_map, update_task_config};

/// The kernel's table of stopped processes.
pub struct StopTable {
    map: HashMap<MapData, u32, Stop>,
}

impl Enforcer {
    /// Takes the table of stopped processes (once); from then on the
    /// probes record every stop there before they make it.
    pub fn stop_table(&mut self) -> Result<StopTable, LoaderError> {
        update_task_config(&mut self.ebpf, |cfg| cfg.record_stops = 1)?;
        let map = take_map(&mut self.ebpf, MAP_STOPPED)?;
        let map = HashMap::try_from(map).map_err(|e| map_error(MAP_STOPPED, e))?;
        Ok(StopTable { map })
    }
}

impl StopTable {
    /// Pins the table at `path` (a bpffs path), so that it outlives this
    /// process.
    pub fn pin(&self, path: &Path) -> Result<(), LoaderError> {
        self.map.map().pin(path).map_err(|e| LoaderError::Pin {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The processes stopped now, as the kernel recorded them.
    pub fn stops(&self) -> Vec<(u32, Stop)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Records a stop (one an agent that died left).
    pub fn insert(&mut self, pid: u32, stop: Stop) -> Result<(), LoaderError> {
        self.map
            .insert(pid, stop, 0)
            .map_err(|e| map_error(MAP_STOPPED, e))
    }

    /// Forgets a stop (its process released, killed or gone), unless the
    /// kernel stopped it again after `seen` (its record then is newer).
    pub fn forget(&mut self, pid: u32, seen: Stop) {
        if self.map.get(&pid, 0).is_ok_and(|now| now == seen) {
            let _ = self.map.remove(&pid);
        }
    }
}

/// The stops an agent pinned at `path` (one that is gone), removing the
/// pin. `None` when there is none.
pub fn take_pinned_stops(path: &Path) -> Option<Vec<(u32, Stop)>> {
    let data = MapData::from_pin(path).ok()?;
    let map: HashMap<MapData, u32, Stop> = HashMap::try_from(Map::HashMap(data)).ok()?;
    let stops = map.iter().filter_map(Result::ok).collect();
    let _ = std::fs::remove_file(path);
    Some(stops)
}
