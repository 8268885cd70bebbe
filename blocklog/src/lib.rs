//! Reads the write logs of QEMU's `blklogwrites` block driver (the Linux
//! dm-log-writes format) and turns them into crash states: the disk contents
//! a power cut could have left at some point of the recorded run.
//!
//! # The log, as QEMU 7.2 writes it (`block/blklogwrites.c`)
//!
//! - Sector 0 holds the superblock (magic `0x6a736677736872`, version 1,
//!   `nr_entries`, `sectorsize`). QEMU writes it only when it logs a flush or
//!   every `log-super-update-interval` (4096) entries, so it is all zero until
//!   the first flush and its count lags. The parser never trusts the count;
//!   it walks the entries (see [`parse`] for how the end is found).
//! - Entries start at log sector 1: a header sector (`sector`, `nr_sectors`,
//!   `flags`, `data_len`, zero padding), then `nr_sectors` log sectors of data
//!   for a write, nothing for a flush (`sector = nr_sectors = 0`) or a discard.
//!   A write-zeroes request is logged as a plain write whose data is zeros.
//! - `sector` and `nr_sectors` count *log* sectors (`offset >> sectorbits`);
//!   with `log-sector-size=512` they are 512-byte sectors. [`LogEntry`]
//!   always reports 512-byte units.
//! - `data_len` is always 0; QEMU never logs marks or the FUA flag.
//! - Each request is logged after its operation on the image file finished,
//!   so log order is completion order, and a flush entry means the image file
//!   flush had completed.
//! - With `log-append=off` QEMU does not truncate an existing log file: give
//!   it a new, empty file for every run, or stale entries may follow.
//!
//! # The crash model
//!
//! Flush entries cut the log into epochs. After a flush completes, every
//! write logged before it is durable. A crash state is
//!
//! 1. a *durable prefix*: all entries up to and including some flush (or
//!    none), applied in log order;
//! 2. any subset of the writes and discards of the *open epoch* (from that
//!    prefix up to the next flush), applied in log order. Writes within an
//!    epoch may reach the media in any order; nothing moves across a flush.
//!    When two writes of an epoch hit the same sector, applying the chosen
//!    ones in log order lets either version (or neither) survive, as a
//!    volatile cache allows;
//! 3. optionally, one chosen write *torn* at 512-byte granularity: only some
//!    of its sectors persisted (a prefix, or any proper subset).
//!
//! **Where a state is judged** ([`crash_position`]): at the *latest* log
//! position that leaves its contents, just before the open epoch's closing
//! flush completes (or at the log's end). Every write of the epoch had
//! completed by then and a volatile cache may hold back any subset, so the
//! same bytes arise from a crash there; acks logged before that point were
//! already given, so judging there is sound and checks the most promises.
//! The earliest position (just past the last included entry) would judge
//! a prefix state without the acks that follow it in its epoch.
//!
//! Choices and why:
//! - **FUA**: a write logged with the FUA flag is durable once complete.
//!   A state that includes it may end anywhere after it; a state that leaves
//!   it out crashed before it completed, so it holds nothing logged after it
//!   and is judged at that write. FUA writes are never torn. QEMU 7.2 never
//!   logs the flag (blklogwrites declares no FUA support, so the block layer
//!   sends write + flush, both logged); kernel dm-log-writes logs do.
//! - **Discards**: a discarded range reads as zeros in a state that
//!   includes the discard, and as its old contents in one that does not
//!   (an open-epoch discard left out). Zeros are what exposes a filesystem
//!   that discards live blocks; keeping old data is the other allowed
//!   outcome.
//! - **Concurrent flushes**: a write that completed while a flush was in
//!   flight is logged before the flush, so the model treats it as durable
//!   although the flush did not cover it. Guests that need ordering wait for
//!   completion before flushing, so this only hides states no correct
//!   program may depend on.
//! - An entry cut off at the end of the log (QEMU killed mid-write) is
//!   treated as never issued: its request was never acknowledged, and "not
//!   persisted" is an allowed outcome for it. A hole (an all-zero header,
//!   QEMU killed while an earlier request's entry was still unwritten) ends
//!   the usable log; what follows it is reported, not used.
//! - **Write-zeroes** requests are logged as writes of zeros. QEMU before
//!   7.2.9 / 8.1.5 / 8.2.1 misplaced concurrent ones in the log (upstream
//!   commit a9c8ea95470c, "block/blklogwrites: Fix a bug when logging
//!   write zeroes operations"); Debian 12 has carried the fix since
//!   1:7.2+dfsg-7+deb12u4.
//!
//! Planted device bugs ([`DeviceBug`]) rewrite the log into what a device
//! that breaks the flush contract would make durable, to measure how
//! sensitive the checks are.
//!
//! # Using it
//!
//! [`parse_log`] / [`read_log_file`] → [`plan_states`] (or
//! [`prefix_states`] / [`random_states`]) → [`crash_position`] for the
//! point to judge at → [`apply_state`] onto a copy of the base image, or
//! [`overlay_extents`] for a copy-on-write view. Entry data stays in the log
//! file; [`read_entry_data`] fetches it on demand.

mod device;
mod error;
mod explore;
mod file;
pub mod format;
mod overlay;
pub mod parse;
mod rng;
mod runs;
mod source;
mod state;
pub mod testing;

pub use device::{apply_device_bug, DeviceBug, DeviceBugEffect, DEVICE_BUG_EVERY_MAX};
pub use error::{InvalidState, LogError};
pub use explore::{
    count_model, epoch_class, explore_states, Coverage, EpochClass, Exploration, ExploreOptions, STATES_MAX_DEFAULT,
    SUBSETS_MAX_PER_EPOCH_DEFAULT,
};
pub use file::{read_log_file, read_log_file_with};
pub use format::EntryFlags;
pub use overlay::{
    apply_extents, apply_state, overlay_extents, Extent, ExtentSource, PrefixIndex, CHECKPOINTS_MAX,
    CHECKPOINT_STRIDE_MIN_ENTRIES,
};
pub use parse::{
    entry_data, parse_log, parse_log_from, read_entry_data, LogEntry, ParseOptions, ParsedLog, TruncatedPart,
    Truncation, DEFAULT_MAX_ENTRIES,
};
pub use source::{BlockSink, LogSource};
pub use state::{
    crash_position, open_epoch, plan_states, prefix_states, random_states, state_key, tear_points, CrashState,
    PlanOptions, StateKey, StateKind, TearUnit, TornWrite, PAGE_SECTORS,
};

#[cfg(test)]
mod tests;
