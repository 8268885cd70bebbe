//! Crash states: which logged writes a crash may have persisted, and the
//! latest point of the run at which a crash leaves those contents.
//! The model itself is described in the crate documentation.

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::error::InvalidState;
use crate::parse::{LogEntry, ParsedLog};
use crate::rng::SplitMix64;
use crate::runs::{run_contribution, RunMap};
use std::collections::HashMap;
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
    /// The device's atomic unit the tear respects, in sectors: 1 (512-byte
    /// writes are atomic) or [`PAGE_SECTORS`] (4 KiB, device-aligned, are):
    /// the kept sectors are whole units. Absent in a state before results
    /// schema 1.5, and then 1.
    #[cfg_attr(
        feature = "serde",
        serde(default = "one_sector", skip_serializing_if = "is_one_sector")
    )]
    pub unit_sectors: u64,
}

/// Sectors of a 4 KiB page: the atomic unit of a 4Kn or 512e device.
pub const PAGE_SECTORS: u64 = 8;

#[cfg(feature = "serde")]
fn one_sector() -> u64 {
    1
}

#[cfg(feature = "serde")]
fn is_one_sector(unit: &u64) -> bool {
    *unit == 1
}

impl TornWrite {
    /// A tear at sector granularity.
    pub fn sectors(entry: u64, sectors_kept: Vec<u64>) -> TornWrite {
        TornWrite {
            entry,
            sectors_kept,
            unit_sectors: 1,
        }
    }
}

/// Which tears a plan or an exploration makes (with torn writes on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TearUnit {
    /// 512-byte sectors: any sector of a write may be lost.
    #[default]
    Sector,
    /// 4 KiB pages, device-aligned: a write tears only between pages.
    Page,
    /// Either, chosen per state (recorded in the state).
    Both,
}

impl TearUnit {
    /// The units, in sectors, this choice tears at.
    pub fn units_sectors(self) -> &'static [u64] {
        match self {
            TearUnit::Sector => &[1],
            TearUnit::Page => &[PAGE_SECTORS],
            TearUnit::Both => &[1, PAGE_SECTORS],
        }
    }
}

