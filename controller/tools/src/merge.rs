//! `crashlab merge OUT SHARD_DIR...`: shards of one campaign put together
//! into the campaign directory an unsharded run would have written: the
//! same trials, states and verdicts (timings aside), its summary counted
//! again from the trial lines, each trial's evidence beside them.
//!
//! It refuses, naming the shard: shards of different configurations or
//! seeds, a shard missing or given twice, a shard that has not finished
//! (resume it first), or one whose trials are not its share.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use campaign::{read_campaign_json, resume_point, Summary};
use config::{shard_trials, CampaignConfig, Shard};

struct ShardDir {
    dir: PathBuf,
    meta: serde_json::Value,
    config: CampaignConfig,
    shard: Shard,
    summary: serde_json::Value,
}

/// The merged campaign sealed as a campaign run in one piece would be: its
/// own files, the shards' guest images and program (verified the same on
/// every shard by `check_set`'s configuration match and each shard's own
/// verification).
fn seal_merged(out: &Path, first_shard: &Path) -> Result<()> {
    let Some(shard_seal) = machine::seal::read_campaign_seal(first_shard)? else {
        return Ok(());
    };
    let mut files = Vec::new();
    for name in ["campaign.json", "campaign.toml", machine::program::CAMPAIGN_INITRD] {
        if out.join(name).is_file() {
            files.push(machine::seal::seal_file(out, name)?);
        }
    }
    let seal = machine::seal::CampaignSeal { files, ..shard_seal };
    machine::seal::write_campaign_seal(out, &seal.with_results(out)?)
}

/// The first configuration key where two differ, for the message.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> String {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => a
            .iter()
            .find(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k} is {v} here, {} there", b.get(k).cloned().unwrap_or_default()))
            .or_else(|| {
                b.keys()
                    .find(|k| !a.contains_key(*k))
                    .map(|k| format!("{k} is set only there"))
            })
            .unwrap_or_else(|| "they differ".into()),
        _ => "they differ".into(),
    }
}

fn load(dir: &Path) -> Result<ShardDir> {
    let (meta, config) = read_campaign_json(dir)?;
    let shard = config.shard.with_context(|| {
        format!(
            "{} is not a shard (its campaign was run without --shard)",
            dir.display()
        )
    })?;
    let summary: serde_json::Value = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|s: &serde_json::Value| s["interrupted"] != true)
        .with_context(|| {
            format!(
                "shard {shard} ({}) has not finished: continue it with `crashlab run --resume {}`, then merge",
                dir.display(),
                dir.display()
            )
        })?;
    Ok(ShardDir {
        dir: dir.to_path_buf(),
        meta,
        config,
        shard,
        summary,
    })
}

/// Checks that `shards` are exactly the N shards of one campaign; the
/// unsharded configuration.
fn check_set(shards: &[ShardDir]) -> Result<CampaignConfig> {
    let Some(first) = shards.first() else {
        bail!("no shard directories given: crashlab merge OUT SHARD_DIR...");
    };
    let base = |c: &CampaignConfig| CampaignConfig {
        shard: None,
        ..c.clone()
    };
    let reference = serde_json::to_value(base(&first.config))?;
    let count = first.shard.count;
    for s in &shards[1..] {
        let this = serde_json::to_value(base(&s.config))?;
        if this != reference {
            bail!(
                "{} and {} are not shards of one campaign: {}",
                s.dir.display(),
                first.dir.display(),
                first_difference(&this, &reference)
            );
        }
        if s.shard.count != count {
            bail!(
                "{} is shard {} but {} is shard {}: different numbers of shards",
                s.dir.display(),
                s.shard,
                first.dir.display(),
                first.shard
            );
        }
    }
    for index in 0..count {
        let with: Vec<&ShardDir> = shards.iter().filter(|s| s.shard.index == index).collect();
        match with.len() {
            0 => bail!("shard {index}/{count} is missing: give all {count} shard directories"),
            1 => {}
            _ => bail!(
                "shard {index}/{count} is given twice: {} and {}",
                with[0].dir.display(),
                with[1].dir.display()
            ),
        }
    }
    Ok(base(&first.config))
}

/// Hard links where the filesystem allows (shards' evidence can be large),
/// copies otherwise.
fn link_or_copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_or_copy_tree(&entry.path(), &target)?;
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {} (disk full?)", entry.path().display()))?;
        }
    }
    Ok(())
}

