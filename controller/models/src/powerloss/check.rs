//! Stage 4: the check workers. Each worker owns a checker VM (kernel path)
//! and/or a scratch image (host path) and takes the next unchecked state;
//! results come back to the caller in plan order, so verdicts, lines and
//! the "first failure" are the same whatever the number of workers.
//!
//! Under TCG a checker VM keeps one core busy: `--check-workers` defaults to
//! the cores there are. A worker's failure (not a state's) stops the others
//! at their next state; Ctrl-C stops them within one poll (50 ms) of the
//! current round trip.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Result;
use blocklog::CrashState;
use nbd::DiskView;

use super::build::{StateBuilder, StateView};
use super::host_check::HostChecker;
use super::kernel_check::{KernelChecker, CHECKER_RESTARTS_MAX};
use super::ms_since;
use crate::evidence::CheckResult;
use crate::workload_boot::TrialContext;
use config::{Checker, FileRead};
use machine::vm;

/// What a worker needs to build and check any state; shared, read-only.
pub struct CheckEnv<'a> {
    pub builder: StateBuilder<'a>,
    pub base_disk: &'a Path,
    pub fsck: bool,
    pub ctx: &'a TrialContext<'a>,
    /// Where checker VMs keep their logs.
    pub dir: &'a Path,
    /// Seeds which states are read both ways (`FileRead::Extents`) and
    /// which go to the kernel checker under `--checker tiered`.
    pub sample_seed: u64,
    /// `--checker tiered`: whether a state's host check passes (the
    /// verdict the judging stage will give it).
    pub host_passes: &'a (dyn Fn(&CrashState, &CheckResult) -> bool + Sync),
}

/// `--checker tiered`: why a state went to the kernel checker as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelTier {
    /// The seeded sample (1 in `TIER_KERNEL_EVERY`).
    Sampled,
    /// The host checker's verdict failed: the kernel's recovery decides.
    HostFailed,
    /// crashlab's ext4 reader declined the state (e2fsprogs read it).
    HostDeclined,
}

/// Whether (and why) a host-checked state goes on to the kernel checker.
fn kernel_tier(env: &CheckEnv, index: usize, state: &CrashState, host: &CheckResult) -> Option<KernelTier> {
    // Another stream than the read-both-ways sample's.
    let sampled = splitmix64(!env.sample_seed ^ index as u64).is_multiple_of(config::TIER_KERNEL_EVERY);
    if sampled {
        Some(KernelTier::Sampled)
    } else if !(env.host_passes)(state, host) {
        Some(KernelTier::HostFailed)
    } else if host.reads.by_e2fsprogs > 0 {
        Some(KernelTier::HostDeclined)
    } else {
        None
    }
}

/// With `--read-files=extents`, one state in this many (seeded), and each
/// checker VM's first, is also copied out and compared with the bytes read
/// at its extents.
pub const CROSS_CHECK_EVERY: u64 = 16;