/// Where `entry` (its first device sector, `nr_sectors` long) may tear at
/// `unit`: the kept-prefix lengths that end on a unit boundary of the
/// device, inside the write.
pub fn tear_points(first_sector: u64, nr_sectors: u64, unit_sectors: u64) -> Vec<u64> {
    assert!(unit_sectors > 0);
    (1..nr_sectors)
        .filter(|&k| (first_sector + k).is_multiple_of(unit_sectors))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct CrashState {
    /// Entries `[0, prefix_entries)` are fully applied.
    pub prefix_entries: u64,
    /// Log indices of further writes or discards from the open epoch (the
    /// entries from `prefix_entries` up to the next flush), strictly
    /// increasing.
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
            if !log.entries[index as usize].changes_data() {
                return fail(format!("entry {index} is not a data write or discard"));
            }
        }
        // A FUA write the state leaves out had not completed at the crash,
        // so nothing logged after it had completed either.
        let position = crash_position_unchecked(log, self);
        if let Some(&late) = self.extra_writes.iter().find(|&&index| index > position) {
            return fail(format!(
                "write {late} follows FUA write {position}, which the state leaves out: \
                 a crash before that write completed cannot hold later writes"
            ));
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
        let entry = &log.entries[torn.entry as usize];
        if !entry.is_data_write() || entry.flags.is_fua() {
            return Err(format!(
                "entry {} cannot be torn: only plain data writes tear (a FUA write is durable once complete)",
                torn.entry
            ));
        }
        let nr_sectors = entry.nr_sectors;
        let kept = &torn.sectors_kept;
        let unit = torn.unit_sectors;
        if unit != 1 && unit != PAGE_SECTORS {
            return Err(format!(
                "torn write {} tears at units of {unit} sectors: 1 or {PAGE_SECTORS}",
                torn.entry
            ));
        }
        // Whole units: a unit of the device the write covers is kept in
        // full or not at all.
        let unit_of = |s: u64| (entry.sector + s) / unit;
        let whole = (0..nr_sectors).all(|s| {
            let in_unit = kept.binary_search(&s).is_ok();
            (0..nr_sectors)
                .filter(|&t| unit_of(t) == unit_of(s))
                .all(|t| kept.binary_search(&t).is_ok() == in_unit)
        });
        if !whole {
            return Err(format!(
                "torn write {} keeps sectors {kept:?}: not whole {unit}-sector units of the device",
                torn.entry
            ));
        }
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
    let next_flush = (prefix_entries..end)
        .find(|&index| log.entries[index as usize].flags.is_flush())
        .unwrap_or(end);
    prefix_entries..next_flush
}

/// The latest log position at which a crash leaves the state's contents:
/// every entry before it had completed, none from it on. Acks logged
/// before it had been given to the application, so the state is judged
/// against them.
///
/// Why the latest point is sound: the state's writes all completed before
/// its open epoch's closing flush did, and a volatile cache may persist any
/// subset of completed writes, so a crash just before that flush completes
/// leaves exactly these contents. Only a FUA write cuts the epoch short: it
/// is durable once complete, so a state without it crashed before it
/// completed. Panics if the state does not fit the log.
pub fn crash_position(log: &ParsedLog, state: &CrashState) -> u64 {
    state.validate(log).unwrap_or_else(|error| panic!("{error}"));
    crash_position_unchecked(log, state)
}

pub(crate) fn crash_position_unchecked(log: &ParsedLog, state: &CrashState) -> u64 {
    let epoch = open_epoch(log, state.prefix_entries);
    epoch
        .clone()
        .find(|&index| {
            let entry = &log.entries[index as usize];
            entry.is_data_write() && entry.flags.is_fua() && state.extra_writes.binary_search(&index).is_err()
        })
        .unwrap_or(epoch.end)
}

/// One state per flush (everything up to and including it), in log order,
/// plus the final state (all entries) when entries follow the last flush.
/// The empty state (prefix 0, the base image itself) is not included, and
/// consecutive flushes with no write between them give equal contents.
pub fn prefix_states(log: &ParsedLog) -> Vec<CrashState> {
    let mut states: Vec<CrashState> = log
        .entries
        .iter()
        .filter(|entry| entry.flags.is_flush())
        .map(|flush| CrashState::prefix(flush.index + 1))
        .collect();
    let last_boundary = states.last().map_or(0, |state| state.prefix_entries);
    let end = log.entries.len() as u64;
    if end > last_boundary {
        states.push(CrashState::prefix(end));
    }
    states
}

/// How to plan a trial's states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    pub seed: u64,
    /// At most this many states.
    pub budget: usize,
    /// Tear one write in about half of the random states.
    pub torn: bool,
    /// At which unit the tears fall.
    pub tear_unit: TearUnit,
    /// 512-byte sectors that no check reads (crashlab's ack area): writes
    /// that lie wholly inside are never drawn, and these sectors are not
    /// part of a state's identity.
    pub ignored_sectors: Range<u64>,
}

impl PlanOptions {
    fn ignores(&self, entry: &LogEntry) -> bool {
        let range = entry_sectors(entry);
        // A FUA write is never ignored: leaving it out moves the crash point.
        !range.is_empty()
            && !entry.flags.is_fua()
            && range.start >= self.ignored_sectors.start
            && range.end <= self.ignored_sectors.end
    }
}

/// Up to `budget` distinct random states. Each draw picks an epoch with
/// probability proportional to the writes it holds (epochs of only flushes
/// or ignored writes are never drawn: their states are bare prefixes), a
/// crash point in it (before one of its FUA writes completed, or just
/// before its closing flush), a keep-probability `p` uniform in [0, 1),
/// keeps each write before the crash point with probability `p` (FUA writes
/// before it always), and (when `torn`) tears one kept multi-sector write
/// half of the time. States with the same [`StateKey`] as an earlier one
/// are skipped. Stops after `budget` states or `16 * budget + 64` draws, so
/// a small state space returns fewer states. Deterministic for a given seed
/// on every platform.
pub fn random_states(log: &ParsedLog, options: &PlanOptions) -> Vec<CrashState> {
    let epochs = build_epochs(log, options);
    let mut plan = Plan::default();
    draw_into(log, options, &epochs, &mut plan, options.budget);
    plan.into_states(log, options.budget)
}

/// Draws random states into `plan` until it holds `target` states or the
/// draws run out (`16 * budget + 64`); see [`random_states`].
fn draw_into(log: &ParsedLog, options: &PlanOptions, epochs: &[Epoch], plan: &mut Plan, target: usize) {
    let Some(picker) = EpochPicker::new(epochs) else {
        return;
    };
    let mut rng = SplitMix64::new(options.seed);
    let max_draws = options.budget.saturating_mul(16).saturating_add(64);
    for _ in 0..max_draws {
        if plan.states.len() >= target {
            break;
        }
        let epoch = &epochs[picker.pick(&mut rng)];
        let state = draw_state(&mut rng, log, epoch, options.torn.then_some(options.tear_unit));
        let key = epoch.key_of(log, &state, options);
        let position = crash_position_unchecked(log, &state);
        plan.offer(state, key, position);
    }
}

