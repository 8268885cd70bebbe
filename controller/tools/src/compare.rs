//! `crashlab compare`: the same crash states judged on two kernels, A (the
//! campaign's, or `--baseline-images-dir`) and B (`--images-dir`): does a
//! patch fix a bug, does a new kernel regress?
//!
//! Two modes:
//! - `recovery` (power loss, the default): a kept capture's states are
//!   planned once and each is recovered by A's kernel and by B's (a checker
//!   VM booting each one's images). The bytes are the same for both, so a
//!   difference is in recovery alone.
//! - `capture` (`--recapture`; the only mode under kernel crash): the
//!   campaign's configuration runs again on B with the same seeds, its
//!   results under `compare/<label>/`; trials are compared. This also sees
//!   bugs in the write path, but two captures differ in timing, so a
//!   power-loss trial's states are not the same states.
//!
//! Per pair: `same` (both pass, or both fail the same first rule), `fixed`
//! (A fails, B passes), `regression` (A passes, B fails), `other-rule`
//! (both fail, differently). Results: `compare/<label>/comparison.json`
//! (identities, counts, the differing pairs) and `pairs.jsonl` (every
//! pair); `crashlab report` shows them.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use config::{Checker, CrashModel};
use machine::images::{GuestImages, KernelIdentity};

/// At most this many differing pairs are kept in comparison.json (all are
/// in pairs.jsonl).
pub const DIFFERENCES_KEPT_MAX: usize = 1000;

pub struct CompareRequest<'a> {
    pub campaign_dir: &'a Path,
    /// Kernel B's images.
    pub images_b: PathBuf,
    /// Kernel A's images (default: the campaign's own).
    pub images_a: Option<PathBuf>,
    /// Trials to compare (default: every trial with a kept capture, or
    /// every finished trial when recapturing).
    pub trials: Vec<u64>,
    /// States per trial (recovery mode; default: the campaign's).
    pub state_budget: Option<u64>,
    pub check_workers: Option<u32>,
    pub recapture: bool,
    pub show_progress: bool,
    pub interrupt: &'a AtomicBool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Recovery,
    Capture,
}

/// One side's verdict on a state (or a trial, in capture mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub passed: bool,
    /// The first rule broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Capture mode: the trial's failed states (power loss).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub states_failed: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Difference {
    Same,
    Fixed,
    Regression,
    OtherRule,
}

impl Difference {
    pub fn name(self) -> &'static str {
        match self {
            Difference::Same => "same",
            Difference::Fixed => "fixed",
            Difference::Regression => "regression",
            Difference::OtherRule => "other-rule",
        }
    }
}

pub fn difference(a: &Verdict, b: &Verdict) -> Difference {
    match (a.passed, b.passed) {
        (true, true) => Difference::Same,
        (false, true) => Difference::Fixed,
        (true, false) => Difference::Regression,
        (false, false) if a.rule == b.rule => Difference::Same,
        (false, false) => Difference::OtherRule,
    }
}

/// A state (recovery mode) or a trial (capture mode) judged on both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub trial: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_position: Option<u64>,
    pub a: Verdict,
    pub b: Verdict,
    pub difference: Difference,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub compared: u64,
    pub both_passed: u64,
    /// Both failed, with the same first rule.
    pub both_failed: u64,
    pub fixed: u64,
    pub regressions: u64,
    pub other_rule: u64,
    pub a_failed: u64,
    pub b_failed: u64,
}

impl Counts {
    pub fn of(pairs: &[Pair]) -> Counts {
        let mut c = Counts::default();
        for p in pairs {
            c.compared += 1;
            c.a_failed += u64::from(!p.a.passed);
            c.b_failed += u64::from(!p.b.passed);
            match (p.difference, p.a.passed) {
                (Difference::Same, true) => c.both_passed += 1,
                (Difference::Same, false) => c.both_failed += 1,
                (Difference::Fixed, _) => c.fixed += 1,
                (Difference::Regression, _) => c.regressions += 1,
                (Difference::OtherRule, _) => c.other_rule += 1,
            }
        }
        c
    }
}

/// A kernel under comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Side {
    pub images_dir: PathBuf,
    pub kernel: KernelIdentity,
}

