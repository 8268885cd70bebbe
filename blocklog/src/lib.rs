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
//! 2. any subset of the data writes of the *open epoch* (from that prefix up
//!    to the next flush), applied in log order. Writes within an epoch may
//!    reach the media in any order; nothing moves across a flush. When two
//!    writes of an epoch hit the same sector, applying the chosen ones in log
//!    order lets either version (or neither) survive, as a volatile cache
//!    allows;
//! 3. optionally, one chosen write *torn* at 512-byte granularity: only some
//!    of its sectors persisted (a prefix, or any proper subset).
//!
//! Choices and why:
//! - **FUA** is not durable on its own: QEMU 7.2 does not log FUA. This loses
//!   nothing: blklogwrites declares no `supported_write_flags`, so QEMU's
//!   block layer emulates a FUA write with a flush right after it, which is
//!   logged (and a virtio-blk guest sends write + flush itself).
//! - **Discards** are ignored for data: after a discard the range may read
//!   as old data or zeros, and keeping the old data is one of the allowed
//!   outcomes. (States never zero a discarded range.)
//! - **Concurrent flushes**: a write that completed while a flush was in
//!   flight is logged before the flush, so the model treats it as durable
//!   although the flush did not cover it. Guests that need ordering wait for
//!   completion before flushing, so this only hides states no correct
//!   program may depend on.
//! - An entry cut off at the end of the log (QEMU killed mid-write) is
//!   treated as never issued: its request was never acknowledged, and "not
//!   persisted" is an allowed outcome for it.
//!
//! # Using it
//!
//! [`parse_log`] / [`read_log_file`] → [`prefix_states`] /
//! [`random_states`] → [`apply_state`] onto a copy of the base image, or
//! [`overlay_extents`] for a copy-on-write view. Entry data stays in the log
//! file; [`read_entry_data`] fetches it on demand.

mod error;
mod file;
pub mod format;
mod overlay;
pub mod parse;
mod rng;
mod source;
mod state;
pub mod testing;

pub use error::{InvalidState, LogError};
pub use file::{read_log_file, read_log_file_with};
pub use format::EntryFlags;
pub use overlay::{apply_state, overlay_extents, Extent};
pub use parse::{
    entry_data, parse_log, parse_log_from, read_entry_data, LogEntry, ParseOptions, ParsedLog, TruncatedPart,
    Truncation, DEFAULT_MAX_ENTRIES,
};
pub use source::{BlockSink, LogSource};
pub use state::{
    open_epoch, prefix_states, prefix_states_up_to, random_states, random_states_up_to, state_key, CrashState,
    StateKey, StateKind, TornWrite,
};

#[cfg(test)]
mod tests;
