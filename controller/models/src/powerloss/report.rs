//! Stage 6: what a trial leaves in `trials.jsonl` (one [`PowerLossRecord`])
//! and `states.jsonl` (one [`StateLine`] a state).

use std::path::{Path, PathBuf};
use std::time::Instant;

use blocklog::CrashState;
use record::{Event, ProtocolLog};

use super::capture::{Capture, CapturedRun, LoggedPromises};
use super::check::StateChecks;
use super::judge::{Disagreement, JudgedState};
use super::{ms_since, PowerLossContext};
use crate::evidence::FileReads;

/// One power-loss trial: what it captured, the states it checked, and
/// their verdicts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PowerLossRecord {
    #[serde(flatten)]
    pub run: crate::workload_boot::WorkloadRun,
    pub log: LogFacts,
    /// The planted device bug and what it changed in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_bug: Option<DeviceBugFacts>,
    /// Records as the host saw them on the channel by the end of the
    /// capture (the same for every state); for a program, its items under
    /// that name instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<RunRecords>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<RunRecords>,
    /// What the trial's states cover of the model (`--explore`): results
    /// schema 1.4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<blocklog::Coverage>,
    pub states_planned: u64,
    pub states_checked: u64,
    pub states_passed: u64,
    pub states_failed: u64,
    /// What the workload reported live during the capture (an incoherent
    /// mapping, a consumer that read a torn record): judged once, over the
    /// whole run, not per state.
    pub live_violations: Vec<verifier::Finding>,
    /// The guest kernel's msync trace of the capture, when traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msync_trace: Option<crate::trace::TraceSummary>,
    /// States that would fail if judged at their earliest crash position
    /// (just past their last included entry) instead of the latest: the
    /// weaker check the latest point replaced, kept for comparison.
    pub states_failed_at_earliest_point: u64,
    /// With `--checker both`: states the kernel and host paths judged
    /// differently (one passed, the other failed).
    pub checker_disagreements: u64,
    /// With `--checker both`: failing states where the two paths agree on
    /// the failure but not on its details (violations, lost or torn counts).
    pub checker_detail_differences: u64,
    /// With `--checker tiered`: which states the kernel checked too, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiered: Option<TierCounts>,
    /// Checker VMs booted again after one died, hung or could not unmount
    /// while recovering a state (that state's verdict says so).
    pub checker_restarts: u64,
    /// States that timed out once and finished when checked again with
    /// more time (the host was slow, the guest did not hang).
    pub checker_timeouts_retried: u64,
    /// Kernel checker: how the recovered files reached the host (summed over
    /// states and files).
    pub file_reads: FileReads,
    pub passed: bool,
    /// Per-state counts summed over the trial's states: a record judged in
    /// 100 states counts 100 times (see results/README.md).
    pub state_counts: verifier::Counts,
    pub violation_count: u64,
    /// The first violations, each with its state.
    pub violations: Vec<StateFinding>,
    pub observation_count: u64,
    /// From the trial's start to the first failing state's verdict.
    pub first_failure_after_ms: Option<u64>,
    pub timing_ms: Timing,
    pub overlay_peak_bytes: u64,
    pub check_workers: u64,
    pub rerun: String,
    pub evidence_dir: PathBuf,
}

/// `--checker tiered`: the host checked every state; the kernel these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TierCounts {
    /// By the host alone.
    pub host_only: u64,
    /// By the kernel too: the seeded sample.
    pub kernel_sampled: u64,
    /// By the kernel too: the host's verdict failed.
    pub kernel_host_failed: u64,
    /// By the kernel too: crashlab's ext4 reader declined (e2fsprogs read).
    pub kernel_host_declined: u64,
}

impl TierCounts {
    pub fn add(&mut self, other: &TierCounts) {
        self.host_only = self.host_only.saturating_add(other.host_only);
        self.kernel_sampled = self.kernel_sampled.saturating_add(other.kernel_sampled);
        self.kernel_host_failed = self.kernel_host_failed.saturating_add(other.kernel_host_failed);
        self.kernel_host_declined = self.kernel_host_declined.saturating_add(other.kernel_host_declined);
    }

    pub fn kernel_checked(&self) -> u64 {
        self.kernel_sampled + self.kernel_host_failed + self.kernel_host_declined
    }
}