pub fn merge(out: &Path, dirs: &[PathBuf]) -> Result<Summary> {
    for dir in dirs {
        crate::verify::refuse_unless_clean(dir, "shard")?;
    }
    let shards = dirs.iter().map(|d| load(d)).collect::<Result<Vec<_>>>()?;
    let config = check_set(&shards)?;
    let model = config.crash_model;
    let (trials_jsonl, states_jsonl) = merged_lines(&shards, &config)?;
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        bail!("{} exists and is not empty: merge into a new directory", out.display());
    }
    std::fs::create_dir_all(out.join("trials")).with_context(|| format!("cannot create {}", out.display()))?;
    for s in &shards {
        for trial in shard_trials(config.seed, config.trials, s.shard) {
            let from = s.dir.join("trials").join(trial.to_string());
            if from.is_dir() {
                link_or_copy_tree(&from, &out.join("trials").join(trial.to_string()))?;
            }
        }
        let initrd = s.dir.join(machine::program::CAMPAIGN_INITRD);
        if initrd.is_file() && !out.join(machine::program::CAMPAIGN_INITRD).exists() {
            std::fs::copy(&initrd, out.join(machine::program::CAMPAIGN_INITRD))?;
        }
    }
    let id = out
        .file_name()
        .map_or("merged".into(), |n| n.to_string_lossy().into_owned());
    let mut meta = shards[0].meta.clone();
    meta["config"] = serde_json::to_value(&config)?;
    meta["campaign_id"] = id.clone().into();
    meta["rerun"] = format!("crashlab {}", config::shell_join(&config.to_cli_args())).into();
    meta["merged_from"] = shards
        .iter()
        .map(|s| format!("{} ({})", s.dir.display(), s.shard))
        .collect::<Vec<_>>()
        .into();
    machine::durable::write_atomically(
        &out.join("campaign.json"),
        (serde_json::to_string_pretty(&meta)? + "\n").as_bytes(),
    )?;
    machine::durable::write_atomically(&out.join("campaign.toml"), config.to_toml(&id).as_bytes())?;
    machine::durable::write_atomically(&out.join("trials.jsonl"), trials_jsonl.as_bytes())?;
    if model == config::CrashModel::PowerLoss {
        machine::durable::write_atomically(&out.join("states.jsonl"), states_jsonl.as_bytes())?;
    }
    let summary = merged_summary(out, id, &shards, &config, &trials_jsonl, &states_jsonl)?;
    machine::durable::write_atomically(&out.join("summary.txt"), summary.render().as_bytes())?;
    machine::durable::write_atomically(
        &out.join("summary.json"),
        (serde_json::to_string_pretty(&summary)? + "\n").as_bytes(),
    )?;
    seal_merged(out, &shards[0].dir)?;
    machine::durable::sync_tree(out)?;
    Ok(summary)
}

/// The shards' trial and state lines, each shard holding exactly its share
/// (no trial twice, none skipped), in trial (and state) order.
fn merged_lines(shards: &[ShardDir], config: &CampaignConfig) -> Result<(String, String)> {
    let model = config.crash_model;
    let mut trial_lines: Vec<(u64, String)> = Vec::new();
    let mut state_lines: Vec<(u64, u64, String)> = Vec::new();
    for s in shards {
        let trials = std::fs::read(s.dir.join("trials.jsonl"))?;
        let states = match model {
            config::CrashModel::PowerLoss => Some(std::fs::read(s.dir.join("states.jsonl"))?),
            config::CrashModel::KernelCrash => None,
        };
        let point = resume_point(&trials, states.as_deref(), model, config.trials)
            .with_context(|| format!("shard {} ({})", s.shard, s.dir.display()))?;
        let mut have: Vec<u64> = point.finished.iter().map(|(t, _)| *t).collect();
        have.sort_unstable();
        let want = shard_trials(config.seed, config.trials, s.shard);
        if have != want {
            bail!(
                "shard {} ({}) holds trials {have:?}, not its share {want:?}: was it run with another seed, \
                 or cut short? Resume or rerun it",
                s.shard,
                s.dir.display()
            );
        }
        for line in point.trials_jsonl.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            trial_lines.push((v["trial"].as_u64().unwrap_or(0), line.to_string()));
        }
        for line in point.states_jsonl.as_deref().unwrap_or("").lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            state_lines.push((
                v["trial"].as_u64().unwrap_or(0),
                v["state"].as_u64().unwrap_or(0),
                line.to_string(),
            ));
        }
    }
    trial_lines.sort_by_key(|(t, _)| *t);
    state_lines.sort_by_key(|(t, s, _)| (*t, *s));
    let join = |lines: Vec<String>| lines.into_iter().map(|l| l + "\n").collect::<String>();
    Ok((
        join(trial_lines.into_iter().map(|(_, l)| l).collect()),
        join(state_lines.into_iter().map(|(_, _, l)| l).collect()),
    ))
}

