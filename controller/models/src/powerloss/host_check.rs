//! Stage 4, host path (ext4 only, no VM, no root): the journal replayed as
//! the kernel's mount would, then each data file read out.
//!
//! Two ways, one answer. The fast one, crashlab's `ext4` crate, replays the
//! journal in memory over the state view and reads the files at their
//! extents: no copy, no process. It declines anything outside the plain
//! case (a torn journal or metadata block, orphans, unusual features); those
//! states, and a seeded sample of the rest (`--read-files`), go through
//! e2fsprogs: the state written onto a scratch image reset to the base,
//! `e2fsck -E journal_only`, `debugfs cat`. On a sampled state both run and
//! must agree byte for byte.
//!
//! The scratch lives in RAM (`/dev/shm`) when it has room: e2fsck's writes
//! and syncs then cost no disk I/O.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use blocklog::Extent;
use nbd::DiskView;

use super::build::StateView;
use crate::evidence::{CheckResult, FileReads, FsckResult, RecoveredFile};
use config::FileRead;

/// Where scratch images go when RAM has room: this many times the disk
/// size must be free there.
const SHM_DIR: &str = "/dev/shm";
const SHM_FREE_FACTOR: u64 = 4;
/// Bounds the copy buffer whatever the base's data ranges.
const COPY_CHUNK_BYTES: u64 = 1 << 20;

/// One worker's scratch image and the base it resets to.
pub struct HostChecker {
    _scratch_dir: tempfile::TempDir,
    image_path: PathBuf,
    image: File,
    base: File,
    /// The base's data ranges (`SEEK_DATA`/`SEEK_HOLE`), byte offsets: what a
    /// reset rewrites after punching the whole scratch.
    base_data: Vec<(u64, u64)>,
    /// The scratch image's size: the filesystem's part of the disk.
    size_bytes: u64,
    fsck: bool,
    data_files: u32,
    checks_done: u64,
}

