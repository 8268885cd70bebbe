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

/// The protocol as the application knew it at a crash at log `position`:
/// nothing after a `READY` whose ready marker is not logged before
/// `position`, and for each writer process, nothing after its first `ACK`
/// whose ack sector is not logged before `position`.
///
/// Why a cut and not a filter: each writer is one sequential program, and
/// each of those lines is printed only after its marker's O_DIRECT write
/// completed, i.e. was logged. A marker logged at or after `position`
/// completed after the crash, so every line that writer printed after it
/// (its next records' `BEGIN`s among them) came after the crash too. The
/// records begun before the cut and not acked include every one in flight
/// (and perhaps one begun just after the crash, whose bytes cannot be in
/// the state: allowing it loosens nothing that matters).
/// Lines of no one writer (`MSYNC`, `GROW`, ...) stay while any writer is
/// uncut; `DONE` goes once any is cut.
pub fn protocol_at(serial: &ProtocolLog, promises: &LoggedPromises, position: u64, writers: u32) -> ProtocolLog {
    let kept = kept_events_at(serial, promises, position, writers);
    ProtocolLog {
        events: serial
            .events
            .iter()
            .zip(&kept)
            .filter(|(_, &k)| k)
            .map(|(e, _)| e.clone())
            .collect(),
        truncated_tail: None,
    }
}

/// [`protocol_at`] as a mask over `serial`'s events (what the verifier
/// takes per state: no copy of the events).
pub fn kept_events_at(serial: &ProtocolLog, promises: &LoggedPromises, position: u64, writers: u32) -> Vec<bool> {
    let ready_given = promises.ready_entry.is_some_and(|r| r < position);
    // Indexed by seq; seqs were checked against the run's records when the
    // acks were read from the log.
    let mut given = Vec::new();
    for a in promises.acks.iter().filter(|a| a.entry_index < position) {
        let seq = a.seq as usize;
        if seq >= given.len() {
            given.resize(seq + 1, false);
        }
        given[seq] = true;
    }
    let given_ack = |seq: u64| given.get(seq as usize).copied().unwrap_or(false);
    let writer_of = |seq: u64| (seq % u64::from(writers.max(1))) as usize;
    let mut cut = vec![false; writers.max(1) as usize];
    let mut kept = vec![false; serial.events.len()];
    for (i, event) in serial.events.iter().enumerate() {
        kept[i] = match event {
            Event::Ready { .. } if !ready_given => break,
            Event::Begin { seq, .. } => !cut[writer_of(*seq)],
            Event::Ack { seq, .. } => {
                let w = writer_of(*seq);
                if !cut[w] && !given_ack(*seq) {
                    cut[w] = true;
                }
                !cut[w]
            }
            Event::Done { .. } => !cut.iter().any(|&c| c),
            _ => !cut.iter().all(|&c| c),
        };
    }
    kept
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
    let writers = config.geometry().writers;
    let kept = kept_events_at(&capture.serial, &capture.promises, position, writers);
    let verdicts: Vec<(&'static str, verifier::Verdict)> = checks
        .results
        .iter()
        .map(|(name, check)| {
            (
                *name,
                crate::evidence::judge(config, params, &capture.serial, Some(&kept), check),
            )
        })
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
            let passed = passes_at_earliest(config, params, capture, state, &checks.results[0].1, writers);
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

/// Whether `check` passes judged at the state's earliest crash position
/// (fewer acks given than at its latest), with `writers` writer processes.
fn passes_at_earliest(
    config: &config::CampaignConfig,
    params: &record::WorkloadParams,
    capture: &Capture,
    state: &CrashState,
    check: &CheckResult,
    writers: u32,
) -> bool {
    let earliest = kept_events_at(
        &capture.serial,
        &capture.promises,
        earliest_crash_position(state),
        writers,
    );
    crate::evidence::judge(config, params, &capture.serial, Some(&earliest), check).passed
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
