//! Walking a log: superblock, then entries until the end of valid data.
//!
//! End of log: the walk stops at the first of
//! - the end of the file exactly at an entry boundary;
//! - an all-zero entry header (QEMU never writes one: a flush has flags=1 and
//!   a write has nr_sectors>0, so zeros are space no entry reached — a hole
//!   left by a request in flight when QEMU died, or unwritten space);
//! - an entry cut off by the end of the file (header or data short), reported
//!   in [`ParsedLog::truncated`] and not returned as an entry.
//!
//! The superblock's `nr_entries` is never used to stop the walk: QEMU rewrites
//! it only on a flush or every `log-super-update-interval` (4096) entries.

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::error::LogError;
use crate::format::{
    log_sector_size_supported, EntryFlags, EntryHeader, Superblock, ENTRY_HEADER_SIZE_BYTES, SECTOR_SIZE_BYTES,
    SUPERBLOCK_SIZE_BYTES, WRITE_LOG_MAGIC, WRITE_LOG_VERSION,
};
use crate::source::LogSource;
use std::io;

/// Default cap on the number of entries; at ~56 bytes per `LogEntry` this
/// bounds the entry table to about 230 MiB.
pub const DEFAULT_MAX_ENTRIES: u64 = 1 << 22;

/// Chunk size for scanning past the end marker, so a long tail is never read
/// into memory at once.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// One logged request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct LogEntry {
    /// Position in the log, from 0.
    pub index: u64,
    /// First sector on the logged device, in 512-byte units (converted from
    /// the log's sector units).
    pub sector: u64,
    /// Length on the device in 512-byte units; 0 for a flush. For a discard
    /// this is the discarded range (no data is logged).
    pub nr_sectors: u64,
    pub flags: EntryFlags,
    /// Where the data starts in the log file.
    pub data_offset_bytes: u64,
    /// Bytes of data in the log file: `nr_sectors * 512` for writes, 0 for
    /// flushes, discards and marks.
    pub data_len_bytes: u64,
}

impl LogEntry {
    /// A write that puts data on the device (not a flush, discard or mark).
    /// Zero-writes count: QEMU logs them with zero data.
    pub fn is_data_write(&self) -> bool {
        self.data_len_bytes > 0
    }

    /// A write or a discard: an entry that changes what the device reads.
    /// A discarded range reads as zeros in a crash state that includes it.
    pub fn changes_data(&self) -> bool {
        self.is_data_write() || (self.flags.is_discard() && self.nr_sectors > 0)
    }

    pub fn device_offset_bytes(&self) -> u64 {
        self.sector * SECTOR_SIZE_BYTES
    }
}

/// Which part of the cut-off entry was short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum TruncatedPart {
    /// The header sector itself is incomplete.
    Header,
    /// The header is complete, its data is not.
    Data,
}

/// The log ends inside an entry: what a SIGKILL of QEMU mid-write leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Truncation {
    /// Index the cut-off entry would have had (= number of complete entries).
    pub entry_index: u64,
    pub header_offset_bytes: u64,
    pub part: TruncatedPart,
    /// Header sector plus data, as far as the header told (the header sector
    /// alone when the header itself is cut).
    pub needed_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLog {
    /// The log's sector size (QEMU's log-sector-size).
    pub sector_size_bytes: u32,
    /// Complete entries, in log order; `entries[i].index == i`.
    pub entries: Vec<LogEntry>,
    /// `Some` when the file ends inside an entry (not an error: see module doc).
    pub truncated: Option<Truncation>,
    /// The superblock's count, for information only: it lags the real count.
    pub superblock_nr_entries: u64,
    /// False when sector 0 is still zero: QEMU writes the superblock only at
    /// the first flush (or after 4096 entries).
    pub superblock_written: bool,
    /// First byte after the last complete entry.
    pub end_offset_bytes: u64,
    /// First non-zero byte after an all-zero end marker, if any: later entries
    /// of a request in flight at the kill, or stale entries of an earlier run
    /// (QEMU does not truncate an existing log file; always start from an
    /// empty file).
    pub stray_data_offset_bytes: Option<u64>,
    /// The device size the entries were checked against.
    pub device_size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// More complete entries than this is [`LogError::TooManyEntries`].
    pub max_entries: u64,
    /// Treat the superblock count as a promise: entries it counts must all be
    /// present. Right for the log of a QEMU that exited cleanly; wrong after a
    /// kill, where a request in flight may be counted yet unwritten.
    pub strict_superblock_count: bool,
    /// Sector size to assume while the superblock is still all zero.
    pub sector_size_if_no_superblock_bytes: u32,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_entries: DEFAULT_MAX_ENTRIES,
            strict_superblock_count: false,
            sector_size_if_no_superblock_bytes: 512,
        }
    }
}

