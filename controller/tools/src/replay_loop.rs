//! The loop a filesystem developer would write instead of crashlab, for
//! `cargo xtask bench` to compare against: xfstests' `replay-log` way of
//! checking a dm-log-writes log. For each chosen flush: replay the log
//! incrementally up to it onto one image, `cp --sparse=always` the image,
//! `e2fsck -fy` the copy, `debugfs dump` the data file and read it. xfstests
//! is not packaged here, so the replay is ours (plain writes in log order:
//! byte-identical to `replay-log`, see ARCHITECTURE.md); the rest are the
//! same tools a shell loop would call. It judges nothing: it only costs
//! what such a loop costs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use campaign::kept::KeptTrial;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayLoopOutcome {
    pub states: u64,
    pub elapsed_ms: u64,
    pub ms_per_state: f64,
}

/// Runs the loop over `states` flushes of the trial's log, evenly spaced
/// from the first to the last, in `work_dir` (on disk, as a user would).
pub fn replay_loop(kept: &KeptTrial, states: u64, work_dir: &Path) -> Result<ReplayLoopOutcome> {
    anyhow::ensure!(
        kept.config.fs == config::Filesystem::Ext4,
        "the replay loop uses e2fsck and debugfs: ext4 campaigns only"
    );
    let log = &kept.capture.log;
    let chosen = chosen_flushes(log, states)?;
    let states = chosen.len() as u64;
    let replay_path = work_dir.join("replay.img");
    let state_path = work_dir.join("state.img");
    let dump_path = work_dir.join("state.dat");
    let start = Instant::now();
    machine::images::copy_sparse(&kept.base, &replay_path)?;
    let replay = std::fs::OpenOptions::new().write(true).open(&replay_path)?;
    let log_file: &File = &kept.capture.log_file;
    let mut buf = Vec::new();
    let mut next_entry = 0usize;
    for &flush in &chosen {
        replay_entries(log_file, &log.entries[next_entry..=flush], &replay, &mut buf)?;
        next_entry = flush + 1;
        check_copy(&replay_path, &state_path, &dump_path)?;
    }
    let elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(ReplayLoopOutcome {
        states,
        elapsed_ms,
        ms_per_state: elapsed_ms as f64 / states as f64,
    })
}

/// The log indices of `states` flushes, evenly spaced from the log's first
/// flush to its last (all of them when it has fewer, at least one).
fn chosen_flushes(log: &blocklog::ParsedLog, states: u64) -> Result<Vec<usize>> {
    let flushes: Vec<usize> = log
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.flags.is_flush())
        .map(|(i, _)| i)
        .collect();
    anyhow::ensure!(!flushes.is_empty(), "the log has no flush to replay to");
    let states = states.clamp(1, flushes.len() as u64);
    let last = flushes.len() as u64 - 1;
    Ok((0..states)
        .map(|k| match states {
            1 => flushes[last as usize],
            _ => flushes[(k * last / (states - 1)) as usize],
        })
        .collect())
}

/// Applies `entries` to the replay image in log order, as `replay-log`
/// does: data writes as written, discards as zeroes.
fn replay_entries(log_file: &File, entries: &[blocklog::LogEntry], replay: &File, buf: &mut Vec<u8>) -> Result<()> {
    for entry in entries {
        if entry.is_data_write() {
            blocklog::read_entry_data(log_file, entry, buf)?;
            replay.write_all_at(buf, entry.device_offset_bytes())?;
        } else if entry.flags.is_discard() {
            buf.clear();
            buf.resize((entry.nr_sectors * 512) as usize, 0);
            replay.write_all_at(buf, entry.device_offset_bytes())?;
        }
    }
    Ok(())
}

/// What the shell loop does with each state: copies the replay image,
/// `e2fsck -fy`s the copy and dumps and reads its data file, for the cost
/// of those tools (their results are not judged).
fn check_copy(replay_path: &Path, state_path: &Path, dump_path: &Path) -> Result<()> {
    let file_name = record::pattern::DATA_FILE_NAMES[0];
    let cp = Command::new("cp")
        .arg("--sparse=always")
        .arg(replay_path)
        .arg(state_path)
        .status()
        .context("cannot run cp")?;
    anyhow::ensure!(cp.success(), "cp failed: {cp}");
    Command::new("e2fsck")
        .arg("-fy")
        .arg(state_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run e2fsck: `cargo xtask deps` installs it")?;
    let _ = std::fs::remove_file(dump_path);
    Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /{file_name} {}", dump_path.display()))
        .arg(state_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run debugfs")?;
    // The bytes a checker would judge.
    let _ = std::fs::read(dump_path);
    Ok(())
}
