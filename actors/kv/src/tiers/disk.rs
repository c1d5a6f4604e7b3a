//! G3: one preallocated file of fixed-size slots in a local directory.
//!
//! Slot layout: a 32-byte header (magic, payload length, block hash, XXH3-64 of the
//! payload) then the payload, each slot padded to a multiple of 4 KiB ([`slot_bytes`]).
//! The file is opened with `O_DIRECT` where the filesystem allows it (not on tmpfs): slots
//! are written and read whole through 4 KiB-aligned buffers, bypassing the page cache, so
//! offloaded KV does not evict the host's other cached files and a read measures the disk.
//! Otherwise (or for a file given by the caller) it uses ordinary buffered I/O. A read checks all four; any mismatch (a torn or truncated
//! write, bit rot, a slot reused since the read was planned) is [`KvError::Corrupt`] and the
//! caller treats the block as a miss. The file is created fresh (truncated) at start and
//! removed on drop: the disk tier is wiped on restart, never trusted across processes.
//! Stale files of processes that are gone are deleted when a tier opens in the same folder.
//!
//! Writes run on one writer thread per file (owned here, joined on drop), so the scheduler
//! never waits for the disk; a read waits only for the last write queued to its own slot
//! before it was planned (writes complete in order), not for the whole queue. The first failed write is kept and reported by
//! [`DiskFile::take_failure`].

use crate::error::{KvError, Result};
use ferrite_protocol::BlockHash;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

const MAGIC: u32 = 0x4b56_4633; // "KVF3"
pub(crate) const HEADER: usize = 32;
const PREFIX: &str = "ferrite-kvbm-";
const SUFFIX: &str = ".g3";
/// Alignment of direct I/O offsets, lengths and buffers.
const ALIGN: usize = 4096;

/// Bytes one slot of a `block_bytes` block takes in the file (header, payload, padding).
pub fn slot_bytes(block_bytes: usize) -> usize {
    (HEADER + block_bytes).div_ceil(ALIGN) * ALIGN
}

/// A zeroed `len`-byte buffer at a 4 KiB-aligned address (inside a larger `Vec`).
struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        let v = vec![0u8; len + ALIGN];
        let off = v.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self { v, off, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A planned read of one disk block (runs on the engine thread, off the scheduler).
#[derive(Clone, Debug)]
pub struct DiskRead {
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
    pub(crate) hash: BlockHash,
    pub(crate) len: usize,
    /// `file` is opened with `O_DIRECT`: read the whole slot through an aligned buffer.
    direct: bool,
    writes: Arc<WriteProgress>,
    /// Ordinal of the last write to this slot queued before the read was planned.
    after: u64,
}

/// Completed writes of a file's writer thread, and its first failure.
#[derive(Debug, Default)]
struct WriteProgress {
    done: Mutex<u64>,
    cv: Condvar,
    failure: Mutex<Option<String>>,
}

impl WriteProgress {
    fn wait_for(&self, n: u64) {
        let Ok(mut done) = self.done.lock() else {
            return;
        };
        while *done < n {
            match self.cv.wait(done) {
                Ok(d) => done = d,
                Err(_) => return,
            }
        }
    }

    fn complete(&self, res: std::io::Result<()>) {
        if let Err(e) = res
            && let Ok(mut f) = self.failure.lock()
            && f.is_none()
        {
            *f = Some(e.to_string());
        }
        if let Ok(mut d) = self.done.lock() {
            *d += 1;
        }
        self.cv.notify_all();
    }
}

struct WriteJob {
    offset: u64,
    buf: Aligned,
}

impl DiskRead {
    /// Reads and verifies the block into `out` (`len` bytes), after the writes that were
    /// queued before this read was planned.
    pub fn read_into(&self, out: &mut [u8]) -> Result<()> {
        self.writes.wait_for(self.after);
        if out.len() != self.len {
            return Err(KvError::Corrupt(format!(
                "buffer of {} bytes for a {}-byte block",
                out.len(),
                self.len
            )));
        }
        let mut head = [0u8; HEADER];
        if self.direct {
            let mut slot = Aligned::zeroed(slot_bytes(self.len));
            self.file
                .read_exact_at(slot.bytes_mut(), self.offset)
                .map_err(|e| KvError::Corrupt(format!("slot of {:?}: {e}", self.hash)))?;
            head.copy_from_slice(&slot.bytes()[..HEADER]);
            out.copy_from_slice(&slot.bytes()[HEADER..HEADER + self.len]);
        } else {
            self.file
                .read_exact_at(&mut head, self.offset)
                .map_err(|e| KvError::Corrupt(format!("header of {:?}: {e}", self.hash)))?;
            self.file
                .read_exact_at(out, self.offset + HEADER as u64)
                .map_err(|e| KvError::Corrupt(format!("payload of {:?}: {e}", self.hash)))?;
        }
        let (magic, len, hash, sum) = parse_header(&head);
        if magic != MAGIC || len as usize != self.len || hash != self.hash.0 {
            return Err(KvError::Corrupt(format!(
                "slot header of {:?} does not match (magic {magic:#x}, len {len}, hash {hash:#x})",
                self.hash
            )));
        }
        let actual = xxhash_rust::xxh3::xxh3_64(out);
        if actual != sum {
            return Err(KvError::Corrupt(format!(
                "checksum of {:?}: stored {sum:#x}, read {actual:#x}",
                self.hash
            )));
        }
        Ok(())
    }
}

fn parse_header(h: &[u8; HEADER]) -> (u32, u32, u64, u64) {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    (u32_at(0), u32_at(4), u64_at(8), u64_at(16))
}

fn header(len: usize, hash: BlockHash, data: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&hash.0.to_le_bytes());
    h[16..24].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(data).to_le_bytes());
    h
}

