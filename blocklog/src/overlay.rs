//! Turning a crash state into bytes: which device ranges come from which log
//! bytes (or read as zeros, for discards), and copying them onto a base
//! image.

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::format::SECTOR_SIZE_BYTES;
use crate::parse::ParsedLog;
use crate::source::{BlockSink, LogSource};
use crate::state::CrashState;
use std::collections::BTreeMap;
use std::io;

/// Copy buffer for [`apply_state`]: bounds memory whatever the write sizes.
const COPY_CHUNK_BYTES: u64 = 1 << 20;

/// Where an extent's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum ExtentSource {
    /// Log bytes from this offset on (a logged write's data).
    Log { offset_bytes: u64 },
    /// Zeros: a discarded range.
    Zeros,
}

/// Device bytes `[device_offset_bytes, +len_bytes)` of the crash state come
/// from `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Extent {
    pub device_offset_bytes: u64,
    pub len_bytes: u64,
    pub source: ExtentSource,
}

impl Extent {
    /// The log offset of the extent's first byte, `None` for zeros.
    pub fn log_offset_bytes(&self) -> Option<u64> {
        match self.source {
            ExtentSource::Log { offset_bytes } => Some(offset_bytes),
            ExtentSource::Zeros => None,
        }
    }
}

/// Device ranges a crash state changes relative to the base image, each with
/// the bytes of the entry that wins there (the last one applied): a write's
/// log data, or zeros for a discard. Sorted by device offset,
/// non-overlapping, with neighbours merged when both the device and source
/// ranges are contiguous. Everything else is base image.
///
/// Walks the whole prefix: the reference [`PrefixIndex::extents`] is
/// checked against. Panics if the state does not fit the log (see
/// [`CrashState::validate`]).
pub fn overlay_extents(log: &ParsedLog, state: &CrashState) -> Vec<Extent> {
    state.validate(log).unwrap_or_else(|error| panic!("{error}"));
    let mut map = ExtentMap::default();
    map.insert_entries(log, 0..state.prefix_entries);
    map.insert_open_epoch_part(log, state);
    map.into_extents()
}

/// Entries between two checkpoints of a [`PrefixIndex`], at least.
pub const CHECKPOINT_STRIDE_MIN_ENTRIES: u64 = 1024;
/// Checkpoints a [`PrefixIndex`] keeps, at most: its memory is this many
/// extent maps, each bounded by the device's size, whatever the log's length.
pub const CHECKPOINTS_MAX: u64 = 64;

/// The extent maps of the log's prefixes at evenly spaced checkpoints, so a
/// state's extents cost one checkpoint's copy plus the entries since it
/// (at most a stride), not the whole prefix: the cost per state stays flat
/// as logs grow. Built once per log, shared read-only by the check workers.
#[derive(Debug)]
pub struct PrefixIndex {
    nr_entries: u64,
    stride_entries: u64,
    /// `checkpoints[k]`: the map of the first `k * stride_entries` entries.
    checkpoints: Vec<ExtentMap>,
}

impl PrefixIndex {
    pub fn new(log: &ParsedLog) -> PrefixIndex {
        let nr_entries = log.entries.len() as u64;
        let stride_entries = nr_entries.div_ceil(CHECKPOINTS_MAX).max(CHECKPOINT_STRIDE_MIN_ENTRIES);
        let mut checkpoints = vec![ExtentMap::default()];
        let mut map = ExtentMap::default();
        let mut at = 0;
        while at + stride_entries <= nr_entries {
            map.insert_entries(log, at..at + stride_entries);
            at += stride_entries;
            checkpoints.push(map.clone());
        }
        assert!(checkpoints.len() as u64 <= CHECKPOINTS_MAX + 1);
        PrefixIndex {
            nr_entries,
            stride_entries,
            checkpoints,
        }
    }

    pub fn checkpoint_count(&self) -> usize {
        self.checkpoints.len()
    }

    /// The same extents as [`overlay_extents`], from the nearest checkpoint.
    /// Panics if the state does not fit the log or the log is not the one
    /// the index was built from (by length).
    pub fn extents(&self, log: &ParsedLog, state: &CrashState) -> Vec<Extent> {
        assert_eq!(
            log.entries.len() as u64,
            self.nr_entries,
            "the index belongs to another log"
        );
        state.validate(log).unwrap_or_else(|error| panic!("{error}"));
        let k = (state.prefix_entries / self.stride_entries) as usize;
        let mut map = self.checkpoints[k].clone();
        map.insert_entries(log, k as u64 * self.stride_entries..state.prefix_entries);
        map.insert_open_epoch_part(log, state);
        map.into_extents()
    }
}

