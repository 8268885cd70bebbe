//! `crashlab verify DIR`: a results directory's own fsck. For each
//! campaign under DIR (one, or a sweep's): its configuration reads back,
//! every sealed file is as sealed (`seal`), every trial line names its
//! trial's seal and every file of it holds, the state lines belong to
//! finished trials and are as many as their trial says, each with its
//! identity, and the summary counts what the lines hold. Each problem is
//! named; `merge` refuses a shard with any.
//!
//! Notes (not problems): files written after the seal (a replayed state's
//! image, minimise's output, the report, comparisons), and guest images
//! that changed since the campaign ran (its results stand; a replay with
//! the kernel checker would need `--images-dir`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use machine::seal::{self, CampaignSeal};

#[derive(Debug, Default)]
pub struct Verification {
    pub campaigns: Vec<PathBuf>,
    pub files_checked: u64,
    pub trials: u64,
    pub states: u64,
    /// Each a line: the file or line, and what is wrong.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Verification {
    pub fn render(&self) -> String {
        let mut s = String::new();
        for p in &self.problems {
            s += &format!("problem: {p}\n");
        }
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        s += &format!(
            "{} campaign(s), {} sealed files, {} trials, {} states checked: {}\n",
            self.campaigns.len(),
            self.files_checked,
            self.trials,
            self.states,
            match self.problems.len() {
                0 => "everything holds".to_string(),
                n => format!("{n} problem(s)"),
            }
        );
        s
    }
}

/// Verifies every campaign under `dir`. An error only when `dir` holds no
/// campaign at all.
pub fn verify(dir: &Path) -> Result<Verification> {
    let campaigns = campaign::results::find_campaigns(dir)?;
    anyhow::ensure!(
        !campaigns.is_empty(),
        "{} holds no campaign (no campaign.json, no sweep table): give a campaign's results directory",
        dir.display()
    );
    let mut v = Verification::default();
    for campaign in &campaigns {
        verify_campaign(campaign, &mut v);
    }
    v.campaigns = campaigns;
    Ok(v)
}

/// For a command about to read a campaign (merge): its problems as an error.
pub fn refuse_unless_clean(dir: &Path, what: &str) -> Result<()> {
    let v = verify(dir)?;
    match v.problems.is_empty() {
        true => Ok(()),
        false => anyhow::bail!(
            "{what} {}: its results do not verify:\n  {}\nrestore them from a copy, or rerun it",
            dir.display(),
            v.problems.join("\n  ")
        ),
    }
}

/// What `crashlab report` reads of a campaign, against its seal: the
/// results files and each finished trial's logs (not its disk images).
/// Results from before sealing are read as they are.
pub fn check_for_reading(dir: &Path) -> Vec<seal::Mismatch> {
    let Ok(Some(campaign_seal)) = seal::read_campaign_seal(dir) else {
        return Vec::new();
    };
    let mut found = campaign_seal.check(
        dir,
        Some(&["campaign.json", "trials.jsonl", "states.jsonl", "summary.json"]),
    );
    let Ok((lines, _)) = campaign::read_jsonl(&dir.join("trials.jsonl")) else {
        return found;
    };
    for line in lines {
        let (Some(trial), digest) = (line["trial"].as_u64(), line["seal"].as_str()) else {
            continue;
        };
        let trial_dir = dir.join("trials").join(trial.to_string());
        match seal::read_trial_seal(&trial_dir, digest) {
            Ok(trial_seal) => {
                let logs: Vec<&str> = trial_seal
                    .files
                    .iter()
                    .map(|f| f.name.as_str())
                    .filter(|n| n.ends_with(".log"))
                    .collect();
                found.extend(seal::check_trial(&trial_dir, &trial_seal, Some(&logs)));
            }
            Err(m) => found.push(m),
        }
    }
    found
}

fn verify_campaign(dir: &Path, v: &mut Verification) {
    let at = |name: &str| dir.join(name).display().to_string();
    let config = match campaign::read_campaign_json(dir) {
        Ok((_, config)) => config,
        Err(e) => return v.problems.push(format!("{}: {e:#}", at("campaign.json"))),
    };
    let seal = match seal::read_campaign_seal(dir) {
        Ok(Some(seal)) => seal,
        Ok(None) => {
            return v.problems.push(format!(
                "{}: not sealed (results written before crashlab sealed its evidence): nothing to check them against",
                at(seal::SEAL_FILE)
            ))
        }
        Err(e) => return v.problems.push(format!("{e:#}")),
    };
    check_campaign_files(dir, &seal, &config, v);
    let lines = match campaign::read_jsonl(&dir.join("trials.jsonl")) {
        Ok((lines, torn)) => {
            if torn.is_some() {
                v.problems
                    .push(format!("{}: its last line is torn", at("trials.jsonl")));
            }
            lines
        }
        Err(e) => return v.problems.push(format!("{e:#}")),
    };
    let trial_states = check_trials(dir, &config, &lines, v);
    if config.crash_model == config::CrashModel::PowerLoss {
        check_states(dir, &trial_states, v);
    }
    check_summary(dir, &lines, &trial_states, v);
}

