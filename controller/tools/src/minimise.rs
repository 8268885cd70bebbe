//! `crashlab minimise`: which lost writes make a power-loss state violate.
//!
//! A state keeps the log's prefix up to a flush and a subset of the open
//! epoch's writes (those after that flush); the rest of the epoch the
//! crash lost. Delta debugging (Zeller's ddmin) shrinks that lost set to
//! a smallest one that still breaks the same rule: every write outside it
//! is kept, and keeping any one write of it makes the state pass. Each
//! candidate is a state of the crash model like any other (a candidate the
//! model does not allow, such as one past a lost FUA write, counts as not
//! violating), checked by the same checker and judged by the same rules.
//!
//! The result is saved as a state file that `crashlab replay-state
//! --state-file` rebuilds exactly, and each lost write is named: its
//! sectors and the file or metadata it holds (ext4: debugfs icheck/ncheck;
//! xfs: xfs_db blockuse); a write past the filesystem is crashlab's ack
//! sector.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use blocklog::CrashState;
use serde::Serialize;

use campaign::kept::{KeptStateAt, KeptTrial};
use config::{Checker, Filesystem};
use models::powerloss;
use models::workload_boot::TrialContext;
use nbd::DiskView;

/// Upper bound on candidate states checked in one minimisation.
pub const CANDIDATES_MAX: usize = 5000;

/// ddmin over `items`: a smallest subset (1-minimal: no single item can be
/// removed) for which `fails` holds, given that it holds for `items`.
/// `fails` may give up (`Err`); the run then ends with that error.
/// `budget` bounds the calls to `fails`; when it runs out, the smallest
/// failing set found so far is returned with `complete = false`.
pub fn ddmin<E>(
    items: &[u64],
    budget: usize,
    mut fails: impl FnMut(&[u64]) -> Result<bool, E>,
) -> Result<(Vec<u64>, bool), E> {
    let mut current = items.to_vec();
    let mut n = 2usize;
    let mut calls = 0usize;
    while current.len() >= 2 {
        let chunk = current.len().div_ceil(n);
        let parts: Vec<Vec<u64>> = current.chunks(chunk).map(<[u64]>::to_vec).collect();
        let mut reduced = false;
        // A part alone, then a part's complement.
        for part in &parts {
            if calls >= budget {
                return Ok((current, false));
            }
            calls += 1;
            if fails(part)? {
                current = part.clone();
                n = 2;
                reduced = true;
                break;
            }
        }
        if !reduced && parts.len() > 2 {
            for part in &parts {
                let complement: Vec<u64> = current.iter().copied().filter(|x| !part.contains(x)).collect();
                if calls >= budget {
                    return Ok((current, false));
                }
                calls += 1;
                if fails(&complement)? {
                    current = complement;
                    n = (n - 1).max(2);
                    reduced = true;
                    break;
                }
            }
        }
        if !reduced {
            if n >= current.len() {
                break;
            }
            n = (2 * n).min(current.len());
        }
    }
    // One item left: is even that needed? (The empty set may fail too.)
    if current.len() == 1 && calls < budget && fails(&[])? {
        current.clear();
    }
    Ok((current, true))
}

pub struct MinimiseRequest<'a> {
    pub at: KeptStateAt<'a>,
    /// Who checks each candidate (default: the campaign's checker, kernel
    /// when it was both).
    pub checker: Option<Checker>,
}

/// One write of the minimised lost set.
#[derive(Clone, Debug, Serialize)]
pub struct LostWrite {
    pub log_index: u64,
    pub sector: u64,
    pub sectors: u64,
    /// What the write holds, where the filesystem's tools can tell.
    pub holds: String,
}

