//! Exhaustive exploration: every crash state of the model, each distinct
//! one once, with a count of what was covered.
//!
//! The model's states are, per flush epoch: a crash point (before one of
//! the epoch's FUA writes completed, or before its closing flush), the FUA
//! writes before it (durable once complete: always kept), and any subset of
//! its other writes before it. [`explore_states`] enumerates them all where
//! an epoch allows at most `subsets_max_per_epoch` subsets per crash point,
//! and samples (seeded) where it allows more, saying so. Torn variants: each
//! multi-sector plain write torn alone (the rest of its epoch kept up to the
//! crash point), keeping a prefix of its sectors, at up to
//! `tears_per_write` sector counts spread over the write.
//!
//! Order, to find failures early: epochs with the most writes first; within
//! one, subsets by how few writes they drop, and among those the ones that
//! drop the oldest writes first (a newer write durable while an older one
//! is not is what breaks ordering assumptions); torn variants last.
//!
//! Two states with equal contents (a later write of the epoch overwrites an
//! earlier one; a discard of what was never written) are one state: the
//! later crash position is kept, as in [`crate::plan_states`], and the
//! duplicates are counted.

use std::ops::Range;

use crate::parse::ParsedLog;
use crate::rng::SplitMix64;
use crate::state::{
    build_epochs, crash_position_unchecked, tear_points, CrashState, Epoch, Plan, PlanOptions, TearUnit, TornWrite,
};

/// How far to explore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExploreOptions {
    /// Seeds the sampling of epochs too large to enumerate.
    pub seed: u64,
    /// Subsets per crash point of an epoch enumerated at most; an epoch
    /// with more is sampled (this many subsets) and counted as sampled.
    pub subsets_max_per_epoch: u64,
    /// Torn variants per multi-sector write and tear unit (0: none).
    pub tears_per_write: u64,
    /// At which units writes tear (each of `TearUnit::Both`'s, in turn).
    pub tear_unit: TearUnit,
    /// Sectors no check reads (crashlab's ack area), as in [`PlanOptions`].
    pub ignored_sectors: Range<u64>,
    /// States returned at most (a memory bound); past it the exploration
    /// stops and says so.
    pub states_max: usize,
}

/// Subsets of one crash point's writes enumerated by default: 2^12.
pub const SUBSETS_MAX_PER_EPOCH_DEFAULT: u64 = 1 << 12;
/// Distinct states one exploration returns at most, by default.
pub const STATES_MAX_DEFAULT: usize = 2_000_000;

impl Default for ExploreOptions {
    fn default() -> Self {
        ExploreOptions {
            seed: 0,
            subsets_max_per_epoch: SUBSETS_MAX_PER_EPOCH_DEFAULT,
            tears_per_write: 4,
            tear_unit: TearUnit::Sector,
            ignored_sectors: 0..0,
            states_max: STATES_MAX_DEFAULT,
        }
    }
}

/// What an exploration covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Coverage {
    /// Flush epochs of the log (each a prefix and its open writes).
    pub epochs: u64,
    /// Epochs whose every state was generated.
    pub epochs_enumerated: u64,
    /// Epochs too large to enumerate: a seeded sample of their states.
    pub epochs_sampled: u64,
    /// States the model holds, counted before removing equal contents:
    /// exact when every epoch was enumerated, else an upper bound
    /// (saturating at u64::MAX: a JSON reader takes no larger number).
    pub states_in_model: u64,
    pub model_exact: bool,
    /// States generated (enumerated and sampled, torn ones included).
    pub states_generated: u64,
    /// Generated states whose contents equalled an earlier one's.
    pub duplicates: u64,
    /// Distinct states returned.
    pub states: u64,
    /// The epoch with the most optional writes: (its prefix, its writes).
    pub largest_epoch: Option<(u64, u64)>,
    /// The exploration stopped at `states_max`.
    pub stopped_at_bound: bool,
    /// The same by epoch size: one class per power of two of optional
    /// writes, the classes that have epochs, smallest first (results
    /// schema 1.5; earlier lines have none).
    #[cfg_attr(feature = "serde", serde(default))]
    pub by_epoch_size: Vec<EpochClass>,
}

/// The epochs whose optional writes number `writes_min..=writes_max`
/// (class 0: none; class k: 2^(k-1) to 2^k - 1), and their states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EpochClass {
    pub writes_min: u64,
    pub writes_max: u64,
    pub epochs: u64,
    /// Counted before equal contents are removed (saturating).
    pub states_in_model: u64,
    /// Distinct states checked whose prefix is one of these epochs'.
    pub states: u64,
}