/// What a run began and acked, as the host saw it (records, or a
/// program's items).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RunRecords {
    pub begun: u64,
    pub acked: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceBugFacts {
    pub bug: String,
    pub flushes_dropped: u64,
    pub writes_delayed: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LogFacts {
    pub entries: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub acks: u64,
    pub log_bytes: u64,
    /// The log ended mid-entry (QEMU killed while logging).
    pub truncated: bool,
    /// The log ended at a hole (an entry left unwritten by the kill) with
    /// entries after it: only what precedes the hole was used.
    pub hole: bool,
    /// ACKs on the channel whose log entry lay past the usable log's end:
    /// not judged.
    pub acks_past_log_end: u64,
    /// Acks logged while a write of the filesystem's logged after the last
    /// flush had not been flushed: the durability call returned before a
    /// flush covered that write. An observation (the write may not be the
    /// synced file's); the states that drop it say whether it mattered.
    /// How the f2fs first-fsync race showed (docs/findings/f2fs-first-fsync).
    pub acks_after_unflushed_writes: u64,
    /// The first such ack: its record and the unflushed log entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_ack_after_unflushed_writes: Option<UnflushedAck>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnflushedAck {
    pub seq: u64,
    pub ack_entry: u64,
    /// At most `UNFLUSHED_LISTED_MAX` entries.
    pub unflushed_entries: Vec<u64>,
}

/// Unflushed entries listed for the first ack after them.
pub const UNFLUSHED_LISTED_MAX: usize = 16;

/// Each ack with the filesystem writes logged after the last flush before
/// it (the ready marker and the acks themselves left out), in log order.
pub fn acks_after_unflushed_writes(log: &blocklog::ParsedLog, promises: &LoggedPromises) -> Vec<UnflushedAck> {
    let markers: std::collections::BTreeSet<u64> = promises
        .acks
        .iter()
        .map(|a| a.entry_index)
        .chain(promises.ready_entry)
        .collect();
    let mut found = Vec::new();
    let mut pending: Vec<u64> = Vec::new();
    let mut acks = promises.acks.iter().peekable();
    for (index, entry) in log.entries.iter().enumerate() {
        let index = index as u64;
        if let Some(ack) = acks.next_if(|a| a.entry_index == index) {
            if !pending.is_empty() {
                found.push(UnflushedAck {
                    seq: ack.seq,
                    ack_entry: index,
                    unflushed_entries: pending.iter().copied().take(UNFLUSHED_LISTED_MAX).collect(),
                });
            }
        } else if entry.flags.is_flush() {
            pending.clear();
        } else if entry.changes_data() && !markers.contains(&index) {
            pending.push(index);
        }
    }
    found
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StateFinding {
    pub state: u64,
    /// The command that rebuilds exactly this state and judges it again.
    pub replay: String,
    pub kind: String,
    pub prefix_entries: u64,
    pub crash_position: u64,
    #[serde(flatten)]
    pub finding: verifier::Finding,
}

/// Where the time goes. Stages before and after the checks run once; the
/// per-state parts (`build`, `kernel_check`, `host_check`, `verify`) are
/// summed over the check workers, which run in parallel, so they can exceed
/// `check_wall`, the wall time of the whole checking stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timing {
    pub capture: u64,
    pub parse: u64,
    pub plan: u64,
    pub checker_boot: u64,
    pub check_wall: u64,
    /// Worker time: building views (extents) or host images.
    pub build: u64,
    /// Worker time, kernel path: NBD transfer + mount + copy out, one round
    /// trip a state.
    pub kernel_check: u64,
    /// Worker time, host path: e2fsck + debugfs.
    pub host_check: u64,
    pub verify: u64,
}

/// One line of `states.jsonl`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StateLine {
    pub trial: u64,
    pub state: u64,
    pub kind: String,
    pub prefix_entries: u64,
    pub extra_writes: usize,
    pub torn: bool,
    /// A torn state's unit, in sectors, when it is not 1 (results schema
    /// 1.5): 8 for a tear between 4 KiB pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tear_unit_sectors: Option<u64>,
    /// The latest log position that leaves this state's contents: acks
    /// logged before it are judged as given.
    pub crash_position: u64,
    pub acked: u64,
    pub checker: &'static str,
    pub passed: bool,
    /// The verdict had the state been judged at its earliest position.
    pub passed_at_earliest_point: bool,
    pub violation_count: u64,
    pub lost: u64,
    pub torn_records: u64,
    pub first_violation: Option<verifier::Finding>,
    /// The acked records (or items) this state lost, violations and
    /// observations alike, at most `LOST_SEQS_MAX`: the report's loss
    /// window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_seqs: Vec<u64>,
    /// When the verdict was reached (ms since the Unix epoch).
    pub finished_at_unix_ms: u64,
    /// The digest of the state's plan entry (`seal::state_identity`): a
    /// replay rebuilds exactly this state or refuses.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// With `--checker both`: how the two paths' verdicts differed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
}

