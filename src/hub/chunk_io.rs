//! Where the bytes of a chunked download go: into a chunk-sized buffer in memory, onto the disk
//! at their place in the part file, and through the file's hasher in file order.
//!
//! Each connection fills a [`ChunkBuffer`] (one per chunk in flight, taken from a
//! [`BufferPool`]) and, once the chunk is complete, writes it out in one positioned write
//! through a [`PartWriter`] (on the blocking pool, so the other connections keep reading). On
//! Linux that is a second descriptor opened with `O_DIRECT`: the bytes go from the buffer to the
//! disk without passing through the page cache. On a VM, taking fresh
//! page-cache pages for gigabytes of file is what costs (a 2 GiB `dd` took 3.8 s buffered and
//! 1.9 s direct, with 3.8 s and 0.4 s of system CPU), and nothing here reads the bytes back:
//! once written, the buffer goes to [`hash_in_order`], which hashes the chunks in file order and
//! returns each buffer to the pool. Chunks that arrive ahead of the hashing frontier wait in
//! memory, so connections take chunks only within a window past the frontier
//! ([`HashFrontier`]), which bounds memory by the window, not the file.
//!
//! Anything direct I/O cannot take (an offset or length that is not block aligned, the last
//! bytes of the file, a filesystem that refuses `O_DIRECT`) goes through the ordinary
//! descriptor; a direct write refused with `EINVAL` makes the writer use the ordinary
//! descriptor from then on.
//!
//! Edges: writes only the part file it was given; knows nothing of HTTP or chunk scheduling,
//! and imports no other hub module (`chunked` uses it, never the reverse).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use crate::upstream::{ContentHasher, FileHash};

/// Alignment of buffer addresses, file offsets and lengths of direct writes: the largest
/// logical block size in common use (4Kn disks), which also satisfies 512-byte devices.
pub(super) const DIRECT_ALIGN: usize = 4096;

/// One chunk's bytes, held from their arrival until they are hashed. The bytes start at a
/// [`DIRECT_ALIGN`]-aligned address, as direct writes need.
pub(super) struct ChunkBuffer {
    /// Over-allocated by [`DIRECT_ALIGN`] so that an aligned start fits (safe code, no custom
    /// allocator).
    storage: Vec<u8>,
    start: usize,
    filled: usize,
}

impl ChunkBuffer {
    pub(super) fn new(capacity: usize) -> ChunkBuffer {
        let storage = vec![0u8; capacity + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(start < DIRECT_ALIGN, "a byte buffer can always be aligned");
        ChunkBuffer {
            storage,
            start,
            filled: 0,
        }
    }

    /// Bytes received so far.
    pub(super) fn filled(&self) -> usize {
        self.filled
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.filled]
    }

    /// Bytes the buffer holds at most (the storage minus the alignment slack).
    fn capacity(&self) -> usize {
        self.storage.len() - DIRECT_ALIGN
    }

    /// Appends `bytes`; the caller keeps the total within the capacity (a chunk's length).
    pub(super) fn append(&mut self, bytes: &[u8]) {
        assert!(
            self.filled + bytes.len() <= self.capacity(),
            "more bytes than the chunk holds"
        );
        let at = self.start + self.filled;
        self.storage[at..at + bytes.len()].copy_from_slice(bytes);
        self.filled += bytes.len();
    }

    fn reset(&mut self) {
        self.filled = 0;
    }
}

/// Buffers of chunks hashed and done with, for the next chunks (the pages stay mapped).
pub(super) struct BufferPool {
    free: Mutex<Vec<ChunkBuffer>>,
    capacity: usize,
}

impl BufferPool {
    pub(super) fn new(chunk_size: u64) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
            capacity: chunk_size as usize,
        }
    }

    pub(super) fn take(&self) -> ChunkBuffer {
        match self.free.lock().expect("buffer pool lock").pop() {
            Some(mut buffer) => {
                buffer.reset();
                buffer
            }
            None => ChunkBuffer::new(self.capacity),
        }
    }

    pub(super) fn give(&self, buffer: ChunkBuffer) {
        self.free.lock().expect("buffer pool lock").push(buffer);
    }
}

/// Positioned writes into the part file: direct where the write allows, else buffered.
pub(super) struct PartWriter {
    buffered: std::fs::File,
    direct: Option<std::fs::File>,
    direct_usable: AtomicBool,
}