/// The class of an epoch with `writes` optional writes.
pub fn epoch_class(writes: u64) -> usize {
    (64 - writes.leading_zeros()) as usize
}

/// Coverage by epoch class of `epochs`, with `states` the ones checked.
fn by_epoch_size(
    log: &ParsedLog,
    epochs: &[Epoch],
    options: &ExploreOptions,
    states: &[CrashState],
) -> Vec<EpochClass> {
    let mut classes: Vec<EpochClass> = (0..=64)
        .map(|k: u32| EpochClass {
            writes_min: if k == 0 { 0 } else { 1u64 << (k - 1) },
            writes_max: if k == 0 {
                0
            } else {
                (1u64 << (k - 1)).saturating_mul(2) - 1
            },
            ..EpochClass::default()
        })
        .collect();
    let mut class_of_prefix = std::collections::HashMap::new();
    for epoch in epochs {
        let class = &mut classes[epoch_class(epoch.writes.len() as u64)];
        class.epochs += 1;
        class.states_in_model = class
            .states_in_model
            .saturating_add(epoch_model_size(log, epoch, options));
        class_of_prefix.insert(epoch.prefix_entries, epoch_class(epoch.writes.len() as u64));
    }
    for state in states {
        if let Some(&class) = class_of_prefix.get(&state.prefix_entries) {
            classes[class].states += 1;
        }
    }
    classes.retain(|c| c.epochs > 0);
    classes
}

/// The states of one epoch's model, counted before equal contents are
/// removed: each crash point's subsets and torn variants (saturating).
fn epoch_model_size(log: &ParsedLog, epoch: &Epoch, options: &ExploreOptions) -> u64 {
    cuts(log, epoch).iter().fold(0u64, |total, cut| {
        let subsets = subsets_of(cut.optional.len() as u32);
        let tears: u64 = tears_of(log, cut, options).iter().map(|(_, t)| t.len() as u64).sum();
        total.saturating_add(subsets).saturating_add(tears)
    })
}

pub struct Exploration {
    pub states: Vec<CrashState>,
    pub coverage: Coverage,
}

/// One crash point of an epoch: the writes always kept and the ones a
/// crash may or may not have persisted.
struct Cut {
    kept: Vec<u64>,
    optional: Vec<u64>,
}

fn cuts(log: &ParsedLog, epoch: &Epoch) -> Vec<Cut> {
    let ends = epoch.fua_writes.iter().copied().chain([epoch.end]);
    ends.map(|cut| {
        let (kept, optional) = epoch
            .writes
            .iter()
            .copied()
            .filter(|&index| index < cut)
            .partition(|&index| log.entries[index as usize].flags.is_fua());
        Cut { kept, optional }
    })
    .collect()
}

/// Every distinct state of the model (see the module doc for the bounds).
pub fn explore_states(log: &ParsedLog, options: &ExploreOptions) -> Exploration {
    let plan_options = PlanOptions {
        seed: options.seed,
        budget: options.states_max,
        torn: options.tears_per_write > 0,
        tear_unit: options.tear_unit,
        ignored_sectors: options.ignored_sectors.clone(),
    };
    let mut epochs: Vec<Epoch> = build_epochs(log, &plan_options);
    epochs.sort_by_key(|e| (std::cmp::Reverse(e.writes.len()), e.prefix_entries));
    let mut explorer = Explorer {
        log,
        options,
        coverage: Coverage {
            epochs: epochs.len() as u64,
            largest_epoch: epochs.first().map(|e| (e.prefix_entries, e.writes.len() as u64)),
            ..Coverage::default()
        },
        plan_options,
        plan: Plan::default(),
        rng: SplitMix64::new(options.seed),
    };
    for epoch in &epochs {
        let sampled = explorer.explore_epoch(epoch);
        match sampled {
            true => explorer.coverage.epochs_sampled += 1,
            false => explorer.coverage.epochs_enumerated += 1,
        }
        if explorer.coverage.stopped_at_bound {
            break;
        }
    }
    let Explorer { mut coverage, plan, .. } = explorer;
    coverage.model_exact = coverage.epochs_sampled == 0 && !coverage.stopped_at_bound;
    coverage.states = plan.states.len() as u64;
    coverage.duplicates = coverage.states_generated - coverage.states;
    let states = plan.into_states(log, options.states_max.max(1));
    coverage.by_epoch_size = by_epoch_size(log, &epochs, options, &states);
    Exploration { states, coverage }
}

/// An exploration under way: the states kept so far and the figures.
struct Explorer<'a> {
    log: &'a ParsedLog,
    options: &'a ExploreOptions,
    plan_options: PlanOptions,
    plan: Plan,
    coverage: Coverage,
    rng: SplitMix64,
}