impl LogFacts {
    pub fn of(capture: &Capture, log_bytes: u64) -> LogFacts {
        let log = &capture.log;
        let unflushed = acks_after_unflushed_writes(log, &capture.promises);
        LogFacts {
            entries: log.entries.len() as u64,
            writes: log.entries.iter().filter(|e| e.is_data_write()).count() as u64,
            flushes: log.entries.iter().filter(|e| e.flags.is_flush()).count() as u64,
            discards: log.entries.iter().filter(|e| e.flags.is_discard()).count() as u64,
            acks: capture.promises.acks.len() as u64,
            log_bytes,
            truncated: log.truncated.is_some(),
            hole: log.stray_data_offset_bytes.is_some(),
            acks_past_log_end: capture.acks_past_log_end,
            acks_after_unflushed_writes: unflushed.len() as u64,
            first_ack_after_unflushed_writes: unflushed.into_iter().next(),
        }
    }
}

impl RunRecords {
    pub fn of(serial: &ProtocolLog) -> RunRecords {
        let count = |want: fn(&Event) -> bool| serial.events.iter().filter(|e| want(e)).count() as u64;
        RunRecords {
            begun: count(|e| matches!(e, Event::Begin { .. } | Event::Item { .. })),
            acked: count(|e| matches!(e, Event::Ack { .. })),
        }
    }
}

