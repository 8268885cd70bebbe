//! Stage 1: run the workload once on a logged disk and read back what it
//! left: the block-write log, the serial protocol, and the promises (ready
//! marker, acks) placed in the log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use blocklog::ParsedLog;
use record::layout::ack::{self, ACK_SIZE_BYTES};
use record::{Event, ProtocolLog};

use super::report::{LogFacts, RunRecords, Timing};
use super::{ms_since, PowerLossContext};
use machine::qemu::Drive;
use machine::vm::RunFiles;

/// A trial's capture: the workload run and its evidence, read back.
pub struct CapturedRun {
    pub run: crate::workload_boot::WorkloadRun,
    pub params: record::WorkloadParams,
    pub capture: Capture,
    pub files: RunFiles,
    /// The crashed disk (not needed once the capture is read).
    pub disk: PathBuf,
    pub log_path: PathBuf,
    pub log_facts: LogFacts,
    pub records: RunRecords,
    /// `capture` and `parse` filled in.
    pub timing: Timing,
}

pub fn capture_run(pctx: &PowerLossContext, plan: &crate::plan::TrialPlan, dir: &Path) -> Result<CapturedRun> {
    let ctx = pctx.trial;
    let config = ctx.config;
    let mut timing = Timing::default();
    let t = Instant::now();
    let params = config.workload_params(
        plan.workload_seed,
        crate::workload_boot::hold_for(plan),
        Some(pctx.ack_area_offset_bytes),
    );
    let disk = dir.join("disk.img");
    let log_path = dir.join("blocklog.bin");
    machine::images::copy_sparse(pctx.base_disk, &disk)?;
    // A fresh, empty log: QEMU does not truncate an existing one.
    File::create(&log_path)?;
    let files = RunFiles::in_dir(dir, "workload");
    let run = crate::workload_boot::run_workload(
        ctx,
        plan,
        &params,
        Drive::Logged {
            disk: disk.clone(),
            log: log_path.clone(),
        },
        &files,
    )?;
    timing.capture = ms_since(t);

    let t = Instant::now();
    let capture = read_capture(&CaptureSource {
        log_path: &log_path,
        protocol_path: &files.protocol_log,
        base_disk: pctx.base_disk,
        ack_area_offset_bytes: pctx.ack_area_offset_bytes,
        params: &params,
        device_bug: config.device_bug,
    })?;
    timing.parse = ms_since(t);
    let log_facts = LogFacts::of(&capture, std::fs::metadata(&log_path)?.len());
    let records = RunRecords::of(&capture.serial);
    Ok(CapturedRun {
        run,
        params,
        capture,
        files,
        disk,
        log_path,
        log_facts,
        records,
        timing,
    })
}

/// Where an ack sits in the block-write log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckPosition {
    pub entry_index: u64,
    pub seq: u64,
}

/// The application's promises as placed in the block-write log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggedPromises {
    /// Log entry of the ready marker (written just before `READY`).
    pub ready_entry: Option<u64>,
    pub acks: Vec<AckPosition>,
}

/// Finds the ready marker and every ack record written into
/// `[area_start, area_end)`, in log order. The ack of record `seq` sits in
/// the area's sector `seq + 1` (writer processes never share one); each
/// must be of this run, in its own sector, and written once.
pub fn acks_in_log(
    log: &ParsedLog,
    log_file: &File,
    area_start_bytes: u64,
    area_end_bytes: u64,
    seed: u64,
) -> Result<LoggedPromises> {
    let mut acks = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut ready_entry = None;
    let mut buf = Vec::new();
    for entry in log.entries.iter().filter(|e| e.is_data_write()) {
        let start = entry.device_offset_bytes();
        let end = start + entry.nr_sectors * 512;
        if end <= area_start_bytes || start >= area_end_bytes {
            continue;
        }
        if start < area_start_bytes || end > area_end_bytes {
            bail!(
                "log entry {} straddles the ack area: the filesystem wrote past its end",
                entry.index
            );
        }
        blocklog::read_entry_data(log_file, entry, &mut buf).context("reading an ack from the log")?;
        for (i, sector) in buf.chunks(ACK_SIZE_BYTES).enumerate() {
            let area_sector = (start - area_start_bytes) / ACK_SIZE_BYTES as u64 + i as u64;
            let Some(record) = ack::decode(sector) else {
                bail!("log entry {} in the ack area holds no valid ack record", entry.index);
            };
            let placed = ack::sector_offset_bytes(record.ack_index) == area_sector * ACK_SIZE_BYTES as u64;
            if record.seed != seed || !placed {
                bail!(
                    "ack record {record:?} in log entry {} (area sector {area_sector}) is not one of this run's",
                    entry.index
                );
            }
            if record.ack_index == ack::READY_MARKER_INDEX {
                if ready_entry.replace(entry.index).is_some() {
                    bail!("log entry {} writes the ready marker a second time", entry.index);
                }
                continue;
            }
            if ready_entry.is_none() || record.ack_index != record.seq || !seen.insert(record.seq) {
                bail!(
                    "ack record {record:?} in log entry {} is out of place: before the ready marker, \
                     not at its record's sector, or a second time",
                    entry.index
                );
            }
            acks.push(AckPosition {
                entry_index: entry.index,
                seq: record.seq,
            });
        }
    }
    Ok(LoggedPromises { ready_entry, acks })
}

