//! Workload patterns: how records are written, synced and acknowledged,
//! and where they live. The usage patterns of msync the seeds describe,
//! each one a workload mode (`--pattern`) with its own verifier rules.
//!
//! Every pattern keeps the same record format and the same two promises:
//! a record is acknowledged only after the call that makes it durable
//! returned 0, and it names its slot. What differs is the geometry (files,
//! slots, writer processes) and the order of writes and syncs; the
//! [`Geometry`] of a pattern is a pure function of the parameters, so the
//! workload and the verifier agree on it.

use std::fmt;
use std::str::FromStr;

use crate::error::ParamsError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// One file, slots written in order (wrapping), each record (or batch)
    /// synced as `--mode` says.
    #[default]
    Records,
    /// A mapping of 1 MiB or more, records dirtied all over it, `MS_SYNC`
    /// over a page-aligned sub-range only (with a length that is not a page
    /// multiple half of the time: the kernel rounds it up). Only the records
    /// in the synced pages are acknowledged.
    PartialMsync,
    /// `MS_SYNC | MS_INVALIDATE` through the mapping for even records,
    /// `pwrite` + `fdatasync` through the descriptor for odd ones, each
    /// checked live through the other path (the unified page cache).
    Invalidate,
    /// A producer msyncs each record and publishes it; a consumer process
    /// maps the same file and reads every published record.
    Ipc,
    /// Write-ahead log: a log record is written and msynced before its data
    /// page changes and is msynced.
    Wal,
    /// The file grows by `ftruncate` while mapped (`mremap`); records go
    /// past the old end and are msynced.
    Growth,
    /// Two files, two mappings of the first one, and two writer processes
    /// on disjoint ranges at once.
    Several,
}

impl Pattern {
    pub const ALL: [Pattern; 7] = [
        Pattern::Records,
        Pattern::PartialMsync,
        Pattern::Invalidate,
        Pattern::Ipc,
        Pattern::Wal,
        Pattern::Growth,
        Pattern::Several,
    ];
    pub const ALL_NAMES: &'static str = "records, partial-msync, invalidate, ipc, wal, growth, several";

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Records => "records",
            Pattern::PartialMsync => "partial-msync",
            Pattern::Invalidate => "invalidate",
            Pattern::Ipc => "ipc",
            Pattern::Wal => "wal",
            Pattern::Growth => "growth",
            Pattern::Several => "several",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pattern {
    type Err = ParamsError;
    fn from_str(s: &str) -> Result<Self, ParamsError> {
        Pattern::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ParamsError(format!("unknown pattern {s:?}: use one of {}", Pattern::ALL_NAMES)))
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The data files, in order: file `i` of a run is `DATA_FILE_NAMES[i]` in
/// the test filesystem's root.
pub const DATA_FILE_NAMES: [&str; 2] = ["crashlab.dat", "crashlab-1.dat"];
/// The ipc pattern's control file: the producer's published record count,
/// read by the consumer. Not judged after a crash.
pub const IPC_CONTROL_FILE_NAME: &str = "crashlab-ipc.ctl";
/// Smallest mapping the partial-msync pattern syncs part of.
pub const PARTIAL_MSYNC_MIN_FILE_BYTES: u64 = 1 << 20;
/// Page size the patterns assume (x86-64); the workload checks it.
pub const PAGE_SIZE_BYTES: u64 = 4096;

/// Where a pattern's records live. Slots are numbered globally: file `f`
/// holds slots `[f * slots_per_file, (f + 1) * slots_per_file)`, slot `j`
/// of a file at byte `j * record_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub files: u32,
    pub slots_per_file: u64,
    /// Writer processes; writer `w` begins the records with `seq % writers
    /// == w`, each in its own slots.
    pub writers: u32,
    /// Wal: slots `[0, log_slots)` of file 0 are the log ring, the rest
    /// the data pages. 0 for other patterns.
    pub log_slots: u64,
    /// The size every data file is created with and synced at before READY.
    pub initial_size_bytes: u64,
    /// Growth: the file grows in steps of this size up to
    /// `file_size_bytes`. 0 for other patterns.
    pub growth_step_bytes: u64,
}

impl Geometry {
    /// A pattern's geometry, from the parameters it depends on
    /// (`WorkloadParams::geometry`).
    pub fn of(pattern: Pattern, record_size_bytes: u32, file_size_bytes: u64) -> Geometry {
        let record = u64::from(record_size_bytes);
        let slots = file_size_bytes / record;
        let base = Geometry {
            files: 1,
            slots_per_file: slots,
            writers: 1,
            log_slots: 0,
            initial_size_bytes: file_size_bytes,
            growth_step_bytes: 0,
        };
        match pattern {
            Pattern::Records | Pattern::PartialMsync | Pattern::Invalidate | Pattern::Ipc => base,
            Pattern::Wal => Geometry {
                log_slots: (slots / 4).clamp(1, 64),
                ..base
            },
            Pattern::Growth => {
                // Eight steps, each a whole number of pages and records.
                let unit = record.max(PAGE_SIZE_BYTES);
                let step = (file_size_bytes / 8).div_ceil(unit).max(1) * unit;
                let step = step.min(file_size_bytes);
                Geometry {
                    initial_size_bytes: step,
                    growth_step_bytes: step,
                    ..base
                }
            }
            Pattern::Several => Geometry {
                files: 2,
                writers: 2,
                ..base
            },
        }
    }

    pub fn total_slots(&self) -> u64 {
        self.slots_per_file * u64::from(self.files)
    }

    /// (file, byte offset in it) of a global slot.
    pub fn locate(&self, slot: u64, record_size_bytes: u32) -> (u32, u64) {
        let file = (slot / self.slots_per_file) as u32;
        (file, (slot % self.slots_per_file) * u64::from(record_size_bytes))
    }

    pub fn writer_of(&self, seq: u64) -> u32 {
        (seq % u64::from(self.writers)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_valid() {
        for p in Pattern::ALL {
            assert_eq!(p.name().parse::<Pattern>().unwrap(), p);
        }
        assert!("mmap".parse::<Pattern>().unwrap_err().0.contains("partial-msync"));
    }

    #[test]
    fn geometries() {
        let g = Geometry::of(Pattern::Several, 4096, 64 << 10);
        assert_eq!((g.files, g.slots_per_file, g.writers), (2, 16, 2));
        assert_eq!(g.locate(17, 4096), (1, 4096));
        assert_eq!(g.writer_of(5), 1);
        let g = Geometry::of(Pattern::Wal, 4096, 64 << 10);
        assert_eq!(g.log_slots, 4);
        let g = Geometry::of(Pattern::Growth, 4096, 1 << 20);
        assert_eq!((g.initial_size_bytes, g.growth_step_bytes), (128 << 10, 128 << 10));
        let g = Geometry::of(Pattern::Records, 4096, 1 << 20);
        assert_eq!((g.files, g.writers, g.initial_size_bytes), (1, 1, 1 << 20));
    }
}
