//! A tiny FUSE filesystem served by the test itself: the kernel's FUSE
//! protocol read from `/dev/fuse` (mounted with mount(2), as root), one
//! folder of read-only files held in memory, and a switch that makes it
//! leave chosen requests unanswered — as a dead network mount does —
//! until [`Fuse::release`], or for ever.
//!
//! Include it with `#[path = "support/fuse.rs"] mod fuse;`.

#![allow(dead_code)]

use std::{
    ffi::CString,
    fs::File,
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const READ: u32 = 15;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const INTERRUPT: u32 = 36;
const BATCH_FORGET: u32 = 42;

const IN_HEADER: usize = 40;
const ROOT: u64 = 1;

/// One request as the kernel sent it.
#[derive(Debug, Clone)]
pub struct Request {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    /// The calling thread (a thread id of the root PID namespace).
    pub pid: u32,
    body: Vec<u8>,
}

impl Request {
    /// The process (thread group) of the calling thread.
    pub fn tgid(&self) -> Option<u32> {
        tgid_of(self.pid)
    }

    pub fn is_open(&self) -> bool {
        self.opcode == OPEN
    }
}

/// The thread group of thread `tid`.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

type Hold = Box<dyn Fn(&Request) -> bool + Send>;

struct State {
    /// Which requests are left unanswered.
    hold: Option<Hold>,
    held: Vec<Request>,
}

/// A mounted test filesystem; unmounted (lazily) on drop, every request
/// still held then answered with EIO.
pub struct Fuse {
    pub mount: PathBuf,
    dev: Arc<File>,
    files: Arc<Vec<(String, Vec<u8>)>>,
    state: Arc<Mutex<State>>,
}

impl Fuse {
    /// Mounts at `mount` a folder holding `files` (name, content; mode
    /// 0755) and serves it on a thread of its own.
    pub fn mount(mount: &Path, files: Vec<(String, Vec<u8>)>) -> Fuse {
        std::fs::create_dir_all(mount).expect("FUSE mount point");
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("open /dev/fuse");
        let options = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        let c = |s: &str| CString::new(s).expect("no NUL");
        let (target, data) = (c(mount.to_str().expect("UTF-8")), c(&options));
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"mapguard-test".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount -t fuse {}: {}",
            mount.display(),
            std::io::Error::last_os_error()
        );
        let fuse = Fuse {
            mount: mount.to_path_buf(),
            dev: Arc::new(dev),
            files: Arc::new(files),
            state: Arc::new(Mutex::new(State {
                hold: None,
                held: Vec::new(),
            })),
        };
        let server = Server {
            dev: Arc::clone(&fuse.dev),
            files: Arc::clone(&fuse.files),
        };
        let state = Arc::clone(&fuse.state);
        std::thread::spawn(move || server.run(&state));
        fuse
    }

    /// The path of file `name` in the mount.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    /// From now on, leaves the requests `hold` picks unanswered.
    pub fn hold(&self, hold: impl Fn(&Request) -> bool + Send + 'static) {
        self.state.lock().expect("state").hold = Some(Box::new(hold));
    }

    /// Waits until a request `pick` chooses is held; it, if any in time.
    pub fn wait_held(&self, timeout: Duration, pick: impl Fn(&Request) -> bool) -> Option<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .state
                .lock()
                .expect("state")
                .held
                .iter()
                .find(|r| pick(r))
            {
                return Some(r.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Answers every request from now on, those held first.
    pub fn release(&self) {
        let held = {
            let mut state = self.state.lock().expect("state");
            state.hold = None;
            std::mem::take(&mut state.held)
        };
        let server = Server {
            dev: Arc::clone(&self.dev),
            files: Arc::clone(&self.files),
        };
        for r in held {
            server.answer(&r);
        }
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        let held = {
            let mut state = self.state.lock().expect("state");
            state.hold = Some(Box::new(|_| false));
            std::mem::take(&mut state.held)
        };
        for r in held {
            reply(&self.dev, r.unique, -libc::EIO, &[]);
        }
        if let Ok(path) = CString::new(self.mount.to_str().unwrap_or_default()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

struct Server {
    dev: Arc<File>,
    files: Arc<Vec<(String, Vec<u8>)>>,
}

impl Server {
    fn run(&self, state: &Mutex<State>) {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match (&*self.dev).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                // ENODEV: unmounted.
                Err(_) => return,
            };
            if n < IN_HEADER {
                continue;
            }
            let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4"));
            let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().expect("8"));
            let r = Request {
                opcode: u32_at(4),
                unique: u64_at(8),
                nodeid: u64_at(16),
                pid: u32_at(32),
                body: buf[IN_HEADER..n].to_vec(),
            };
            if r.opcode != INIT {
                let mut state = state.lock().expect("state");
                if state.hold.as_ref().is_some_and(|hold| hold(&r)) {
                    state.held.push(r);
                    continue;
                }
            }
            self.answer(&r);
        }
    }

    fn file(&self, nodeid: u64) -> Option<&(String, Vec<u8>)> {
        self.files
            .get(usize::try_from(nodeid.checked_sub(2)?).ok()?)
    }

    fn attr(&self, nodeid: u64) -> Option<Vec<u8>> {
        let (size, mode) = if nodeid == ROOT {
            (0, libc::S_IFDIR | 0o755)
        } else {
            (self.file(nodeid)?.1.len() as u64, libc::S_IFREG | 0o755)
        };
        let mut a = Vec::with_capacity(88);
        for v in [nodeid, size, size.div_ceil(512), 0, 0, 0] {
            a.extend_from_slice(&v.to_ne_bytes());
        }
        // atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev,
        // blksize, flags
        for v in [0, 0, 0, mode, 1, 0, 0, 0, 4096, 0u32] {
            a.extend_from_slice(&v.to_ne_bytes());
        }
        Some(a)
    }

    fn answer(&self, r: &Request) {
        let dev = &*self.dev;
        match r.opcode {
            INIT => {
                let max_readahead = u32::from_ne_bytes(r.body[8..12].try_into().expect("4"));
                let mut out = Vec::with_capacity(64);
                for v in [7u32, 31, max_readahead, 0] {
                    out.extend_from_slice(&v.to_ne_bytes());
                }
                out.extend_from_slice(&16u16.to_ne_bytes()); // max_background
                out.extend_from_slice(&12u16.to_ne_bytes()); // congestion_threshold
                out.extend_from_slice(&(128u32 << 10).to_ne_bytes()); // max_write
                out.extend_from_slice(&1u32.to_ne_bytes()); // time_gran
                out.resize(64, 0);
                reply(dev, r.unique, 0, &out);
            }
            LOOKUP => {
                let name = r.body.split(|b| *b == 0).next().unwrap_or_default();
                let found = (r.nodeid == ROOT)
                    .then(|| self.files.iter().position(|(n, _)| n.as_bytes() == name))
                    .flatten();
                match found {
                    Some(i) => {
                        let nodeid = i as u64 + 2;
                        let mut out = Vec::with_capacity(128);
                        // nodeid, generation, entry_valid (s), attr_valid (0:
                        // every stat asks)
                        for v in [nodeid, 0, 3600, 0] {
                            out.extend_from_slice(&v.to_ne_bytes());
                        }
                        out.extend_from_slice(&[0; 8]);
                        out.extend_from_slice(&self.attr(nodeid).expect("a file"));
                        reply(dev, r.unique, 0, &out);
                    }
                    None => reply(dev, r.unique, -libc::ENOENT, &[]),
                }
            }
            GETATTR => match self.attr(r.nodeid) {
                Some(attr) => {
                    let mut out = vec![0u8; 16];
                    out.extend_from_slice(&attr);
                    reply(dev, r.unique, 0, &out);
                }
                None => reply(dev, r.unique, -libc::ENOENT, &[]),
            },
            OPEN | OPENDIR => reply(dev, r.unique, 0, &[0; 16]),
            READ => {
                let offset = u64::from_ne_bytes(r.body[8..16].try_into().expect("8"));
                let size = u32::from_ne_bytes(r.body[16..20].try_into().expect("4")) as u64;
                let data = self.file(r.nodeid).map_or(&[][..], |f| &f.1[..]);
                let start = offset.min(data.len() as u64) as usize;
                let end = (offset + size).min(data.len() as u64) as usize;
                reply(dev, r.unique, 0, &data[start..end]);
            }
            READDIR | RELEASE | RELEASEDIR | FLUSH => reply(dev, r.unique, 0, &[]),
            STATFS => {
                let mut out = vec![0u8; 80];
                out[40..44].copy_from_slice(&4096u32.to_ne_bytes()); // bsize
                out[44..48].copy_from_slice(&255u32.to_ne_bytes()); // namelen
                out[48..52].copy_from_slice(&4096u32.to_ne_bytes()); // frsize
                reply(dev, r.unique, 0, &out);
            }
            FORGET | BATCH_FORGET | INTERRUPT => {}
            _ => reply(dev, r.unique, -libc::ENOSYS, &[]),
        }
    }
}

/// Writes one answer (a header and `payload`) in one write, as the
/// protocol wants.
fn reply(dev: &File, unique: u64, error: i32, payload: &[u8]) {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&error.to_ne_bytes());
    out.extend_from_slice(&unique.to_ne_bytes());
    out.extend_from_slice(payload);
    // An interrupted request is gone: ENOENT, nothing to do.
    let _ = (&*dev).write_all(&out);
}