impl Explorer<'_> {
    /// Keeps a generated state (or the later of it and its equal);
    /// false once the bound on states is reached.
    fn offer(&mut self, epoch: &Epoch, state: CrashState) -> bool {
        if self.plan.states.len() >= self.options.states_max {
            self.coverage.stopped_at_bound = true;
            return false;
        }
        self.coverage.states_generated += 1;
        let key = epoch.key_of(self.log, &state, &self.plan_options);
        let position = crash_position_unchecked(self.log, &state);
        self.plan.offer(state, key, position);
        true
    }

    /// Every crash point of the epoch: its subsets (or a sample of them),
    /// then its torn variants. True when the epoch was sampled.
    fn explore_epoch(&mut self, epoch: &Epoch) -> bool {
        let mut sampled = false;
        for cut in cuts(self.log, epoch) {
            let n = cut.optional.len() as u32;
            let subsets = subsets_of(n);
            self.coverage.states_in_model = self.coverage.states_in_model.saturating_add(subsets);
            let masks: Vec<u128> = match subsets <= self.options.subsets_max_per_epoch {
                true => ordered_masks(n),
                false => {
                    sampled = true;
                    (0..self.options.subsets_max_per_epoch)
                        .map(|_| random_mask(&mut self.rng, n))
                        .collect()
                }
            };
            for mask in masks {
                if !self.offer(epoch, state_of(epoch, &cut, mask, None)) {
                    return sampled;
                }
            }
            for (_, tears) in tears_of(self.log, &cut, self.options) {
                self.coverage.states_in_model = self.coverage.states_in_model.saturating_add(tears.len() as u64);
                for torn in tears {
                    if !self.offer(epoch, state_of(epoch, &cut, u128::MAX, Some(torn))) {
                        return sampled;
                    }
                }
            }
        }
        sampled
    }
}

/// The model's size for a sampled run, without generating its states: the
/// epochs, the largest, and the states counted before equal contents are
/// removed (an upper bound on the distinct ones; saturating), with torn
/// variants as [`explore_states`] would make them; `checked`, the sample,
/// counted as the states checked.
pub fn count_model(log: &ParsedLog, options: &ExploreOptions, checked: &[CrashState]) -> Coverage {
    let plan_options = PlanOptions {
        seed: options.seed,
        budget: 0,
        torn: options.tears_per_write > 0,
        tear_unit: options.tear_unit,
        ignored_sectors: options.ignored_sectors.clone(),
    };
    let epochs = build_epochs(log, &plan_options);
    let by_epoch_size = by_epoch_size(log, &epochs, options, checked);
    Coverage {
        epochs: epochs.len() as u64,
        largest_epoch: epochs
            .iter()
            .max_by_key(|e| (e.writes.len(), std::cmp::Reverse(e.prefix_entries)))
            .map(|e| (e.prefix_entries, e.writes.len() as u64)),
        states_in_model: by_epoch_size
            .iter()
            .fold(0u64, |total, c| total.saturating_add(c.states_in_model)),
        states: checked.len() as u64,
        states_generated: checked.len() as u64,
        by_epoch_size,
        ..Coverage::default()
    }
}

/// 2^n, saturating at u64::MAX.
fn subsets_of(n: u32) -> u64 {
    1u64.checked_shl(n).unwrap_or(u64::MAX)
}

/// The state of `cut` keeping the optional writes set in `mask` (bit i:
/// the i-th oldest), optionally with one kept write torn.
fn state_of(epoch: &Epoch, cut: &Cut, mask: u128, torn: Option<TornWrite>) -> CrashState {
    let mut extra: Vec<u64> = cut.kept.clone();
    extra.extend(
        cut.optional
            .iter()
            .enumerate()
            .filter(|(i, _)| *i >= 128 || mask >> i & 1 == 1)
            .map(|(_, &index)| index),
    );
    extra.sort_unstable();
    CrashState::new(epoch.prefix_entries, extra, torn)
}

/// All 2^n masks, ordered: fewest writes dropped first, and among as many
/// dropped, the oldest dropped first (dropped sets compared as lists of
/// positions; the bit-reversed mask ranks them so, larger first).
fn ordered_masks(n: u32) -> Vec<u128> {
    assert!(n < 64, "enumerated epochs are bounded far below 2^64 subsets");
    let all: u128 = (1u128 << n) - 1;
    let mut masks: Vec<u128> = (0..=all).collect();
    masks.sort_by_key(|&mask| {
        let dropped = all & !mask;
        (dropped.count_ones(), std::cmp::Reverse(dropped.reverse_bits()))
    });
    masks
}

