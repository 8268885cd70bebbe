//! Crash states: which logged writes a crash may have persisted.
//! The model itself is described in the crate documentation.

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::error::InvalidState;
use crate::parse::{LogEntry, ParsedLog};
use crate::rng::{mix64, SplitMix64};
use std::collections::{HashMap, HashSet};
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum StateKind {
    /// Exactly the entries `[0, prefix_entries)`.
    Prefix,
    /// A prefix plus some writes of its open epoch.
    Subset,
    /// A subset in which one write persisted only some of its sectors.
    Torn,
}

/// One write of the subset that persisted only some 512-byte sectors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct TornWrite {
    /// Log index of the write; it is also listed in `extra_writes`.
    pub entry: u64,
    /// Kept sectors, relative to the write's first sector, strictly
    /// increasing, non-empty and fewer than the write's sectors.
    pub sectors_kept: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct CrashState {
    /// Entries `[0, prefix_entries)` are fully applied.
    pub prefix_entries: u64,
    /// Log indices of further data writes from the open epoch (the entries
    /// from `prefix_entries` up to the next flush), strictly increasing.
    pub extra_writes: Vec<u64>,
    pub torn: Option<TornWrite>,
    pub kind: StateKind,
}

impl CrashState {
    /// The state with exactly the first `prefix_entries` entries applied.
    pub fn prefix(prefix_entries: u64) -> Self {
        CrashState {
            prefix_entries,
            extra_writes: Vec::new(),
            torn: None,
            kind: StateKind::Prefix,
        }
    }

    /// Builds a state, deriving `kind` from what is present.
    pub fn new(prefix_entries: u64, extra_writes: Vec<u64>, torn: Option<TornWrite>) -> Self {
        let kind = match (&torn, extra_writes.is_empty()) {
            (Some(_), _) => StateKind::Torn,
            (None, false) => StateKind::Subset,
            (None, true) => StateKind::Prefix,
        };
        CrashState {
            prefix_entries,
            extra_writes,
            torn,
            kind,
        }
    }

    /// Checks that the state can arise from `log` under the model.
    pub fn validate(&self, log: &ParsedLog) -> Result<(), InvalidState> {
        let fail = |reason: String| Err(InvalidState { reason });
        let nr_entries = log.entries.len() as u64;
        if self.prefix_entries > nr_entries {
            return fail(format!(
                "prefix of {} entries but the log has {nr_entries}",
                self.prefix_entries
            ));
        }
        let epoch = open_epoch(log, self.prefix_entries);
        if !self.extra_writes.windows(2).all(|pair| pair[0] < pair[1]) {
            return fail("extra_writes are not strictly increasing".to_string());
        }
        for &index in &self.extra_writes {
            if !epoch.contains(&index) {
                return fail(format!("write {index} is outside the open epoch {epoch:?}"));
            }
            if !log.entries[index as usize].is_data_write() {
                return fail(format!("entry {index} is not a data write"));
            }
        }
        if let Some(torn) = &self.torn {
            self.validate_torn(log, torn).or_else(fail)?;
        }
        let expected = CrashState::new(0, self.extra_writes.clone(), self.torn.clone()).kind;
        if self.kind != expected {
            return fail(format!("kind is {:?} but its contents make it {expected:?}", self.kind));
        }
        Ok(())
    }

    fn validate_torn(&self, log: &ParsedLog, torn: &TornWrite) -> Result<(), String> {
        if self.extra_writes.binary_search(&torn.entry).is_err() {
            return Err(format!("torn write {} is not one of extra_writes", torn.entry));
        }
        let nr_sectors = log.entries[torn.entry as usize].nr_sectors;
        let kept = &torn.sectors_kept;
        let increasing = kept.windows(2).all(|pair| pair[0] < pair[1]);
        let in_range = kept.last().is_some_and(|&last| last < nr_sectors);
        if !increasing || !in_range || kept.len() as u64 >= nr_sectors {
            return Err(format!(
                "torn write {} keeps sectors {kept:?} of {nr_sectors}: need a non-empty, \
                 strictly increasing, proper subset",
                torn.entry
            ));
        }
        Ok(())
    }
}

