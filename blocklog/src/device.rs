//! Planted device bugs: a disk that breaks the flush contract, modelled by
//! rewriting the log that states are planned from. They exist to measure how
//! sensitive the checks are (`cargo xtask sensitivity`): the states are the
//! ones the faulty device could leave, judged by the same rules as always.

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::parse::{LogEntry, ParsedLog};
use crate::rng::{mix64, SplitMix64};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Upper bound on N in "one flush in N".
pub const DEVICE_BUG_EVERY_MAX: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(into = "String", try_from = "String"))]
pub enum DeviceBug {
    /// Each flush that follows writes is ignored with probability 1/`every`
    /// (seeded): it is dropped from the log, so its epoch merges with the
    /// next one.
    DropFlush { every: u32 },
    /// At each flush that follows writes, with probability 1/`every`
    /// (seeded), the first write of the epoch it closes is not durable at
    /// that flush: the device acknowledged the flush before the write was
    /// persisted, and persists it as if it came after the next flush (or
    /// never, if a later write to the same sectors comes first).
    ReorderAcrossFlush { every: u32 },
}

impl DeviceBug {
    pub const ALL_NAMES: &'static str = "drop-flush:N, reorder-across-flush:N";
}

impl fmt::Display for DeviceBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DropFlush { every } => write!(f, "drop-flush:{every}"),
            Self::ReorderAcrossFlush { every } => write!(f, "reorder-across-flush:{every}"),
        }
    }
}

impl FromStr for DeviceBug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, every) = s.split_once(':').unwrap_or((s, ""));
        let every = match every.parse::<u32>() {
            Ok(n) if (1..=DEVICE_BUG_EVERY_MAX).contains(&n) => n,
            _ => {
                return Err(format!(
                    "device bug {s:?} needs one flush in N, with N from 1 to {DEVICE_BUG_EVERY_MAX}: \
                     e.g. drop-flush:4"
                ))
            }
        };
        match name {
            "drop-flush" => Ok(Self::DropFlush { every }),
            "reorder-across-flush" => Ok(Self::ReorderAcrossFlush { every }),
            _ => Err(format!("unknown device bug {s:?}: use one of {}", Self::ALL_NAMES)),
        }
    }
}

impl From<DeviceBug> for String {
    fn from(bug: DeviceBug) -> String {
        bug.to_string()
    }
}

impl TryFrom<String> for DeviceBug {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// What a device bug changed in a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceBugEffect {
    pub flushes_dropped: u64,
    pub writes_delayed: u64,
    /// Delayed writes dropped because a later write to the same sectors
    /// came before their new place: persisting them there would put old
    /// data over new, which no cache does.
    pub writes_superseded: u64,
}

