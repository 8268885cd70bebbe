//! The campaign loop's events and the sinks that take them: the results
//! log (which owns the order in which results become durable) and the
//! progress display. The loop (`run_campaign`) runs trials and emits;
//! it writes nothing itself.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Summary, TrialTotals};
use config::CrashModel;
use models::powerloss::StateLine;

/// What happens in a campaign, in order.
pub enum Event<'a> {
    /// A power-loss state was judged (its line as the results keep it).
    StateJudged(&'a StateLine),
    /// A trial finished: its directory (its evidence), its sealed line
    /// for trials.jsonl and its totals.
    TrialFinished {
        trial: u64,
        trial_dir: &'a Path,
        line: &'a str,
        totals: &'a TrialTotals,
    },
}

/// Something the campaign tells what happens. An error stops the
/// campaign; the sinks after the failing one do not see the event.
pub trait Sink {
    fn take(&mut self, event: &Event) -> Result<()>;
}

/// Each sink in turn, stopping at the first error.
pub fn emit(sinks: &mut [&mut dyn Sink], event: &Event) -> Result<()> {
    sinks.iter_mut().try_for_each(|sink| sink.take(event))
}

/// trials.jsonl and states.jsonl, appended. A trial's line says it
/// finished, so what it stands on is made durable first (its evidence
/// directory, its state lines), then the line, synced at once: a kill or
/// a reboot of the machine keeps every trial that has a line, and resume
/// redoes the rest.
pub struct ResultsLog {
    dir: PathBuf,
    trials: File,
    /// Power-loss campaigns only.
    states: Option<File>,
    /// State lines written since the last trial line, and their trial
    /// (for the assertions that they come in plan order, before their
    /// trial's line).
    states_pending: u64,
    states_trial: u64,
}

impl ResultsLog {
    /// Opens the logs of a campaign directory (created by its start).
    pub fn open(dir: &Path, model: CrashModel) -> Result<ResultsLog> {
        let append = |name: &str| -> Result<File> {
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join(name))
                .with_context(|| format!("cannot open {}", dir.join(name).display()))
        };
        Ok(ResultsLog {
            dir: dir.to_path_buf(),
            trials: append("trials.jsonl")?,
            states: match model {
                CrashModel::PowerLoss => Some(append("states.jsonl")?),
                CrashModel::KernelCrash => None,
            },
            states_pending: 0,
            states_trial: 0,
        })
    }

    fn cannot_write(&self, name: &str) -> String {
        super::cannot_write(&self.dir, name)
    }
}

impl Sink for ResultsLog {
    fn take(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::StateJudged(line) => {
                let (dir, log) = (&self.dir, self.states.as_mut());
                let log = log.context("a state was judged in a kernel-crash campaign (no states log)")?;
                // Paired with `PowerLossRecord::add_state`'s: the lines of a
                // trial are its states in plan order, one trial at a time.
                assert_eq!(line.state, self.states_pending, "state lines in plan order");
                assert!(
                    self.states_pending == 0 || self.states_trial == line.trial,
                    "one trial's state lines at a time"
                );
                writeln!(log, "{}", serde_json::to_string(line)?)
                    .with_context(|| super::cannot_write(dir, "states.jsonl"))?;
                self.states_trial = line.trial;
                self.states_pending += 1;
                Ok(())
            }
            Event::TrialFinished {
                trial, trial_dir, line, ..
            } => {
                assert!(
                    self.states.is_some() || self.states_pending == 0,
                    "state lines only in power-loss campaigns"
                );
                assert!(
                    self.states_pending == 0 || self.states_trial == *trial,
                    "a trial's line follows its own state lines"
                );
                assert!(!line.contains('\n'), "a trial line is one line");
                if trial_dir.exists() {
                    machine::durable::sync_tree(trial_dir)?;
                }
                if let Some(log) = self.states.as_mut() {
                    log.sync_data()
                        .with_context(|| super::cannot_write(&self.dir, "states.jsonl"))?;
                }
                writeln!(self.trials, "{line}")
                    .and_then(|()| self.trials.sync_data())
                    .with_context(|| self.cannot_write("trials.jsonl"))?;
                self.states_pending = 0;
                Ok(())
            }
        }
    }
}

/// The summary as trials finish: totals added once the trial's line is
/// durable (this sink comes after the results log), the first failure's
/// time as it is seen.
pub struct SummarySink<'a> {
    pub summary: &'a mut Summary,
    pub start: Instant,
}

