//! The workload protocol (docs/workload-protocol.md, version 1.2) for a
//! Rust program under crashlab: what `clients/c/crashlab.h` is for C.
//!
//! ```no_run
//! use crashlab_client::{Checker, Program};
//! let mut program = Program::from_env();
//! // make the store, sync it
//! program.ready()?;
//! for id in 0..crashlab_client::items() {
//!     program.begin(id, "00ff")?;
//!     // write the item; sync it
//!     program.ack(id)?;
//! }
//! program.done()?;
//! // and in the checker:
//! let mut checker = Checker;
//! checker.item(0, "00ff")?;
//! checker.end(1)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Every line goes out with one `write` of at most [`LINE_MAX_BYTES`]
//! bytes (several processes of a program may share stdout). After
//! `READY`, each `BEGIN`, `ACK` and `POINT` the program waits for the
//! relay's reply byte, so an item's `BEGIN` reaches the host before any of
//! its bytes reach the disk, and a crash point stops it right there.

use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;

/// A protocol line's longest form, newline included.
pub const LINE_MAX_BYTES: usize = 4096;

/// `CRASHLAB_SEED`: derive every key and value from it (0 by hand).
pub fn seed() -> u64 {
    env_number("CRASHLAB_SEED")
}

/// `CRASHLAB_ITEMS`: how many items to write, then `DONE` (0 by hand).
pub fn items() -> u64 {
    env_number("CRASHLAB_ITEMS")
}

/// `CRASHLAB_DATA_DIR`: the filesystem under test (`.` by hand).
pub fn data_dir() -> std::path::PathBuf {
    std::env::var_os("CRASHLAB_DATA_DIR").map_or_else(|| ".".into(), Into::into)
}

fn env_number(name: &str) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Writes one line whole, with one `write`.
fn line(text: &str) -> io::Result<()> {
    let bytes = format!("{text}\n");
    if bytes.len() > LINE_MAX_BYTES || text.contains('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a protocol line is one line of at most {LINE_MAX_BYTES} bytes: {text:?}"),
        ));
    }
    let mut out = io::stdout().lock();
    out.write_all(bytes.as_bytes())?;
    out.flush()
}

/// The program's side: its lines and the relay's reply.
pub struct Program {
    /// The reply pipe (`CRASHLAB_REPLY_FD`); `None` by hand or under a 1.0
    /// relay, where there is nothing to wait for.
    reply: Option<std::fs::File>,
}

impl Program {
    /// The program as crashlab started it.
    pub fn from_env() -> Program {
        let fd = std::env::var("CRASHLAB_REPLY_FD")
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        // SAFETY: the relay opened this descriptor for the program, and
        // this is the one place that takes it.
        Program {
            reply: fd.map(|fd| unsafe { std::fs::File::from_raw_fd(fd) }),
        }
    }

    /// Waits for the relay's reply byte. A closed pipe is an error
    /// (`UnexpectedEof`): the relay is gone.
    fn wait(&mut self) -> io::Result<()> {
        let Some(pipe) = self.reply.as_mut() else {
            return Ok(());
        };
        let mut byte = [0u8; 1];
        match pipe.read(&mut byte)? {
            1 => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the relay closed the reply pipe",
            )),
        }
    }

    /// The initial state is durable (files created and synced).
    pub fn ready(&mut self) -> io::Result<()> {
        line("READY")?;
        self.wait()
    }

    /// Item `id`, with `digest` (1 to 64 lowercase hex digits), is about
    /// to be made durable.
    pub fn begin(&mut self, id: u64, digest: &str) -> io::Result<()> {
        line(&format!("BEGIN {id} {digest}"))?;
        self.wait()
    }

    /// The same, for an item that replaces the earlier items of `key`.
    pub fn begin_keyed(&mut self, id: u64, digest: &str, key: u64) -> io::Result<()> {
        line(&format!("BEGIN {id} {digest} {key}"))?;
        self.wait()
    }

    /// The call that promised item `id` durable returned success.
    pub fn ack(&mut self, id: u64) -> io::Result<()> {
        line(&format!("ACK {id}"))?;
        self.wait()
    }

    /// (1.2) A moment the program names, where `--crash-at name[:n]` may
    /// crash it.
    pub fn point(&mut self, name: &str) -> io::Result<()> {
        line(&format!("POINT {name}"))?;
        self.wait()
    }

    /// Anything worth keeping in the results; never judged.
    pub fn note(&mut self, text: &str) -> io::Result<()> {
        line(&format!("NOTE {}", text.replace('\n', " ")))
    }

    pub fn done(&mut self) -> io::Result<()> {
        line("DONE")
    }

    /// A call failed: `ERR op errno` (then the program exits non-zero).
    pub fn err(&mut self, op: &str, errno: i32) -> io::Result<()> {
        line(&format!("ERR {op} {errno}"))
    }
}

/// The checker's side: what it found after the crash.
pub struct Checker;

impl Checker {
    /// Item `id` is there, whole, and its contents give `digest`.
    pub fn item(&mut self, id: u64, digest: &str) -> io::Result<()> {
        line(&format!("ITEM {id} {digest}"))
    }

    /// Damage it saw.
    pub fn corrupt(&mut self, what: &str) -> io::Result<()> {
        line(&format!("CORRUPT {}", what.replace('\n', " ")))
    }

    pub fn note(&mut self, text: &str) -> io::Result<()> {
        line(&format!("NOTE {}", text.replace('\n', " ")))
    }

    /// The last line: how many `ITEM` lines it printed.
    pub fn end(&mut self, items: u64) -> io::Result<()> {
        line(&format!("END {items}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_longer_than_the_limit_or_with_a_newline_is_refused() {
        assert!(line(&"x".repeat(LINE_MAX_BYTES)).is_err());
        assert!(line("NOTE a\nb").is_err());
    }

    #[test]
    fn without_a_relay_there_is_no_reply_to_wait_for() {
        let mut program = Program { reply: None };
        assert!(program.wait().is_ok());
    }
}