/// Parses a log held in memory (read or mmapped by the caller) with default
/// options. `device_size_bytes` is the size of the disk the log recorded.
pub fn parse_log(bytes: &[u8], device_size_bytes: u64) -> Result<ParsedLog, LogError> {
    parse_log_from(bytes, device_size_bytes, &ParseOptions::default())
}

/// Parses a log from any [`LogSource`] (a byte slice, or a `File` without
/// reading it whole).
pub fn parse_log_from<L: LogSource + ?Sized>(
    source: &L,
    device_size_bytes: u64,
    options: &ParseOptions,
) -> Result<ParsedLog, LogError> {
    let file_size_bytes = source.size_bytes()?;
    let superblock = read_superblock(source, file_size_bytes, options)?;
    let walk = walk_entries(source, file_size_bytes, device_size_bytes, &superblock, options)?;
    let log = ParsedLog {
        sector_size_bytes: superblock.sector_size_bytes,
        entries: walk.entries,
        truncated: walk.truncated,
        superblock_nr_entries: superblock.nr_entries,
        superblock_written: superblock.written,
        end_offset_bytes: walk.end_offset_bytes,
        stray_data_offset_bytes: walk.stray_data_offset_bytes,
        device_size_bytes,
    };
    if options.strict_superblock_count {
        check_superblock_count(&log, file_size_bytes)?;
    }
    Ok(log)
}

/// The data of `entry`, borrowed from the log bytes.
///
/// Panics if `entry` does not come from a parse of these bytes.
pub fn entry_data<'a>(log_bytes: &'a [u8], entry: &LogEntry) -> &'a [u8] {
    let start = usize::try_from(entry.data_offset_bytes).expect("offset fits in memory");
    let len = usize::try_from(entry.data_len_bytes).expect("length fits in memory");
    &log_bytes[start..start + len]
}

/// Reads the data of `entry` from any source into `buf` (resized to fit).
pub fn read_entry_data<L: LogSource + ?Sized>(source: &L, entry: &LogEntry, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = usize::try_from(entry.data_len_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "entry too large for memory"))?;
    buf.resize(len, 0);
    source.read_exact_at(entry.data_offset_bytes, buf)
}

struct SuperblockInfo {
    sector_size_bytes: u32,
    nr_entries: u64,
    written: bool,
}

fn read_superblock<L: LogSource + ?Sized>(
    source: &L,
    file_size_bytes: u64,
    options: &ParseOptions,
) -> Result<SuperblockInfo, LogError> {
    let not_written = || -> Result<SuperblockInfo, LogError> {
        let size = options.sector_size_if_no_superblock_bytes;
        if !log_sector_size_supported(size) {
            return Err(LogError::UnsupportedSectorSize { found: size });
        }
        Ok(SuperblockInfo {
            sector_size_bytes: size,
            nr_entries: 0,
            written: false,
        })
    };
    if file_size_bytes < SUPERBLOCK_SIZE_BYTES as u64 {
        let mut head = vec![0u8; file_size_bytes as usize];
        source.read_exact_at(0, &mut head)?;
        if head.iter().all(|&b| b == 0) {
            return not_written();
        }
        return Err(LogError::SuperblockTooShort { file_size_bytes });
    }
    let mut raw = [0u8; SUPERBLOCK_SIZE_BYTES];
    source.read_exact_at(0, &mut raw)?;
    if raw.iter().all(|&b| b == 0) {
        return not_written();
    }
    let superblock = Superblock::decode(&raw);
    if superblock.magic != WRITE_LOG_MAGIC {
        return Err(LogError::BadMagic {
            found: superblock.magic,
        });
    }
    if superblock.version != WRITE_LOG_VERSION {
        return Err(LogError::UnsupportedVersion {
            found: superblock.version,
        });
    }
    if !log_sector_size_supported(superblock.sector_size_bytes) {
        return Err(LogError::UnsupportedSectorSize {
            found: superblock.sector_size_bytes,
        });
    }
    Ok(SuperblockInfo {
        sector_size_bytes: superblock.sector_size_bytes,
        nr_entries: superblock.nr_entries,
        written: true,
    })
}

struct Walk {
    entries: Vec<LogEntry>,
    truncated: Option<Truncation>,
    end_offset_bytes: u64,
    stray_data_offset_bytes: Option<u64>,
}