impl Sink for SummarySink<'_> {
    fn take(&mut self, event: &Event) -> Result<()> {
        let failed = match event {
            Event::StateJudged(line) => !line.passed,
            Event::TrialFinished { totals, .. } => {
                self.summary.add(totals);
                !totals.passed
            }
        };
        if failed && self.summary.first_failure_after_s.is_none() {
            self.summary.first_failure_after_s = Some(self.start.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// A progress bar on a terminal (not with --quiet), a line per trial
/// otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Trials this run will run; done so far; their states and violations.
    total: u64,
    done: u64,
    states: u64,
    violations: u64,
    start: Instant,
}

impl Progress {
    pub fn new(total: u64, show: bool, start: Instant) -> Progress {
        let tty = show && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} trials  {msg}  ETA {eta}")
                    .expect("static template"),
            );
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            states: 0,
            violations: 0,
            start,
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Sink for Progress {
    fn take(&mut self, event: &Event) -> Result<()> {
        let Event::TrialFinished { trial, totals, .. } = event else {
            return Ok(());
        };
        self.done += 1;
        self.states += totals.states;
        self.violations += totals.violations;
        assert!(self.done <= self.total, "more trials finished than were planned");
        let per_min = self.states as f64 * 60.0 / self.start.elapsed().as_secs_f64().max(1e-9);
        let msg = format!("{per_min:.1} states/min, {} violations", self.violations);
        match &self.bar {
            Some(bar) => {
                bar.set_message(msg);
                bar.inc(1);
            }
            None => eprintln!(
                "trial {trial} ({}/{}): {} states, {} acked, {} lost, {} violations, {:?}; {msg}",
                self.done,
                self.total,
                totals.states,
                totals.counts.acked,
                totals.counts.lost,
                totals.violations,
                totals.run_end,
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::workload_boot::RunEnd;

    fn state(trial: u64, state: u64, passed: bool) -> StateLine {
        StateLine {
            trial,
            state,
            kind: "prefix".into(),
            prefix_entries: 10,
            extra_writes: 0,
            torn: false,
            tear_unit_sectors: None,
            crash_position: 10,
            acked: 1,
            checker: "kernel",
            passed,
            passed_at_earliest_point: passed,
            violation_count: u64::from(!passed),
            lost: 0,
            torn_records: 0,
            first_violation: None,
            lost_seqs: Vec::new(),
            finished_at_unix_ms: 0,
            identity: String::new(),
            disagreement: None,
        }
    }

    fn totals(passed: bool, states: u64) -> TrialTotals {
        TrialTotals {
            passed,
            run_end: RunEnd::Crashed,
            states,
            states_failed: u64::from(!passed),
            violations: u64::from(!passed),
            observations: 0,
            counts: verifier::Counts::default(),
            checker_restarts: 0,
            checker_timeouts_retried: 0,
            coverage: None,
            checker_disagreements: 0,
            checker_detail_differences: 0,
            tiered: None,
        }
    }

    fn campaign_dir(model: CrashModel) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trials.jsonl"), "").unwrap();
        if model == CrashModel::PowerLoss {
            std::fs::write(dir.path().join("states.jsonl"), "").unwrap();
        }
        dir
    }

    /// The results log writes each state's line as it is judged and the
    /// trial's line after them; the summary counts a trial once its line is
    /// written, and times the first failing state.
    #[test]
    fn states_then_the_trial_line_then_the_totals() {
        let dir = campaign_dir(CrashModel::PowerLoss);
        let mut log = ResultsLog::open(dir.path(), CrashModel::PowerLoss).unwrap();
        let mut summary = Summary::default();
        let start = Instant::now();
        let mut sum = SummarySink {
            summary: &mut summary,
            start,
        };
        let mut progress = Progress::new(1, false, start);
        {
            let mut sinks: [&mut dyn Sink; 3] = [&mut log, &mut sum, &mut progress];
            emit(&mut sinks, &Event::StateJudged(&state(0, 0, true))).unwrap();
            emit(&mut sinks, &Event::StateJudged(&state(0, 1, false))).unwrap();
            let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert_eq!(read("states.jsonl").lines().count(), 2);
            assert_eq!(read("trials.jsonl"), "", "no trial line before the trial finished");
            let trial_dir = dir.path().join("trials/0");
            std::fs::create_dir_all(&trial_dir).unwrap();
            let event = Event::TrialFinished {
                trial: 0,
                trial_dir: &trial_dir,
                line: r#"{"trial":0}"#,
                totals: &totals(false, 2),
            };
            emit(&mut sinks, &event).unwrap();
            assert_eq!(read("trials.jsonl"), "{\"trial\":0}\n");
        }
        assert_eq!(
            (summary.trials_run, summary.states_checked, summary.violations),
            (1, 2, 1)
        );
        assert!(summary.first_failure_after_s.is_some(), "the failing state was timed");
    }

    /// A sink that fails stops the event there: a trial whose line could
    /// not be written is not counted in the summary.
    #[test]
    fn a_failing_sink_stops_the_event() {
        let dir = campaign_dir(CrashModel::KernelCrash);
        let mut log = ResultsLog::open(dir.path(), CrashModel::KernelCrash).unwrap();
        let mut summary = Summary::default();
        let mut sum = SummarySink {
            summary: &mut summary,
            start: Instant::now(),
        };
        {
            let mut sinks: [&mut dyn Sink; 2] = [&mut log, &mut sum];
            // A kernel-crash campaign has no states log.
            let err = emit(&mut sinks, &Event::StateJudged(&state(0, 0, false))).unwrap_err();
            assert!(format!("{err:#}").contains("no states log"), "{err:#}");
        }
        assert!(summary.first_failure_after_s.is_none(), "the summary did not see it");
    }

    #[test]
    fn the_logs_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let err = ResultsLog::open(dir.path(), CrashModel::KernelCrash).err().unwrap();
        assert!(format!("{err:#}").contains("trials.jsonl"), "{err:#}");
    }
}
