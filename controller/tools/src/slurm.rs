//! `crashlab slurm`: a campaign as a Slurm job array, one shard per task,
//! and a dependent job that merges the shards and writes the report.
//!
//! Only files are made here (plain text in, scripts out); `sbatch` runs
//! them, or `--submit` does. Everything the tasks touch lies on paths the
//! user gives (a shared filesystem on a real cluster): the crashlab binary,
//! the guest images (built once, before the array; tasks only read them),
//! the results directory. A task whose shard has finished does nothing; one
//! whose shard was cut short resumes it; so `crashlab slurm --resume DIR`
//! resubmits only the unfinished shards.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What the scripts need.
pub struct SlurmPlan<'a> {
    pub crashlab: &'a Path,
    /// The campaign's `run` flags, every one explicit (without `run`).
    pub run_args: &'a [String],
    pub shards: u32,
    /// `results/<id>`: shards in `shards/`, the merged campaign in
    /// `campaign/`, scripts and task logs in `slurm/`.
    pub dir: &'a Path,
    pub sbatch_args: &'a [String],
    pub name: &'a str,
}

fn quote(arg: &str) -> String {
    config::shell_join(&[arg.to_string()])
}

/// The job array's script: task `$SLURM_ARRAY_TASK_ID` runs its shard.
pub fn array_script(p: &SlurmPlan) -> String {
    let crashlab = quote(&p.crashlab.display().to_string());
    let shards_dir = p.dir.join("shards");
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("#SBATCH --job-name={}\n", quote(&format!("crashlab-{}", p.name)));
    s += &format!("#SBATCH --array=0-{}\n", p.shards - 1);
    s += &format!(
        "#SBATCH --output={}\n",
        quote(&p.dir.join("slurm/shard-%a.out").display().to_string())
    );
    for arg in p.sbatch_args {
        s += &format!("#SBATCH {arg}\n");
    }
    s += &format!(
        "# crashlab shard $SLURM_ARRAY_TASK_ID of {n}: written by `crashlab slurm`.\n\
         set -u\n\
         i=\"$SLURM_ARRAY_TASK_ID\"\n\
         shard={shards}/shard-$i\n\
         if [ -f \"$shard/summary.json\" ] && ! grep -q '\"interrupted\": true' \"$shard/summary.json\"; then\n\
         \x20   echo \"shard $i/{n} finished already\"; exit 0\n\
         fi\n\
         if [ -f \"$shard/campaign.json\" ]; then\n\
         \x20   {crashlab} run --resume \"$shard\" --quiet\n\
         else\n\
         \x20   {crashlab} run {args} --shard=\"$i/{n}\" --campaign-id=\"shard-$i\" --results-dir={shards} --quiet\n\
         fi\n\
         rc=$?\n\
         # 1 means violations found: the shard finished, the merge must run.\n\
         [ \"$rc\" -le 1 ] && exit 0\n\
         exit \"$rc\"\n",
        n = p.shards,
        shards = quote(&shards_dir.display().to_string()),
        args = config::shell_join(p.run_args),
    );
    s
}

/// The merge job: every shard into `campaign/`, its report and JUnit file.
pub fn merge_script(p: &SlurmPlan) -> String {
    let crashlab = quote(&p.crashlab.display().to_string());
    let campaign = quote(&p.dir.join("campaign").display().to_string());
    let shards: Vec<String> = (0..p.shards)
        .map(|i| quote(&p.dir.join(format!("shards/shard-{i}")).display().to_string()))
        .collect();
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("#SBATCH --job-name={}\n", quote(&format!("crashlab-{}-merge", p.name)));
    s += &format!(
        "#SBATCH --output={}\n",
        quote(&p.dir.join("slurm/merge.out").display().to_string())
    );
    for arg in p.sbatch_args {
        s += &format!("#SBATCH {arg}\n");
    }
    s += &format!(
        "set -u\n\
         {crashlab} merge {campaign} {shards}\n\
         rc=$?\n\
         [ \"$rc\" -le 1 ] || exit \"$rc\"\n\
         {crashlab} report {campaign} --junit {junit}\n",
        shards = shards.join(" "),
        junit = quote(&p.dir.join("campaign/junit.xml").display().to_string()),
    );
    s
}

/// Writes both scripts into `dir/slurm/`; their paths.
pub fn write_scripts(p: &SlurmPlan) -> Result<(PathBuf, PathBuf)> {
    let slurm = p.dir.join("slurm");
    std::fs::create_dir_all(&slurm).with_context(|| format!("cannot create {}", slurm.display()))?;
    let array = slurm.join("array.sbatch");
    let merge = slurm.join("merge.sbatch");
    machine::durable::write_atomically(&array, array_script(p).as_bytes())?;
    machine::durable::write_atomically(&merge, merge_script(p).as_bytes())?;
    Ok((array, merge))
}