/// A trial's states: every flush-boundary prefix (evenly thinned when they
/// alone would exceed half the budget), then random states until the
/// budget is full or the draws run out. Two states with the same persisted
/// contents are one state, judged at the later of their crash positions
/// (more acks given, same bytes: a strictly stronger check). Deterministic
/// for a given log and options.
pub fn plan_states(log: &ParsedLog, options: &PlanOptions) -> Vec<CrashState> {
    let epochs = build_epochs(log, options);
    let mut prefixes = Plan::default();
    for state in prefix_states(log) {
        let key = match epochs.binary_search_by_key(&state.prefix_entries, |e| e.prefix_entries) {
            Ok(i) => epochs[i].prefix_key,
            Err(_) => state_key(log, &state, &options.ignored_sectors),
        };
        let position = crash_position_unchecked(log, &state);
        prefixes.offer(state, key, position);
    }
    let prefix_cap = (options.budget / 2).max(1);
    let prefixes = prefixes.states;
    let step = (prefixes.len() as f64 / prefix_cap as f64).max(1.0);
    let kept = (0..prefix_cap.min(prefixes.len())).map(|i| (i as f64 * step) as usize);
    let mut plan = Plan::default();
    for i in kept.take(options.budget) {
        let planned = &prefixes[i];
        plan.offer(planned.state.clone(), planned.key, planned.position);
    }
    draw_into(log, options, &epochs, &mut plan, options.budget);
    plan.into_states(log, options.budget)
}

pub(crate) struct Planned {
    state: CrashState,
    key: StateKey,
    position: u64,
}

/// States in planning order, one per content key.
#[derive(Default)]
pub(crate) struct Plan {
    pub(crate) states: Vec<Planned>,
    by_key: HashMap<StateKey, usize>,
}

impl Plan {
    /// The planned states, in plan order. Asserted: the plan's bound, and
    /// each state within the log it was planned from (a reader rebuilding a
    /// state from a kept log checks the same).
    pub(crate) fn into_states(self, log: &ParsedLog, budget: usize) -> Vec<CrashState> {
        let states: Vec<CrashState> = self.states.into_iter().map(|p| p.state).collect();
        assert!(states.len() <= budget.max(1), "the plan keeps to its budget");
        assert!(
            states.iter().all(|s| s.prefix_entries as usize <= log.entries.len()),
            "every state's prefix lies within the log"
        );
        states
    }

    /// Adds the state, or, when a state with the same contents is already
    /// planned, keeps whichever is judged later (in the earlier one's slot).
    pub(crate) fn offer(&mut self, state: CrashState, key: StateKey, position: u64) {
        match self.by_key.get(&key) {
            Some(&i) => {
                if position > self.states[i].position {
                    self.states[i] = Planned { state, key, position };
                }
            }
            None => {
                self.by_key.insert(key, self.states.len());
                self.states.push(Planned { state, key, position });
            }
        }
    }
}

/// Picks epochs in proportion to their drawable writes.
struct EpochPicker {
    /// Cumulative weights; `cumulative[i]` covers epochs `0..=i`.
    cumulative: Vec<u64>,
}

impl EpochPicker {
    fn new(epochs: &[Epoch]) -> Option<EpochPicker> {
        let mut total = 0u64;
        let cumulative: Vec<u64> = epochs
            .iter()
            .map(|epoch| {
                total += epoch.writes.len() as u64;
                total
            })
            .collect();
        (total > 0).then_some(EpochPicker { cumulative })
    }

    fn pick(&self, rng: &mut SplitMix64) -> usize {
        let total = *self.cumulative.last().expect("a picker has epochs");
        let ticket = rng.below(total);
        self.cumulative.partition_point(|&c| c <= ticket)
    }
}

