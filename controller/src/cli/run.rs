//! `crashlab run`: one campaign, resumed, or sharded over `--jobs`
//! children; `crashlab slurm`: the same sharded over a Slurm array.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::args::*;
use super::commands::minimise_first_failure;
use super::sweeps::run_file;
use campaign::{self, CampaignRequest};
use config::CampaignConfig;
use tools::slurm;

pub fn run(args: RunArgs) -> ExitCode {
    // A file's cells never hold --config (files cannot set it): no loop.
    if let Some(path) = &args.config {
        return run_file(path);
    }
    if let Some(jobs) = args.jobs {
        return run_jobs(&args, jobs);
    }
    if let Some(dir) = &args.resume {
        return match resume_request(dir, &args) {
            Ok((config, root, id)) => run_request(
                &CampaignRequest {
                    config: &config,
                    results_root: &root,
                    campaign_id: id,
                    only_trial: None,
                    resume: true,
                    show_progress: !args.quiet,
                    interrupt: &machine::signals::INTERRUPTED,
                },
                args.junit.as_deref(),
                args.minimise,
            ),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let config = match config_from(&args) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let campaign_id = args.campaign_id.unwrap_or_else(|| campaign_id_of(&config));
    let request = CampaignRequest {
        config: &config,
        results_root: &args.results_dir,
        campaign_id,
        only_trial: args.only_trial,
        resume: false,
        show_progress: !args.quiet,
        interrupt: &machine::signals::INTERRUPTED,
    };
    run_request(&request, args.junit.as_deref(), args.minimise)
}

/// `crashlab slurm`: the scripts of a sharded campaign, or (with
/// --resume DIR) the resubmission of its unfinished shards.
pub fn slurm(args: SlurmArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let scripts = match &args.run.resume {
        Some(dir) => slurm_resumed(dir),
        None => slurm_written(&args),
    };
    let SlurmScripts {
        dir,
        array,
        merge,
        tasks,
    } = match scripts {
        Ok(scripts) => scripts,
        Err(msg) => return fail(msg),
    };
    if tasks.as_ref().is_some_and(Vec::is_empty) {
        outln!(
            "every shard of {} has finished; the merge job (or `crashlab merge`) does the rest",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    let (first, second) = slurm::submit_commands(&array, &merge, tasks.as_deref());
    if !args.submit {
        outln!("scripts in {}/slurm; submit with:", dir.display());
        outln!("  jobid=$({})", config::shell_join(&first));
        outln!("  {}", config::shell_join(&second).replace("ARRAY_JOB_ID", "$jobid"));
        outln!(
            "the merged campaign will be {}/campaign (report.html, junit.xml)",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    match slurm::submit(&first, &second) {
        Ok((array_job, merge_job)) => {
            outln!("submitted: array job {array_job}, merge job {merge_job} (after the array)");
            outln!("the merged campaign will be {}/campaign", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

/// A sharded campaign's Slurm scripts, and the array tasks to submit
/// (`None`: all of them).
struct SlurmScripts {
    dir: PathBuf,
    array: PathBuf,
    merge: PathBuf,
    tasks: Option<Vec<u32>>,
}

/// `slurm --resume DIR`: the scripts written before, the shards unfinished.
fn slurm_resumed(dir: &Path) -> Result<SlurmScripts, String> {
    let state = std::fs::read_to_string(dir.join("slurm/slurm.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .ok_or_else(|| {
            format!(
                "{} holds no slurm/slurm.json: was it written by `crashlab slurm`?",
                dir.display()
            )
        })?;
    let shards = state["shards"].as_u64().unwrap_or(0) as u32;
    Ok(SlurmScripts {
        dir: dir.to_path_buf(),
        array: dir.join("slurm/array.sbatch"),
        merge: dir.join("slurm/merge.sbatch"),
        tasks: Some(slurm::unfinished_shards(dir, shards)),
    })
}

/// A new sharded campaign: its directory, scripts and slurm.json.
fn slurm_written(args: &SlurmArgs) -> Result<SlurmScripts, String> {
    let shards = args.shards.unwrap_or(1);
    if !(1..=config::SHARDS_MAX).contains(&shards) {
        return Err(format!("--shards {shards}: give 1 to {}", config::SHARDS_MAX));
    }
    let mut config = config_from(&args.run)?;
    // Tasks run elsewhere, in other directories: every path absolute.
    config.images_dir = std::path::absolute(&config.images_dir).unwrap_or(config.images_dir.clone());
    machine::images::locate(&config.images_dir).map_err(|e| {
        format!(
            "{e:#}: build the guest images once, before the array, into a directory every node reads \
             (`cargo xtask images --out DIR`, then --images-dir DIR)"
        )
    })?;
    let results = std::path::absolute(&args.run.results_dir).unwrap_or(args.run.results_dir.clone());
    let id = args
        .run
        .campaign_id
        .clone()
        .unwrap_or_else(|| format!("{}-slurm-{}", campaign::utc_timestamp(), config.fs.name()).replace(':', ""));
    let dir = results.join(&id);
    if dir.exists() {
        return Err(format!(
            "{} exists: choose another --campaign-id, or --resume it",
            dir.display()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program's own path: {e}"))?;
    let run_args = config.full_run_args();
    let plan = slurm::SlurmPlan {
        crashlab: &exe,
        run_args: &run_args,
        shards,
        dir: &dir,
        sbatch_args: &args.sbatch_args,
        name: &id,
    };
    let (array, merge) = slurm::write_scripts(&plan).map_err(|e| format!("{e:#}"))?;
    let state = serde_json::json!({ "shards": shards, "campaign_id": id, "config": config });
    std::fs::write(dir.join("slurm/slurm.json"), state.to_string() + "\n")
        .map_err(|e| format!("cannot write {}/slurm/slurm.json: {e}", dir.display()))?;
    Ok(SlurmScripts {
        dir,
        array,
        merge,
        tasks: None,
    })
}

/// Upper bound on `--jobs`: guests at once on one machine.
pub const JOBS_MAX: u32 = 64;

/// `run --jobs K`: the campaign as K shards, each a `crashlab run --shard
/// i/K` child with its own QEMU and results under `<id>.shards/`, run at
/// once, then merged into `<id>/`. Ctrl-C reaches the children too (one
/// process group); each stops cleanly and the merge is not attempted.
pub fn run_jobs(args: &RunArgs, jobs: u32) -> ExitCode {
    if !(1..=JOBS_MAX).contains(&jobs) {
        eprintln!("error: --jobs {jobs}: give 1 to {JOBS_MAX}");
        return ExitCode::from(2);
    }
    let config = match config_from(args) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let id = args.campaign_id.clone().unwrap_or_else(|| campaign_id_of(&config));
    let shards_root = args.results_dir.join(format!("{id}.shards"));
    // The resolved configuration, every flag explicit (a campaign file's
    // too), then the shard's own flags.
    let mut base = config.full_run_args();
    if args.minimise {
        base.push("--minimise".into());
    }
    let children = match spawn_shards(&base, jobs, &shards_root) {
        Ok(children) => children,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "{jobs} shards running; their logs: {}/shard-*.log",
        shards_root.display()
    );
    let failed = wait_shards(children, jobs);
    if !failed.is_empty() {
        eprintln!(
            "error: {}; see {}/shard-*.log, continue each with `crashlab run --resume {}/shard-I`, then \
             `crashlab merge`",
            failed.join("; "),
            shards_root.display(),
            shards_root.display()
        );
        return ExitCode::from(
            if machine::signals::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                130
            } else {
                2
            },
        );
    }
    merge_shards(args, &id, jobs, &shards_root)
}

/// Waits for every shard; one line for each that did not finish (a shard
/// that found violations finished), none when all did.
fn wait_shards(children: Vec<(u32, std::process::Child)>, jobs: u32) -> Vec<String> {
    let mut failed = Vec::new();
    for (i, mut child) in children {
        match child.wait().map(|s| s.code()) {
            // 0: no violation, 1: violations; both finished.
            Ok(Some(0 | 1)) => {}
            Ok(code) => failed.push(format!("shard {i}/{jobs} ended with {code:?}")),
            Err(e) => failed.push(format!("shard {i}/{jobs}: {e}")),
        }
    }
    failed
}

/// Merges the finished shards under `shards_root` into `<id>/`, prints the
/// merged summary and writes the JUnit file if asked; exit code 1 when the
/// campaign found violations, as a single run's.
fn merge_shards(args: &RunArgs, id: &str, jobs: u32, shards_root: &Path) -> ExitCode {
    let dirs: Vec<PathBuf> = (0..jobs).map(|i| shards_root.join(format!("shard-{i}"))).collect();
    let out = args.results_dir.join(id);
    match tools::merge::merge(&out, &dirs) {
        Ok(summary) => {
            out!("{}", summary.render());
            if let Some(path) = &args.junit {
                if let Err(e) = tools::junit::write(path, id, std::slice::from_ref(&out)) {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::from(u8::from(summary.violations > 0))
        }
        Err(e) => {
            eprintln!("error: merging the shards: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A campaign's default id: when, what (the record workload's mode, or the
/// program's name), which seed.
fn campaign_id_of(config: &CampaignConfig) -> String {
    format!(
        "{}-{}-{}-seed{}",
        campaign::utc_timestamp(),
        config.fs.name(),
        config.workload_name(),
        config.seed
    )
    .replace(':', "")
}

/// Starts shard i of `jobs` for each i: this program, `run` with `base`
/// and the shard's flags, its output in `shard-i.log`.
fn spawn_shards(base: &[String], jobs: u32, shards_root: &Path) -> Result<Vec<(u32, std::process::Child)>, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this program's own path to start the shards: {e}"))?;
    let mut children = Vec::new();
    for i in 0..jobs {
        let log = shards_root.join(format!("shard-{i}.log"));
        let spawned = std::fs::create_dir_all(shards_root)
            .and_then(|()| std::fs::File::create(&log))
            .and_then(|log_file| {
                std::process::Command::new(&exe)
                    .arg("run")
                    .args(base)
                    .arg(format!("--shard={i}/{jobs}"))
                    .arg(format!("--campaign-id=shard-{i}"))
                    .arg("--results-dir")
                    .arg(shards_root)
                    .arg("--quiet")
                    .stdout(log_file.try_clone()?)
                    .stderr(log_file)
                    .spawn()
            });
        match spawned {
            Ok(child) => children.push((i, child)),
            Err(e) => {
                return Err(format!(
                    "cannot start shard {i}/{jobs} (its log: {}): {e}",
                    log.display()
                ))
            }
        }
    }
    Ok(children)
}

/// `--resume DIR`: the campaign's own configuration (validated), the
/// images directory given now (the old one may have moved), where it is.
pub fn resume_request(dir: &std::path::Path, args: &RunArgs) -> anyhow::Result<(CampaignConfig, PathBuf, String)> {
    use anyhow::Context;
    // Validated as read; the images directory does not enter validation.
    let (meta, mut config) = campaign::read_campaign_json(dir)?;
    anyhow::ensure!(
        meta["only_trial"].is_null(),
        "{} ran one trial (--only-trial): nothing to resume",
        dir.display()
    );
    config.images_dir = args.images_dir.clone();
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable name", dir.display()))?
        .to_string();
    let root = dir.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    Ok((config, root, id))
}

pub fn run_request(request: &CampaignRequest, junit: Option<&std::path::Path>, minimise: bool) -> ExitCode {
    let result = campaign::run_campaign(request);
    if let (true, Ok(summary)) = (minimise, &result) {
        if summary.violations > 0 && !summary.interrupted {
            minimise_first_failure(&summary.results_dir);
        }
    }
    if let Some(path) = junit {
        let dir = request.results_root.join(&request.campaign_id);
        let written = match &result {
            Ok(_) => tools::junit::write(path, &request.campaign_id, &[dir]),
            Err(e) => tools::junit::write_cases(
                path,
                &request.campaign_id,
                &[tools::junit::error_case(&dir, &format!("{e:#}"))],
            ),
        };
        if let Err(e) = written {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
    match result {
        Ok(summary) => {
            out!("{}", summary.render());
            if summary.interrupted {
                eprintln!(
                    "interrupted: {} finished trials kept in {}",
                    summary.trials_run,
                    summary.results_dir.display()
                );
                ExitCode::from(130)
            } else if summary.violations > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