#[derive(Debug, Serialize)]
pub struct MinimiseOutcome {
    pub trial: u64,
    pub state: u64,
    pub rule: String,
    pub prefix_entries: u64,
    /// Writes of the open epoch the original state lost.
    pub lost_before: usize,
    /// The minimised lost set.
    pub lost: Vec<LostWrite>,
    /// Candidates checked.
    pub candidates_checked: usize,
    /// ddmin ran to its end (false: stopped at `CANDIDATES_MAX`).
    pub complete: bool,
    /// Keeping each write of `lost`, alone, made the state pass.
    pub one_minimal: bool,
    /// The state's torn write, if it has one, and whether the state still
    /// fails with that write whole or absent (neither: the tear fails it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn: Option<TornOutcome>,
    /// The minimised state, for `replay-state --state-file`.
    pub state_file: PathBuf,
    pub replay: String,
}

#[derive(Debug, Serialize)]
pub struct TornOutcome {
    pub write: LostWrite,
    pub sectors_kept: Vec<u64>,
    pub fails_whole: bool,
    pub fails_absent: bool,
}

/// `state` with its torn write whole, and without it.
fn untorn_variants(state: &CrashState) -> Option<(CrashState, CrashState)> {
    let torn = state.torn.as_ref()?;
    let whole = CrashState::new(state.prefix_entries, state.extra_writes.clone(), None);
    let absent_writes: Vec<u64> = state
        .extra_writes
        .iter()
        .copied()
        .filter(|&i| i != torn.entry)
        .collect();
    Some((whole, CrashState::new(state.prefix_entries, absent_writes, None)))
}

/// The writes of `state`'s open epoch that it leaves out.
pub fn lost_writes(log: &blocklog::ParsedLog, state: &CrashState) -> Vec<u64> {
    blocklog::open_epoch(log, state.prefix_entries)
        .filter(|&i| log.entries[i as usize].changes_data() && state.extra_writes.binary_search(&i).is_err())
        .collect()
}

/// The state that loses exactly `lost` of `original`'s epoch (its torn
/// write, if any, kept as torn: it is one of the extra writes, never a lost
/// one), if the crash model allows it.
pub fn state_losing(log: &blocklog::ParsedLog, original: &CrashState, lost: &[u64]) -> Option<CrashState> {
    let kept: Vec<u64> = blocklog::open_epoch(log, original.prefix_entries)
        .filter(|&i| log.entries[i as usize].changes_data() && !lost.contains(&i))
        .collect();
    let state = CrashState::new(original.prefix_entries, kept, original.torn.clone());
    state.validate(log).ok().map(|()| state)
}

pub fn minimise(req: &MinimiseRequest) -> Result<MinimiseOutcome> {
    let kept = req.at.load_trial()?;
    let original = state_to_minimise(req, &kept)?;
    kept.check_identities(req.at.campaign_dir, &[(req.at.state, &original)])?;
    let log = &kept.capture.log;
    let builder = powerloss::StateBuilder::new(
        log,
        Arc::new(std::fs::File::open(&kept.base)?),
        kept.capture.log_file.clone(),
        kept.capture.device_size_bytes,
    );
    let work = machine::lifetime::temp_dir("crashlab-minimise-", None)?;
    let first: Arc<dyn DiskView> = Arc::new(builder.view(&original));
    let (kernel, host) = start_checker(req, &kept, first, work.path())?;
    let mut judge = CandidateJudge {
        kept: &kept,
        builder,
        kernel,
        host,
        interrupt: req.at.interrupt,
        checked: 0,
    };
    let Some(rule) = judge.violated_rule(&original)? else {
        bail!(
            "trial {} state {} passes when checked again: nothing to minimise (was it a disagreement between checkers?)",
            req.at.trial,
            req.at.state
        );
    };
    let lost_before = lost_writes(log, &original);
    let mut fails = |lost: &[u64]| -> Result<bool> {
        if req.at.interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            bail!(machine::vm::Interrupted);
        }
        match state_losing(log, &original, lost) {
            Some(state) => Ok(judge.violated_rule(&state)?.as_deref() == Some(rule.as_str())),
            None => Ok(false),
        }
    };
    let (minimal, complete) = ddmin(&lost_before, CANDIDATES_MAX, &mut fails)?;
    let one_minimal = check_minimal(&minimal, &rule, &mut fails)?;
    let state = state_losing(log, &original, &minimal).expect("the minimised set was checked as a valid state");
    let torn = torn_outcome(&mut judge, &kept, &state, &rule)?;
    let checked = judge.checked;
    judge.stop()?;
    let state_file = kept.trial_dir.join(format!("state-{}-minimised.json", req.at.state));
    machine::durable::write_atomically(&state_file, (serde_json::to_string_pretty(&state)? + "\n").as_bytes())?;
    let replay = replay_command(req, &state_file);
    Ok(MinimiseOutcome {
        trial: req.at.trial,
        state: req.at.state,
        rule,
        prefix_entries: original.prefix_entries,
        lost_before: lost_before.len(),
        lost: describe_writes(kept.config.fs, &kept, &state, &minimal),
        candidates_checked: checked,
        complete,
        one_minimal,
        replay,
        torn,
        state_file,
    })
}