impl PowerLossRecord {
    /// The record before any state is judged: the capture's facts and the
    /// live findings (judged once, over the whole run).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pctx: &PowerLossContext,
        plan: &crate::plan::TrialPlan,
        captured: &CapturedRun,
        states: &[CrashState],
        timing: Timing,
        check_workers: usize,
        dir: &Path,
        trial_start: Instant,
    ) -> PowerLossRecord {
        let config = pctx.trial.config;
        let capture = &captured.capture;
        let mut record = PowerLossRecord {
            run: captured.run.clone(),
            log: captured.log_facts.clone(),
            device_bug: config.device_bug.map(|bug| {
                let effect = capture.device_bug_effect.unwrap_or_default();
                DeviceBugFacts {
                    bug: bug.to_string(),
                    flushes_dropped: effect.flushes_dropped,
                    writes_delayed: effect.writes_delayed,
                }
            }),
            records: config.program.is_none().then_some(captured.records),
            items: config.program.is_some().then_some(captured.records),
            live_violations: verifier::live_findings(&capture.serial),
            msync_trace: crate::trace::read_summary(&captured.files.trace_log),
            coverage: None,
            states_planned: states.len() as u64,
            states_checked: 0,
            states_passed: 0,
            states_failed: 0,
            states_failed_at_earliest_point: 0,
            checker_disagreements: 0,
            checker_detail_differences: 0,
            tiered: (config.checker == config::Checker::Tiered).then(TierCounts::default),
            checker_restarts: 0,
            checker_timeouts_retried: 0,
            file_reads: FileReads::default(),
            passed: true,
            state_counts: verifier::Counts::default(),
            violation_count: 0,
            violations: Vec::new(),
            observation_count: 0,
            first_failure_after_ms: None,
            timing_ms: timing,
            overlay_peak_bytes: 0,
            check_workers: check_workers as u64,
            rerun: format!("{} --only-trial={}", pctx.trial.rerun_command, plan.trial),
            evidence_dir: dir.to_path_buf(),
        };
        if !record.live_violations.is_empty() {
            record.passed = false;
            record.violation_count += record.live_violations.len() as u64;
            record.first_failure_after_ms = Some(ms_since(trial_start));
        }
        record
    }

    /// Adds one judged state (in plan order) and returns its line for
    /// `states.jsonl`.
    pub fn add_state(
        &mut self,
        trial: u64,
        index: u64,
        state: &CrashState,
        checks: &StateChecks,
        judged: &JudgedState,
        trial_start: Instant,
    ) -> StateLine {
        assert_eq!(index, self.states_checked, "states are recorded in plan order");
        self.add_check_costs(checks, judged);
        let (checker_name, verdict) = &judged.verdicts[0];
        self.add_verdict(verdict, judged.passed_at_earliest, trial_start);
        let kind = format!("{:?}", state.kind).to_lowercase();
        self.add_violations(index, state, &kind, judged.position, verdict);
        StateLine {
            trial,
            state: index,
            kind,
            prefix_entries: state.prefix_entries,
            extra_writes: state.extra_writes.len(),
            torn: state.torn.is_some(),
            tear_unit_sectors: state.torn.as_ref().map(|t| t.unit_sectors).filter(|&u| u != 1),
            crash_position: judged.position,
            acked: verdict.counts.acked,
            checker: checker_name,
            passed: judged.verdicts.iter().all(|(_, v)| v.passed),
            passed_at_earliest_point: judged.passed_at_earliest,
            violation_count: verdict.violation_count,
            lost: verdict.counts.lost,
            torn_records: verdict.counts.torn,
            first_violation: verdict.violations.first().cloned(),
            lost_seqs: lost_seqs(verdict),
            finished_at_unix_ms: crate::workload_boot::unix_ms_now(),
            identity: machine::seal::state_identity(state),
            disagreement: judged.disagreement.as_ref().map(|d| d.text().to_string()),
        }
    }

    /// Adds what checking one state cost (time per stage, checker restarts
    /// and retries, file reads, overlay size) and how the checkers differed.
    fn add_check_costs(&mut self, checks: &StateChecks, judged: &JudgedState) {
        let timing = &mut self.timing_ms;
        timing.verify += judged.verify_ms;
        timing.build += checks.build_ms;
        timing.kernel_check += checks.kernel_ms;
        timing.host_check += checks.host_ms;
        self.checker_restarts += checks.checker_restarts;
        self.checker_timeouts_retried += checks.timeouts_retried;
        for (_, result) in &checks.results {
            self.file_reads.add(&result.reads);
        }
        self.overlay_peak_bytes = self.overlay_peak_bytes.max(checks.overlay_bytes);
        if let Some(tiered) = self.tiered.as_mut() {
            use super::check::KernelTier;
            match checks.kernel_tier {
                None => tiered.host_only += 1,
                Some(KernelTier::Sampled) => tiered.kernel_sampled += 1,
                Some(KernelTier::HostFailed) => tiered.kernel_host_failed += 1,
                Some(KernelTier::HostDeclined) => tiered.kernel_host_declined += 1,
            }
        }
        if let Some(difference) = &judged.disagreement {
            // Pass/fail must agree. On a filesystem the crash left broken,
            // the kernel and e2fsprogs may read different wreckage (a
            // rejected inode vs an empty file): counted apart, with both
            // readings in states.jsonl.
            match difference {
                Disagreement::Verdict(_) => self.checker_disagreements += 1,
                Disagreement::Details(_) => self.checker_detail_differences += 1,
            }
        }
    }

    /// Adds one state's verdict to the trial's: the state counts, pass or
    /// fail, and when the first failure came.
    fn add_verdict(&mut self, verdict: &verifier::Verdict, passed_at_earliest: bool, trial_start: Instant) {
        if !verdict.passed && self.first_failure_after_ms.is_none() {
            self.first_failure_after_ms = Some(ms_since(trial_start));
        }
        self.states_checked += 1;
        if verdict.passed {
            self.states_passed += 1;
        } else {
            self.states_failed += 1;
            self.passed = false;
        }
        if !passed_at_earliest {
            self.states_failed_at_earliest_point += 1;
        }
        self.violation_count += verdict.violation_count;
        self.observation_count += verdict.observation_count;
        add_counts(&mut self.state_counts, &verdict.counts);
    }

    /// Keeps the state's violations (up to `FINDINGS_MAX` in the trial),
    /// each with the command that replays its state.
    fn add_violations(
        &mut self,
        index: u64,
        state: &CrashState,
        kind: &str,
        crash_position: u64,
        verdict: &verifier::Verdict,
    ) {
        for f in &verdict.violations {
            if self.violations.len() >= verifier::FINDINGS_MAX {
                break;
            }
            let campaign_dir = self
                .evidence_dir
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."));
            self.violations.push(StateFinding {
                state: index,
                replay: format!(
                    "crashlab replay-state --campaign {} --trial {} --state {index}",
                    campaign_dir.display(),
                    self.run.trial
                ),
                kind: kind.to_string(),
                prefix_entries: state.prefix_entries,
                crash_position,
                finding: f.clone(),
            });
        }
    }
}

/// Upper bound on a state line's `lost_seqs`.
pub const LOST_SEQS_MAX: usize = 64;

/// The acked records a verdict found lost, in order, at most `LOST_SEQS_MAX`.
fn lost_seqs(verdict: &verifier::Verdict) -> Vec<u64> {
    use verifier::Rule;
    let mut seqs: Vec<u64> = verdict
        .violations
        .iter()
        .chain(&verdict.observations)
        .filter(|f| matches!(f.rule, Rule::AckedRecordLost | Rule::AckedItemLost))
        .filter_map(|f| f.expected_seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs.truncate(LOST_SEQS_MAX);
    seqs
}

/// Adds one state's counts to a sum over states.
pub fn add_counts(sum: &mut verifier::Counts, c: &verifier::Counts) {
    sum.begun += c.begun;
    sum.acked += c.acked;
    sum.in_flight += c.in_flight;
    sum.lost += c.lost;
    sum.torn += c.torn;
    sum.intact += c.intact;
    sum.in_flight_new += c.in_flight_new;
    sum.in_flight_old += c.in_flight_old;
}