/// Writes the crash state onto `sink`, which must already hold the base
/// image. Writes only the final winner of each sector: the same bytes as
/// replaying the prefix, then the extra writes in log order (the torn one
/// limited to its kept sectors, a discard as zeros), with less I/O.
///
/// Panics if the state does not fit the log.
pub fn apply_state<L, S>(log_source: &L, log: &ParsedLog, state: &CrashState, sink: &mut S) -> io::Result<()>
where
    L: LogSource + ?Sized,
    S: BlockSink + ?Sized,
{
    apply_extents(log_source, &overlay_extents(log, state), sink)
}

/// Writes `extents` (from [`overlay_extents`] or [`PrefixIndex::extents`])
/// onto `sink`, reading their bytes from the log.
pub fn apply_extents<L, S>(log_source: &L, extents: &[Extent], sink: &mut S) -> io::Result<()>
where
    L: LogSource + ?Sized,
    S: BlockSink + ?Sized,
{
    let mut buf = Vec::new();
    for extent in extents {
        let mut done_bytes = 0;
        while done_bytes < extent.len_bytes {
            let len = (extent.len_bytes - done_bytes).min(COPY_CHUNK_BYTES) as usize;
            buf.resize(len, 0);
            match extent.source {
                ExtentSource::Log { offset_bytes } => log_source.read_exact_at(offset_bytes + done_bytes, &mut buf)?,
                ExtentSource::Zeros => buf.fill(0),
            }
            sink.write_at(extent.device_offset_bytes + done_bytes, &buf)?;
            done_bytes += len as u64;
        }
    }
    Ok(())
}

/// Maximal runs of consecutive values in a strictly increasing list.
fn sector_runs(sectors: &[u64]) -> Vec<std::ops::Range<u64>> {
    let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
    for &sector in sectors {
        match runs.last_mut() {
            Some(run) if run.end == sector => run.end += 1,
            _ => runs.push(sector..sector + 1),
        }
    }
    runs
}

/// Non-overlapping sector ranges, later inserts winning: start sector →
/// (end sector, log offset of the start sector or `None` for zeros).
#[derive(Debug, Default, Clone)]
struct ExtentMap {
    ranges: BTreeMap<u64, (u64, Option<u64>)>,
}

impl ExtentMap {
    /// Applies the data-changing entries `range` in log order.
    fn insert_entries(&mut self, log: &ParsedLog, range: std::ops::Range<u64>) {
        for entry in log.entries[range.start as usize..range.end as usize]
            .iter()
            .filter(|e| e.changes_data())
        {
            self.insert(entry.sector, entry.sector + entry.nr_sectors, source_of(entry, 0));
        }
    }

    /// Applies the state's writes from its open epoch (the torn one limited
    /// to its kept sectors) in log order.
    fn insert_open_epoch_part(&mut self, log: &ParsedLog, state: &CrashState) {
        for &index in &state.extra_writes {
            let entry = &log.entries[index as usize];
            let kept = state.torn.as_ref().filter(|torn| torn.entry == index);
            let runs = match kept {
                Some(torn) => sector_runs(&torn.sectors_kept),
                None => std::iter::once(0..entry.nr_sectors).collect(),
            };
            for run in runs {
                self.insert(
                    entry.sector + run.start,
                    entry.sector + run.end,
                    source_of(entry, run.start),
                );
            }
        }
    }

    fn insert(&mut self, start: u64, end: u64, log_offset_bytes: Option<u64>) {
        debug_assert!(start < end, "empty range {start}..{end}");
        self.split_at(start);
        self.split_at(end);
        let covered: Vec<u64> = self.ranges.range(start..end).map(|(&s, _)| s).collect();
        for s in covered {
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, (end, log_offset_bytes));
    }

    /// Makes `at` a range boundary if a range straddles it.
    fn split_at(&mut self, at: u64) {
        let Some((&start, &(end, log_offset_bytes))) = self.ranges.range(..at).next_back() else {
            return;
        };
        if end > at {
            self.ranges.insert(start, (at, log_offset_bytes));
            let moved = log_offset_bytes.map(|o| o + (at - start) * SECTOR_SIZE_BYTES);
            self.ranges.insert(at, (end, moved));
        }
    }