/// Entries that may persist on top of prefix `prefix_entries`: from it up to
/// (not including) the next flush entry, or the end of the log.
pub fn open_epoch(log: &ParsedLog, prefix_entries: u64) -> Range<u64> {
    let end = log.entries.len() as u64;
    open_epoch_up_to(log, prefix_entries, end)
}

fn open_epoch_up_to(log: &ParsedLog, prefix_entries: u64, end_entries: u64) -> Range<u64> {
    let next_flush = (prefix_entries..end_entries)
        .find(|&index| log.entries[index as usize].flags.is_flush())
        .unwrap_or(end_entries);
    prefix_entries..next_flush
}

/// One state per flush (everything up to and including it), in log order,
/// plus the final state (all entries) when entries follow the last flush.
/// The empty state (prefix 0, the base image itself) is not included, and
/// consecutive flushes with no write between them give equal contents.
pub fn prefix_states(log: &ParsedLog) -> Vec<CrashState> {
    prefix_states_up_to(log, log.entries.len() as u64)
}

/// [`prefix_states`] for a crash at log position `end_entries`: only entries
/// `[0, end_entries)` happened.
pub fn prefix_states_up_to(log: &ParsedLog, end_entries: u64) -> Vec<CrashState> {
    assert_end_in_log(log, end_entries);
    let mut states: Vec<CrashState> = log.entries[..end_entries as usize]
        .iter()
        .filter(|entry| entry.flags.is_flush())
        .map(|flush| CrashState::prefix(flush.index + 1))
        .collect();
    let last_boundary = states.last().map_or(0, |state| state.prefix_entries);
    if end_entries > last_boundary {
        states.push(CrashState::prefix(end_entries));
    }
    states
}

/// Up to `budget` distinct random states drawn from every epoch of the log;
/// see [`random_states_up_to`].
pub fn random_states(log: &ParsedLog, seed: u64, budget: usize, torn: bool) -> Vec<CrashState> {
    random_states_up_to(log, log.entries.len() as u64, seed, budget, torn)
}

/// Up to `budget` distinct random states for a crash at log position
/// `end_entries`. Each draw picks an epoch uniformly, a keep-probability `p`
/// uniformly in [0, 1), keeps each write of the epoch with probability `p`,
/// and (when `torn`) tears one kept multi-sector write half of the time.
/// States with the same [`StateKey`] as an earlier one are skipped. Stops
/// after `budget` states or `16 * budget + 64` draws, so a small state space
/// returns fewer states. Deterministic for a given seed on every platform.
pub fn random_states_up_to(log: &ParsedLog, end_entries: u64, seed: u64, budget: usize, torn: bool) -> Vec<CrashState> {
    assert_end_in_log(log, end_entries);
    let epochs = build_epochs(log, end_entries);
    let mut rng = SplitMix64::new(seed);
    let mut seen = HashSet::new();
    let mut states = Vec::new();
    let max_draws = budget.saturating_mul(16).saturating_add(64);
    for _ in 0..max_draws {
        if states.len() >= budget {
            break;
        }
        let epoch = &epochs[rng.below(epochs.len() as u64) as usize];
        let state = draw_state(&mut rng, log, epoch, torn);
        if seen.insert(epoch.key_of(log, &state)) {
            states.push(state);
        }
    }
    states
}

fn assert_end_in_log(log: &ParsedLog, end_entries: u64) {
    assert!(
        end_entries <= log.entries.len() as u64,
        "crash point {end_entries} is past the log's {} entries",
        log.entries.len()
    );
}