impl HostChecker {
    /// `fallback_dir` holds the scratch when `/dev/shm` has no room.
    pub fn new(base_disk: &Path, fallback_dir: &Path, fsck: bool, data_files: u32) -> Result<HostChecker> {
        let base = File::open(base_disk).with_context(|| format!("cannot open {}", base_disk.display()))?;
        let disk_bytes = base.metadata()?.len();
        // The tools path writes only the filesystem's part of the disk:
        // the ack area past it (half a KiB per record) is no one's input.
        let size_bytes = ext4::filesystem_size_bytes(&FileReader(&base), disk_bytes)
            .unwrap_or(disk_bytes)
            .min(disk_bytes);
        let parent = match shm_free_bytes() {
            Some(free) if free >= size_bytes.saturating_mul(SHM_FREE_FACTOR) => PathBuf::from(SHM_DIR),
            _ => fallback_dir.to_path_buf(),
        };
        let scratch_dir = machine::lifetime::temp_dir("crashlab-host-", Some(&parent))
            .with_context(|| format!("cannot create a scratch directory in {}", parent.display()))?;
        let image_path = scratch_dir.path().join("state.img");
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&image_path)?;
        image.set_len(size_bytes)?;
        let base_data = data_ranges(&base, disk_bytes)?
            .into_iter()
            .filter(|&(start, _)| start < size_bytes)
            .map(|(start, end)| (start, end.min(size_bytes)))
            .collect();
        Ok(HostChecker {
            _scratch_dir: scratch_dir,
            image_path,
            image,
            base,
            base_data,
            size_bytes,
            fsck,
            data_files,
            checks_done: 0,
        })
    }

    /// Recovers `view`'s state and reads its data files. `read` says who
    /// reads: the in-memory reader (`Extents`, falling back to the tools
    /// where it declines), e2fsprogs on the scratch image (`Copy`), or both,
    /// compared (`Both`; a difference is an error, never resolved).
    pub fn check(&mut self, view: &StateView, read: FileRead) -> Result<CheckResult> {
        self.checks_done += 1;
        let names = &record::pattern::DATA_FILE_NAMES[..self.data_files as usize];
        // The read-only fsck needs a real image: the tools path then.
        let native = match (read, self.fsck) {
            (FileRead::Copy, _) | (_, true) => None,
            _ => match ext4::recover_and_read(&ViewReader(view), view.size_bytes(), names)
                .context("reading the state image")?
            {
                ext4::Outcome::Read(files) => Some(files),
                ext4::Outcome::Declined(_) => None,
            },
        };
        let Some(files) = native else {
            let mut result = self.check_with_tools(view.log_file(), view.extents())?;
            result.reads.by_e2fsprogs = 1;
            return Ok(result);
        };
        let files: Vec<RecoveredFile> = files
            .into_iter()
            .map(|f| match f {
                ext4::File::Missing => RecoveredFile::Missing,
                ext4::File::Bytes(bytes) => RecoveredFile::Read(bytes),
            })
            .collect();
        let mut reads = FileReads {
            by_ext4_reader: 1,
            ..FileReads::default()
        };
        if read == FileRead::Both {
            let tools = self.check_with_tools(view.log_file(), view.extents())?;
            if let Some(i) = (0..files.len()).find(|&i| !same_file(&files[i], &tools.files[i])) {
                bail!(
                    "host checker: crashlab's ext4 reader and e2fsprogs read {} differently ({} vs {}) after \
                     replaying the same journal: a crashlab bug, please report it with this trial's evidence; \
                     --read-files=copy uses e2fsprogs only",
                    names[i],
                    describe(&files[i]),
                    describe(&tools.files[i])
                );
            }
            reads.cross_checked = 1;
        }
        Ok(CheckResult {
            recovery_failure: None,
            mount_rc: 0,
            files,
            fsck: None,
            reads,
            checker: None,
            timed_out: false,
        })
    }

    pub fn checks_done(&self) -> u64 {
        self.checks_done
    }

    /// The e2fsprogs path: the state written onto the scratch image,
    /// e2fsck replays the journal, debugfs reads each file.
    fn check_with_tools(&mut self, log_file: &File, extents: &[Extent]) -> Result<CheckResult> {
        self.reset()?;
        let in_filesystem: Vec<Extent> = extents
            .iter()
            .filter(|e| e.device_offset_bytes < self.size_bytes)
            .map(|e| Extent {
                len_bytes: e.len_bytes.min(self.size_bytes - e.device_offset_bytes),
                ..*e
            })
            .collect();
        blocklog::apply_extents(log_file, &in_filesystem, &mut self.image).context("building the state image")?;
        let replay = Command::new("e2fsck")
            .args(["-y", "-E", "journal_only"])
            .arg(&self.image_path)
            .output()
            .context("cannot run e2fsck: `cargo xtask deps` installs it")?;
        // 0: nothing to do, 1: journal replayed. Anything else: the recovery failed.
        let replay_rc = replay.status.code().unwrap_or(-1);
        if replay_rc > 1 {
            return Ok(CheckResult {
                recovery_failure: None,
                mount_rc: replay_rc,
                files: (0..self.data_files).map(|_| RecoveredFile::Missing).collect(),
                fsck: None,
                reads: FileReads::default(),
                checker: None,
                timed_out: false,
            });
        }
        // Like the kernel path: the read-only fsck only when asked for.
        let fsck = match self.fsck {
            true => Some(
                Command::new("e2fsck")
                    .args(["-f", "-n"])
                    .arg(&self.image_path)
                    .output()?,
            ),
            false => None,
        };
        let files = (0..self.data_files as usize)
            .map(|i| debugfs_cat(&self.image_path, record::pattern::DATA_FILE_NAMES[i]))
            .collect::<Result<Vec<_>>>()?;
        Ok(CheckResult {
            recovery_failure: None,
            mount_rc: 0,
            files,
            fsck: fsck.map(|f| FsckResult {
                tool: "e2fsck".into(),
                rc: f.status.code().unwrap_or(-1),
            }),
            reads: FileReads::default(),
            checker: None,
            timed_out: false,
        })
    }

    /// Makes the scratch image equal to the base again, whatever the last
    /// state and e2fsck wrote: punch it whole, rewrite the base's data.
    fn reset(&mut self) -> Result<()> {
        nix::fcntl::fallocate(
            self.image.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            self.size_bytes as i64,
        )
        .context("cannot punch the scratch image")?;
        let mut buf = Vec::new();
        for &(start, end) in &self.base_data {
            let mut at = start;
            while at < end {
                let len = (end - at).min(COPY_CHUNK_BYTES) as usize;
                buf.resize(len, 0);
                self.base.read_exact_at(&mut buf, at)?;
                self.image
                    .write_all_at(&buf, at)
                    .with_context(|| format!("cannot write {} (disk full?)", self.image_path.display()))?;
                at += len as u64;
            }
        }
        Ok(())
    }
}