/// The slot file of one disk tier.
#[derive(Debug)]
pub(crate) struct DiskFile {
    /// Buffered handle (sizing, tests).
    file: Arc<File>,
    /// The `O_DIRECT` handle blocks go through, where the filesystem supports it.
    direct: Option<Arc<File>>,
    path: Option<PathBuf>,
    block_bytes: usize,
    pub(crate) slots: u32,
    tx: Option<Sender<WriteJob>>,
    writer: Option<JoinHandle<()>>,
    writes: Arc<WriteProgress>,
    submitted: AtomicU64,
    /// Per slot, the ordinal (1-based) of the last write queued to it; 0: none.
    last_write: Vec<AtomicU64>,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteJob@{}", self.offset)
    }
}

impl DiskFile {
    /// Creates a fresh slot file of `slots` slots in `dir` (created if missing), deleting
    /// stale files of dead processes there first.
    pub(crate) fn create(dir: &Path, slots: u32, block_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| KvError::io(dir, e))?;
        remove_stale(dir);
        let name = format!(
            "{PREFIX}{}-{}{SUFFIX}",
            std::process::id(),
            NEXT_FILE.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| KvError::io(&path, e))?;
        let total = u64::from(slots) * slot_bytes(block_bytes) as u64;
        file.set_len(total).map_err(|e| KvError::io(&path, e))?;
        let direct = open_direct(&path);
        if direct.is_none() {
            tracing::info!(file = %path.display(), "disk KV tier: no O_DIRECT here, using buffered I/O");
        }
        Self::start(file, direct, Some(path), slots, block_bytes)
    }

    /// Over an already open file, buffered I/O (tests: `/dev/full` for a full disk).
    pub(crate) fn from_file(file: File, slots: u32, block_bytes: usize) -> Result<Self> {
        Self::start(file, None, None, slots, block_bytes)
    }

    fn start(
        file: File,
        direct: Option<File>,
        path: Option<PathBuf>,
        slots: u32,
        block_bytes: usize,
    ) -> Result<Self> {
        let file = Arc::new(file);
        let direct = direct.map(Arc::new);
        let writes = Arc::new(WriteProgress::default());
        let (tx, rx) = channel::<WriteJob>();
        let f = direct.clone().unwrap_or_else(|| file.clone());
        let w = writes.clone();
        let writer = std::thread::Builder::new()
            .name("ferrite-kvbm-g3".into())
            .spawn(move || {
                for job in rx {
                    w.complete(f.write_all_at(job.buf.bytes(), job.offset));
                }
            })
            .map_err(|e| KvError::Io {
                path: "disk tier writer thread".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            file,
            direct,
            path,
            block_bytes,
            slots,
            tx: Some(tx),
            writer: Some(writer),
            writes,
            submitted: AtomicU64::new(0),
            last_write: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The first failed write since the last call, if any.
    pub(crate) fn take_failure(&self) -> Option<String> {
        self.writes.failure.lock().ok().and_then(|mut f| f.take())
    }

    /// Waits until every queued write has landed.
    pub(crate) fn flush(&self) {
        self.writes.wait_for(self.submitted.load(Ordering::SeqCst));
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Bytes of writes queued and not landed yet.
    pub(crate) fn queued_bytes(&self) -> u64 {
        let done = self.writes.done.lock().map_or(0, |d| *d);
        let queued = self.submitted.load(Ordering::SeqCst).saturating_sub(done);
        queued * slot_bytes(self.block_bytes) as u64
    }

    /// Whether blocks bypass the page cache (`O_DIRECT`).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn offset(&self, slot: u32) -> u64 {
        u64::from(slot) * slot_bytes(self.block_bytes) as u64
    }

    /// Queues one block's write (header and payload in one `pwrite` on the writer thread).
    /// `Err` only when the writer is gone; a failed write shows in [`DiskFile::take_failure`].
    pub(crate) fn write(&self, slot: u32, hash: BlockHash, data: &[u8]) -> std::io::Result<()> {
        // Direct I/O writes the whole padded slot; buffered I/O just header + payload.
        let len = if self.direct.is_some() {
            slot_bytes(data.len())
        } else {
            HEADER + data.len()
        };
        let mut buf = Aligned::zeroed(len);
        let b = buf.bytes_mut();
        b[..HEADER].copy_from_slice(&header(data.len(), hash, data));
        b[HEADER..HEADER + data.len()].copy_from_slice(data);
        let job = WriteJob {
            offset: self.offset(slot),
            buf,
        };
        match &self.tx {
            Some(tx) if tx.send(job).is_ok() => {
                let n = self.submitted.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(w) = self.last_write.get(slot as usize) {
                    w.store(n, Ordering::SeqCst);
                }
                Ok(())
            }
            _ => Err(std::io::Error::other("disk tier writer thread is gone")),
        }
    }

    pub(crate) fn read_plan(&self, slot: u32, hash: BlockHash) -> DiskRead {
        DiskRead {
            file: self.direct.clone().unwrap_or_else(|| self.file.clone()),
            offset: self.offset(slot),
            hash,
            len: self.block_bytes,
            direct: self.direct.is_some(),
            writes: self.writes.clone(),
            after: self
                .last_write
                .get(slot as usize)
                .map_or(0, |w| w.load(Ordering::SeqCst)),
        }
    }

    /// Flips one payload byte of `slot` (tests: corruption).
    pub(crate) fn corrupt(&self, slot: u32) -> std::io::Result<()> {
        self.flush();
        let at = self.offset(slot) + HEADER as u64;
        let mut b = [0u8; 1];
        self.file.read_exact_at(&mut b, at)?;
        b[0] ^= 0x5a;
        self.file.write_all_at(&b, at)?;
        self.file.sync_data() // so that a direct read sees it
    }
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A second handle on `path` with `O_DIRECT`, if the filesystem supports it (an aligned
/// probe write and read of slot 0 succeed).
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    let mut probe = Aligned::zeroed(ALIGN);
    f.write_all_at(probe.bytes(), 0).ok()?;
    f.read_exact_at(probe.bytes_mut(), 0).ok()?;
    Some(f)
}

/// Deletes `ferrite-kvbm-<pid>-<n>.g3` files of processes that no longer exist.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(SUFFIX))
        else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            tracing::info!(file = %e.path().display(), "removing the disk KV tier of a dead process");
            let _ = std::fs::remove_file(e.path());
        }
    }
}