/// For a torn state: its torn write, and whether the state fails `rule`
/// with that write whole and without it.
fn torn_outcome(
    judge: &mut CandidateJudge,
    kept: &KeptTrial,
    state: &CrashState,
    rule: &str,
) -> Result<Option<TornOutcome>> {
    let (Some((whole, absent)), Some(t)) = (untorn_variants(state), &state.torn) else {
        return Ok(None);
    };
    Ok(Some(TornOutcome {
        write: describe_writes(kept.config.fs, kept, state, &[t.entry]).remove(0),
        sectors_kept: t.sectors_kept.clone(),
        fails_whole: judge.violated_rule(&whole)?.as_deref() == Some(rule),
        fails_absent: judge.violated_rule(&absent)?.as_deref() == Some(rule),
    }))
}

/// The command that replays the minimised state, with the campaign's
/// absolute path so that it runs from any directory.
fn replay_command(req: &MinimiseRequest, state_file: &Path) -> String {
    let abs = std::fs::canonicalize(req.at.campaign_dir).unwrap_or_else(|_| req.at.campaign_dir.to_path_buf());
    format!(
        "crashlab replay-state --campaign {} --trial {} --state-file {}",
        abs.display(),
        req.at.trial,
        state_file.display()
    )
}

/// Checks and judges minimise's candidate states with its one checker
/// (kernel or host), counting them: the same checker and rules for every
/// candidate, so that their verdicts compare.
struct CandidateJudge<'a> {
    kept: &'a KeptTrial,
    builder: powerloss::StateBuilder<'a>,
    kernel: Option<powerloss::KernelChecker>,
    host: Option<powerloss::HostChecker>,
    interrupt: &'a AtomicBool,
    /// Candidates checked so far (the original state included).
    checked: usize,
}

impl CandidateJudge<'_> {
    /// The verdict's first violated rule, or None when it passed.
    fn violated_rule(&mut self, state: &CrashState) -> Result<Option<String>> {
        let read = config::FileRead::Extents;
        self.checked += 1;
        let view = self.builder.view(state);
        let result = match (&mut self.kernel, &mut self.host) {
            (Some(k), _) => k.check(Arc::new(view), read, self.interrupt)?,
            (_, Some(h)) => h.check(&view, read)?,
            _ => unreachable!("one checker is set"),
        };
        let judged = powerloss::judge_state(
            &self.kept.config,
            &self.kept.params,
            &self.kept.capture,
            state,
            &powerloss::StateChecks::new(vec![(if self.kernel.is_some() { "kernel" } else { "host" }, result)]),
        );
        let verdict = &judged.verdicts[0].1;
        Ok((!verdict.passed).then(|| {
            verdict
                .violations
                .first()
                .map_or("violation".to_string(), |f| kebab(&f.rule))
        }))
    }

    /// Stops the checker VM, if one was started.
    fn stop(self) -> Result<()> {
        if let Some(k) = self.kernel {
            k.stop()?;
        }
        Ok(())
    }
}

