//! Which log entry last wrote each sector, kept as runs of sectors, and the
//! content key of such a map computed per run.
//!
//! A state's content key is a sum over sectors of a contribution of
//! (sector, winning entry). Summed per sector, a discard of the whole device
//! cost a hash-map operation per sector and per drawn state (seconds per
//! trial, found by fuzzing); per run it costs one operation per run.
//! Contributions telescope: sector `s` won by `w` contributes
//! `G(s + 1, w) - G(s, w)` for a 128-bit mix `G`, so a run `[a, b)` of one
//! winner contributes `G(b, w) - G(a, w)` whatever its length, and the key
//! stays a function of the sector → winner map alone: two maps that differ
//! in any sector differ in some run boundary, so their keys differ unless
//! the mix collides (about 2^-128 per pair).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::rng::mix64;

/// Sector → winning entry index, as disjoint runs `start → (end, winner)`.
/// Adjacent runs may share a winner: the key does not depend on how the
/// map is cut into runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunMap {
    runs: BTreeMap<u64, (u64, u64)>,
}

impl RunMap {
    /// Every sector of `range` is now won by `winner`.
    pub(crate) fn assign(&mut self, range: Range<u64>, winner: u64) {
        if range.is_empty() {
            return;
        }
        self.clear(range.clone());
        self.runs.insert(range.start, (range.end, winner));
    }

    /// Removes every sector of `range` from the map, splitting runs that
    /// straddle its ends.
    fn clear(&mut self, range: Range<u64>) {
        // A run starting before the range and reaching into it.
        if let Some((&start, &(end, winner))) = self.runs.range(..range.start).next_back() {
            if end > range.start {
                self.runs.insert(start, (range.start, winner));
                if end > range.end {
                    self.runs.insert(range.end, (end, winner));
                }
            }
        }
        let inside: Vec<u64> = self.runs.range(range.clone()).map(|(&start, _)| start).collect();
        for start in inside {
            let (end, winner) = self.runs.remove(&start).expect("listed just now");
            if end > range.end {
                self.runs.insert(range.end, (end, winner));
            }
        }
    }

    /// The runs overlapping `range`, clipped to it, in sector order.
    pub(crate) fn runs_in(&self, range: Range<u64>) -> impl Iterator<Item = (Range<u64>, u64)> + '_ {
        let first = self
            .runs
            .range(..range.start)
            .next_back()
            .filter(|(_, &(end, _))| end > range.start)
            .map(|(&start, &run)| (start, run));
        first
            .into_iter()
            .chain(self.runs.range(range.clone()).map(|(&start, &run)| (start, run)))
            .map(move |(start, (end, winner))| (start.max(range.start)..end.min(range.end), winner))
            .filter(|(r, _)| !r.is_empty())
    }

    /// Every run, in sector order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Range<u64>, u64)> + '_ {
        self.runs.iter().map(|(&start, &(end, winner))| (start..end, winner))
    }

    /// A copy holding only the sectors of `ranges`.
    pub(crate) fn restricted_to(&self, ranges: impl Iterator<Item = Range<u64>>) -> RunMap {
        let mut out = RunMap::default();
        for range in ranges {
            for (r, winner) in self.runs_in(range) {
                out.assign(r, winner);
            }
        }
        out
    }
}

/// The key contribution of sectors `range`, all won by `winner`, leaving
/// out the sectors of `ignored`.
pub(crate) fn run_contribution(range: Range<u64>, winner: u64, ignored: &Range<u64>) -> u128 {
    let mut total = 0u128;
    for part in outside(range, ignored) {
        total = total.wrapping_add(boundary(part.end, winner).wrapping_sub(boundary(part.start, winner)));
    }
    total
}

/// `range` less `ignored`: at most two pieces.
fn outside(range: Range<u64>, ignored: &Range<u64>) -> impl Iterator<Item = Range<u64>> {
    let before = range.start..range.end.min(ignored.start);
    let after = range.start.max(ignored.end)..range.end;
    let whole = ignored.is_empty() || range.end <= ignored.start || range.start >= ignored.end;
    let pieces = match whole {
        true => [range, 0..0],
        false => [before, after],
    };
    pieces.into_iter().filter(|r| !r.is_empty())
}

/// `G(point, winner)`: two 64-bit mixes side by side.
fn boundary(point: u64, winner: u64) -> u128 {
    let low = mix64(point ^ mix64(winner.wrapping_add(0x243f_6a88_85a3_08d3)));
    let high = mix64(point.wrapping_add(0x1319_8a2e_0370_7344) ^ mix64(winner ^ 0xa409_3822_299f_31d0));
    (u128::from(high) << 64) | u128::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map as one winner per sector, for comparison.
    fn sectors(map: &RunMap) -> Vec<(u64, u64)> {
        map.iter().flat_map(|(r, w)| r.map(move |s| (s, w))).collect()
    }

    #[test]
    fn assign_overwrites_and_splits() {
        let mut map = RunMap::default();
        map.assign(0..10, 1);
        map.assign(3..5, 2);
        map.assign(8..12, 3);
        map.assign(20..22, 4);
        let mut want: Vec<(u64, u64)> = (0..3).map(|s| (s, 1)).collect();
        want.extend((3..5).map(|s| (s, 2)));
        want.extend((5..8).map(|s| (s, 1)));
        want.extend((8..12).map(|s| (s, 3)));
        want.extend((20..22).map(|s| (s, 4)));
        assert_eq!(sectors(&map), want);
        assert_eq!(
            map.runs_in(4..9).collect::<Vec<_>>(),
            vec![(4..5, 2), (5..8, 1), (8..9, 3)]
        );
        map.assign(0..30, 5);
        assert_eq!(map.iter().collect::<Vec<_>>(), vec![(0..30, 5)]);
    }

    #[test]
    fn the_key_does_not_depend_on_how_runs_are_cut() {
        let one = run_contribution(0..100, 7, &(0..0));
        let cut = run_contribution(0..40, 7, &(0..0)).wrapping_add(run_contribution(40..100, 7, &(0..0)));
        assert_eq!(one, cut);
        assert_ne!(one, run_contribution(0..100, 8, &(0..0)));
        assert_ne!(one, run_contribution(0..99, 7, &(0..0)));
        // Ignored sectors contribute nothing.
        assert_eq!(
            run_contribution(0..100, 7, &(10..20)),
            run_contribution(0..10, 7, &(0..0)).wrapping_add(run_contribution(20..100, 7, &(0..0)))
        );
        assert_eq!(run_contribution(10..20, 7, &(0..50)), 0);
    }
}