/// The log as the faulty device would have made it durable. Which flushes
/// the bug hits is drawn from `seed`, independently per flush (a fixed
/// "every Nth" would hit the same flush of a filesystem's regular pattern
/// every time, e.g. only the first of ext4's two flushes per commit).
/// Entries keep their data; `index` is renumbered to the new order. Writes
/// wholly inside `ignored_sectors` (the ack area) are never the delayed
/// write and do not make a flush count.
pub fn apply_device_bug(
    log: &ParsedLog,
    bug: DeviceBug,
    ignored_sectors: &Range<u64>,
    seed: u64,
) -> (ParsedLog, DeviceBugEffect) {
    let mut rng = SplitMix64::new(mix64(seed ^ 0xdead_f1a5));
    let counts = |entry: &LogEntry| {
        entry.changes_data()
            && !(entry.sector >= ignored_sectors.start && entry.sector + entry.nr_sectors <= ignored_sectors.end)
    };
    let mut effect = DeviceBugEffect::default();
    let mut order: Vec<LogEntry> = Vec::with_capacity(log.entries.len());
    // Index in `order` where the current epoch starts.
    let mut epoch_start = 0usize;
    // A write held back until after the next flush, and where the entries
    // logged after it start in `order`.
    let mut delayed: Option<(LogEntry, usize)> = None;
    for entry in &log.entries {
        if !entry.flags.is_flush() {
            order.push(*entry);
            continue;
        }
        let epoch_writes = order[epoch_start..].iter().any(&counts);
        let every = match bug {
            DeviceBug::DropFlush { every } | DeviceBug::ReorderAcrossFlush { every } => every,
        };
        let chosen = epoch_writes && rng.below(u64::from(every)) == 0;
        match bug {
            DeviceBug::DropFlush { .. } if chosen => {
                effect.flushes_dropped += 1;
                continue; // the epoch stays open
            }
            DeviceBug::ReorderAcrossFlush { .. } if chosen => {
                let first = order[epoch_start..]
                    .iter()
                    .position(&counts)
                    .map(|i| i + epoch_start)
                    .expect("a chosen epoch has a write");
                let held = order.remove(first);
                order.push(*entry);
                if let Some(previous) = delayed.replace((held, first)) {
                    release(&mut order, previous, Some(&held), &mut effect);
                }
                effect.writes_delayed += 1;
            }
            _ => {
                order.push(*entry);
                if let Some(previous) = delayed.take() {
                    release(&mut order, previous, None, &mut effect);
                }
            }
        }
        epoch_start = order.len();
    }
    if let Some(previous) = delayed.take() {
        release(&mut order, previous, None, &mut effect); // never covered by a later flush
    }
    debug_assert_eq!(
        order.len() as u64 + effect.flushes_dropped + effect.writes_superseded,
        log.entries.len() as u64,
        "entries are moved or dropped, never lost"
    );
    (renumbered(log, order), effect)
}

/// Whether `b` changes data in a sector `a` covers.
fn overlaps(a: &LogEntry, b: &LogEntry) -> bool {
    b.changes_data() && a.sector < b.sector + b.nr_sectors && b.sector < a.sector + a.nr_sectors
}

/// Puts a held write back at the end of `order`, unless a write logged
/// after it (in `order` since then, or the one held next) covers it.
fn release(
    order: &mut Vec<LogEntry>,
    (held, since): (LogEntry, usize),
    held_next: Option<&LogEntry>,
    effect: &mut DeviceBugEffect,
) {
    let later = order[since..].iter().chain(held_next);
    if later.into_iter().any(|later| overlaps(&held, later)) {
        effect.writes_superseded += 1;
    } else {
        order.push(held);
    }
}