/// What the walk found at one header position.
enum Step {
    Entry(LogEntry),
    EndMarker,
    EndOfFile,
    Cut(Truncation),
}

fn walk_entries<L: LogSource + ?Sized>(
    source: &L,
    file_size_bytes: u64,
    device_size_bytes: u64,
    superblock: &SuperblockInfo,
    options: &ParseOptions,
) -> Result<Walk, LogError> {
    let sector_size_bytes = u64::from(superblock.sector_size_bytes);
    let mut header_sector = vec![0u8; superblock.sector_size_bytes as usize];
    let mut entries = Vec::new();
    let mut offset_bytes = sector_size_bytes; // the superblock owns sector 0
    loop {
        let index = entries.len() as u64;
        let at = Position {
            index,
            offset_bytes,
            file_size_bytes,
            device_size_bytes,
        };
        match step(source, &at, sector_size_bytes, &mut header_sector)? {
            Step::Entry(entry) => {
                if index >= options.max_entries {
                    return Err(LogError::TooManyEntries {
                        max_entries: options.max_entries,
                    });
                }
                offset_bytes = entry.data_offset_bytes + entry.data_len_bytes;
                entries.push(entry);
            }
            Step::EndOfFile => {
                return Ok(Walk {
                    entries,
                    truncated: None,
                    end_offset_bytes: offset_bytes,
                    stray_data_offset_bytes: None,
                });
            }
            Step::EndMarker => {
                let stray = first_nonzero_byte(source, offset_bytes, file_size_bytes)?;
                return Ok(Walk {
                    entries,
                    truncated: None,
                    end_offset_bytes: offset_bytes,
                    stray_data_offset_bytes: stray,
                });
            }
            Step::Cut(truncation) => {
                return Ok(Walk {
                    entries,
                    truncated: Some(truncation),
                    end_offset_bytes: offset_bytes,
                    stray_data_offset_bytes: None,
                });
            }
        }
    }
}

struct Position {
    index: u64,
    offset_bytes: u64,
    file_size_bytes: u64,
    device_size_bytes: u64,
}

/// Reads and classifies the header at `at.offset_bytes`.
fn step<L: LogSource + ?Sized>(
    source: &L,
    at: &Position,
    sector_size_bytes: u64,
    header_sector: &mut [u8],
) -> Result<Step, LogError> {
    let remaining_bytes = at.file_size_bytes.saturating_sub(at.offset_bytes);
    if remaining_bytes == 0 {
        return Ok(Step::EndOfFile);
    }
    let present = remaining_bytes.min(sector_size_bytes) as usize;
    let present_bytes = &mut header_sector[..present];
    source.read_exact_at(at.offset_bytes, present_bytes)?;
    let cut = |needed_bytes: u64, part: TruncatedPart| Truncation {
        entry_index: at.index,
        header_offset_bytes: at.offset_bytes,
        part,
        needed_bytes,
        available_bytes: remaining_bytes,
    };
    if present < ENTRY_HEADER_SIZE_BYTES {
        if present_bytes.iter().all(|&b| b == 0) {
            return Ok(Step::EndMarker);
        }
        return Ok(Step::Cut(cut(sector_size_bytes, TruncatedPart::Header)));
    }
    let raw: &[u8; ENTRY_HEADER_SIZE_BYTES] = present_bytes[..ENTRY_HEADER_SIZE_BYTES]
        .try_into()
        .expect("header length");
    let header = EntryHeader::decode(raw);
    if header.is_end_marker() {
        return Ok(Step::EndMarker);
    }
    let entry = check_header(
        &header,
        at,
        sector_size_bytes,
        &present_bytes[ENTRY_HEADER_SIZE_BYTES..],
    )?;
    let needed_bytes = sector_size_bytes.saturating_add(entry.data_len_bytes);
    if remaining_bytes < needed_bytes {
        let part = if (present as u64) < sector_size_bytes {
            TruncatedPart::Header
        } else {
            TruncatedPart::Data
        };
        return Ok(Step::Cut(cut(needed_bytes, part)));
    }
    Ok(Step::Entry(entry))
}

