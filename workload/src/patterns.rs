//! The workload patterns (`record::Pattern`): how records are written,
//! synced and acknowledged. Each keeps the invariants of `main.rs`; the
//! planted bugs break exactly the durability call they name.

use nix::sys::mman::MsFlags;
use record::layout::{self, RecordHeader};
use record::pattern::{DATA_FILE_NAMES, IPC_CONTROL_FILE_NAME};
use record::{DurabilityMode, Event, Pattern, PlantedBug};

use crate::mapped_file::{page_size_bytes, DataFile, Mapping, SyscallError};
use crate::rng::Rng;
use crate::Ctx;

pub fn run(ctx: &mut Ctx, dir: &str) -> Result<(), SyscallError> {
    let path = |file: usize| format!("{dir}/{}", DATA_FILE_NAMES[file]);
    match ctx.params.pattern {
        Pattern::Records => records(ctx, &path(0)),
        Pattern::PartialMsync => partial_msync(ctx, &path(0)),
        Pattern::Invalidate => invalidate(ctx, &path(0)),
        Pattern::Ipc => ipc(ctx, &path(0), &format!("{dir}/{IPC_CONTROL_FILE_NAME}")),
        Pattern::Wal => wal(ctx, &path(0)),
        Pattern::Growth => growth(ctx, &path(0)),
        Pattern::Several => several(ctx, &[path(0), path(1)]),
    }?;
    // A run that acked fewer records than the crash point's count holds at
    // its end, in the relay: the planned crash still happens.
    ctx.out.emit(&Event::Done {
        records: ctx.params.records,
    });
    Ok(())
}

/// How one durability call is made: as promised, or broken by a planted
/// bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncCall {
    AsPromised,
    /// As promised, but after the ack (`ack-before-sync`).
    AfterAck,
    /// Not at all (`skip-sync`).
    Skipped,
    /// A bare `MS_ASYNC` over the range (`async-instead-of-sync`).
    AsyncOnly,
    /// As promised, over the page before the range (`sync-wrong-range`).
    PageBefore,
}

/// The shape of durability call number `call` (from 0) under the planted
/// bug, if any.
fn sync_call(ctx: &Ctx, call: u64) -> SyncCall {
    match ctx.params.planted_bug {
        Some(bug) if bug.hits(call) => match bug {
            PlantedBug::AckBeforeSync => SyncCall::AfterAck,
            PlantedBug::SkipSync { .. } => SyncCall::Skipped,
            PlantedBug::SyncWrongRange => SyncCall::PageBefore,
            PlantedBug::AsyncInsteadOfSync { .. } => SyncCall::AsyncOnly,
            PlantedBug::DataBeforeLog => SyncCall::AsPromised,
        },
        _ => SyncCall::AsPromised,
    }
}

fn write_record(mapping: &mut Mapping, offset: usize, seq: u64, slot: u64, ctx: &Ctx) {
    let header = RecordHeader {
        record_size_bytes: ctx.params.record_size_bytes,
        seq,
        slot,
        seed: ctx.params.seed,
    };
    let bytes = mapping.bytes_mut(offset, ctx.params.record_size_bytes as usize);
    layout::encode(&header, bytes);
    // Paired assertion: the verifier checks the same thing after the crash.
    assert_eq!(layout::decode(bytes), Ok(header), "record {seq} did not read back");
}

/// msync `[offset, offset + len)` of `mapping` with `flags` the way `call`
/// says, reporting the call made.
fn msync_as(
    ctx: &mut Ctx,
    file: u32,
    mapping: &mut Mapping,
    offset: usize,
    len: usize,
    flags: MsFlags,
    call: SyncCall,
) -> Result<(), SyscallError> {
    let (offset, len, flags) = match call {
        SyncCall::Skipped => return Ok(()),
        SyncCall::AsyncOnly => (offset, len, MsFlags::MS_ASYNC),
        SyncCall::PageBefore => {
            let page = page_size_bytes();
            let start = offset - offset % page;
            let before = start
                .checked_sub(page)
                .unwrap_or(mapping.len_bytes().saturating_sub(page));
            (before, len.min(mapping.len_bytes() - before), flags)
        }
        SyncCall::AsPromised | SyncCall::AfterAck => (offset, len, flags),
    };
    let (made, result) = mapping.msync(offset, len, flags);
    ctx.msync_done(file, made, result)
}