fn check_campaign_files(dir: &Path, seal: &CampaignSeal, config: &config::CampaignConfig, v: &mut Verification) {
    v.files_checked += seal.files.len() as u64;
    v.problems.extend(seal.check(dir, None).iter().map(|m| m.to_string()));
    if !seal.files.iter().any(|f| f.name == "trials.jsonl") {
        v.notes.push(format!(
            "{}: the results files are not sealed yet (a campaign still running, or killed: resume it)",
            dir.display()
        ));
    }
    // The images are not part of the results: a change is worth saying,
    // not a broken results directory.
    if let Ok(images) = machine::images::locate(&config.images_dir) {
        let images = machine::program::campaign_images(images, config, dir, None);
        if let Some(changed) = images.ok().map(|i| seal.check_images(&i)).filter(|c| !c.is_empty()) {
            for m in changed {
                v.notes.push(format!(
                    "guest image changed since the campaign ran ({m}): a kernel-checker replay needs --images-dir"
                ));
            }
        }
    }
}

/// Each trial line: unique, inside the campaign, its seal as its line
/// says, every sealed file as sealed. Returns each trial's state count.
fn check_trials(
    dir: &Path,
    config: &config::CampaignConfig,
    lines: &[serde_json::Value],
    v: &mut Verification,
) -> BTreeMap<u64, Option<u64>> {
    let mut trials: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    for (n, line) in lines.iter().enumerate() {
        let where_ = format!("{} line {}", dir.join("trials.jsonl").display(), n + 1);
        let Some(trial) = line["trial"].as_u64().filter(|t| *t < config.trials) else {
            v.problems
                .push(format!("{where_}: no trial of this campaign ({})", line["trial"]));
            continue;
        };
        if trials.insert(trial, line["states_checked"].as_u64()).is_some() {
            v.problems.push(format!("{where_}: trial {trial} is there twice"));
        }
        v.trials += 1;
        let Some(digest) = line["seal"].as_str() else {
            v.problems.push(format!("{where_}: trial {trial}'s line names no seal"));
            continue;
        };
        let trial_dir = dir.join("trials").join(trial.to_string());
        match seal::read_trial_seal(&trial_dir, Some(digest)) {
            Ok(trial_seal) => {
                v.files_checked += trial_seal.files.len() as u64;
                v.problems.extend(
                    seal::check_trial(&trial_dir, &trial_seal, None)
                        .iter()
                        .map(|m| m.to_string()),
                );
                note_unsealed(&trial_dir, &trial_seal, v);
            }
            Err(m) => v.problems.push(m.to_string()),
        }
    }
    trials
}

fn note_unsealed(trial_dir: &Path, trial_seal: &seal::TrialSeal, v: &mut Verification) {
    let Ok(entries) = std::fs::read_dir(trial_dir) else {
        return;
    };
    for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
        if name != seal::SEAL_FILE && !trial_seal.files.iter().any(|f| f.name == name) {
            v.notes.push(format!(
                "{}: written after the seal (replay-state, minimise): not evidence of the campaign",
                trial_dir.join(name).display()
            ));
        }
    }
}

/// State lines: each of a finished trial, numbered 0.. in order, as many
/// as the trial says, each with its identity.
fn check_states(dir: &Path, trials: &BTreeMap<u64, Option<u64>>, v: &mut Verification) {
    let path = dir.join("states.jsonl");
    let lines = match campaign::read_jsonl(&path) {
        Ok((lines, _)) => lines,
        Err(e) => return v.problems.push(format!("{e:#}")),
    };
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for (n, line) in lines.iter().enumerate() {
        let where_ = format!("{} line {}", path.display(), n + 1);
        let (Some(trial), Some(state)) = (line["trial"].as_u64(), line["state"].as_u64()) else {
            v.problems.push(format!("{where_}: no trial and state"));
            continue;
        };
        if !trials.contains_key(&trial) {
            v.problems.push(format!(
                "{where_}: a state of trial {trial}, which has no line in trials.jsonl"
            ));
        }
        let expected = next.entry(trial).or_insert(0);
        if state != *expected {
            v.problems.push(format!(
                "{where_}: trial {trial}'s state {state} where state {expected} was due"
            ));
        }
        *expected = state + 1;
        if line["identity"].as_str().is_none_or(|i| !i.starts_with("blake3:")) {
            v.problems
                .push(format!("{where_}: state {state} of trial {trial} has no identity"));
        }
        v.states += 1;
    }
    for (trial, count) in trials {
        let have = next.get(trial).copied().unwrap_or(0);
        if let Some(count) = count.filter(|c| *c != have) {
            v.problems.push(format!(
                "{}: trial {trial} says it checked {count} states, {have} are there",
                path.display()
            ));
        }
    }
}

fn check_summary(dir: &Path, lines: &[serde_json::Value], trials: &BTreeMap<u64, Option<u64>>, v: &mut Verification) {
    let path = dir.join("summary.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return v
            .notes
            .push(format!("{}: none (the campaign has not ended)", path.display()));
    };
    let Ok(summary) = serde_json::from_str::<serde_json::Value>(&text) else {
        return v.problems.push(format!("{}: not JSON", path.display()));
    };
    let states: u64 = trials.values().map(|c| c.unwrap_or(1)).sum();
    for (key, counted) in [("trials_run", lines.len() as u64), ("states_checked", states)] {
        if summary[key].as_u64() != Some(counted) {
            v.problems.push(format!(
                "{}: {key} is {}, the lines hold {counted}",
                path.display(),
                summary[key]
            ));
        }
    }
}