/// Validates a non-zero header and turns it into an entry (units converted
/// to 512-byte sectors). `padding` is the present part of the header sector
/// after the 32-byte struct.
fn check_header(
    header: &EntryHeader,
    at: &Position,
    sector_size_bytes: u64,
    padding: &[u8],
) -> Result<LogEntry, LogError> {
    let bad = |reason: String| LogError::BadEntry {
        index: at.index,
        offset_bytes: at.offset_bytes,
        reason,
    };
    let flags = header.flags;
    if flags.unknown_bits() != 0 {
        return Err(LogError::UnknownFlags {
            index: at.index,
            offset_bytes: at.offset_bytes,
            flags: flags.0,
        });
    }
    if flags.is_mark() {
        check_mark(header, sector_size_bytes).map_err(bad)?;
    } else {
        check_plain(header, padding).map_err(bad)?;
    }
    // QEMU logs `offset >> sectorbits`: log-sector units, not 512 bytes.
    let scale = sector_size_bytes / SECTOR_SIZE_BYTES;
    let past_device = || LogError::WritePastDeviceEnd {
        index: at.index,
        sector: header.sector.saturating_mul(scale),
        nr_sectors: header.nr_sectors.saturating_mul(scale),
        device_size_bytes: at.device_size_bytes,
    };
    let end_bytes = header
        .sector
        .checked_add(header.nr_sectors)
        .and_then(|end| end.checked_mul(sector_size_bytes))
        .ok_or_else(past_device)?;
    if header.nr_sectors > 0 && end_bytes > at.device_size_bytes {
        return Err(past_device());
    }
    let carries_data = !flags.is_discard() && !flags.is_mark();
    Ok(LogEntry {
        index: at.index,
        sector: header.sector * scale,
        nr_sectors: header.nr_sectors * scale,
        flags,
        data_offset_bytes: at.offset_bytes + sector_size_bytes,
        data_len_bytes: if carries_data {
            header.nr_sectors * sector_size_bytes
        } else {
            0
        },
    })
}

/// Checks for a flush, write or discard header.
fn check_plain(header: &EntryHeader, padding: &[u8]) -> Result<(), String> {
    if header.data_len != 0 {
        return Err(format!(
            "data_len is {} but only MARK entries carry inline data (QEMU always writes 0)",
            header.data_len
        ));
    }
    if header.flags.is_flush() && header.nr_sectors != 0 {
        return Err(format!(
            "flush entry with {} sectors of data (a kernel PREFLUSH write): QEMU never logs \
             one and this crate does not model it",
            header.nr_sectors
        ));
    }
    if header.flags.is_flush() && header.flags.is_discard() {
        return Err("entry is both a flush and a discard".to_string());
    }
    if padding.iter().any(|&b| b != 0) {
        return Err("header sector padding is not zero: the walk lost its place (wrong log \
                    sector size?) or the log is corrupt"
            .to_string());
    }
    Ok(())
}

/// Kernel marks: a string of `data_len` bytes inline in the header sector.
fn check_mark(header: &EntryHeader, sector_size_bytes: u64) -> Result<(), String> {
    if header.nr_sectors != 0 {
        return Err(format!("mark entry with nr_sectors {}", header.nr_sectors));
    }
    let room = sector_size_bytes - ENTRY_HEADER_SIZE_BYTES as u64;
    if header.data_len > room {
        return Err(format!(
            "mark data_len {} exceeds its header sector ({room} bytes)",
            header.data_len
        ));
    }
    Ok(())
}

fn first_nonzero_byte<L: LogSource + ?Sized>(
    source: &L,
    from_bytes: u64,
    file_size_bytes: u64,
) -> io::Result<Option<u64>> {
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES];
    let mut offset_bytes = from_bytes;
    while offset_bytes < file_size_bytes {
        let len = (file_size_bytes - offset_bytes).min(SCAN_CHUNK_BYTES as u64) as usize;
        source.read_exact_at(offset_bytes, &mut chunk[..len])?;
        if let Some(pos) = chunk[..len].iter().position(|&b| b != 0) {
            return Ok(Some(offset_bytes + pos as u64));
        }
        offset_bytes += len as u64;
    }
    Ok(None)
}

fn check_superblock_count(log: &ParsedLog, file_size_bytes: u64) -> Result<(), LogError> {
    let counted = log.superblock_nr_entries;
    if let Some(cut) = &log.truncated {
        if cut.entry_index < counted {
            return Err(LogError::EntryPastEof {
                index: cut.entry_index,
                offset_bytes: cut.header_offset_bytes,
                needed_bytes: cut.needed_bytes,
                file_size_bytes,
                superblock_nr_entries: counted,
            });
        }
    }
    let found = log.entries.len() as u64;
    if log.truncated.is_none() && found < counted {
        return Err(LogError::MissingEntries {
            found,
            superblock_nr_entries: counted,
        });
    }
    Ok(())
}
