//! Turning a crash state into bytes: which device ranges come from which log
//! bytes, and copying them onto a base image.

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

/// Device bytes `[device_offset_bytes, +len_bytes)` of the crash state equal
/// log bytes `[log_offset_bytes, +len_bytes)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Extent {
    pub device_offset_bytes: u64,
    pub len_bytes: u64,
    pub log_offset_bytes: u64,
}

/// Device ranges a crash state changes relative to the base image, each with
/// the log bytes of the write that wins there (the last one applied). Sorted
/// by device offset, non-overlapping, with neighbours merged when both the
/// device and log ranges are contiguous. Everything else is base image.
///
/// Panics if the state does not fit the log (see [`CrashState::validate`]).
pub fn overlay_extents(log: &ParsedLog, state: &CrashState) -> Vec<Extent> {
    state.validate(log).unwrap_or_else(|error| panic!("{error}"));
    let mut map = ExtentMap::default();
    for entry in log.entries[..state.prefix_entries as usize]
        .iter()
        .filter(|e| e.is_data_write())
    {
        map.insert(entry.sector, entry.sector + entry.nr_sectors, entry.data_offset_bytes);
    }
    for &index in &state.extra_writes {
        let entry = &log.entries[index as usize];
        let kept = state.torn.as_ref().filter(|torn| torn.entry == index);
        let runs = match kept {
            Some(torn) => sector_runs(&torn.sectors_kept),
            None => std::iter::once(0..entry.nr_sectors).collect(),
        };
        for run in runs {
            let log_offset_bytes = entry.data_offset_bytes + run.start * SECTOR_SIZE_BYTES;
            map.insert(entry.sector + run.start, entry.sector + run.end, log_offset_bytes);
        }
    }
    map.into_extents()
}

/// Writes the crash state onto `sink`, which must already hold the base
/// image. Writes only the final winner of each sector: the same bytes as
/// replaying the prefix, then the extra writes in log order (the torn one
/// limited to its kept sectors), with less I/O.
///
/// Panics if the state does not fit the log.
pub fn apply_state<L, S>(log_source: &L, log: &ParsedLog, state: &CrashState, sink: &mut S) -> io::Result<()>
where
    L: LogSource + ?Sized,
    S: BlockSink + ?Sized,
{
    let mut buf = Vec::new();
    for extent in overlay_extents(log, state) {
        let mut done_bytes = 0;
        while done_bytes < extent.len_bytes {
            let len = (extent.len_bytes - done_bytes).min(COPY_CHUNK_BYTES) as usize;
            buf.resize(len, 0);
            log_source.read_exact_at(extent.log_offset_bytes + done_bytes, &mut buf)?;
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

/// Non-overlapping sector ranges, later inserts winning:
/// start sector → (end sector, log offset of the start sector).
#[derive(Debug, Default)]
struct ExtentMap {
    ranges: BTreeMap<u64, (u64, u64)>,
}

impl ExtentMap {
    fn insert(&mut self, start: u64, end: u64, log_offset_bytes: u64) {
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
            self.ranges
                .insert(at, (end, log_offset_bytes + (at - start) * SECTOR_SIZE_BYTES));
        }
    }

    fn into_extents(self) -> Vec<Extent> {
        let mut extents: Vec<Extent> = Vec::with_capacity(self.ranges.len());
        for (start, (end, log_offset_bytes)) in self.ranges {
            let next = Extent {
                device_offset_bytes: start * SECTOR_SIZE_BYTES,
                len_bytes: (end - start) * SECTOR_SIZE_BYTES,
                log_offset_bytes,
            };
            match extents.last_mut() {
                Some(last) if continues(last, &next) => last.len_bytes += next.len_bytes,
                _ => extents.push(next),
            }
        }
        extents
    }
}

fn continues(last: &Extent, next: &Extent) -> bool {
    last.device_offset_bytes + last.len_bytes == next.device_offset_bytes
        && last.log_offset_bytes + last.len_bytes == next.log_offset_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_insert_splits_earlier_range() {
        let mut map = ExtentMap::default();
        map.insert(0, 8, 10_000);
        map.insert(2, 4, 50_000);
        let extents = map.into_extents();
        assert_eq!(
            extents,
            vec![
                Extent {
                    device_offset_bytes: 0,
                    len_bytes: 1024,
                    log_offset_bytes: 10_000
                },
                Extent {
                    device_offset_bytes: 1024,
                    len_bytes: 1024,
                    log_offset_bytes: 50_000
                },
                Extent {
                    device_offset_bytes: 2048,
                    len_bytes: 2048,
                    log_offset_bytes: 12_048
                },
            ]
        );
    }

    #[test]
    fn covering_insert_replaces_and_neighbours_merge() {
        let mut map = ExtentMap::default();
        map.insert(4, 6, 0);
        map.insert(6, 8, 1024); // contiguous in log and device: merges
        map.insert(10, 12, 9_000);
        map.insert(9, 13, 20_000); // swallows 10..12
        assert_eq!(
            map.into_extents(),
            vec![
                Extent {
                    device_offset_bytes: 2048,
                    len_bytes: 2048,
                    log_offset_bytes: 0
                },
                Extent {
                    device_offset_bytes: 9 * 512,
                    len_bytes: 4 * 512,
                    log_offset_bytes: 20_000
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