fn random_mask(rng: &mut SplitMix64, n: u32) -> u128 {
    let low = u128::from(rng.next_u64());
    let high = u128::from(rng.next_u64());
    let bits = high << 64 | low;
    match n {
        0 => 0,
        n if n >= 128 => bits,
        n => bits & ((1u128 << n) - 1),
    }
}

/// The torn variants of each optional plain write of `cut`: per tear unit,
/// up to `tears_per_write` kept prefixes, ending on unit boundaries of the
/// device spread over the write (a write within one unit does not tear at
/// it).
fn tears_of(log: &ParsedLog, cut: &Cut, options: &ExploreOptions) -> Vec<(u64, Vec<TornWrite>)> {
    let per_write = options.tears_per_write;
    if per_write == 0 {
        return Vec::new();
    }
    cut.optional
        .iter()
        .copied()
        .filter_map(|index| {
            let entry = &log.entries[index as usize];
            if !entry.is_data_write() || entry.flags.is_fua() {
                return None;
            }
            let mut tears = Vec::new();
            for &unit in options.tear_unit.units_sectors() {
                let points = tear_points(entry.sector, entry.nr_sectors, unit);
                let choices = (per_write as usize).min(points.len());
                let mut picked: Vec<u64> = (0..choices)
                    .map(|i| points[i * points.len() / choices.max(1)])
                    .collect();
                picked.dedup();
                tears.extend(picked.into_iter().map(|k| TornWrite {
                    entry: index,
                    sectors_kept: (0..k).collect(),
                    unit_sectors: unit,
                }));
            }
            (!tears.is_empty()).then_some((index, tears))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_log;
    use crate::state::state_key;
    use crate::testing::LogWriter;
    use std::collections::BTreeSet;

    fn options() -> ExploreOptions {
        ExploreOptions {
            tears_per_write: 0,
            ..ExploreOptions::default()
        }
    }

    /// Every state the model allows, by brute force over the definition:
    /// each prefix at a flush boundary, each crash point of its epoch, each
    /// subset of its optional writes; as content keys.
    fn brute_force_keys(log: &ParsedLog) -> BTreeSet<crate::StateKey> {
        let mut keys = BTreeSet::new();
        let mut start = 0u64;
        loop {
            let epoch = crate::open_epoch(log, start);
            let writes: Vec<u64> = epoch
                .clone()
                .filter(|&i| log.entries[i as usize].changes_data())
                .collect();
            let fua: Vec<u64> = writes
                .iter()
                .copied()
                .filter(|&i| log.entries[i as usize].flags.is_fua())
                .collect();
            for cut in fua.iter().copied().chain([epoch.end]) {
                let before: Vec<u64> = writes.iter().copied().filter(|&i| i < cut).collect();
                let optional: Vec<u64> = before.iter().copied().filter(|i| !fua.contains(i)).collect();
                for mask in 0u64..1 << optional.len() {
                    let mut extra: Vec<u64> = before.iter().copied().filter(|i| fua.contains(i)).collect();
                    extra.extend(
                        optional
                            .iter()
                            .enumerate()
                            .filter(|(b, _)| mask >> b & 1 == 1)
                            .map(|(_, &i)| i),
                    );
                    extra.sort_unstable();
                    keys.insert(state_key(log, &CrashState::new(start, extra, None), &(0..0)));
                }
            }
            if epoch.end == log.entries.len() as u64 {
                return keys;
            }
            start = epoch.end + 1;
        }
    }

    fn log_of(seed: u64) -> ParsedLog {
        let mut rng = SplitMix64::new(seed);
        let mut writer = LogWriter::new(512);
        for _ in 0..4 {
            for _ in 0..1 + rng.below(5) {
                let sector = rng.below(24);
                match rng.below(6) {
                    0 => writer.write_fill_fua(sector, 1 + rng.below(3), rng.below(250) as u8 + 1),
                    1 => writer.discard(sector, 1 + rng.below(3)),
                    _ => writer.write_fill(sector, 1 + rng.below(4), rng.below(250) as u8 + 1),
                };
            }
            writer.flush();
        }
        writer.write_fill(3, 2, 9);
        parse_log(writer.bytes(), 32 * 512).unwrap()
    }

    #[test]
    fn the_enumeration_is_complete_and_each_content_is_one_state() {
        for seed in 0..60 {
            let log = log_of(seed);
            let explored = explore_states(&log, &options());
            let keys: Vec<crate::StateKey> = explored.states.iter().map(|s| state_key(&log, s, &(0..0))).collect();
            let distinct: BTreeSet<_> = keys.iter().copied().collect();
            assert_eq!(distinct.len(), keys.len(), "seed {seed}: duplicates are removed");
            assert_eq!(
                distinct,
                brute_force_keys(&log),
                "seed {seed}: every state of the model, no other"
            );
            for state in &explored.states {
                state.validate(&log).unwrap();
            }
            let c = &explored.coverage;
            assert!(c.model_exact && c.epochs_sampled == 0, "seed {seed}: {c:?}");
            assert_eq!(c.states, keys.len() as u64);
            assert_eq!(c.states_generated, c.states + c.duplicates);
            assert_eq!(c.states_in_model, c.states_generated, "seed {seed}: {c:?}");
        }
    }

    #[test]
    fn a_large_epoch_is_sampled_and_said_so() {
        let mut writer = LogWriter::new(512);
        for i in 0..20 {
            writer.write_fill(i, 1, i as u8 + 1);
        }
        writer.flush();
        let log = parse_log(writer.bytes(), 32 * 512).unwrap();
        let explored = explore_states(
            &log,
            &ExploreOptions {
                subsets_max_per_epoch: 256,
                ..options()
            },
        );
        let c = &explored.coverage;
        assert_eq!((c.epochs_sampled, c.model_exact), (1, false), "{c:?}");
        // And the empty epoch after the flush: its bare prefix.
        assert_eq!(c.states_in_model, (1 << 20) + 1);
        assert!(
            c.states <= 257 && c.states > 200,
            "256 sampled and the bare prefix after the flush: {c:?}"
        );
        assert_eq!(c.largest_epoch, Some((0, 20)));
    }

    #[test]
    fn the_model_is_counted_as_the_exploration_generates_it() {
        for seed in 0..10 {
            let log = log_of(seed);
            let opts = ExploreOptions {
                tears_per_write: 3,
                ..options()
            };
            let exploration = explore_states(&log, &opts);
            let counted = count_model(&log, &opts, &exploration.states);
            let explored = exploration.coverage;
            assert_eq!(counted.states_in_model, explored.states_in_model, "seed {seed}");
            // By epoch size: the same classes both ways, summing to the
            // totals, each epoch in the class of its size.
            assert_eq!(counted.by_epoch_size, explored.by_epoch_size, "seed {seed}");
            let classes = &explored.by_epoch_size;
            assert_eq!(classes.iter().map(|c| c.epochs).sum::<u64>(), explored.epochs);
            assert_eq!(classes.iter().map(|c| c.states).sum::<u64>(), explored.states);
            assert_eq!(
                classes.iter().map(|c| c.states_in_model).sum::<u64>(),
                explored.states_in_model
            );
            assert!(classes.windows(2).all(|w| w[0].writes_max < w[1].writes_min));
            let (_, largest) = explored.largest_epoch.unwrap();
            let last = classes.last().unwrap();
            assert!((last.writes_min..=last.writes_max).contains(&largest), "{last:?}");
            assert_eq!(counted.epochs, explored.epochs);
            assert_eq!(
                counted.largest_epoch.map(|(_, w)| w),
                explored.largest_epoch.map(|(_, w)| w)
            );
        }
    }

    #[test]
    fn subsets_drop_few_and_old_writes_first() {
        // Three writes: all kept, then each one dropped (oldest first),
        // then two dropped, then none kept.
        assert_eq!(
            ordered_masks(3),
            [0b111, 0b110, 0b101, 0b011, 0b100, 0b010, 0b001, 0b000]
        );
    }

    #[test]
    fn torn_variants_keep_a_prefix_of_sectors_and_are_valid() {
        let mut writer = LogWriter::new(512);
        writer.write_fill(0, 8, 1).write_fill(10, 2, 2).flush();
        let log = parse_log(writer.bytes(), 32 * 512).unwrap();
        let explored = explore_states(
            &log,
            &ExploreOptions {
                tears_per_write: 4,
                ..options()
            },
        );
        let torn: Vec<&CrashState> = explored.states.iter().filter(|s| s.torn.is_some()).collect();
        // The 8-sector write at 4 lengths, the 2-sector one at 1.
        assert_eq!(torn.len(), 5, "{torn:?}");
        for state in torn {
            state.validate(&log).unwrap();
        }
    }

    #[test]
    fn the_bound_on_states_stops_the_exploration_and_says_so() {
        let log = log_of(3);
        let explored = explore_states(
            &log,
            &ExploreOptions {
                states_max: 3,
                ..options()
            },
        );
        assert!(explored.coverage.stopped_at_bound && !explored.coverage.model_exact);
        assert_eq!(explored.states.len(), 3);
    }
}