/// The state asked for, as the trial planned it.
fn state_to_minimise(req: &MinimiseRequest, kept: &KeptTrial) -> Result<CrashState> {
    let states = kept.states();
    let state = states.get(req.at.state as usize).with_context(|| {
        format!(
            "state {} does not exist: trial {} has {} states",
            req.at.state,
            req.at.trial,
            states.len()
        )
    })?;
    Ok(state.clone())
}

/// What ddmin promises, checked: losing `minimal` fails (else an error:
/// the checker is not deterministic), and whether keeping any one of its
/// writes passes (one-minimal).
fn check_minimal(minimal: &[u64], rule: &str, fails: &mut dyn FnMut(&[u64]) -> Result<bool>) -> Result<bool> {
    anyhow::ensure!(
        fails(minimal)?,
        "the minimised state no longer violates {rule}: a checker that is not deterministic?"
    );
    let mut one_minimal = true;
    for w in minimal {
        let without: Vec<u64> = minimal.iter().copied().filter(|x| x != w).collect();
        if fails(&without)? {
            one_minimal = false;
        }
    }
    Ok(one_minimal)
}

/// The one checker minimise judges with (the campaign's, kernel unless it
/// was host; `--checker` chooses), started once: a checker VM whose first
/// disk is `first`, or the host checker.
fn start_checker(
    req: &MinimiseRequest,
    kept: &KeptTrial,
    first: Arc<dyn DiskView>,
    work: &Path,
) -> Result<(Option<powerloss::KernelChecker>, Option<powerloss::HostChecker>)> {
    let config = &kept.config;
    let checker = req.checker.unwrap_or(match config.checker {
        Checker::Host => Checker::Host,
        _ => Checker::Kernel,
    });
    match checker {
        Checker::Both | Checker::Tiered => {
            bail!(
                "--checker {}: minimise with one checker (kernel or host); replay-state compares them",
                checker.name()
            )
        }
        Checker::Kernel => {
            let (images, accel) = kept.guest(req.at.campaign_dir, work, req.at.interrupt)?;
            let ctx = TrialContext {
                config,
                images: &images,
                accel,
                base_disk: &kept.base,
                interrupt: req.at.interrupt,
                rerun_command: "",
            };
            let kernel = powerloss::KernelChecker::start(&ctx, work, "minimise", first, config.fsck_states)?;
            Ok((Some(kernel), None))
        }
        Checker::Host => {
            let host = powerloss::HostChecker::new(&kept.base, work, config.fsck_states, config.data_files())?;
            Ok((None, Some(host)))
        }
    }
}