/// What `comparison.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub mode: Mode,
    /// What a difference can mean in this mode, in a sentence.
    pub scope: String,
    pub campaign_dir: PathBuf,
    pub a: Side,
    pub b: Side,
    pub trials: Vec<u64>,
    pub counts: Counts,
    /// Capture mode: B's campaign directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_campaign_dir: Option<PathBuf>,
    /// The pairs whose verdicts differ, at most `DIFFERENCES_KEPT_MAX`.
    pub differences: Vec<Pair>,
    pub elapsed_s: f64,
}

impl Comparison {
    /// Exit status: 1 when B fails what A passes.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.counts.regressions > 0)
    }
}

const RECOVERY_SCOPE: &str = "one capture, the same bytes recovered by each kernel: a difference is in recovery alone";
const CAPTURE_SCOPE: &str = "the same configuration and seeds run on each kernel: a difference may be in the write \
                             path or in recovery, and two captures differ in timing";

/// Runs the comparison and writes its results under the campaign.
pub fn compare(req: &CompareRequest) -> Result<(Comparison, PathBuf)> {
    let start = std::time::Instant::now();
    let found = crate::verify::check_for_reading(req.campaign_dir);
    if !found.is_empty() {
        return Err(machine::seal::refusal(
            &format!("cannot compare {}", req.campaign_dir.display()),
            &found,
        ));
    }
    let (_, config) = campaign::read_campaign_json(req.campaign_dir)?;
    let recapture = req.recapture || config.crash_model == CrashModel::KernelCrash;
    let trials = match (recapture, req.trials.is_empty()) {
        (false, true) => kept_trials(req.campaign_dir, config.trials),
        _ => req.trials.clone(),
    };
    anyhow::ensure!(
        recapture || !trials.is_empty(),
        "no trial of {} kept its capture (blocklog.bin and base-disk.img): rerun the campaign with \
         --keep-images, or compare with --recapture (the configuration run again on B)",
        req.campaign_dir.display()
    );
    let images_a = match &req.images_a {
        Some(dir) => machine::images::locate(dir)?,
        None => machine::images::locate_build(&config.images_dir, config.kernel_build.as_deref())?,
    };
    let images_b = machine::images::locate(&req.images_b)?;
    images_b.check_supports(config.fs)?;
    let out_dir = req.campaign_dir.join("compare").join(label(&images_b));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {} (disk full?)", out_dir.display()))?;
    let side = |dir: &Path, images: &GuestImages| Side {
        images_dir: std::path::absolute(dir).unwrap_or(dir.to_path_buf()),
        kernel: images.identity.clone(),
    };
    let a_dir = req.images_a.clone().unwrap_or(config.images_dir.clone());
    let (mode, pairs, b_campaign_dir) = match recapture {
        false => (Mode::Recovery, recovery_pairs(req, &trials)?, None),
        true => {
            let (pairs, dir) = capture_pairs(req, &config, &out_dir)?;
            (Mode::Capture, pairs, Some(dir))
        }
    };
    let mut trials: Vec<u64> = pairs.iter().map(|p| p.trial).collect();
    trials.dedup();
    let comparison = Comparison {
        mode,
        scope: match mode {
            Mode::Recovery => RECOVERY_SCOPE,
            Mode::Capture => CAPTURE_SCOPE,
        }
        .into(),
        campaign_dir: std::path::absolute(req.campaign_dir)?,
        a: side(&a_dir, &images_a),
        b: side(&req.images_b, &images_b),
        trials,
        counts: Counts::of(&pairs),
        b_campaign_dir,
        differences: pairs
            .iter()
            .filter(|p| p.difference != Difference::Same)
            .take(DIFFERENCES_KEPT_MAX)
            .cloned()
            .collect(),
        elapsed_s: start.elapsed().as_secs_f64(),
    };
    write_results(&out_dir, &comparison, &pairs)?;
    Ok((comparison, out_dir))
}