/// The second process of a pattern (ipc's consumer, several's second
/// writer), seen from the first: a failure of one stops the other, so
/// nothing is acked after an `ERR`, and it is never left running.
struct ChildGuard {
    pid: nix::unistd::Pid,
    reaped: bool,
}

impl ChildGuard {
    /// Err if the child already ended badly; Ok while it runs or ended well.
    fn check(&mut self) -> Result<(), SyscallError> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => Ok(()),
            Ok(WaitStatus::Exited(_, 0)) => {
                self.reaped = true;
                Ok(())
            }
            Ok(_) | Err(_) => {
                self.reaped = true;
                Err(SyscallError {
                    op: "second-process-failed",
                    errno: nix::errno::Errno::ECHILD as i32,
                })
            }
        }
    }

    /// Waits for the child's end; Err unless it exited with status 0.
    fn wait(mut self) -> Result<(), SyscallError> {
        if self.reaped {
            return Ok(());
        }
        self.reaped = true;
        match nix::sys::wait::waitpid(self.pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
            _ => Err(SyscallError {
                op: "second-process-failed",
                errno: nix::errno::Errno::ECHILD as i32,
            }),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

/// In the child: whether the process that forked it is still there.
fn parent_alive(parent: nix::unistd::Pid) -> bool {
    nix::unistd::getppid() == parent
}

/// One record the way most patterns make it: `BEGIN`, write through
/// `mapping`, msync of its range with MS_SYNC (as the planted bug allows),
/// `after_sync` (ipc publishes there), `ACK`.
#[allow(clippy::too_many_arguments)]
fn write_sync_ack(
    ctx: &mut Ctx,
    file: u32,
    mapping: &mut Mapping,
    offset: usize,
    seq: u64,
    slot: u64,
    call_number: u64,
    after_sync: impl FnOnce(),
) -> Result<(), SyscallError> {
    let record_size = ctx.params.record_size_bytes as usize;
    ctx.begin(seq, slot)?;
    write_record(mapping, offset, seq, slot, ctx);
    let call = sync_call(ctx, call_number);
    if call == SyncCall::AfterAck {
        ctx.ack(seq)?;
    }
    msync_as(ctx, file, mapping, offset, record_size, MsFlags::MS_SYNC, call)?;
    after_sync();
    if call != SyncCall::AfterAck {
        ctx.ack(seq)?;
    }
    Ok(())
}

/// Today's pattern: slots in order, wrapping; a batch of records, then the
/// durability call `--mode` names, then the acks.
fn records(ctx: &mut Ctx, path: &str) -> Result<(), SyscallError> {
    let params = ctx.params.clone();
    let mut file = DataFile::create_durably(path, params.file_size_bytes, 1)?;
    ctx.ready()?;
    let record_size = params.record_size_bytes as usize;
    let batch = params.mode.batch_records() as usize;
    let slots = params.slots();
    let mut pending: Vec<(u64, u64)> = Vec::with_capacity(batch);
    for seq in 0..params.records {
        let slot = seq % slots;
        ctx.begin(seq, slot)?;
        write_record(file.mapping(0), slot as usize * record_size, seq, slot, ctx);
        pending.push((seq, slot));
        if pending.len() < batch && seq + 1 < params.records {
            continue;
        }
        let call = sync_call(ctx, seq / batch as u64);
        if call == SyncCall::AfterAck {
            ack_all(ctx, &pending)?;
        }
        match sync_records(ctx, &mut file, &pending, record_size, call) {
            Ok(()) => {
                if call != SyncCall::AfterAck {
                    ack_all(ctx, &pending)?;
                }
            }
            // Injected write errors: report what follows, ack nothing of
            // this batch, go on.
            Err(error) if params.io_errors => after_failed_sync(ctx, &mut file, &pending, record_size, &error)?,
            Err(error) => return Err(error),
        }
        pending.clear();
    }
    Ok(())
}

fn ack_all(ctx: &mut Ctx, records: &[(u64, u64)]) -> Result<(), SyscallError> {
    records.iter().try_for_each(|&(seq, _slot)| ctx.ack(seq))
}

/// Makes the records in `pending` durable the way the mode says (unless a
/// planted bug breaks the call).
fn sync_records(
    ctx: &mut Ctx,
    file: &mut DataFile,
    pending: &[(u64, u64)],
    record_size: usize,
    call: SyncCall,
) -> Result<(), SyscallError> {
    let mode = ctx.params.mode;
    let flags = match mode {
        DurabilityMode::MsSync | DurabilityMode::Batch(_) => MsFlags::MS_SYNC,
        DurabilityMode::MsAsync | DurabilityMode::MsAsyncFsync | DurabilityMode::MsAsyncFdatasync => MsFlags::MS_ASYNC,
        DurabilityMode::None => return Ok(()),
    };
    for (first_slot, count) in contiguous_runs(pending) {
        let offset = first_slot as usize * record_size;
        msync_as(ctx, 0, file.mapping(0), offset, count * record_size, flags, call)?;
    }
    match (mode, call) {
        // The planted bugs replace the whole durability call, fsync included.
        (_, SyncCall::Skipped | SyncCall::AsyncOnly | SyncCall::PageBefore) => Ok(()),
        (DurabilityMode::MsAsyncFsync, _) => file.fsync(),
        (DurabilityMode::MsAsyncFdatasync, _) => file.fdatasync(),
        _ => Ok(()),
    }
}

/// After a durability call failed: does the following fsync report the
/// error too (`FSYNC`), and what does the mapping show for each record of
/// the batch now (`READBACK`: new, old, zeros, other)?
fn after_failed_sync(
    ctx: &mut Ctx,
    file: &mut DataFile,
    pending: &[(u64, u64)],
    record_size: usize,
    error: &SyscallError,
) -> Result<(), SyscallError> {
    eprintln!("crashlab-workload: {error} (injected errors: going on)");
    let errno = file.fsync().err().map_or(0, |e| e.errno);
    ctx.out.emit(&Event::Fsync { errno });
    for &(seq, slot) in pending {
        let expected = layout::encode_vec(&RecordHeader {
            record_size_bytes: ctx.params.record_size_bytes,
            seq,
            slot,
            seed: ctx.params.seed,
        });
        let seen = file.mapping(0).bytes(slot as usize * record_size, record_size);
        let what = if seen == expected.as_slice() {
            "new"
        } else if seen.iter().all(|&b| b == 0) {
            "zeros"
        } else if layout::decode(seen).is_ok_and(|h| h.slot == slot && h.seq < seq) {
            "old"
        } else {
            "other"
        };
        ctx.out.emit(&Event::Readback { seq, what: what.into() });
    }
    Ok(())
}

/// Groups slots that follow each other into (first slot, count) runs: a batch
/// that wraps around the end of the file needs two msync ranges.
fn contiguous_runs(pending: &[(u64, u64)]) -> Vec<(u64, usize)> {
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for &(_, slot) in pending {
        match runs.last_mut() {
            Some((first, count)) if *first + *count as u64 == slot => *count += 1,
            _ => runs.push((slot, 1)),
        }
    }
    runs
}

/// Rounds of: dirty up to 8 records in seeded random slots, then MS_SYNC
/// over a page-aligned sub-range ending at one of their pages; ack the
/// newest record of every slot in the synced pages. Half of the calls pass
/// a length that is not a page multiple: the kernel rounds it up, and the
/// records in that last page are acked on its word.
fn partial_msync(ctx: &mut Ctx, path: &str) -> Result<(), SyscallError> {
    let params = ctx.params.clone();
    let mut file = DataFile::create_durably(path, params.file_size_bytes, 1)?;
    ctx.ready()?;
    let record_size = params.record_size_bytes as usize;
    let slots = params.slots();
    let page = page_size_bytes();
    let mut rng = Rng::new(params.seed);
    // Slot → its newest record not yet synced.
    let mut dirty: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut seq = 0;
    let mut call_number = 0;
    while seq < params.records {
        for _ in 0..1 + rng.below(8) {
            if seq == params.records {
                break;
            }
            let slot = rng.below(slots);
            ctx.begin(seq, slot)?;
            write_record(file.mapping(0), slot as usize * record_size, seq, slot, ctx);
            dirty.insert(slot, seq);
            seq += 1;
        }
        // End the range at a dirty record's page, reach back 0..8 pages.
        let target = *dirty
            .keys()
            .nth(rng.below(dirty.len() as u64) as usize)
            .expect("a record is dirty");
        let last_page = target as usize * record_size / page;
        let first_page = last_page.saturating_sub(rng.below(8) as usize);
        let whole = (last_page + 1 - first_page) * page;
        let len = match rng.coin() {
            true => whole,
            false => whole - page + 1 + rng.below(page as u64 - 1) as usize,
        };
        let start = first_page * page;
        sync_and_ack_range(ctx, &mut file, &mut dirty, start, len, call_number)?;
        call_number += 1;
    }
    // The application's checkpoint at the end: one msync over the whole
    // mapping acks whatever is still dirty.
    let size = file.size_bytes();
    sync_and_ack_range(ctx, &mut file, &mut dirty, 0, size, call_number)
}

/// MS_SYNC over `[start, start + len)` (rounded out to pages by the
/// kernel), then acks the newest record of every dirty slot wholly inside
/// the synced pages.
fn sync_and_ack_range(
    ctx: &mut Ctx,
    file: &mut DataFile,
    dirty: &mut std::collections::BTreeMap<u64, u64>,
    start: usize,
    len: usize,
    call_number: u64,
) -> Result<(), SyscallError> {
    let record_size = ctx.params.record_size_bytes as usize;
    let page = page_size_bytes();
    let synced_end = (start + len).div_ceil(page) * page;
    let covered: Vec<(u64, u64)> = dirty
        .range(start.div_ceil(record_size) as u64..)
        .filter(|(&slot, _)| slot as usize * record_size >= start && (slot as usize + 1) * record_size <= synced_end)
        .map(|(&slot, &seq)| (seq, slot))
        .collect();
    let call = sync_call(ctx, call_number);
    if call == SyncCall::AfterAck {
        ack_all(ctx, &covered)?;
    }
    msync_as(ctx, 0, file.mapping(0), start, len, MsFlags::MS_SYNC, call)?;
    if call != SyncCall::AfterAck {
        ack_all(ctx, &covered)?;
    }
    for (_, slot) in covered {
        dirty.remove(&slot);
    }
    Ok(())
}

/// Even records through the mapping and `MS_SYNC | MS_INVALIDATE`, odd
/// ones with `pwrite` + `fdatasync` (then `MS_SYNC | MS_INVALIDATE` over
/// the mapping, as portable code must). Each is read back through the
/// other path at once: any difference is reported (`INCOHERENT`).
fn invalidate(ctx: &mut Ctx, path: &str) -> Result<(), SyscallError> {
    let params = ctx.params.clone();
    let mut file = DataFile::create_durably(path, params.file_size_bytes, 1)?;
    ctx.ready()?;
    let record_size = params.record_size_bytes as usize;
    let slots = params.slots();
    let flags = MsFlags::MS_SYNC | MsFlags::MS_INVALIDATE;
    let mut other_path = vec![0u8; record_size];
    for seq in 0..params.records {
        let slot = seq % slots;
        let offset = slot as usize * record_size;
        ctx.begin(seq, slot)?;
        let call = sync_call(ctx, seq);
        if call == SyncCall::AfterAck {
            ctx.ack(seq)?;
        }
        if seq % 2 == 0 {
            write_record(file.mapping(0), offset, seq, slot, ctx);
            msync_as(ctx, 0, file.mapping(0), offset, record_size, flags, call)?;
            file.pread(offset, &mut other_path)?;
            report_incoherence(
                ctx,
                file.mapping(0).bytes(offset, record_size),
                &other_path,
                offset,
                "read-after-map",
            );
        } else {
            let bytes = layout::encode_vec(&RecordHeader {
                record_size_bytes: params.record_size_bytes,
                seq,
                slot,
                seed: params.seed,
            });
            file.pwrite(offset, &bytes)?;
            if call == SyncCall::AsPromised || call == SyncCall::AfterAck {
                file.fdatasync()?;
            }
            msync_as(ctx, 0, file.mapping(0), offset, record_size, flags, call)?;
            report_incoherence(
                ctx,
                &bytes,
                file.mapping(0).bytes(offset, record_size),
                offset,
                "map-after-pwrite",
            );
        }
        if call != SyncCall::AfterAck {
            ctx.ack(seq)?;
        }
    }
    Ok(())
}

fn report_incoherence(ctx: &mut Ctx, written: &[u8], seen: &[u8], offset: usize, how: &str) {
    if let Some(at) = written.iter().zip(seen).position(|(a, b)| a != b) {
        ctx.out.emit(&Event::Incoherent {
            file: 0,
            offset_bytes: (offset + at) as u64,
            how: how.to_string(),
        });
    }
}

/// A producer msyncs each record and publishes the count in a control
/// file; a consumer process maps the data file too and reads every
/// published record, reporting each (`SEEN`, or `SEENBAD` if torn or
/// foreign). The producer never overwrites a record the consumer has not
/// read.
fn ipc(ctx: &mut Ctx, path: &str, control_path: &str) -> Result<(), SyscallError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let params = ctx.params.clone();
    let mut file = DataFile::create_durably(path, params.file_size_bytes, 1)?;
    let mut control = DataFile::create_durably(control_path, page_size_bytes() as u64, 1)?;
    let record_size = params.record_size_bytes as usize;
    let slots = params.slots();
    let counters = control.mapping(0).bytes_mut(0, 16).as_mut_ptr();
    // SAFETY: the control mapping is page-aligned, lives until this function
    // returns in both processes, and is only accessed through these atomics.
    let (published, consumed) = unsafe { (&*counters.cast::<AtomicU64>(), &*counters.add(8).cast::<AtomicU64>()) };
    ctx.ready()?;
    let parent = nix::unistd::getpid();
    // SAFETY: single-threaded; the child only reads its mappings and
    // writes lines, then exits.
    match unsafe { nix::unistd::fork() }.map_err(crate::mapped_file::fail("fork"))? {
        nix::unistd::ForkResult::Child => {
            consume(ctx, file.mapping(0), published, consumed, record_size, slots, parent);
            std::process::exit(0);
        }
        nix::unistd::ForkResult::Parent { child } => {
            let mut child = ChildGuard {
                pid: child,
                reaped: false,
            };
            for seq in 0..params.records {
                child.check()?;
                // Wait until the consumer has read what this slot holds.
                let wait = std::time::Instant::now();
                while seq >= consumed.load(Ordering::Acquire) + slots {
                    if wait.elapsed() > std::time::Duration::from_secs(30) {
                        return Err(SyscallError {
                            op: "ipc-consumer-stalled",
                            errno: nix::errno::Errno::ETIMEDOUT as i32,
                        });
                    }
                    std::thread::yield_now();
                }
                let slot = seq % slots;
                write_sync_ack(
                    ctx,
                    0,
                    file.mapping(0),
                    slot as usize * record_size,
                    seq,
                    slot,
                    seq,
                    || published.store(seq + 1, Ordering::Release),
                )?;
            }
            child.wait()
        }
    }
}

/// The consumer: reads each published record through its own view of the
/// shared mapping and reports what it saw.
fn consume(
    ctx: &mut Ctx,
    mapping: &Mapping,
    published: &std::sync::atomic::AtomicU64,
    consumed: &std::sync::atomic::AtomicU64,
    record_size: usize,
    slots: u64,
    parent: nix::unistd::Pid,
) {
    use std::sync::atomic::Ordering;
    let records = ctx.params.records;
    let mut next = 0;
    let mut idle = std::time::Instant::now();
    while next < records && parent_alive(parent) {
        let ready = published.load(Ordering::Acquire);
        if next >= ready {
            // The producer died (ERR) or stalled: give up rather than hang.
            if idle.elapsed() > std::time::Duration::from_secs(30) {
                return;
            }
            std::thread::yield_now();
            continue;
        }
        idle = std::time::Instant::now();
        let slot = next % slots;
        let bytes = mapping.bytes(slot as usize * record_size, record_size).to_vec();
        let event = match layout::decode(&bytes) {
            Ok(h) if h.seq == next && h.slot == slot && h.seed == ctx.params.seed => Event::Seen { seq: next, slot },
            Ok(_) => Event::SeenBad {
                seq: next,
                slot,
                why: "foreign".into(),
            },
            Err(_) => Event::SeenBad {
                seq: next,
                slot,
                why: "torn".into(),
            },
        };
        ctx.out.emit(&event);
        next += 1;
        consumed.store(next, Ordering::Release);
    }
}

/// Write-ahead log: transaction `t` writes log record `2t` into log slot
/// `t % log_slots` and msyncs it, then its data record `2t + 1` into a
/// seeded data slot and msyncs that. With the planted bug
/// `data-before-log`, the data goes first.
fn wal(ctx: &mut Ctx, path: &str) -> Result<(), SyscallError> {
    let params = ctx.params.clone();
    let geometry = params.geometry();
    let mut file = DataFile::create_durably(path, params.file_size_bytes, 1)?;
    ctx.ready()?;
    let record_size = params.record_size_bytes as usize;
    let data_slots = geometry.slots_per_file - geometry.log_slots;
    let mut rng = Rng::new(params.seed);
    let data_first = params.planted_bug == Some(PlantedBug::DataBeforeLog);
    for t in 0..params.records / 2 {
        let log = (2 * t, t % geometry.log_slots);
        let data = (2 * t + 1, geometry.log_slots + rng.below(data_slots));
        let order = match data_first {
            true => [data, log],
            false => [log, data],
        };
        for (seq, slot) in order {
            let offset = slot as usize * record_size;
            write_sync_ack(ctx, 0, file.mapping(0), offset, seq, slot, seq, || {})?;
        }
    }
    Ok(())
}

/// The file starts one growth step long; records go in slot order; when
/// the next slot lies past the end, the file grows by a step (ftruncate,
/// then mremap) and says so (`GROW`). Full, records wrap.
fn growth(ctx: &mut Ctx, path: &str) -> Result<(), SyscallError> {
    let params = ctx.params.clone();
    let geometry = params.geometry();
    let mut file = DataFile::create_durably(path, geometry.initial_size_bytes, 1)?;
    ctx.ready()?;
    let record_size = params.record_size_bytes as usize;
    let slots = params.slots();
    for seq in 0..params.records {
        let slot = seq % slots;
        let offset = slot as usize * record_size;
        if offset + record_size > file.size_bytes() {
            let new_size =
                (file.size_bytes() + geometry.growth_step_bytes as usize).min(params.file_size_bytes as usize);
            // Said before it is done: a crash between the two must not show
            // a size the protocol never announced.
            ctx.out.emit(&Event::Grow {
                file: 0,
                size_bytes: new_size as u64,
            });
            file.grow(new_size)?;
        }
        write_sync_ack(ctx, 0, file.mapping(0), offset, seq, slot, seq, || {})?;
    }
    Ok(())
}

/// Two files; the first mapped twice; two writer processes. Writer `w`
/// begins records `seq = 2k + w`, alternating between the files, in its own
/// half of each file's slots, through alternating mappings of the first.
fn several(ctx: &mut Ctx, paths: &[String; 2]) -> Result<(), SyscallError> {
    let params = ctx.params.clone();
    let geometry = params.geometry();
    let mut first = DataFile::create_durably(&paths[0], params.file_size_bytes, 2)?;
    let mut second = DataFile::create_durably(&paths[1], params.file_size_bytes, 1)?;
    ctx.ready()?;
    let parent = nix::unistd::getpid();
    // SAFETY: single-threaded; both processes keep their own copies of the
    // mappings (MAP_SHARED: the same pages) and write disjoint slots.
    let mut child = match unsafe { nix::unistd::fork() }.map_err(crate::mapped_file::fail("fork"))? {
        nix::unistd::ForkResult::Child => {
            ctx.writer = 1;
            None
        }
        nix::unistd::ForkResult::Parent { child } => Some(ChildGuard {
            pid: child,
            reaped: false,
        }),
    };
    let record_size = params.record_size_bytes as usize;
    let half = geometry.slots_per_file / 2;
    let writer = u64::from(ctx.writer);
    let mut k = 0u64;
    loop {
        let seq = 2 * k + writer;
        if seq >= params.records {
            break;
        }
        // The other writer's failure ends this one's acks too.
        match child.as_mut() {
            Some(child) => child.check()?,
            None if !parent_alive(parent) => std::process::exit(1),
            None => {}
        }
        let file_index = (k % 2) as u32;
        let local = writer * half + (k / 2) % half;
        let slot = u64::from(file_index) * geometry.slots_per_file + local;
        let offset = local as usize * record_size;
        let mapping = match file_index {
            0 => first.mapping(((k / 2) % 2) as usize),
            _ => second.mapping(0),
        };
        write_sync_ack(ctx, file_index, mapping, offset, seq, slot, k, || {})?;
        k += 1;
    }
    match child {
        None => std::process::exit(0),
        Some(child) => child.wait(),
    }
}

#[cfg(test)]
mod tests {
    use super::contiguous_runs;

    #[test]
    fn runs_split_at_wrap() {
        let pending = [(6, 6), (7, 7), (8, 0), (9, 1)];
        assert_eq!(contiguous_runs(&pending), vec![(6, 2), (0, 2)]);
        assert_eq!(contiguous_runs(&[(0, 0)]), vec![(0, 1)]);
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;
    use record::{DurabilityMode, WorkloadParams};

    /// A range that starts inside a record does not ack it: only records
    /// wholly inside the synced pages are promised.
    #[test]
    fn partial_msync_acks_only_records_wholly_inside_the_synced_pages() {
        let dir = tempfile::tempdir().unwrap();
        let channel_path = dir.path().join("channel");
        let out = crate::ProtocolOut::to_file(std::fs::File::create(&channel_path).unwrap());
        let params = WorkloadParams {
            mode: DurabilityMode::MsSync,
            record_size_bytes: 8192,
            file_size_bytes: 1 << 20,
            records: 100,
            seed: 1,
            planted_bug: None,
            hold_after_acks: None,
            hold_at_point: None,
            ack_area_offset_bytes: None,
            pattern: record::Pattern::PartialMsync,
            io_errors: false,
        };
        let mut ctx = Ctx { params, out, writer: 0 };
        let path = dir.path().join("data");
        let mut file = DataFile::create_durably(path.to_str().unwrap(), 1 << 20, 1).unwrap();
        let mut dirty = std::collections::BTreeMap::new();
        for (seq, slot) in [(0u64, 2u64), (1, 3)] {
            write_record(file.mapping(0), slot as usize * 8192, seq, slot, &ctx);
            dirty.insert(slot, seq);
        }
        // Pages 5 and 6 (bytes 20480..28672): slot 2 spans pages 4-5, slot 3
        // pages 6-7: neither lies wholly inside.
        sync_and_ack_range(&mut ctx, &mut file, &mut dirty, 5 * 4096, 2 * 4096, 0).unwrap();
        let lines = std::fs::read_to_string(&channel_path).unwrap();
        assert!(!lines.contains("ACK"), "{lines}");
        // A length one byte into page 8 covers page 7: slot 3 (24576..32768) is acked.
        sync_and_ack_range(&mut ctx, &mut file, &mut dirty, 6 * 4096, 2 * 4096 + 1, 1).unwrap();
        let lines = std::fs::read_to_string(&channel_path).unwrap();
        assert!(lines.contains("ACK 1\n") && !lines.contains("ACK 0"), "{lines}");
        assert_eq!(dirty.len(), 1);
    }
}
