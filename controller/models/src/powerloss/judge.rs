//! Stage 5: a checked state against the promises the application had been
//! given at the state's crash position.

use std::time::Instant;

use blocklog::CrashState;
use record::{Event, ProtocolLog};

use super::capture::{Capture, LoggedPromises};
use super::check::StateChecks;
use super::ms_since;
use crate::evidence::CheckResult;

/// The earliest log position that leaves a state's contents: just past
/// the last entry it includes. Judging there instead of at
/// `blocklog::crash_position` (the latest) gives fewer acks; kept only to
/// report how much the latest point adds (`states_failed_at_earliest_point`).
pub fn earliest_crash_position(state: &CrashState) -> u64 {
    let last_extra = state.extra_writes.iter().max().map(|&i| i + 1).unwrap_or(0);
    let torn = state.torn.as_ref().map(|t| t.entry + 1).unwrap_or(0);
    state.prefix_entries.max(last_extra).max(torn)
}

/// Where each promise of the protocol was given in the block-write log,
/// built once per trial: the [`verifier::Cut`] of any crash position is
/// then a binary search per writer, whatever the run's length.
#[derive(Debug)]
pub struct CutIndex {
    ready_entry: Option<u64>,
    writers: Vec<WriterAcks>,
}

/// One writer's `ACK` lines in protocol order, and for each the latest log
/// entry at which it or an earlier one of them was given (`u64::MAX`: an
/// ack never logged): ascending, so the first ack not given at a position
/// is the first one whose entry is at or past it.
#[derive(Debug, Default)]
struct WriterAcks {
    event_index: Vec<usize>,
    given_by_entry: Vec<u64>,
}

impl CutIndex {
    pub fn new(serial: &ProtocolLog, promises: &LoggedPromises, writers: u32) -> CutIndex {
        let writers = writers.max(1);
        // Indexed by seq; seqs were checked against the run's records when
        // the acks were read from the log.
        let mut entry_of = Vec::new();
        for a in &promises.acks {
            let seq = a.seq as usize;
            if seq >= entry_of.len() {
                entry_of.resize(seq + 1, u64::MAX);
            }
            entry_of[seq] = a.entry_index;
        }
        let mut per_writer: Vec<WriterAcks> = (0..writers).map(|_| WriterAcks::default()).collect();
        for (i, event) in serial.events.iter().enumerate() {
            if let Event::Ack { seq, .. } = event {
                let acks = &mut per_writer[(seq % u64::from(writers)) as usize];
                let entry = entry_of.get(*seq as usize).copied().unwrap_or(u64::MAX);
                let given_by = acks.given_by_entry.last().map_or(entry, |&e| e.max(entry));
                acks.event_index.push(i);
                acks.given_by_entry.push(given_by);
            }
        }
        CutIndex {
            ready_entry: promises.ready_entry,
            writers: per_writer,
        }
    }

    /// The protocol as the application knew it at a crash at log
    /// `position`: a `READY` is seen once its ready marker is logged before
    /// `position`, an `ACK` once its ack sector is (see [`verifier::Cut`]
    /// for why that cuts each writer's lines there).
    pub fn cut_at(&self, position: u64) -> verifier::Cut {
        verifier::Cut {
            ready_given: self.ready_entry.is_some_and(|r| r < position),
            first_ack_not_given: self
                .writers
                .iter()
                .map(|w| {
                    let given = w.given_by_entry.partition_point(|&e| e < position);
                    w.event_index.get(given).copied()
                })
                .collect(),
        }
    }
}

/// The events of `serial` seen at a crash at log `position`, as a log
/// (for the user and the tests; judging takes the cut).
pub fn protocol_at(serial: &ProtocolLog, promises: &LoggedPromises, position: u64, writers: u32) -> ProtocolLog {
    let mask = CutIndex::new(serial, promises, writers).cut_at(position).mask(serial);
    ProtocolLog {
        events: serial
            .events
            .iter()
            .zip(&mask)
            .filter(|(_, &k)| k)
            .map(|(e, _)| e.clone())
            .collect(),
        truncated_tail: None,
    }
}

/// States whose crash position is a multiple of this are judged at their
/// earliest position even when they passed at the latest.
const EARLIEST_SAMPLE_EVERY: u64 = 16;