impl PartWriter {
    /// Opens `part` (which exists) for reading and writing, plus a direct descriptor when
    /// `direct` is asked for and the platform and filesystem allow it.
    pub(super) fn open(part: &Path, direct: bool) -> std::io::Result<PartWriter> {
        let buffered = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(part)?;
        let direct = if direct { open_direct(part) } else { None };
        Ok(PartWriter {
            buffered,
            direct_usable: AtomicBool::new(direct.is_some()),
            direct,
        })
    }

    /// The ordinary descriptor (for reading back chunks of an earlier run).
    pub(super) fn file(&self) -> &std::fs::File {
        &self.buffered
    }

    /// Whether writes still go direct (for the logs and tests).
    pub(super) fn is_direct(&self) -> bool {
        self.direct_usable.load(Ordering::Relaxed)
    }

    /// Writes all of `data` at `offset`: the block-aligned part direct when possible, the rest
    /// buffered.
    pub(super) fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let aligned_len = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        let mut done = 0;
        if let Some(direct) = &self.direct
            && aligned_len > 0
            && offset.is_multiple_of(DIRECT_ALIGN as u64)
            && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && self.is_direct()
        {
            match direct.write_all_at(&data[..aligned_len], offset) {
                Ok(()) => done = aligned_len,
                // The filesystem wants another alignment (or none of it): from now on, and for
                // these bytes, the ordinary descriptor.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(
                        "direct writes refused ({error}): writing through the page cache"
                    );
                    self.direct_usable.store(false, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        if done < data.len() {
            self.buffered
                .write_all_at(&data[done..], offset + done as u64)?;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn open_direct(part: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(part)
        .inspect_err(|error| {
            tracing::debug!("no direct writes to {}: {error}", part.display());
        })
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_part: &Path) -> Option<std::fs::File> {
    None
}

/// The first chunk not hashed yet. Connections take only chunks within a window past it
/// (chunks ahead of it wait in memory), and wait on `moved` when the next one is beyond.
pub(super) struct HashFrontier {
    next: AtomicU64,
    pub(super) moved: tokio::sync::Notify,
}

impl HashFrontier {
    pub(super) fn new() -> HashFrontier {
        HashFrontier {
            next: AtomicU64::new(0),
            moved: tokio::sync::Notify::new(),
        }
    }

    pub(super) fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    fn advance_to(&self, next: u64) {
        self.next.store(next, Ordering::Release);
        self.moved.notify_waiters();
    }
}

/// The chunks of one file as the hasher sees them.
pub(super) struct ChunkLayout {
    pub(super) size: u64,
    pub(super) chunk_size: u64,
    /// Chunks already in the part file when the run started (an earlier run wrote them): read
    /// back from the file when their turn comes.
    pub(super) done_at_start: Vec<bool>,
}

/// Inclusive byte range of chunk `index`. Lives with the layout so that the scheduler
/// (`chunked`) and the hasher cut the file the same way without importing each other.
pub(super) fn chunk_range(index: u64, chunk_size: u64, size: u64) -> (u64, u64) {
    let start = index * chunk_size;
    (start, (start + chunk_size).min(size) - 1)
}

/// Hashes the file's chunks in order as their buffers arrive on `arrivals` (chunk index and
/// buffer, in any order), returning each buffer to `pool` and moving `frontier`, until every
/// chunk is hashed or the senders are gone. Returns how many bytes were hashed and the hash.
pub(super) fn hash_in_order(
    file: &std::fs::File,
    expected: &FileHash,
    layout: &ChunkLayout,
    arrivals: mpsc::Receiver<(u64, ChunkBuffer)>,
    pool: &BufferPool,
    frontier: &HashFrontier,
) -> std::io::Result<(u64, FileHash)> {
    let mut hasher = ContentHasher::for_hash(expected, layout.size);
    let chunks = layout.done_at_start.len() as u64;
    let mut waiting: BTreeMap<u64, ChunkBuffer> = BTreeMap::new();
    let mut read_back = Vec::new();
    let mut hashed = 0u64;
    let mut next = 0u64;
    loop {
        while next < chunks {
            let (start, end) = chunk_range(next, layout.chunk_size, layout.size);
            let len = (end - start + 1) as usize;
            if layout.done_at_start[next as usize] {
                read_back.resize(len, 0);
                file.read_exact_at(&mut read_back, start)?;
                hasher.update(&read_back);
            } else if let Some(buffer) = waiting.remove(&next) {
                if buffer.filled() != len {
                    return Err(std::io::Error::other(format!(
                        "chunk {next} holds {} of its {len} bytes",
                        buffer.filled()
                    )));
                }
                hasher.update(buffer.bytes());
                pool.give(buffer);
            } else {
                break;
            }
            hashed += len as u64;
            next += 1;
            frontier.advance_to(next);
        }
        if next == chunks {
            break;
        }
        match arrivals.recv() {
            Ok((index, buffer)) => {
                waiting.insert(index, buffer);
            }
            Err(mpsc::RecvError) => break,
        }
    }
    Ok((hashed, hasher.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::sha256_hex;

    fn noise(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn aligned_chunks_go_direct_and_everything_else_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let content = noise(3 * DIRECT_ALIGN + 123);
        let offset = 2 * DIRECT_ALIGN as u64;
        std::fs::write(&path, vec![0u8; offset as usize + content.len()]).unwrap();
        let writer = PartWriter::open(&path, true).unwrap();
        let mut buffer = ChunkBuffer::new(content.len());
        assert_eq!(buffer.bytes().as_ptr() as usize % DIRECT_ALIGN, 0);
        for piece in content.chunks(1000) {
            buffer.append(piece);
        }
        // Three whole blocks direct (where the filesystem can), the 123 bytes after them not.
        writer.write_at(buffer.bytes(), offset).unwrap();
        if open_direct(&path).is_some() {
            assert!(
                writer.is_direct(),
                "aligned writes on a filesystem that takes them"
            );
        }
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..offset as usize], &vec![0u8; offset as usize][..]);
        assert_eq!(&on_disk[offset as usize..], &content[..]);
        // Unaligned offsets and memory are written too (through the ordinary descriptor).
        writer.write_at(&content[1..DIRECT_ALIGN + 1], 7).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[7..DIRECT_ALIGN + 7], &content[1..DIRECT_ALIGN + 1]);
        // Asked not to, the writer never goes direct.
        let buffered = PartWriter::open(&path, false).unwrap();
        buffered.write_at(buffer.bytes(), offset).unwrap();
        assert!(!buffered.is_direct());
        assert_eq!(
            std::fs::read(&path).unwrap()[offset as usize..],
            content[..]
        );
    }

    #[test]
    fn chunks_are_hashed_in_file_order_whatever_order_they_arrive_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let chunk_size = 2 * DIRECT_ALIGN as u64;
        let content = noise(5 * chunk_size as usize + 100);
        // Chunk 1 is in the file from an earlier run; the others arrive out of order.
        let mut on_disk = vec![0u8; content.len()];
        let chunk = |i: u64| {
            let start = (i * chunk_size) as usize;
            start..(start + chunk_size as usize).min(content.len())
        };
        on_disk[chunk(1)].copy_from_slice(&content[chunk(1)]);
        std::fs::write(&path, &on_disk).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut done_at_start = vec![false; 6];
        done_at_start[1] = true;
        let layout = ChunkLayout {
            size: content.len() as u64,
            chunk_size,
            done_at_start,
        };
        let pool = BufferPool::new(chunk_size);
        let frontier = HashFrontier::new();
        let (tx, rx) = mpsc::channel();
        for index in [3u64, 5, 0, 2, 4] {
            let mut buffer = pool.take();
            buffer.append(&content[chunk(index)]);
            tx.send((index, buffer)).unwrap();
        }
        drop(tx);
        let expected = FileHash::Sha256(sha256_hex(&content));
        let (hashed, actual) =
            hash_in_order(&file, &expected, &layout, rx, &pool, &frontier).unwrap();
        assert_eq!(hashed, content.len() as u64);
        assert_eq!(actual, expected);
        assert_eq!(frontier.next(), 6);
        assert_eq!(pool.free.lock().unwrap().len(), 5, "every buffer came back");

        // A missing chunk stops the hashing at the gap when the senders are gone.
        let (tx, rx) = mpsc::channel();
        let mut buffer = pool.take();
        buffer.append(&content[chunk(0)]);
        tx.send((0, buffer)).unwrap();
        drop(tx);
        let frontier = HashFrontier::new();
        let (hashed, _) = hash_in_order(&file, &expected, &layout, rx, &pool, &frontier).unwrap();
        assert_eq!(
            hashed,
            2 * chunk_size,
            "chunk 0, then chunk 1 from the file"
        );
    }
}
