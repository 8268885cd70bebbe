//! `cargo xtask fuzz [--seconds S] [--only NAME]`: every fuzz target of
//! `fuzz/` (cargo-fuzz, libFuzzer) for S seconds each (default 600), on
//! its corpus grown from the seeds in `fuzz/seeds/`, with a memory bound.
//! Prints per target whether it found a crash and where libFuzzer left it
//! (`fuzz/artifacts/TARGET/`): each one found becomes a regression test.
//! Needs the nightly toolchain and cargo-fuzz (installed when missing).

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// The targets, and the largest input each takes (bytes).
const TARGETS: &[(&str, u64)] = &[
    ("blocklog", 1 << 20),
    ("protocol", 64 << 10),
    ("ext4_image", 2 << 20),
    ("campaign_json", 16 << 10),
    ("nbd_session", 64 << 10),
    ("kernel_cmdline", 4 << 10),
    ("results_jsonl", 64 << 10),
    ("msync_trace", 64 << 10),
    ("evidence", 256 << 10),
    ("compare_table", 64 << 10),
    ("elf", 1 << 20),
];
/// libFuzzer stops a target whose process grows past this.
const RSS_LIMIT_MB: u32 = 2048;
/// One input taking longer than this is a hang.
const INPUT_TIMEOUT_S: u32 = 10;
const SECONDS_MAX: u64 = 7 * 24 * 3600;

pub fn run(sh: &Shell, args: &[String]) -> Result<i32> {
    let mut seconds = 600u64;
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--seconds" => seconds = value("--seconds")?.parse().context("--seconds takes a number")?,
            "--only" => only = Some(value("--only")?.clone()),
            other => bail!("unknown flag {other:?}: use --seconds S, --only NAME"),
        }
    }
    if seconds == 0 || seconds > SECONDS_MAX {
        bail!("--seconds must be between 1 and {SECONDS_MAX}");
    }
    ensure_tools(sh)?;
    let mut found = Vec::new();
    for &(target, max_len) in TARGETS {
        if only.as_deref().is_some_and(|o| o != target) {
            continue;
        }
        let corpus = format!("fuzz/corpus/{target}");
        let seeds = format!("fuzz/seeds/{target}");
        sh.create_dir(&corpus)?;
        let (max_time, rss, timeout, len) = (
            format!("-max_total_time={seconds}"),
            format!("-rss_limit_mb={RSS_LIMIT_MB}"),
            format!("-timeout={INPUT_TIMEOUT_S}"),
            format!("-max_len={max_len}"),
        );
        eprintln!("xtask fuzz: {target} for {seconds} s");
        let code = crate::children::status(cmd!(
            sh,
            "cargo +nightly fuzz run {target} {corpus} {seeds} -- {max_time} {rss} {timeout} {len}"
        ))?;
        let artifacts = Path::new("fuzz/artifacts").join(target);
        let crashes: Vec<String> = std::fs::read_dir(&artifacts)
            .map(|d| d.flatten().map(|e| e.path().display().to_string()).collect())
            .unwrap_or_default();
        println!(
            "{target:<14} {seconds} s: {}",
            match (code, crashes.is_empty()) {
                (0, true) => "no crash, no hang, no allocation past the bound".to_string(),
                _ => format!("FOUND (exit {code}): {}", crashes.join(", ")),
            }
        );
        if code != 0 || !crashes.is_empty() {
            found.push(target);
        }
    }
    Ok(if found.is_empty() { 0 } else { 1 })
}

fn ensure_tools(sh: &Shell) -> Result<()> {
    if cmd!(sh, "rustup run nightly rustc --version")
        .quiet()
        .ignore_stdout()
        .run()
        .is_err()
    {
        cmd!(sh, "rustup toolchain install nightly --profile minimal")
            .run()
            .context("libFuzzer needs the nightly toolchain")?;
    }
    if cmd!(sh, "cargo +nightly fuzz --version")
        .quiet()
        .ignore_stdout()
        .run()
        .is_err()
    {
        cmd!(sh, "cargo install cargo-fuzz --locked")
            .run()
            .context("installing cargo-fuzz")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// fuzz/Cargo.lock holds what fuzz/Cargo.toml needs: `cargo fuzz` must
    /// not rewrite a tracked file (it added 158 lines in a fresh clone).
    #[test]
    fn the_fuzz_workspaces_lockfile_is_current() {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/Cargo.toml");
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--locked",
                "--format-version",
                "1",
                "--manifest-path",
                manifest,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fuzz/Cargo.lock is stale: run `cargo metadata --manifest-path fuzz/Cargo.toml` and commit it\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every libFuzzer binary of fuzz/Cargo.toml is run by this task, and
    /// nothing else: a new target cannot be left out of the long runs.
    #[test]
    fn the_task_runs_every_fuzz_binary() {
        let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/Cargo.toml")).unwrap();
        let mut binaries: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "crashlab-fuzz")
            .collect();
        let mut ours: Vec<&str> = super::TARGETS.iter().map(|(name, _)| *name).collect();
        binaries.sort_unstable();
        ours.sort_unstable();
        assert_eq!(binaries, ours);
    }
}