/// A directory name for B: its release and the first digits of its build
/// key (or image digest).
pub fn label(images: &GuestImages) -> String {
    let id = &images.identity;
    let digest = id.build_key_short().unwrap_or_else(|| {
        machine::images::short(&id.digest)
            .trim_start_matches("blake3:")
            .to_string()
    });
    let raw = match digest.is_empty() {
        true => format!("vs-{}", id.release),
        false => format!("vs-{}-{}", id.release, digest),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The kept trials' states, each checked on A and on B.
fn recovery_pairs(req: &CompareRequest, trials: &[u64]) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for &trial in trials {
        let a = check_states(req, trial, req.images_a.clone(), "A")?;
        let b = check_states(req, trial, Some(req.images_b.clone()), "B")?;
        anyhow::ensure!(
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.0 == y.0 && x.1 == y.1),
            "trial {trial}: A and B were given different states ({} and {}): the plan is not a function of the \
             capture, a bug in crashlab",
            a.len(),
            b.len()
        );
        for ((state, position, a), (_, _, b)) in a.into_iter().zip(b) {
            pairs.push(Pair {
                trial,
                state: Some(state),
                crash_position: Some(position),
                difference: difference(&a, &b),
                a,
                b,
            });
        }
    }
    Ok(pairs)
}

/// Trials whose capture was kept, ascending.
pub fn kept_trials(campaign_dir: &Path, trials: u64) -> Vec<u64> {
    (0..trials)
        .filter(|t| {
            let dir = campaign_dir.join("trials").join(t.to_string());
            dir.join("blocklog.bin").is_file() && dir.join("base-disk.img").is_file()
        })
        .collect()
}