/// The shards of `dir` that have not finished (no summary, or interrupted).
pub fn unfinished_shards(dir: &Path, shards: u32) -> Vec<u32> {
    (0..shards)
        .filter(|i| {
            let summary = dir.join(format!("shards/shard-{i}/summary.json"));
            std::fs::read_to_string(summary)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_none_or(|s| s["interrupted"] == true)
        })
        .collect()
}

/// `sbatch` of the array (the `tasks` given, all when `None`) and of the
/// merge after it: the commands, to print or to run.
pub fn submit_commands(array: &Path, merge: &Path, tasks: Option<&[u32]>) -> (Vec<String>, Vec<String>) {
    let mut first = vec!["sbatch".to_string(), "--parsable".to_string()];
    if let Some(tasks) = tasks {
        first.push(format!(
            "--array={}",
            tasks.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        ));
    }
    first.push(array.display().to_string());
    let second = vec![
        "sbatch".to_string(),
        "--parsable".to_string(),
        "--dependency=afterok:ARRAY_JOB_ID".to_string(),
        merge.display().to_string(),
    ];
    (first, second)
}

/// Runs both `sbatch` commands; the two job ids.
pub fn submit(first: &[String], second: &[String]) -> Result<(String, String)> {
    let run = |argv: &[String]| -> Result<String> {
        let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().context(
            "cannot run sbatch: is Slurm installed here (slurm-client), or submit the printed commands elsewhere",
        )?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                config::shell_join(argv),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // --parsable: "jobid" or "jobid;cluster".
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .to_string())
    };
    let array_job = run(first)?;
    let second: Vec<String> = second.iter().map(|a| a.replace("ARRAY_JOB_ID", &array_job)).collect();
    let merge_job = run(&second)?;
    Ok((array_job, merge_job))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan<'a>(args: &'a [String], extra: &'a [String]) -> SlurmPlan<'a> {
        SlurmPlan {
            crashlab: Path::new("/shared/bin/crashlab"),
            run_args: args,
            shards: 3,
            dir: Path::new("/shared/results/c1"),
            sbatch_args: extra,
            name: "c1",
        }
    }

    #[test]
    fn the_array_runs_one_shard_per_task_and_resumes_a_cut_one() {
        let args = vec!["--fs=ext4".to_string(), "--mkfs-opts=-T small".to_string()];
        let extra = vec!["--partition=long".to_string()];
        let script = array_script(&plan(&args, &extra));
        assert!(
            script.starts_with("#!/bin/bash\n#SBATCH --job-name=crashlab-c1\n#SBATCH --array=0-2\n"),
            "{script}"
        );
        assert!(script.contains("#SBATCH --partition=long"));
        assert!(
            script.contains("run --fs=ext4 '--mkfs-opts=-T small' --shard=\"$i/3\""),
            "{script}"
        );
        assert!(script.contains("run --resume \"$shard\""));
        assert!(script.contains("--results-dir=/shared/results/c1/shards"));
        let merge = merge_script(&plan(&args, &extra));
        assert!(merge.contains(
            "merge /shared/results/c1/campaign /shared/results/c1/shards/shard-0 /shared/results/c1/shards/shard-1 /shared/results/c1/shards/shard-2"
        ), "{merge}");
        assert!(merge.contains("report /shared/results/c1/campaign --junit"));
    }

    #[test]
    fn resubmission_names_only_the_unfinished_tasks() {
        let dir = tempfile::tempdir().unwrap();
        for (i, summary) in [
            (0, Some(r#"{"interrupted": false}"#)),
            (1, Some(r#"{"interrupted": true}"#)),
            (2, None),
        ] {
            let shard = dir.path().join(format!("shards/shard-{i}"));
            std::fs::create_dir_all(&shard).unwrap();
            if let Some(text) = summary {
                std::fs::write(shard.join("summary.json"), text).unwrap();
            }
        }
        assert_eq!(unfinished_shards(dir.path(), 4), [1, 2, 3]);
        let (first, second) = submit_commands(Path::new("/a.sbatch"), Path::new("/m.sbatch"), Some(&[1, 2, 3]));
        assert_eq!(first, ["sbatch", "--parsable", "--array=1,2,3", "/a.sbatch"]);
        assert_eq!(second[2], "--dependency=afterok:ARRAY_JOB_ID");
    }
}
