//! Errors from reading a log. Each message names the problem and the likely
//! cause or fix, because the reader is usually looking at a failed test run.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
#[non_exhaustive]
pub enum LogError {
    /// The file could not be read (open, stat or a read failed).
    Io {
        path: Option<PathBuf>,
        source: io::Error,
    },
    /// The file is non-empty but shorter than the superblock.
    SuperblockTooShort {
        file_size_bytes: u64,
    },
    BadMagic {
        found: u64,
    },
    UnsupportedVersion {
        found: u64,
    },
    UnsupportedSectorSize {
        found: u32,
    },
    /// An entry header has flag bits no writer defines.
    UnknownFlags {
        index: u64,
        offset_bytes: u64,
        flags: u64,
    },
    /// An entry header is self-contradictory (see `reason`).
    BadEntry {
        index: u64,
        offset_bytes: u64,
        reason: String,
    },
    /// A write or discard reaches past the end of the logged device.
    WritePastDeviceEnd {
        index: u64,
        /// In 512-byte sectors.
        sector: u64,
        /// In 512-byte sectors.
        nr_sectors: u64,
        device_size_bytes: u64,
    },
    /// Strict mode only: an entry the superblock counts as complete is cut
    /// off by the end of the file.
    EntryPastEof {
        index: u64,
        offset_bytes: u64,
        needed_bytes: u64,
        file_size_bytes: u64,
        superblock_nr_entries: u64,
    },
    /// Strict mode only: the log ends (all-zero header) before the number of
    /// entries the superblock records.
    MissingEntries {
        found: u64,
        superblock_nr_entries: u64,
    },
    TooManyEntries {
        max_entries: u64,
    },
}

impl fmt::Display for LogError {
    // Over 70 lines: one match arm per error variant, each message its own (problem, then likely cause or fix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io {
                path: Some(path),
                source,
            } => {
                write!(f, "cannot read write log {}: {source}", path.display())
            }
            LogError::Io { path: None, source } => write!(f, "cannot read write log: {source}"),
            LogError::SuperblockTooShort { file_size_bytes } => write!(
                f,
                "write log is {file_size_bytes} bytes, shorter than its superblock: \
                 not a blklogwrites log, or a partial copy of one"
            ),
            LogError::BadMagic { found } => write!(
                f,
                "write log superblock magic is {found:#x}, expected {:#x} (\"rhswfsj\"): \
                 the file is not a blklogwrites/dm-log-writes log (did you pass the disk \
                 image instead of the log, or reuse a log file that held something else?)",
                crate::format::WRITE_LOG_MAGIC
            ),
            LogError::UnsupportedVersion { found } => write!(
                f,
                "write log version is {found}, only version {} is supported",
                crate::format::WRITE_LOG_VERSION
            ),
            LogError::UnsupportedSectorSize { found } => write!(
                f,
                "write log sector size is {found} bytes; supported are powers of two from \
                 {} to {} bytes: set QEMU's log-sector-size to 512",
                crate::format::MIN_LOG_SECTOR_SIZE_BYTES,
                crate::format::MAX_LOG_SECTOR_SIZE_BYTES
            ),
            LogError::UnknownFlags {
                index,
                offset_bytes,
                flags,
            } => write!(
                f,
                "write log entry {index} at byte {offset_bytes} has unknown flag bits \
                 {flags:#x} (known: {:#x}): the log is corrupt, or the walk lost its place \
                 because the sector size is wrong",
                crate::format::EntryFlags::KNOWN
            ),
            LogError::BadEntry {
                index,
                offset_bytes,
                reason,
            } => write!(f, "write log entry {index} at byte {offset_bytes} is invalid: {reason}"),
            LogError::WritePastDeviceEnd {
                index,
                sector,
                nr_sectors,
                device_size_bytes,
            } => {
                write!(
                    f,
                    "write log entry {index} covers 512-byte sectors {sector}..{} but the \
                     device is only {device_size_bytes} bytes ({} sectors): pass the size of \
                     the disk the log was recorded on, or the log is corrupt",
                    sector.saturating_add(*nr_sectors),
                    device_size_bytes / 512
                )
            }
            LogError::EntryPastEof {
                index,
                offset_bytes,
                needed_bytes,
                file_size_bytes,
                superblock_nr_entries,
            } => write!(
                f,
                "write log entry {index} at byte {offset_bytes} needs {needed_bytes} bytes but \
                 the file ends at byte {file_size_bytes}, although the superblock counts \
                 {superblock_nr_entries} complete entries: the log file itself was truncated \
                 (partial copy?). If QEMU was killed, parse without strict_superblock_count"
            ),
            LogError::MissingEntries {
                found,
                superblock_nr_entries,
            } => write!(
                f,
                "write log holds {found} entries before its end marker but the superblock \
                 counts {superblock_nr_entries}: part of the log was zeroed or never written. \
                 If QEMU was killed, parse without strict_superblock_count"
            ),
            LogError::TooManyEntries { max_entries } => write!(
                f,
                "write log has more than {max_entries} entries, the configured maximum: \
                 shorten the workload or raise ParseOptions::max_entries"
            ),
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<io::Error> for LogError {
    fn from(source: io::Error) -> Self {
        LogError::Io { path: None, source }
    }
}

/// A [`crate::CrashState`] that does not fit the log it is used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidState {
    pub reason: String,
}

impl fmt::Display for InvalidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash state does not fit this log: {} (was it generated from another log?)",
            self.reason
        )
    }
}

impl std::error::Error for InvalidState {}