/// Free bytes in `/dev/shm`, if it is there.
fn shm_free_bytes() -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(SHM_DIR).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// The byte ranges of `file` that hold data, by `SEEK_DATA`/`SEEK_HOLE`.
/// A filesystem without them reports one range: the whole file.
fn data_ranges(file: &File, size_bytes: u64) -> Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut ranges = Vec::new();
    let mut at = 0i64;
    while (at as u64) < size_bytes {
        let start = match lseek(file.as_raw_fd(), at, Whence::SeekData) {
            Ok(start) => start,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e).context("SEEK_DATA on the base image"),
        };
        let end = lseek(file.as_raw_fd(), start, Whence::SeekHole).context("SEEK_HOLE on the base image")?;
        ranges.push((start as u64, (end as u64).min(size_bytes)));
        at = end;
    }
    Ok(ranges)
}

/// One file out of an ext4 image through a pipe, with `debugfs -c`
/// (catastrophic mode: bitmaps are not read; reading a file needs only its
/// inode and extents, and a torn bitmap write, allowed in the open epoch,
/// would otherwise make debugfs refuse the whole filesystem). debugfs
/// reports errors on stderr only, after its version banner.
fn debugfs_cat(image: &Path, name: &str) -> Result<RecoveredFile> {
    let out = Command::new("debugfs")
        .arg("-c")
        .arg("-R")
        .arg(format!("cat /{name}"))
        .arg(image)
        .output()
        .context("cannot run debugfs: `cargo xtask deps` installs it")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    Ok(match errors.as_slice() {
        [] => RecoveredFile::Read(out.stdout),
        [only] if only.contains("File not found by ext2_lookup") => RecoveredFile::Missing,
        _ => RecoveredFile::Unreadable {
            size_bytes: None,
            reason: format!("debugfs could not read it: {}", errors.join("; ")),
        },
    })
}

/// A plain file as the ext4 reader reads it.
struct FileReader<'a>(&'a File);

impl ext4::ReadAt for FileReader<'_> {
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset_bytes)
    }
}

/// A state view as the ext4 reader reads it.
struct ViewReader<'a>(&'a StateView);

impl ext4::ReadAt for ViewReader<'_> {
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        DiskView::read_at(self.0, offset_bytes, buf)
    }
}

/// Two readings of a file agree: both missing, or the same bytes. A file
/// e2fsprogs could not read never equals one the reader read.
fn same_file(a: &RecoveredFile, b: &RecoveredFile) -> bool {
    match (a, b) {
        (RecoveredFile::Missing, RecoveredFile::Missing) => true,
        (RecoveredFile::Read(x), RecoveredFile::Read(y)) => x == y,
        _ => false,
    }
}

fn describe(f: &RecoveredFile) -> String {
    match f {
        RecoveredFile::Missing => "missing".into(),
        RecoveredFile::Read(bytes) => format!("{} bytes, crc32c {:08x}", bytes.len(), crc32c::crc32c(bytes)),
        RecoveredFile::Unreadable { reason, .. } => format!("unreadable: {reason}"),
    }
}
