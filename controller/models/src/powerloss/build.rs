//! Stage 3: a crash state's contents as a read-only disk, built from the
//! base image and the log without copying either.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use blocklog::{CrashState, Extent, ParsedLog, PrefixIndex};
use nbd::DiskView;

/// Builds any state of one capture; shared read-only by the check workers.
/// A state costs one checkpoint's extent map plus the entries since it
/// ([`PrefixIndex`]), so the cost per state stays flat as the log grows.
pub struct StateBuilder<'a> {
    log: &'a ParsedLog,
    index: PrefixIndex,
    base: Arc<File>,
    log_file: Arc<File>,
    device_size_bytes: u64,
}

impl<'a> StateBuilder<'a> {
    pub fn new(log: &'a ParsedLog, base: Arc<File>, log_file: Arc<File>, device_size_bytes: u64) -> StateBuilder<'a> {
        StateBuilder {
            log,
            index: PrefixIndex::new(log),
            base,
            log_file,
            device_size_bytes,
        }
    }

    pub fn log(&self) -> &'a ParsedLog {
        self.log
    }

    /// The ranges `state` changes relative to the base image.
    pub fn extents(&self, state: &CrashState) -> Vec<Extent> {
        self.index.extents(self.log, state)
    }

    pub fn view(&self, state: &CrashState) -> StateView {
        self.view_of(self.extents(state))
    }

    /// The base image alone: what a checker shows before its first state.
    pub fn empty_view(&self) -> StateView {
        self.view_of(Vec::new())
    }

    fn view_of(&self, extents: Vec<Extent>) -> StateView {
        StateView::new(
            self.base.clone(),
            self.log_file.clone(),
            self.device_size_bytes,
            extents,
        )
    }

    pub fn base(&self) -> &Arc<File> {
        &self.base
    }

    pub fn log_file(&self) -> &Arc<File> {
        &self.log_file
    }
}

/// A crash state as a read-only disk: the pristine base image with the
/// state's winning log extents (or zeros, for discards) on top. Nothing is
/// copied: reads go to the base or the log file.
#[derive(Clone)]
pub struct StateView {
    base: Arc<File>,
    log: Arc<File>,
    size_bytes: u64,
    /// Sorted by device offset, non-overlapping.
    extents: Vec<Extent>,
}

impl StateView {
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Where the extents' bytes are.
    pub fn log_file(&self) -> &File {
        &self.log
    }

    pub fn new(base: Arc<File>, log: Arc<File>, size_bytes: u64, mut extents: Vec<Extent>) -> StateView {
        extents.sort_by_key(|e| e.device_offset_bytes);
        debug_assert!(extents
            .windows(2)
            .all(|w| w[0].device_offset_bytes + w[0].len_bytes <= w[1].device_offset_bytes));
        StateView {
            base,
            log,
            size_bytes,
            extents,
        }
    }
}

impl DiskView for StateView {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset_bytes + buf.len() as u64;
        // Each byte is read once: from the extent that covers it, else from
        // the base (the gaps between extents).
        let mut base_from = offset_bytes;
        let read_base = |from: u64, to: u64, buf: &mut [u8]| -> std::io::Result<()> {
            match from < to {
                true => self.base.read_exact_at(
                    &mut buf[(from - offset_bytes) as usize..(to - offset_bytes) as usize],
                    from,
                ),
                false => Ok(()),
            }
        };
        // First extent that ends after the read starts.
        let first = self
            .extents
            .partition_point(|e| e.device_offset_bytes + e.len_bytes <= offset_bytes);
        for e in self.extents[first..].iter().take_while(|e| e.device_offset_bytes < end) {
            let from = e.device_offset_bytes.max(offset_bytes);
            let to = (e.device_offset_bytes + e.len_bytes).min(end);
            read_base(base_from, from, buf)?;
            base_from = to;
            let dst = &mut buf[(from - offset_bytes) as usize..(to - offset_bytes) as usize];
            match e.log_offset_bytes() {
                Some(log_offset) => self
                    .log
                    .read_exact_at(dst, log_offset + (from - e.device_offset_bytes))?,
                None => dst.fill(0), // a discarded range
            }
        }
        read_base(base_from, end, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blocklog::ExtentSource;
    use rand::{Rng, SeedableRng};

    /// A view reads what the materialised image holds, at any offset and
    /// length: extents from the log, discards as zeros, the base between.
    #[test]
    fn view_reads_equal_the_materialised_image() {
        const DISK_BYTES: usize = 64 << 10;
        const LOG_BYTES: usize = 32 << 10;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let base_bytes: Vec<u8> = (0..DISK_BYTES).map(|_| rng.random()).collect();
        let log_bytes: Vec<u8> = (0..LOG_BYTES).map(|_| rng.random()).collect();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            Arc::new(File::open(path).unwrap())
        };
        let (base, log) = (write("base", &base_bytes), write("log", &log_bytes));
        for _ in 0..50 {
            // Non-overlapping extents, some adjacent, some discards.
            let mut extents = Vec::new();
            let mut at = rng.random_range(0..4096u64);
            while at < DISK_BYTES as u64 - 4096 {
                let len = rng.random_range(1..4096u64);
                let source = match rng.random_ratio(1, 5) {
                    true => ExtentSource::Zeros,
                    false => ExtentSource::Log {
                        offset_bytes: rng.random_range(0..(LOG_BYTES as u64 - len)),
                    },
                };
                extents.push(Extent {
                    device_offset_bytes: at,
                    len_bytes: len,
                    source,
                });
                at += len + [0, 0, rng.random_range(1..2048)][rng.random_range(0..3)];
            }
            let mut image = base_bytes.clone();
            for e in &extents {
                let range = e.device_offset_bytes as usize..(e.device_offset_bytes + e.len_bytes) as usize;
                match e.log_offset_bytes() {
                    Some(o) => image[range.clone()].copy_from_slice(&log_bytes[o as usize..o as usize + range.len()]),
                    None => image[range].fill(0),
                }
            }
            let view = StateView::new(base.clone(), log.clone(), DISK_BYTES as u64, extents);
            for _ in 0..50 {
                let offset = rng.random_range(0..DISK_BYTES);
                let len = rng.random_range(0..=(DISK_BYTES - offset).min(16 << 10));
                let mut buf = vec![0xAA; len];
                view.read_at(offset as u64, &mut buf).unwrap();
                assert!(buf == image[offset..offset + len], "read at {offset}, {len} bytes");
            }
        }
    }
}