/// `log` with `order` as its entries, `index` renumbered to the new order.
fn renumbered(log: &ParsedLog, mut order: Vec<LogEntry>) -> ParsedLog {
    for (index, entry) in order.iter_mut().enumerate() {
        entry.index = index as u64;
    }
    ParsedLog {
        entries: order,
        ..log.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_log;
    use crate::testing::LogWriter;

    /// W0 F W2 W3 F F W6 F W8: sectors equal to the entry's index.
    fn log() -> ParsedLog {
        let mut w = LogWriter::new(512);
        w.write_fill(0, 1, 1).flush();
        w.write_fill(2, 1, 2).write_fill(3, 1, 3).flush().flush();
        w.write_fill(6, 1, 6).flush();
        w.write_fill(8, 1, 8);
        parse_log(w.bytes(), 64 * 512).unwrap()
    }

    fn shape(log: &ParsedLog) -> String {
        log.entries
            .iter()
            .map(|e| match e.flags.is_flush() {
                true => "F".to_string(),
                false => format!("W{}", e.sector),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn names_round_trip_and_bad_ones_say_why() {
        for name in ["drop-flush:4", "reorder-across-flush:1"] {
            assert_eq!(name.parse::<DeviceBug>().unwrap().to_string(), name);
        }
        assert!("drop-flush".parse::<DeviceBug>().unwrap_err().contains("N from 1"));
        assert!("drop-flush:0".parse::<DeviceBug>().is_err());
        assert!("lose-all:3"
            .parse::<DeviceBug>()
            .unwrap_err()
            .contains("reorder-across-flush"));
    }

    #[test]
    fn dropping_every_closing_flush_merges_epochs() {
        let log = log();
        assert_eq!(shape(&log), "W0 F W2 W3 F F W6 F W8");
        let (bad, effect) = apply_device_bug(&log, DeviceBug::DropFlush { every: 1 }, &(0..0), 7);
        // Once one is dropped its epoch stays open, so the flush-only one
        // after W3 closes writes too: every flush goes.
        assert_eq!(shape(&bad), "W0 W2 W3 W6 W8");
        assert_eq!(effect.flushes_dropped, 4);
        assert!(bad.entries.iter().enumerate().all(|(i, e)| e.index == i as u64));
    }

    #[test]
    fn reordering_holds_the_epochs_first_write_past_the_next_flush() {
        let (bad, effect) = apply_device_bug(&log(), DeviceBug::ReorderAcrossFlush { every: 1 }, &(0..0), 7);
        // W0 waits past the next flush, W2 past the flush-only one, and W6
        // (the last held) to the log's end.
        assert_eq!(shape(&bad), "F W3 F W0 F W2 F W8 W6");
        assert_eq!(effect.writes_delayed, 3);
    }

    #[test]
    fn a_delayed_write_never_lands_over_a_newer_one() {
        // W5(old) F W5(new) F: holding W5(old) past the second flush would
        // leave old data over new for good. It is dropped instead.
        let mut w = LogWriter::new(512);
        w.write_fill(5, 1, 1).flush().write_fill(5, 1, 2).flush();
        let log = parse_log(w.bytes(), 64 * 512).unwrap();
        let (bad, effect) = apply_device_bug(&log, DeviceBug::ReorderAcrossFlush { every: 1 }, &(0..0), 7);
        assert_eq!(effect.writes_superseded, 1, "{effect:?}");
        let last_w5 = bad.entries.iter().rev().find(|e| e.sector == 5).unwrap();
        assert_eq!(
            last_w5.data_offset_bytes, log.entries[2].data_offset_bytes,
            "the newer data wins"
        );
    }

    #[test]
    fn one_flush_in_n_is_drawn_per_flush_from_the_seed() {
        let mut w = LogWriter::new(512);
        for i in 0..4000u64 {
            w.write_fill(i % 60, 1, 1).flush();
        }
        let log = parse_log(w.bytes(), 64 * 512).unwrap();
        let bug = DeviceBug::DropFlush { every: 4 };
        let (a, effect) = apply_device_bug(&log, bug, &(0..0), 1);
        assert!((800..1200).contains(&effect.flushes_dropped), "{effect:?}");
        assert_eq!(a, apply_device_bug(&log, bug, &(0..0), 1).0, "same seed, same log");
        assert_ne!(a, apply_device_bug(&log, bug, &(0..0), 2).0);
        // Both parities are hit: not only every other flush.
        let kept: Vec<bool> = {
            let mut kept = Vec::new();
            let mut it = a.entries.iter().peekable();
            while let Some(e) = it.next() {
                if !e.flags.is_flush() {
                    kept.push(it.peek().is_some_and(|n| n.flags.is_flush()));
                }
            }
            kept
        };
        let dropped_at = |parity: usize| kept.iter().enumerate().filter(|(i, k)| i % 2 == parity && !**k).count();
        assert!(dropped_at(0) > 300 && dropped_at(1) > 300);
    }

    #[test]
    fn ignored_writes_do_not_count() {
        // W2 lies in the ignored sectors 2..4: the flush after it closes no
        // write that counts and stays; the one after W0 goes.
        let mut w = LogWriter::new(512);
        w.write_fill(2, 1, 2).flush().write_fill(0, 1, 1).flush();
        let log = parse_log(w.bytes(), 64 * 512).unwrap();
        let (bad, effect) = apply_device_bug(&log, DeviceBug::DropFlush { every: 1 }, &(2..4), 7);
        assert_eq!(shape(&bad), "W2 F W0");
        assert_eq!(effect.flushes_dropped, 1);
    }
}