fn kebab<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Names each lost write: its sectors, and what it holds (ext4: the
/// inode's path or the metadata, via debugfs on the minimised state's image
/// with every write applied, so that the files the lost writes belong to
/// exist; past the filesystem: an ack sector).
fn describe_writes(fs: Filesystem, kept: &KeptTrial, state: &CrashState, lost: &[u64]) -> Vec<LostWrite> {
    let log = &kept.capture.log;
    let entry = |i: u64| &log.entries[i as usize];
    let fs_bytes = kept.ack_area_offset_bytes;
    let mut holds: Vec<String> = lost
        .iter()
        .map(|&i| match entry(i).sector * 512 >= fs_bytes {
            true => format!(
                "crashlab's ack sector {} (the promise itself)",
                (entry(i).sector * 512 - fs_bytes) / 512
            ),
            false => String::new(),
        })
        .collect();
    let owners = match fs {
        Filesystem::Ext4 => ext4_owners(kept, state, lost),
        Filesystem::Xfs => xfs_owners(kept, state, lost),
        _ => Err(anyhow::anyhow!("no tool names this filesystem's blocks")),
    };
    // Best effort: a tool that cannot tell says why, beside the sectors.
    match owners {
        Ok(names) => {
            for (h, name) in holds.iter_mut().zip(names) {
                if h.is_empty() {
                    *h = name;
                }
            }
        }
        Err(why) => {
            for h in holds.iter_mut().filter(|h| h.is_empty()) {
                *h = format!("not identified: {why:#}");
            }
        }
    }
    lost.iter()
        .zip(holds)
        .map(|(&i, holds)| LostWrite {
            log_index: i,
            sector: entry(i).sector,
            sectors: entry(i).nr_sectors,
            holds: match holds.is_empty() {
                true => "not identified".into(),
                false => holds,
            },
        })
        .collect()
}

/// An image of the state with the whole open epoch applied (the lost
/// writes too), so that the files and structures they belong to exist.
fn image_with_every_write(kept: &KeptTrial, state: &CrashState, dir: &Path) -> Result<PathBuf> {
    let log = &kept.capture.log;
    let image = dir.join("all.img");
    machine::images::copy_sparse(&kept.base, &image)?;
    let mut all = state.clone();
    all.extra_writes = blocklog::open_epoch(log, state.prefix_entries)
        .filter(|&i| log.entries[i as usize].changes_data())
        .collect();
    all.torn = None;
    all.kind = CrashState::new(0, all.extra_writes.clone(), None).kind;
    let mut sink = std::fs::OpenOptions::new().write(true).open(&image)?;
    blocklog::apply_state(kept.capture.log_file.as_ref(), log, &all, &mut sink)?;
    Ok(image)
}

/// xfs: what each lost write's first sector holds, by xfs_db's blockget
/// and blockuse ("block 24 (0/24) type data inode 131 crashlab.dat").
fn xfs_owners(kept: &KeptTrial, state: &CrashState, lost: &[u64]) -> Result<Vec<String>> {
    let log = &kept.capture.log;
    let dir = tempfile::tempdir()?;
    let image = image_with_every_write(kept, state, dir.path())?;
    let mut command = std::process::Command::new("xfs_db");
    command.args(["-r", "-c", "blockget -n"]);
    for &i in lost {
        command
            .arg("-c")
            .arg(format!("daddr {}", log.entries[i as usize].sector));
        command.arg("-c").arg("blockuse -n");
    }
    let out = command.arg(&image).output().context("cannot run xfs_db (xfsprogs)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if String::from_utf8_lossy(&out.stderr).contains("needs to\nbe replayed") || text.contains("needs to\nbe replayed")
    {
        bail!("xfs_db reads only a filesystem whose log is replayed (mount the state image once, then xfs_db)");
    }
    let uses: Vec<&str> = text.lines().filter(|l| l.starts_with("block ")).collect();
    anyhow::ensure!(
        uses.len() == lost.len(),
        "xfs_db named {} of {} blocks",
        uses.len(),
        lost.len()
    );
    Ok(uses
        .iter()
        .map(|l| format!("xfs {}", l.replace(" type ", ": ").replace(" inode ", ", inode ")))
        .collect())
}

/// ext4: the owner of each lost write's first block, by debugfs icheck and
/// ncheck on an image with the whole epoch applied (the lost writes too).
fn ext4_owners(kept: &KeptTrial, state: &CrashState, lost: &[u64]) -> Result<Vec<String>> {
    let log = &kept.capture.log;
    let dir = tempfile::tempdir()?;
    let image = image_with_every_write(kept, state, dir.path())?;
    let block_size = ext4_block_size(&image).context("not an ext4 image")?;
    let blocks: Vec<u64> = lost
        .iter()
        .map(|&i| log.entries[i as usize].sector * 512 / block_size)
        .collect();
    let list: Vec<String> = blocks.iter().map(u64::to_string).collect();
    let icheck = debugfs(&image, &format!("icheck {}", list.join(" ")))?;
    // "Block\tInode number" then "123\t12" or "123\t<block not found>".
    let owner_of = |block: u64| -> Option<u64> {
        icheck
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(b, _)| b.trim().parse::<u64>().ok() == Some(block))
            .and_then(|(_, ino)| ino.trim().parse().ok())
    };
    let inodes: Vec<u64> = blocks.iter().filter_map(|&b| owner_of(b)).filter(|&i| i > 11).collect();
    let ncheck = match inodes.is_empty() {
        true => String::new(),
        false => debugfs(
            &image,
            &format!(
                "ncheck {}",
                inodes.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
            ),
        )?,
    };
    let path_of = |inode: u64| -> Option<String> {
        ncheck
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(i, _)| i.trim().parse::<u64>().ok() == Some(inode))
            .map(|(_, p)| p.trim().replacen("//", "/", 1))
    };
    Ok(blocks
        .iter()
        .map(|&b| match owner_of(b) {
            Some(8) => format!("ext4 block {b}: the journal (inode 8)"),
            Some(7) => format!("ext4 block {b}: reserved GDT blocks (inode 7)"),
            Some(i) if i <= 11 => format!("ext4 block {b}: reserved inode {i}"),
            Some(i) => format!(
                "ext4 block {b}: data of inode {i} ({})",
                path_of(i).unwrap_or_else(|| "no path".into())
            ),
            None => format!("ext4 block {b}: metadata (superblock, group descriptors, bitmaps or inode table)"),
        })
        .collect())
}