fn draw_state(rng: &mut SplitMix64, log: &ParsedLog, epoch: &Epoch, torn: bool) -> CrashState {
    let keep_probability = rng.unit_f64();
    let extra_writes: Vec<u64> = epoch
        .writes
        .iter()
        .copied()
        .filter(|_| rng.unit_f64() < keep_probability)
        .collect();
    let torn_write = if torn && rng.coin() {
        draw_torn(rng, log, &extra_writes)
    } else {
        None
    };
    CrashState::new(epoch.prefix_entries, extra_writes, torn_write)
}

/// Tears one kept write of at least two sectors: half of the time a prefix
/// of its sectors (a write cut off in order), otherwise any proper subset
/// (sectors reaching the media out of order).
fn draw_torn(rng: &mut SplitMix64, log: &ParsedLog, extra_writes: &[u64]) -> Option<TornWrite> {
    let candidates: Vec<u64> = extra_writes
        .iter()
        .copied()
        .filter(|&index| log.entries[index as usize].nr_sectors >= 2)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let entry = candidates[rng.below(candidates.len() as u64) as usize];
    let nr_sectors = log.entries[entry as usize].nr_sectors;
    let sectors_kept = if rng.coin() {
        (0..1 + rng.below(nr_sectors - 1)).collect()
    } else {
        random_proper_subset(rng, nr_sectors)
    };
    Some(TornWrite { entry, sectors_kept })
}

fn random_proper_subset(rng: &mut SplitMix64, nr_sectors: u64) -> Vec<u64> {
    let mut kept: Vec<u64> = (0..nr_sectors).filter(|_| rng.coin()).collect();
    if kept.is_empty() {
        kept.push(rng.below(nr_sectors));
    } else if kept.len() as u64 == nr_sectors {
        kept.remove(rng.below(nr_sectors) as usize);
    }
    kept
}

/// Identity of a state's persisted contents: an order-independent 128-bit
/// hash over (sector, index of the last entry that wrote it) for every
/// written 512-byte sector. Equal contents give equal keys; different
/// contents collide with probability about 2^-128 per pair. Two writes of
/// identical bytes still count as different contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct StateKey(pub u128);

impl StateKey {
    fn add(self, sector: u64, winner: u64) -> Self {
        StateKey(self.0.wrapping_add(contribution(sector, winner)))
    }
    fn sub(self, sector: u64, winner: u64) -> Self {
        StateKey(self.0.wrapping_sub(contribution(sector, winner)))
    }
}

fn contribution(sector: u64, winner: u64) -> u128 {
    let low = mix64(sector ^ mix64(winner.wrapping_add(0x243f_6a88_85a3_08d3)));
    let high = mix64(sector.wrapping_add(0x1319_8a2e_0370_7344) ^ mix64(winner ^ 0xa409_3822_299f_31d0));
    (u128::from(high) << 64) | u128::from(low)
}

/// The content key of any valid state, computed from scratch
/// (O(sectors written by the state)). Panics if the state is invalid.
pub fn state_key(log: &ParsedLog, state: &CrashState) -> StateKey {
    state.validate(log).unwrap_or_else(|error| panic!("{error}"));
    let mut winners = HashMap::new();
    for entry in &log.entries[..state.prefix_entries as usize] {
        for sector in entry_sectors(entry) {
            winners.insert(sector, entry.index);
        }
    }
    record_extra_winners(log, state, &mut winners);
    winners
        .into_iter()
        .fold(StateKey::default(), |key, (sector, winner)| key.add(sector, winner))
}

/// Device sectors a data write covers (none for flush/discard/mark).
fn entry_sectors(entry: &LogEntry) -> Range<u64> {
    if entry.is_data_write() {
        entry.sector..entry.sector + entry.nr_sectors
    } else {
        0..0
    }
}