    fn into_extents(self) -> Vec<Extent> {
        let mut extents: Vec<Extent> = Vec::with_capacity(self.ranges.len());
        for (start, (end, log_offset_bytes)) in self.ranges {
            let next = Extent {
                device_offset_bytes: start * SECTOR_SIZE_BYTES,
                len_bytes: (end - start) * SECTOR_SIZE_BYTES,
                source: match log_offset_bytes {
                    Some(offset_bytes) => ExtentSource::Log { offset_bytes },
                    None => ExtentSource::Zeros,
                },
            };
            match extents.last_mut() {
                Some(last) if continues(last, &next) => last.len_bytes += next.len_bytes,
                _ => extents.push(next),
            }
        }
        extents
    }
}

/// Where the bytes of `entry`'s sector `first_sector` come from: its log
/// data, or zeros for a discard.
fn source_of(entry: &crate::parse::LogEntry, first_sector: u64) -> Option<u64> {
    match entry.is_data_write() {
        true => Some(entry.data_offset_bytes + first_sector * SECTOR_SIZE_BYTES),
        false => None,
    }
}

fn continues(last: &Extent, next: &Extent) -> bool {
    let device = last.device_offset_bytes + last.len_bytes == next.device_offset_bytes;
    let source = match (last.source, next.source) {
        (ExtentSource::Log { offset_bytes: a }, ExtentSource::Log { offset_bytes: b }) => a + last.len_bytes == b,
        (ExtentSource::Zeros, ExtentSource::Zeros) => true,
        _ => false,
    };
    device && source
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_insert_splits_earlier_range() {
        let mut map = ExtentMap::default();
        map.insert(0, 8, Some(10_000));
        map.insert(2, 4, Some(50_000));
        let extents = map.into_extents();
        assert_eq!(
            extents,
            vec![
                Extent {
                    device_offset_bytes: 0,
                    len_bytes: 1024,
                    source: ExtentSource::Log { offset_bytes: 10_000 }
                },
                Extent {
                    device_offset_bytes: 1024,
                    len_bytes: 1024,
                    source: ExtentSource::Log { offset_bytes: 50_000 }
                },
                Extent {
                    device_offset_bytes: 2048,
                    len_bytes: 2048,
                    source: ExtentSource::Log { offset_bytes: 12_048 }
                },
            ]
        );
    }

    #[test]
    fn covering_insert_replaces_and_neighbours_merge() {
        let mut map = ExtentMap::default();
        map.insert(4, 6, Some(0));
        map.insert(6, 8, Some(1024)); // contiguous in log and device: merges
        map.insert(10, 12, Some(9_000));
        map.insert(9, 13, Some(20_000)); // swallows 10..12
        assert_eq!(
            map.into_extents(),
            vec![
                Extent {
                    device_offset_bytes: 2048,
                    len_bytes: 2048,
                    source: ExtentSource::Log { offset_bytes: 0 }
                },
                Extent {
                    device_offset_bytes: 9 * 512,
                    len_bytes: 4 * 512,
                    source: ExtentSource::Log { offset_bytes: 20_000 }
                },
            ]
        );
    }

    #[test]
    fn zeros_split_and_merge_like_log_ranges() {
        let mut map = ExtentMap::default();
        map.insert(0, 8, Some(4096));
        map.insert(2, 4, None); // a discard in the middle
        map.insert(4, 6, None); // contiguous zeros merge
        assert_eq!(
            map.into_extents(),
            vec![
                Extent {
                    device_offset_bytes: 0,
                    len_bytes: 1024,
                    source: ExtentSource::Log { offset_bytes: 4096 }
                },
                Extent {
                    device_offset_bytes: 1024,
                    len_bytes: 2048,
                    source: ExtentSource::Zeros
                },
                Extent {
                    device_offset_bytes: 3072,
                    len_bytes: 1024,
                    source: ExtentSource::Log {
                        offset_bytes: 4096 + 3072
                    }
                },
            ]
        );
    }

    #[test]
    fn runs_group_consecutive_sectors() {
        assert_eq!(sector_runs(&[0, 1, 3, 5, 6, 7]), vec![0..2, 3..4, 5..8]);
        assert!(sector_runs(&[]).is_empty());
    }
}