fn ext4_block_size(image: &Path) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut sb = [0u8; 1024];
    std::fs::File::open(image).ok()?.read_exact_at(&mut sb, 1024).ok()?;
    let magic = u16::from_le_bytes([sb[56], sb[57]]);
    let log = u32::from_le_bytes([sb[24], sb[25], sb[26], sb[27]]);
    (magic == 0xef53 && log <= 6).then(|| 1024u64 << log)
}

/// A debugfs request's output. Catastrophic mode (`-c`: no bitmaps read):
/// the image holds the epoch's writes without the journal replayed, whose
/// bitmaps may not match their checksums, and a refusal to open it must
/// not read as "block not found".
fn debugfs(image: &Path, request: &str) -> Result<String> {
    let out = std::process::Command::new("debugfs")
        .args(["-c", "-R", request])
        .arg(image)
        .output()
        .context("cannot run debugfs (e2fsprogs)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr
        .lines()
        .find(|l| l.contains("not open") || l.contains("while opening"))
    {
        bail!("debugfs could not open the state's image: {line}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The minimised result in lines a person reads.
pub fn render(o: &MinimiseOutcome) -> String {
    let mut s = format!(
        "trial {} state {}: {} (prefix of {} log entries)\n",
        o.trial, o.state, o.rule, o.prefix_entries
    );
    s += &format!(
        "lost writes of the open epoch: {} in the state, {} that matter{} ({} candidates checked{})\n",
        o.lost_before,
        o.lost.len(),
        match (o.lost.is_empty(), o.one_minimal) {
            // A torn write's own line says what the tear does.
            (true, _) if o.torn.is_some() => "; the state fails with every write of its open epoch kept",
            // Nothing the crash dropped matters: the state fails with every
            // write of its open epoch, so the cause is in what was flushed.
            (true, _) =>
                "; the state fails with every write of its open epoch kept: the failure is in its \
                          prefix (what a completed flush had made durable), not in what the crash dropped",
            (false, true) => "; keeping any one of them makes it pass",
            (false, false) => "",
        },
        o.candidates_checked,
        if o.complete { "" } else { ", stopped at the limit" }
    );
    for w in &o.lost {
        s += &format!(
            "  log entry {:>6}  sectors {}..{}  {}\n",
            w.log_index,
            w.sector,
            w.sector + w.sectors,
            w.holds
        );
    }
    if let Some(t) = &o.torn {
        s += &format!(
            "torn write: log entry {} (sectors {}..{}, {}), {} of its {} sectors kept {:?}: {}\n",
            t.write.log_index,
            t.write.sector,
            t.write.sector + t.write.sectors,
            t.write.holds,
            t.sectors_kept.len(),
            t.write.sectors,
            t.sectors_kept,
            match (t.fails_whole, t.fails_absent) {
                (false, false) => "the state passes with that write whole and without it: the tear fails it",
                (true, true) => "the state fails with that write whole and without it too: the tear does not matter",
                (true, false) => "the state fails with that write whole too, passes without it",
                (false, true) => "the state fails without that write too, passes with it whole",
            }
        );
    }
    s += &format!("replay: {}\n", o.replay);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure that needs all of `needed` lost.
    fn needs(needed: &'static [u64]) -> impl FnMut(&[u64]) -> Result<bool, ()> {
        move |set: &[u64]| Ok(needed.iter().all(|n| set.contains(n)))
    }

    fn outcome(lost: Vec<LostWrite>) -> MinimiseOutcome {
        MinimiseOutcome {
            trial: 0,
            state: 16,
            rule: "mountable".into(),
            prefix_entries: 408,
            lost_before: 3,
            lost,
            candidates_checked: 5,
            complete: true,
            one_minimal: true,
            torn: None,
            state_file: PathBuf::from("s.json"),
            replay: "crashlab replay-state".into(),
        }
    }

    /// Found on an ext4 fast-commit state: no lost write mattered, and the
    /// summary said "keeping any one of them makes it pass" of none.
    #[test]
    fn a_failure_no_lost_write_explains_is_put_on_the_prefix() {
        let said = render(&outcome(Vec::new()));
        assert!(
            said.contains("0 that matter; the state fails with every write of its open epoch kept"),
            "{said}"
        );
        assert!(!said.contains("keeping any one"), "{said}");
        let one = LostWrite {
            log_index: 410,
            sector: 8552,
            sectors: 32,
            holds: "journal".into(),
        };
        let said = render(&outcome(vec![one]));
        assert!(
            said.contains("1 that matter; keeping any one of them makes it pass"),
            "{said}"
        );
    }

    /// Found on an ext4 state whose journal commit block was torn:
    /// minimise rebuilt it without its torn write (which must stay among
    /// the extra writes), an invalid state, and said it no longer failed.
    #[test]
    fn a_torn_state_loses_only_what_it_is_told_to() {
        let mut w = blocklog::testing::LogWriter::new(512);
        w.write_fill(0, 8, 1)
            .flush()
            .write_fill(8, 8, 2)
            .write_fill(16, 8, 3)
            .write_fill(24, 8, 4);
        let log = blocklog::parse_log(w.bytes(), 64 << 10).unwrap();
        let torn = blocklog::TornWrite {
            entry: 4,
            sectors_kept: vec![0],
            unit_sectors: 1,
        };
        let original = CrashState::new(2, vec![2, 4], Some(torn.clone()));
        original.validate(&log).unwrap();
        assert_eq!(lost_writes(&log, &original), [3]);
        assert_eq!(state_losing(&log, &original, &[3]), Some(original.clone()));
        let keeping_all = state_losing(&log, &original, &[]).expect("a valid state");
        assert_eq!(keeping_all, CrashState::new(2, vec![2, 3, 4], Some(torn)));
    }

    #[test]
    fn ddmin_finds_the_writes_that_matter() {
        let items: Vec<u64> = (0..40).collect();
        let (found, complete) = ddmin(&items, 1000, needs(&[3])).unwrap();
        assert_eq!((found, complete), (vec![3], true));
        let (found, _) = ddmin(&items, 1000, needs(&[5, 17, 33])).unwrap();
        assert_eq!(found, [5, 17, 33]);
        // A failure that needs nothing lost shrinks to nothing.
        let (found, _) = ddmin(&items, 1000, needs(&[])).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn ddmin_stops_at_its_budget_with_a_failing_set() {
        let items: Vec<u64> = (0..64).collect();
        let (found, complete) = ddmin(&items, 3, needs(&[1, 62])).unwrap();
        assert!(!complete);
        assert!(found.contains(&1) && found.contains(&62));
    }

    #[test]
    fn ddmin_passes_on_the_checkers_error() {
        let items: Vec<u64> = (0..8).collect();
        assert_eq!(
            ddmin(&items, 100, |_| Err::<bool, &str>("checker died")),
            Err("checker died")
        );
    }
}