/// How the kernel and host paths' verdicts on one state differed.
pub enum Disagreement {
    /// One passed, the other failed.
    Verdict(String),
    /// Both failed, with different details.
    Details(String),
}

impl Disagreement {
    pub fn text(&self) -> &str {
        match self {
            Disagreement::Verdict(text) | Disagreement::Details(text) => text,
        }
    }
}

/// One state's verdicts, judged at its latest crash position (and, for
/// comparison, at its earliest).
pub struct JudgedState {
    pub position: u64,
    pub verdicts: Vec<(&'static str, verifier::Verdict)>,
    /// The first path's verdict had the state been judged at its earliest
    /// position (fewer acks).
    pub passed_at_earliest: bool,
    pub disagreement: Option<Disagreement>,
    pub verify_ms: u64,
}

/// Judges one checked state against the promises the application had been
/// given at its crash position.
pub fn judge_state(
    config: &config::CampaignConfig,
    params: &record::WorkloadParams,
    capture: &Capture,
    state: &CrashState,
    checks: &StateChecks,
) -> JudgedState {
    let t = Instant::now();
    let position = blocklog::crash_position(&capture.log, state);
    assert!(
        position as usize <= capture.log.entries.len(),
        "a state's crash position lies within its log"
    );
    let cut = capture.cuts.cut_at(position);
    let verdicts: Vec<(&'static str, verifier::Verdict)> = checks
        .results
        .iter()
        .map(|(name, check)| (*name, judge_at(config, params, capture, &cut, check)))
        .collect();
    // Judging at the earliest position gives a subset of the promises (an
    // ack logged later was given later), so a state that passes at the
    // latest passes there too: judged again only when it failed, and on a
    // sample (1 in EARLIEST_SAMPLE_EVERY states by position) that checks
    // the claim in debug builds.
    let passed_at_latest = verdicts[0].1.passed;
    let sampled = position.is_multiple_of(EARLIEST_SAMPLE_EVERY);
    let passed_at_earliest = match passed_at_latest && !sampled {
        true => true,
        false => {
            let earliest = capture.cuts.cut_at(earliest_crash_position(state));
            let passed = judge_at(config, params, capture, &earliest, &checks.results[0].1).passed;
            debug_assert!(
                passed || !passed_at_latest,
                "passed at the latest position, failed at the earliest"
            );
            passed
        }
    };
    let disagreement = disagreement_of(&verdicts);
    JudgedState {
        position,
        verdicts,
        passed_at_earliest,
        disagreement,
        verify_ms: ms_since(t),
    }
}

/// `check` judged with the protocol seen at `cut`: through the trial's
/// timeline, or (a protocol the timeline refused) by rebuilding the
/// history from the events the cut keeps, which names what is wrong.
pub(super) fn judge_at(
    config: &config::CampaignConfig,
    params: &record::WorkloadParams,
    capture: &Capture,
    cut: &verifier::Cut,
    check: &CheckResult,
) -> verifier::Verdict {
    let mask;
    let seen = match &capture.timeline {
        Ok(timeline) => verifier::Seen::Cut(timeline, cut),
        Err(_) => {
            mask = cut.mask(&capture.serial);
            verifier::Seen::Mask(&mask)
        }
    };
    crate::evidence::judge(config, params, &capture.serial, seen, check)
}

/// How two checkers' verdicts on one state differ (`--checker both`), if
/// they do: in pass/fail, or only in the details (violations, lost, torn).
fn disagreement_of(verdicts: &[(&'static str, verifier::Verdict)]) -> Option<Disagreement> {
    let summary = |v: &verifier::Verdict| (v.passed, v.violation_count, v.counts.lost, v.counts.torn);
    (verdicts.len() == 2 && summary(&verdicts[0].1) != summary(&verdicts[1].1)).then(|| {
        let text = verdicts
            .iter()
            .map(|(name, v)| {
                let (passed, violations, lost, torn) = summary(v);
                let first = v.violations.first().map(|f| f.reason.as_str()).unwrap_or("-");
                format!("{name}: passed={passed} violations={violations} lost={lost} torn={torn} first={first}")
            })
            .collect::<Vec<_>>()
            .join("; ");
        match verdicts[0].1.passed != verdicts[1].1.passed {
            true => Disagreement::Verdict(text),
            false => Disagreement::Details(text),
        }
    })
}