/// Every ACK the host saw on the channel must be in the log: the workload
/// wrote it there (O_DIRECT, completed) before printing the line. The one
/// exception is a log whose usable part ends early, at a hole or a cut-off
/// entry left by the kill: acks logged past that end are counted and left
/// unjudged (states are built only from what precedes it). Returns how many
/// there were.
pub fn check_acks_match(serial: &ProtocolLog, promises: &LoggedPromises, log_ends_early: bool) -> Result<u64> {
    let logged: std::collections::HashSet<u64> = promises.acks.iter().map(|a| a.seq).collect();
    let ready_said = serial.events.iter().any(|e| matches!(e, Event::Ready { .. }));
    if ready_said && promises.ready_entry.is_none() && !log_ends_early {
        bail!("READY reached the channel but its marker is not in the block log: the capture is incomplete");
    }
    let mut past_end = 0;
    for e in &serial.events {
        if let Event::Ack { seq, .. } = e {
            if !logged.contains(seq) {
                if !log_ends_early {
                    bail!("ACK {seq} reached the channel but not the block log: the capture is incomplete");
                }
                past_end += 1;
            }
        }
    }
    Ok(past_end)
}

/// A captured run, read back: the parsed log (as the planted device bug,
/// if any, would have made it durable), the serial protocol, and the
/// promises placed in the log.
pub struct Capture {
    pub log: ParsedLog,
    pub log_file: Arc<File>,
    pub serial: ProtocolLog,
    pub promises: LoggedPromises,
    pub device_size_bytes: u64,
    /// ACKs seen on the channel whose log entry lies past a hole or a
    /// cut-off entry at the log's end: not judged.
    pub acks_past_log_end: u64,
    pub device_bug_effect: Option<blocklog::DeviceBugEffect>,
    /// The whole protocol's timeline, built once: each state's history is
    /// a cut of it. `Err`: the protocol breaks its rules somewhere, and
    /// each state is judged from the events it keeps (which says where).
    pub timeline: Result<verifier::Timeline, String>,
    pub cuts: super::judge::CutIndex,
}

/// Where the capture's files are and how to read them.
pub struct CaptureSource<'a> {
    pub log_path: &'a Path,
    pub protocol_path: &'a Path,
    pub base_disk: &'a Path,
    pub ack_area_offset_bytes: u64,
    /// The run's parameters: its seed, geometry and records.
    pub params: &'a record::WorkloadParams,
    pub device_bug: Option<blocklog::DeviceBug>,
}

pub fn read_capture(source: &CaptureSource) -> Result<Capture> {
    let protocol_path = source.protocol_path;
    let serial = record::protocol::parse_log(
        &std::fs::read_to_string(protocol_path).with_context(|| format!("cannot read {}", protocol_path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", protocol_path.display()))?;
    let device_size_bytes = std::fs::metadata(source.base_disk)
        .with_context(|| format!("cannot read {}", source.base_disk.display()))?
        .len();
    let log = blocklog::read_log_file(source.log_path, device_size_bytes)
        .with_context(|| format!("block-write log {} is unusable", source.log_path.display()))?;
    let log_ends_early = log.truncated.is_some() || log.stray_data_offset_bytes.is_some();
    let (log, device_bug_effect) = match source.device_bug {
        Some(bug) => {
            let ignored = ack_area_sectors(source.ack_area_offset_bytes, device_size_bytes);
            let (log, effect) = blocklog::apply_device_bug(&log, bug, &ignored, source.params.seed);
            (log, Some(effect))
        }
        None => (log, None),
    };
    let log_file = Arc::new(File::open(source.log_path)?);
    let promises = acks_in_log(
        &log,
        &log_file,
        source.ack_area_offset_bytes,
        device_size_bytes,
        source.params.seed,
    )?;
    let acks_past_log_end = check_acks_match(&serial, &promises, log_ends_early)?;
    let geometry = source.params.geometry();
    Ok(Capture {
        log,
        log_file,
        device_size_bytes,
        acks_past_log_end,
        device_bug_effect,
        timeline: verifier::Timeline::build(&serial, None, &geometry, source.params.records),
        cuts: super::judge::CutIndex::new(&serial, &promises, geometry.writers),
        serial,
        promises,
    })
}

/// The ack area in 512-byte sectors: no check reads it, so it is no part
/// of a state's identity.
pub fn ack_area_sectors(ack_area_offset_bytes: u64, device_size_bytes: u64) -> std::ops::Range<u64> {
    ack_area_offset_bytes / 512..device_size_bytes / 512
}