/// (state, crash position, verdict) of every state of a kept trial,
/// checked by the kernel of `images_dir` (None: the campaign's).
fn check_states(
    req: &CompareRequest,
    trial: u64,
    images_dir: Option<PathBuf>,
    side: &str,
) -> Result<Vec<(u64, u64, Verdict)>> {
    let t = std::time::Instant::now();
    let request = crate::recheck::RecheckRequest {
        campaign_dir: req.campaign_dir,
        trial,
        state_budget: req.state_budget,
        checker: Some(Checker::Kernel),
        check_workers: req.check_workers,
        read_files: None,
        images_dir,
        interrupt: req.interrupt,
    };
    let mut verdicts = Vec::new();
    let record = crate::recheck::recheck(&request, |line| {
        let finding = line.first_violation.as_ref();
        verdicts.push((
            line.state,
            line.crash_position,
            Verdict {
                passed: line.passed,
                rule: finding.map(|f| kebab(f.rule)),
                reason: finding.map(|f| f.reason.clone()),
                states_failed: None,
            },
        ));
        Ok(())
    })
    .with_context(|| format!("checking trial {trial}'s states on kernel {side}"))?;
    if req.show_progress {
        eprintln!(
            "compare: kernel {side}, trial {trial}: {} states checked, {} failed ({:.0} s)",
            record.states_checked,
            record.states_failed,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(verdicts)
}

/// The campaign run again on B, its trials beside A's.
fn capture_pairs(
    req: &CompareRequest,
    config: &config::CampaignConfig,
    out_dir: &Path,
) -> Result<(Vec<Pair>, PathBuf)> {
    let config_b = config::CampaignConfig {
        images_dir: req.images_b.clone(),
        kernel_build: None,
        ..config.clone()
    };
    let a_lines = trial_lines(req.campaign_dir)?;
    anyhow::ensure!(
        !a_lines.is_empty(),
        "{} has no finished trial to compare",
        req.campaign_dir.display()
    );
    // The trials asked for, each alone; or the campaign as it ran (all its
    // trials, or the one it was limited to).
    let runs: Vec<(String, Option<u64>)> = match req.trials.is_empty() {
        true => vec![("on-b".into(), only_trial(req.campaign_dir))],
        false => req
            .trials
            .iter()
            .map(|t| (format!("on-b-trial-{t}"), Some(*t)))
            .collect(),
    };
    let mut b_lines = Vec::new();
    for (campaign_id, only_trial) in &runs {
        let b_dir = out_dir.join(campaign_id);
        if b_dir.exists() {
            std::fs::remove_dir_all(&b_dir).with_context(|| format!("cannot clear {}", b_dir.display()))?;
        }
        let request = campaign::CampaignRequest {
            config: &config_b,
            results_root: out_dir,
            campaign_id: campaign_id.clone(),
            only_trial: *only_trial,
            resume: false,
            show_progress: req.show_progress,
            interrupt: req.interrupt,
        };
        campaign::run_campaign(&request).context("the campaign on kernel B")?;
        b_lines.extend(trial_lines(&b_dir)?);
    }
    let b_dir = out_dir.join(&runs[0].0);
    let mut pairs = Vec::new();
    for (trial, _) in &a_lines {
        let trial = *trial;
        let find =
            |lines: &[(u64, serde_json::Value)]| lines.iter().find(|(t, _)| *t == trial).map(|(_, l)| trial_verdict(l));
        let (Some(a), Some(b)) = (find(&a_lines), find(&b_lines)) else {
            continue;
        };
        pairs.push(Pair {
            trial,
            state: None,
            crash_position: None,
            difference: difference(&a, &b),
            a,
            b,
        });
    }
    Ok((pairs, b_dir))
}

/// The trial a campaign was limited to (`--only-trial`), from campaign.json.
fn only_trial(campaign_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(campaign_dir.join("campaign.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["only_trial"].as_u64()
}

fn trial_lines(dir: &Path) -> Result<Vec<(u64, serde_json::Value)>> {
    let (lines, _torn) = campaign::read_jsonl(&dir.join("trials.jsonl"))?;
    Ok(lines
        .into_iter()
        .filter_map(|l| Some((l["trial"].as_u64()?, l)))
        .collect())
}

/// A trial's verdict from its `trials.jsonl` line (either crash model).
pub fn trial_verdict(line: &serde_json::Value) -> Verdict {
    let first = &line["violations"][0];
    let text = |v: &serde_json::Value| v.as_str().map(String::from);
    Verdict {
        passed: line["passed"].as_bool().unwrap_or(false),
        rule: text(&first["rule"]),
        reason: text(&first["reason"]),
        states_failed: line["states_failed"].as_u64(),
    }
}

fn write_results(out_dir: &Path, comparison: &Comparison, pairs: &[Pair]) -> Result<()> {
    let mut lines = String::new();
    for pair in pairs {
        lines += &serde_json::to_string(pair)?;
        lines.push('\n');
    }
    machine::durable::write_atomically(&out_dir.join("pairs.jsonl"), lines.as_bytes())?;
    machine::durable::write_atomically(
        &out_dir.join("comparison.json"),
        (serde_json::to_string_pretty(comparison)? + "\n").as_bytes(),
    )
}

/// The table `crashlab compare` prints: who A and B are, what a
/// difference can mean, each differing pair, the counts.
pub fn render(c: &Comparison, results: &Path) -> String {
    let mut s = format!("compare ({}): {}\n", kebab(c.mode), c.scope);
    s += &format!("  A: {}  ({})\n", c.a.kernel.summary_line(), c.a.images_dir.display());
    s += &format!("  B: {}  ({})\n", c.b.kernel.summary_line(), c.b.images_dir.display());
    let unit = match c.mode {
        Mode::Recovery => "states",
        Mode::Capture => "trials",
    };
    if !c.differences.is_empty() {
        s += &format!(
            "{:>6} {:>6} {:>10}  {:<11} {:<32} {}\n",
            "trial", "state", "crash pos", "difference", "A", "B"
        );
    }
    for p in &c.differences {
        let cell = |v: &Verdict| match (&v.rule, v.passed) {
            (_, true) => "pass".to_string(),
            (Some(rule), false) => rule.clone(),
            (None, false) => "fail".into(),
        };
        let opt = |v: Option<u64>| v.map_or("-".into(), |n| n.to_string());
        s += &format!(
            "{:>6} {:>6} {:>10}  {:<11} {:<32} {}\n",
            p.trial,
            opt(p.state),
            opt(p.crash_position),
            p.difference.name(),
            cell(&p.a),
            cell(&p.b)
        );
    }
    if c.differences.len() as u64 > c.counts.fixed + c.counts.regressions + c.counts.other_rule {
        s += "  (more differences in pairs.jsonl)\n";
    }
    let k = &c.counts;
    s += &format!(
        "{} {unit} compared: A failed {}, B failed {}; same verdict {} (both pass {}, both fail the same rule {}); \
         fixed {}, regressions {}, both fail with another rule {}\n",
        k.compared,
        k.a_failed,
        k.b_failed,
        k.both_passed + k.both_failed,
        k.both_passed,
        k.both_failed,
        k.fixed,
        k.regressions,
        k.other_rule
    );
    s += &format!("results: {}\n", results.display());
    s
}

fn kebab<T: Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(passed: bool, rule: Option<&str>) -> Verdict {
        Verdict {
            passed,
            rule: rule.map(String::from),
            reason: rule.map(|r| format!("{r} because")),
            states_failed: None,
        }
    }

    #[test]
    fn differences_name_what_changed_from_a_to_b() {
        let pass = verdict(true, None);
        let lost = verdict(false, Some("acked-record-lost"));
        let mount = verdict(false, Some("mountable"));
        assert_eq!(difference(&pass, &pass), Difference::Same);
        assert_eq!(difference(&lost, &lost), Difference::Same);
        assert_eq!(difference(&mount, &pass), Difference::Fixed);
        assert_eq!(difference(&pass, &mount), Difference::Regression);
        assert_eq!(difference(&mount, &lost), Difference::OtherRule);
    }

    fn pair(state: u64, a: Verdict, b: Verdict) -> Pair {
        Pair {
            trial: 0,
            state: Some(state),
            crash_position: Some(100 + state),
            difference: difference(&a, &b),
            a,
            b,
        }
    }

    #[test]
    fn counts_and_the_table_and_the_exit_code() {
        let pass = || verdict(true, None);
        let mount = || verdict(false, Some("mountable"));
        let pairs = vec![
            pair(0, pass(), pass()),
            pair(1, mount(), pass()),
            pair(2, mount(), mount()),
            pair(3, pass(), mount()),
            pair(4, mount(), verdict(false, Some("acked-record-lost"))),
        ];
        let counts = Counts::of(&pairs);
        assert_eq!(
            counts,
            Counts {
                compared: 5,
                both_passed: 1,
                both_failed: 1,
                fixed: 1,
                regressions: 1,
                other_rule: 1,
                a_failed: 3,
                b_failed: 3,
            }
        );
        let side = |release: &str| Side {
            images_dir: PathBuf::from("/images"),
            kernel: KernelIdentity {
                release: release.into(),
                ..Default::default()
            },
        };
        let mut comparison = Comparison {
            mode: Mode::Recovery,
            scope: RECOVERY_SCOPE.into(),
            campaign_dir: PathBuf::from("/c"),
            a: side("6.1.0-57-amd64"),
            b: side("6.12.118-crashlab"),
            trials: vec![0],
            counts,
            b_campaign_dir: None,
            differences: pairs
                .iter()
                .filter(|p| p.difference != Difference::Same)
                .cloned()
                .collect(),
            elapsed_s: 1.0,
        };
        let table = render(&comparison, Path::new("/c/compare/x"));
        assert!(table.contains("recovery alone"), "{table}");
        assert!(table.contains("A: 6.1.0-57-amd64"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "1", "101", "fixed", "mountable", "pass"]),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["0", "3", "103", "regression", "pass", "mountable"]),
            "{table}"
        );
        assert!(
            !table.lines().any(|l| l.starts_with("     0      0 ")),
            "same verdicts are not listed: {table}"
        );
        assert!(table.contains("5 states compared: A failed 3, B failed 3"), "{table}");
        assert_eq!(comparison.exit_code(), 1, "B fails a state A passes");
        comparison.counts.regressions = 0;
        assert_eq!(comparison.exit_code(), 0);
    }

    #[test]
    fn a_trials_verdict_reads_from_either_crash_models_line() {
        // The controller's results fixtures, shared with its integration tests.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/results");
        let first = |name: &str| trial_lines(&fixtures.join(name)).unwrap().remove(0).1;
        let kernel_crash = trial_verdict(&first("kernel-crash-ack-before-sync"));
        assert!(!kernel_crash.passed);
        assert_eq!(kernel_crash.rule.as_deref(), Some("acked-record-lost"));
        let power_loss = trial_verdict(&first("power-loss-barrier0"));
        assert!(!power_loss.passed);
        assert_eq!(power_loss.rule.as_deref(), Some("file-present"));
        assert!(power_loss.states_failed.unwrap() > 0);
        assert!(trial_verdict(&first("kernel-crash-clean")).passed);
    }
}