/// Applies the state's extra writes (torn one limited to its kept sectors),
/// in log order, to a sector → winning entry map.
fn record_extra_winners(log: &ParsedLog, state: &CrashState, winners: &mut HashMap<u64, u64>) {
    for &index in &state.extra_writes {
        let entry = &log.entries[index as usize];
        match state.torn.as_ref().filter(|torn| torn.entry == index) {
            Some(torn) => {
                for &offset in &torn.sectors_kept {
                    winners.insert(entry.sector + offset, index);
                }
            }
            None => {
                for sector in entry_sectors(entry) {
                    winners.insert(sector, index);
                }
            }
        }
    }
}

/// A flush boundary with what is needed to key its states incrementally.
struct Epoch {
    prefix_entries: u64,
    /// Data writes of the open epoch, in log order.
    writes: Vec<u64>,
    /// Key of the bare prefix state.
    prefix_key: StateKey,
    /// For each sector the open epoch's writes touch: the prefix's winner
    /// (absent = still the base image).
    prior_winners: HashMap<u64, u64>,
}

impl Epoch {
    /// Key of a state drawn from this epoch, in O(sectors of its extras).
    fn key_of(&self, log: &ParsedLog, state: &CrashState) -> StateKey {
        debug_assert_eq!(state.prefix_entries, self.prefix_entries);
        let mut changed = HashMap::new();
        record_extra_winners(log, state, &mut changed);
        changed.into_iter().fold(self.prefix_key, |key, (sector, winner)| {
            let key = match self.prior_winners.get(&sector) {
                Some(&prior) => key.sub(sector, prior),
                None => key,
            };
            key.add(sector, winner)
        })
    }
}

/// Every flush boundary in `[0, end_entries]` (including 0), with prefix
/// keys computed in one pass over the log.
fn build_epochs(log: &ParsedLog, end_entries: u64) -> Vec<Epoch> {
    let mut winners: HashMap<u64, u64> = HashMap::new();
    let mut key = StateKey::default();
    let mut epochs = Vec::new();
    let mut start = 0;
    loop {
        let range = open_epoch_up_to(log, start, end_entries);
        let writes: Vec<u64> = range
            .clone()
            .filter(|&index| log.entries[index as usize].is_data_write())
            .collect();
        let prior_winners = writes
            .iter()
            .flat_map(|&index| entry_sectors(&log.entries[index as usize]))
            .filter_map(|sector| winners.get(&sector).map(|&winner| (sector, winner)))
            .collect();
        let prefix_key = key;
        for &index in &writes {
            for sector in entry_sectors(&log.entries[index as usize]) {
                if let Some(prior) = winners.insert(sector, index) {
                    key = key.sub(sector, prior);
                }
                key = key.add(sector, index);
            }
        }
        epochs.push(Epoch {
            prefix_entries: start,
            writes,
            prefix_key,
            prior_winners,
        });
        if range.end == end_entries {
            return epochs;
        }
        start = range.end + 1; // past the flush
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_log;
    use crate::testing::LogWriter;

    #[test]
    fn incremental_key_equals_key_from_scratch() {
        let mut writer = LogWriter::new(512);
        for round in 0..4u64 {
            for write in 0..5u64 {
                writer.write_fill(
                    (round * 3 + write * 4) % 28,
                    1 + write % 3,
                    (round * 8 + write) as u8 + 1,
                );
            }
            writer.flush();
        }
        let log = parse_log(writer.bytes(), 32 * 512).unwrap();
        let epochs = build_epochs(&log, log.entries.len() as u64);
        assert_eq!(
            epochs.iter().map(|e| e.prefix_entries).collect::<Vec<_>>(),
            vec![0, 6, 12, 18, 24]
        );
        let mut rng = SplitMix64::new(9);
        for _ in 0..300 {
            let epoch = &epochs[rng.below(epochs.len() as u64) as usize];
            let state = draw_state(&mut rng, &log, epoch, true);
            assert_eq!(epoch.key_of(&log, &state), state_key(&log, &state), "{state:?}");
        }
    }
}