fn draw_state(rng: &mut SplitMix64, log: &ParsedLog, epoch: &Epoch, torn: Option<TearUnit>) -> CrashState {
    // The crash point: before one of the epoch's FUA writes completed, or
    // just before the closing flush.
    let cut = match epoch.fua_writes.len() {
        0 => epoch.end,
        n => epoch
            .fua_writes
            .get(rng.below(n as u64 + 1) as usize)
            .copied()
            .unwrap_or(epoch.end),
    };
    let keep_probability = rng.unit_f64();
    let extra_writes: Vec<u64> = epoch
        .writes
        .iter()
        .copied()
        .filter(|&index| index < cut)
        .filter(|&index| log.entries[index as usize].flags.is_fua() || rng.unit_f64() < keep_probability)
        .collect();
    let torn_write = match torn {
        Some(tear_unit) if rng.coin() => {
            // No draw for one unit: plans made before page tears existed
            // (sector tears only) stay the same, state for state.
            let unit = match tear_unit.units_sectors() {
                [unit] => *unit,
                units => units[rng.below(units.len() as u64) as usize],
            };
            draw_torn(rng, log, &extra_writes, unit)
        }
        _ => None,
    };
    CrashState::new(epoch.prefix_entries, extra_writes, torn_write)
}

/// Tears one kept plain write that spans at least two units of `unit`
/// sectors: half of the time a prefix of its units (a write cut off in
/// order), otherwise any proper subset of them (units reaching the media
/// out of order).
fn draw_torn(rng: &mut SplitMix64, log: &ParsedLog, extra_writes: &[u64], unit: u64) -> Option<TornWrite> {
    let candidates: Vec<u64> = extra_writes
        .iter()
        .copied()
        .filter(|&index| {
            let entry = &log.entries[index as usize];
            entry.is_data_write()
                && !entry.flags.is_fua()
                && !tear_points(entry.sector, entry.nr_sectors, unit).is_empty()
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let entry = candidates[rng.below(candidates.len() as u64) as usize];
    let (first, nr_sectors) = (
        log.entries[entry as usize].sector,
        log.entries[entry as usize].nr_sectors,
    );
    // The write's units, as ranges of its sectors.
    let mut bounds = vec![0];
    bounds.extend(tear_points(first, nr_sectors, unit));
    bounds.push(nr_sectors);
    let units = bounds.len() as u64 - 1;
    let kept_units: Vec<u64> = if rng.coin() {
        (0..1 + rng.below(units - 1)).collect()
    } else {
        random_proper_subset(rng, units)
    };
    let sectors_kept = kept_units
        .iter()
        .flat_map(|&u| bounds[u as usize]..bounds[u as usize + 1])
        .collect();
    Some(TornWrite {
        entry,
        sectors_kept,
        unit_sectors: unit,
    })
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
/// hash over (sector, index of the last entry that wrote or discarded it)
/// for every such 512-byte sector outside the ignored ones, computed per
/// run of sectors (`runs.rs` says how). Equal contents give equal keys;
/// different contents collide with probability about 2^-128 per pair. Two
/// writes of identical bytes still count as different contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct StateKey(pub u128);

impl StateKey {
    fn add(self, range: Range<u64>, winner: u64, ignored: &Range<u64>) -> Self {
        StateKey(self.0.wrapping_add(run_contribution(range, winner, ignored)))
    }
    fn sub(self, range: Range<u64>, winner: u64, ignored: &Range<u64>) -> Self {
        StateKey(self.0.wrapping_sub(run_contribution(range, winner, ignored)))
    }
}

/// The content key of any valid state, computed from scratch
/// (O(entries × log runs)), leaving out `ignored_sectors`.
/// Panics if the state is invalid.
pub fn state_key(log: &ParsedLog, state: &CrashState, ignored_sectors: &Range<u64>) -> StateKey {
    state.validate(log).unwrap_or_else(|error| panic!("{error}"));
    let mut winners = RunMap::default();
    for entry in &log.entries[..state.prefix_entries as usize] {
        winners.assign(entry_sectors(entry), entry.index);
    }
    record_extra_winners(log, state, &mut winners);
    winners.iter().fold(StateKey::default(), |key, (range, winner)| {
        key.add(range, winner, ignored_sectors)
    })
}

/// Device sectors an entry changes: a write's, or a discard's range (none
/// for a flush or mark).
fn entry_sectors(entry: &LogEntry) -> Range<u64> {
    if entry.changes_data() {
        entry.sector..entry.sector + entry.nr_sectors
    } else {
        0..0
    }
}

/// Applies the state's extra writes (torn one limited to its kept sectors),
/// in log order, to a sector → winning entry map.
fn record_extra_winners(log: &ParsedLog, state: &CrashState, winners: &mut RunMap) {
    for &index in &state.extra_writes {
        let entry = &log.entries[index as usize];
        match state.torn.as_ref().filter(|torn| torn.entry == index) {
            Some(torn) => {
                for &offset in &torn.sectors_kept {
                    let sector = entry.sector + offset;
                    winners.assign(sector..sector + 1, index);
                }
            }
            None => winners.assign(entry_sectors(entry), index),
        }
    }
}

/// A flush boundary with what is needed to draw and key its states.
pub(crate) struct Epoch {
    pub(crate) prefix_entries: u64,
    /// Index of the closing flush, or the log's end.
    pub(crate) end: u64,
    /// Writes and discards of the open epoch that may be drawn, in log order.
    pub(crate) writes: Vec<u64>,
    /// The FUA data writes among them.
    pub(crate) fua_writes: Vec<u64>,
    /// Key of the bare prefix state.
    prefix_key: StateKey,
    /// Over the sectors the open epoch's writes touch: the prefix's winners
    /// (a sector absent is still the base image's).
    prior_winners: RunMap,
}

impl Epoch {
    /// Key of a state drawn from this epoch, in O(runs of its extras and of
    /// the prefix under them), whatever their length in sectors.
    pub(crate) fn key_of(&self, log: &ParsedLog, state: &CrashState, options: &PlanOptions) -> StateKey {
        debug_assert_eq!(state.prefix_entries, self.prefix_entries);
        let ignored = &options.ignored_sectors;
        let mut changed = RunMap::default();
        record_extra_winners(log, state, &mut changed);
        changed.iter().fold(self.prefix_key, |key, (range, winner)| {
            let key = self
                .prior_winners
                .runs_in(range.clone())
                .fold(key, |key, (prior_range, prior)| key.sub(prior_range, prior, ignored));
            key.add(range, winner, ignored)
        })
    }
}

/// Every flush boundary of the log (including 0), with prefix keys computed
/// in one pass.
pub(crate) fn build_epochs(log: &ParsedLog, options: &PlanOptions) -> Vec<Epoch> {
    let ignored = &options.ignored_sectors;
    let mut winners = RunMap::default();
    let mut key = StateKey::default();
    let mut epochs = Vec::new();
    let mut start = 0;
    let log_end = log.entries.len() as u64;
    loop {
        let range = open_epoch(log, start);
        let writes: Vec<u64> = range
            .clone()
            .filter(|&index| {
                let entry = &log.entries[index as usize];
                entry.changes_data() && !options.ignores(entry)
            })
            .collect();
        let fua_writes = writes
            .iter()
            .copied()
            .filter(|&index| {
                let entry = &log.entries[index as usize];
                entry.is_data_write() && entry.flags.is_fua()
            })
            .collect();
        let prior_winners =
            winners.restricted_to(writes.iter().map(|&index| entry_sectors(&log.entries[index as usize])));
        let prefix_key = key;
        // Every entry of the epoch enters the next prefix, ignored ones too.
        for entry in &log.entries[range.start as usize..range.end as usize] {
            let sectors = entry_sectors(entry);
            let priors: Vec<(Range<u64>, u64)> = winners.runs_in(sectors.clone()).collect();
            for (prior_range, prior) in priors {
                key = key.sub(prior_range, prior, ignored);
            }
            key = key.add(sectors.clone(), entry.index, ignored);
            winners.assign(sectors, entry.index);
        }
        epochs.push(Epoch {
            prefix_entries: start,
            end: range.end,
            writes,
            fua_writes,
            prefix_key,
            prior_winners,
        });
        if range.end == log_end {
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

    fn no_ignored() -> PlanOptions {
        PlanOptions {
            seed: 9,
            budget: 0,
            torn: true,
            tear_unit: crate::TearUnit::Sector,
            ignored_sectors: 0..0,
        }
    }

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
            writer.discard(30, 2);
            writer.flush();
        }
        let log = parse_log(writer.bytes(), 32 * 512).unwrap();
        for options in [
            no_ignored(),
            PlanOptions {
                ignored_sectors: 4..9,
                ..no_ignored()
            },
        ] {
            let epochs = build_epochs(&log, &options);
            assert_eq!(
                epochs.iter().map(|e| e.prefix_entries).collect::<Vec<_>>(),
                vec![0, 7, 14, 21, 28]
            );
            let mut rng = SplitMix64::new(9);
            for _ in 0..300 {
                let epoch = &epochs[rng.below(epochs.len() as u64) as usize];
                let state = draw_state(&mut rng, &log, epoch, Some(TearUnit::Sector));
                assert_eq!(
                    epoch.key_of(&log, &state, &options),
                    state_key(&log, &state, &options.ignored_sectors),
                    "{state:?}"
                );
            }
        }
    }
}