/// How the checker VM hands over the files of state `index`.
fn file_read_for(env: &CheckEnv, index: usize, checker_first_state: bool) -> FileRead {
    match env.ctx.config.read_files {
        FileRead::Copy => FileRead::Copy,
        FileRead::Both => FileRead::Both,
        FileRead::Extents => {
            let sampled = splitmix64(env.sample_seed ^ index as u64).is_multiple_of(CROSS_CHECK_EVERY);
            match checker_first_state || sampled {
                true => FileRead::Both,
                false => FileRead::Extents,
            }
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl CheckEnv<'_> {
    fn empty_view(&self) -> Arc<dyn DiskView> {
        Arc::new(self.builder.empty_view())
    }
}

/// A state that timed out is checked once more with this many times the
/// time.
pub const TIMEOUT_RETRY_FACTOR: u64 = 4;

/// One state's check results, from each path asked for.
pub struct StateChecks {
    pub results: Vec<(&'static str, CheckResult)>,
    pub build_ms: u64,
    pub kernel_ms: u64,
    pub host_ms: u64,
    pub overlay_bytes: u64,
    /// Checker VMs booted again before this state (the last one retired).
    pub checker_restarts: u64,
    /// The state timed out once and was checked again on a fresh checker
    /// VM with more time, which finished: the first wait was the host's
    /// slowness (an overloaded machine), not a hang of the guest.
    pub timeouts_retried: u64,
    /// `--checker tiered`: why the kernel checked this state too (`None`:
    /// the host alone did).
    pub kernel_tier: Option<KernelTier>,
}

impl StateChecks {
    pub fn new(results: Vec<(&'static str, CheckResult)>) -> StateChecks {
        StateChecks {
            results,
            build_ms: 0,
            kernel_ms: 0,
            host_ms: 0,
            overlay_bytes: 0,
            checker_restarts: 0,
            timeouts_retried: 0,
            kernel_tier: None,
        }
    }
}

/// A check worker: a checker VM (kernel path) and/or a scratch image (host
/// path). Each runs on its own thread.
pub struct CheckWorker {
    index: usize,
    kernel: Option<KernelChecker>,
    /// Checker VMs this worker booted after the first.
    restarts: u32,
    host: Option<HostChecker>,
}

/// Starts `count` workers; checker VMs boot in parallel (a boot is seconds
/// of one core).
pub fn start_workers(env: &CheckEnv, count: usize) -> Result<Vec<CheckWorker>> {
    let config = env.ctx.config;
    let want_kernel = config.checker != Checker::Host;
    let want_host = config.checker != Checker::Kernel;
    let started: Vec<Result<CheckWorker>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                scope.spawn(move || -> Result<CheckWorker> {
                    let kernel = match want_kernel {
                        true => Some(KernelChecker::start(
                            env.ctx,
                            env.dir,
                            &format!("checker{i}"),
                            env.empty_view(),
                            env.fsck,
                        )?),
                        false => None,
                    };
                    let host = match want_host {
                        true => Some(HostChecker::new(env.base_disk, env.dir, env.fsck, config.data_files())?),
                        false => None,
                    };
                    Ok(CheckWorker {
                        index: i,
                        kernel,
                        restarts: 0,
                        host,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a checker thread panicked")))
            })
            .collect()
    });
    started.into_iter().collect()
}

/// Checks every state on `workers` and hands each result to `on_checked`
/// in plan order. Stops at the first error (a worker's, or `on_checked`'s),
/// at Ctrl-C (`interrupt`) or when `abort` is set; stops the workers (their
/// VMs) before returning either way.
pub fn check_in_order(
    env: &CheckEnv,
    mut workers: Vec<CheckWorker>,
    states: &[CrashState],
    abort: &AtomicBool,
    interrupt: &AtomicBool,
    mut on_checked: impl FnMut(usize, StateChecks) -> Result<()>,
) -> Result<()> {
    let next_state = AtomicUsize::new(0);
    let outcome = std::thread::scope(|scope| -> Result<()> {
        // Bounded: a worker that runs ahead of the judging waits here, so
        // memory holds a few states' files, not the backlog of the trial.
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<StateChecks>)>(workers.len());
        for worker in workers.iter_mut() {
            let (tx, next_state) = (tx.clone(), &next_state);
            scope.spawn(move || loop {
                let i = next_state.fetch_add(1, Ordering::SeqCst);
                if i >= states.len() || abort.load(Ordering::SeqCst) {
                    break;
                }
                let result = worker.check(env, i, &states[i], abort);
                let failed = result.is_err();
                if tx.send((i, result)).is_err() || failed {
                    break;
                }
            });
        }
        drop(tx);
        // Results arrive in any order; the bounded channel keeps this map
        // about as small as the worker count.
        let mut pending = BTreeMap::new();
        let mut next_out = 0usize;
        let outcome = loop {
            if interrupt.load(Ordering::SeqCst) {
                break Err(anyhow::Error::new(vm::Interrupted));
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((i, Ok(checks))) => {
                    pending.insert(i, checks);
                }
                Ok((_, Err(e))) => break Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            }
            let mut failed = None;
            while let Some(checks) = pending.remove(&next_out) {
                if let Err(e) = on_checked(next_out, checks) {
                    failed = Some(e);
                    break;
                }
                next_out += 1;
            }
            if let Some(e) = failed {
                break Err(e);
            }
        };
        // Stops the other workers at their next state; their VMs go below.
        abort.store(true, Ordering::SeqCst);
        outcome
    });
    let stopped: Result<Vec<()>> = workers.into_iter().map(CheckWorker::stop).collect();
    outcome?;
    stopped?;
    Ok(())
}

impl CheckWorker {
    fn check(&mut self, env: &CheckEnv, index: usize, state: &CrashState, abort: &AtomicBool) -> Result<StateChecks> {
        let mut checks = StateChecks::new(Vec::new());
        let t = Instant::now();
        let view = env.builder.view(state);
        checks.build_ms = ms_since(t);
        let tiered = env.ctx.config.checker == Checker::Tiered;
        if let Some(host) = self.host.as_mut() {
            let t = Instant::now();
            let read = file_read_for(env, index, host.checks_done() == 0);
            checks.results.push(("host", host.check(&view, read)?));
            checks.host_ms = ms_since(t);
        }
        if tiered {
            checks.kernel_tier = kernel_tier(env, index, state, &checks.results[0].1);
        }
        if self.kernel.is_some() && (!tiered || checks.kernel_tier.is_some()) {
            let t = Instant::now();
            let result = self.check_kernel(env, index, &view, &mut checks, abort)?;
            // The kernel's verdict first: where it ran, it is the state's.
            checks.results.insert(0, ("kernel", result));
            checks.kernel_ms = ms_since(t);
        }
        Ok(checks)
    }

    /// The kernel path on one state: a timeout is checked once more on a
    /// fresh checker VM with more time.
    fn check_kernel(
        &mut self,
        env: &CheckEnv,
        index: usize,
        view: &StateView,
        checks: &mut StateChecks,
        abort: &AtomicBool,
    ) -> Result<CheckResult> {
        if self.kernel.as_ref().is_some_and(|k| !k.is_usable()) {
            checks.checker_restarts += self.restart_kernel(env)?;
        }
        let checker = self.kernel.as_mut().expect("a kernel checker");
        let read = file_read_for(env, index, checker.checks_done() == 0);
        let mut result = checker.check(Arc::new(view.clone()), read, abort)?;
        if result.timed_out {
            // A hang is a finding only if it is one: on an overloaded
            // host a slow recovery looks the same. Once, on a fresh
            // checker VM, with more time; a second timeout stands.
            checks.checker_restarts += self.restart_kernel(env)?;
            let checker = self.kernel.as_mut().expect("restarted");
            let usual_ms = checker.state_timeout_ms();
            checker.set_state_timeout_ms(usual_ms.saturating_mul(TIMEOUT_RETRY_FACTOR));
            result = checker.check(Arc::new(view.clone()), read, abort)?;
            checker.set_state_timeout_ms(usual_ms);
            checks.timeouts_retried += u64::from(!result.timed_out);
        }
        let checker = self.kernel.as_ref().expect("a kernel checker");
        checks.overlay_bytes = checker.nbd().overlay_bytes();
        Ok(result)
    }

    /// Replaces a retired checker VM (its logs stay, under a new name for
    /// the next one). Bounded: a guest that dies on every state is a setup
    /// problem, not a finding per state.
    fn restart_kernel(&mut self, env: &CheckEnv) -> Result<u64> {
        self.restarts += 1;
        if let Some(old) = self.kernel.take() {
            old.stop()?;
        }
        anyhow::ensure!(
            self.restarts <= CHECKER_RESTARTS_MAX,
            "checker VM {} died, hung or could not unmount while recovering {} states in one trial: \
             see the checker console logs in {}",
            self.index,
            self.restarts,
            env.dir.display()
        );
        let name = format!("checker{}-restart{}", self.index, self.restarts);
        self.kernel = Some(KernelChecker::start(
            env.ctx,
            env.dir,
            &name,
            env.empty_view(),
            env.fsck,
        )?);
        Ok(1)
    }

    fn stop(self) -> Result<()> {
        match self.kernel {
            Some(checker) => checker.stop(),
            None => Ok(()),
        }
    }
}