/// The summary, counted again from the merged trial lines; times and
/// memory from the shards (they ran side by side).
fn merged_summary(
    out: &Path,
    id: String,
    shards: &[ShardDir],
    config: &CampaignConfig,
    trials_jsonl: &str,
    states_jsonl: &str,
) -> Result<Summary> {
    let model = config.crash_model;
    let point = resume_point(
        trials_jsonl.as_bytes(),
        (model == config::CrashModel::PowerLoss).then_some(states_jsonl.as_bytes()),
        model,
        config.trials,
    )?;
    let mut summary = Summary {
        campaign_id: id,
        results_dir: out.to_path_buf(),
        filesystem: shards[0].summary["filesystem"].as_str().unwrap_or("").to_string(),
        kernel: shards[0].summary["kernel"].as_str().unwrap_or("").to_string(),
        unit: shards[0].summary["unit"].as_str().unwrap_or("records").to_string(),
        state_budget: match model {
            config::CrashModel::PowerLoss => config.state_budget,
            config::CrashModel::KernelCrash => 0,
        },
        ..Default::default()
    };
    for (_, totals) in &point.finished {
        summary.add(totals);
    }
    // The campaign took as long as the longest shard.
    summary.elapsed_s = shards
        .iter()
        .filter_map(|s| s.summary["elapsed_s"].as_f64())
        .fold(0.0, f64::max);
    summary.first_failure_after_s = shards
        .iter()
        .filter_map(|s| s.summary["first_failure_after_s"].as_f64())
        .reduce(f64::min);
    if summary.trials_run > 0 && summary.elapsed_s > 0.0 {
        summary.seconds_per_trial = summary.elapsed_s / summary.trials_run as f64;
        summary.states_per_minute = summary.states_checked as f64 * 60.0 / summary.elapsed_s;
    }
    let peak = |key: &str| shards.iter().filter_map(|s| s.summary[key].as_u64()).max().unwrap_or(0);
    summary.peak_rss_kib = peak("peak_rss_kib");
    summary.peak_rss_largest_child_kib = peak("peak_rss_largest_child_kib");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{sample_config, CrashModel};

    /// A finished shard directory of `config`, with kernel-crash trial lines
    /// for its share (the trial lines hold what the summary needs).
    fn shard_dir(root: &Path, name: &str, config: &CampaignConfig, finished: bool) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = serde_json::json!({ "config": config, "campaign_id": name });
        std::fs::write(dir.join("campaign.json"), meta.to_string()).unwrap();
        let mut lines = String::new();
        for t in shard_trials(config.seed, config.trials, config.shard.unwrap()) {
            let line = serde_json::json!({
                "trial": t, "passed": t != 1, "run_end": "crashed", "violation_count": u64::from(t == 1),
                "observation_count": 0,
                "counts": {"begun": 5, "acked": 4, "in_flight": 1, "lost": u64::from(t == 1), "torn": 0,
                           "in_flight_new": 0, "in_flight_old": 1, "intact": 3}
            });
            lines += &format!("{line}\n");
        }
        std::fs::write(dir.join("trials.jsonl"), lines).unwrap();
        if finished {
            let n = shard_trials(config.seed, config.trials, config.shard.unwrap()).len();
            let summary = serde_json::json!({
                "elapsed_s": 10.0, "interrupted": false, "trials_run": n, "states_checked": n,
            });
            std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
        }
        seal_shard(&dir);
        dir
    }

    /// Seals a hand-made shard as a campaign seals its results: each
    /// trial's evidence (here one log), its line naming the seal.
    fn seal_shard(dir: &Path) {
        let text = std::fs::read_to_string(dir.join("trials.jsonl")).unwrap();
        let mut lines = String::new();
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let trial = v["trial"].as_u64().unwrap();
            let trial_dir = dir.join("trials").join(trial.to_string());
            std::fs::create_dir_all(&trial_dir).unwrap();
            std::fs::write(trial_dir.join("workload.protocol.log"), format!("READY {trial}\n")).unwrap();
            v["seal"] = machine::seal::seal_trial(&trial_dir, trial, None).unwrap().into();
            lines += &format!("{v}\n");
        }
        std::fs::write(dir.join("trials.jsonl"), lines).unwrap();
        let seal = machine::seal::CampaignSeal {
            seal_format: machine::seal::SEAL_FORMAT,
            files: vec![machine::seal::seal_file(dir, "campaign.json").unwrap()],
            images: None,
            program: Vec::new(),
        };
        machine::seal::write_campaign_seal(dir, &seal.with_results(dir).unwrap()).unwrap();
    }

    fn sharded(index: u32) -> CampaignConfig {
        CampaignConfig {
            crash_model: CrashModel::KernelCrash,
            trials: 7,
            shard: Some(Shard { index, count: 3 }),
            ..sample_config()
        }
    }

    #[test]
    fn three_shards_merge_into_the_whole_campaign() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..3)
            .map(|i| shard_dir(root.path(), &format!("s{i}"), &sharded(i), true))
            .collect();
        let summary = merge(&root.path().join("all"), &dirs).unwrap();
        assert_eq!(
            (summary.trials_run, summary.trials_failed, summary.violations),
            (7, 1, 1)
        );
        let trials: Vec<u64> = std::fs::read_to_string(root.path().join("all/trials.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["trial"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(trials, (0..7).collect::<Vec<_>>());
        let meta = std::fs::read_to_string(root.path().join("all/campaign.json")).unwrap();
        assert!(!meta.contains("\"shard\"") && meta.contains("merged_from"), "{meta}");
        // The merged campaign is sealed like one run whole.
        let verified = crate::verify::verify(&root.path().join("all")).unwrap();
        assert!(verified.problems.is_empty(), "{}", verified.render());
        // The merged directory is not a target twice.
        let again = merge(&root.path().join("all"), &dirs).unwrap_err().to_string();
        assert!(again.contains("not empty"), "{again}");
    }

    #[test]
    fn each_bad_set_of_shards_is_refused_naming_the_shard() {
        let root = tempfile::tempdir().unwrap();
        let s0 = shard_dir(root.path(), "s0", &sharded(0), true);
        let s1 = shard_dir(root.path(), "s1", &sharded(1), true);
        let s2 = shard_dir(root.path(), "s2", &sharded(2), true);
        let err = |dirs: &[&PathBuf]| {
            let dirs: Vec<PathBuf> = dirs.iter().map(|d| (*d).clone()).collect();
            format!("{:#}", merge(&root.path().join("out"), &dirs).unwrap_err())
        };
        assert!(err(&[&s0, &s2]).contains("shard 1/3 is missing"));
        let s1b = shard_dir(root.path(), "s1b", &sharded(1), true);
        assert!(err(&[&s0, &s1, &s1b, &s2]).contains("shard 1/3 is given twice"));
        let other_seed = shard_dir(root.path(), "seed", &CampaignConfig { seed: 99, ..sharded(1) }, true);
        let e = err(&[&s0, &other_seed, &s2]);
        assert!(e.contains("not shards of one campaign") && e.contains("seed"), "{e}");
        let unfinished = shard_dir(root.path(), "unfinished", &sharded(1), false);
        assert!(err(&[&s0, &unfinished, &s2]).contains("has not finished"));
        let whole = shard_dir(root.path(), "whole", &sharded(1), true);
        std::fs::write(
            whole.join("campaign.json"),
            serde_json::json!({"config": CampaignConfig { shard: None, ..sharded(1) }}).to_string(),
        )
        .unwrap();
        seal_shard(&whole);
        assert!(err(&[&s0, &whole, &s2]).contains("is not a shard"));
        // A shard that lacks a trial of its share.
        let short = shard_dir(root.path(), "short", &sharded(1), true);
        let text = std::fs::read_to_string(short.join("trials.jsonl")).unwrap();
        let first_line_dropped: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(short.join("trials.jsonl"), first_line_dropped).unwrap();
        std::fs::remove_dir_all(short.join("trials")).unwrap();
        std::fs::write(
            short.join("summary.json"),
            r#"{"interrupted": false, "trials_run": 1, "states_checked": 1}"#,
        )
        .unwrap();
        seal_shard(&short);
        assert!(err(&[&s0, &short, &s2]).contains("not its share"));
        // A shard whose results changed after they were sealed.
        let edited = shard_dir(root.path(), "edited", &sharded(1), true);
        let text = std::fs::read_to_string(edited.join("trials.jsonl")).unwrap();
        std::fs::write(
            edited.join("trials.jsonl"),
            text.replace("\"passed\":true", "\"passed\":false"),
        )
        .unwrap();
        let e = err(&[&s0, &edited, &s2]);
        assert!(
            e.contains("results do not verify") && e.contains("edited/trials.jsonl: sealed as"),
            "{e}"
        );
    }
}
