//! One guest boot: spawn QEMU, read the guest's channel live, decide when to
//! kill, and always leave with QEMU gone.
//!
//! The loop (one thread plus a reader thread for the socket):
//! 1. bind the channel socket, spawn QEMU, accept its connection;
//! 2. every line the guest prints is appended to the protocol log on disk
//!    and passed, parsed, to the caller's observer, which may ask for a kill;
//! 3. between lines the observer is ticked (for time-based crash points), and
//!    the limits are checked: boot timeout (no first line), stall timeout (no
//!    line for a while), total timeout, and the interrupt flag (Ctrl-C);
//! 4. the run ends when QEMU exits by itself, or is killed; the outcome says
//!    which.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use record::Event;

use crate::qemu::{Drive, QemuProcess, VmSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Kill,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// QEMU exited by itself (guest power-off, or a guest panic).
    Exited { code: i32 },
    /// The observer asked for the kill: the crash point was reached.
    Killed,
    /// No line from the guest within the boot timeout.
    BootTimeout,
    /// The guest fell silent for the stall timeout.
    Stalled,
    /// The whole run exceeded its limit.
    TimedOut,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub boot_timeout_ms: u64,
    pub stall_timeout_ms: u64,
    pub total_timeout_ms: u64,
}

pub struct VmRun {
    pub outcome: VmOutcome,
    pub elapsed_ms: u64,
}

/// Where a run leaves its evidence.
pub struct RunFiles {
    pub protocol_log: PathBuf,
    pub console_log: PathBuf,
    pub stderr_log: PathBuf,
    /// The guest's msync trace (workload boots only).
    pub trace_log: PathBuf,
}

impl RunFiles {
    pub fn in_dir(dir: &Path, name: &str) -> RunFiles {
        RunFiles {
            protocol_log: dir.join(format!("{name}.protocol.log")),
            console_log: dir.join(format!("{name}.console.log")),
            stderr_log: dir.join(format!("{name}.qemu-stderr.log")),
            trace_log: dir.join(format!("{name}.trace.log")),
        }
    }
}

enum Incoming {
    Line(String),
    /// Bytes after the last newline when the stream ended.
    Tail(String),
    /// A line longer than `LINE_MAX_BYTES`: its start. Nothing more is read.
    Overlong(String),
    Closed,
}

/// The longest line the guest may send (protocol lines are under 200
/// bytes): a guest that never sends a newline cannot grow a buffer.
const LINE_MAX_BYTES: u64 = 64 << 10;
/// How much of an overlong line the error and the protocol log keep.
const OVERLONG_EXCERPT_BYTES: usize = 200;

/// How often the loop wakes without a line: bounds the latency of
/// time-based crash points and of Ctrl-C.
const TICK_MS: u64 = 5;

/// What one step of a session brought.
#[derive(Debug)]
pub enum Step {
    Event(Event),
    /// Nothing within the wait.
    Tick,
    /// The guest closed the channel and QEMU exited (or fell silent).
    Exited(Option<i32>),
}

/// A running guest and its channel. Used directly by the long-lived checker
/// VM, and through [`run_vm`] for one-shot boots. Dropping it kills QEMU.
pub struct VmSession {
    qemu: QemuProcess,
    rx: mpsc::Receiver<Incoming>,
    writer: UnixStream,
    protocol_log: File,
    reader: Option<std::thread::JoinHandle<()>>,
    stall_timeout_ms: u64,
    qmp_socket: PathBuf,
    /// The host files behind the guest's disks, named when the host fails them.
    disk_files: Vec<PathBuf>,
    stderr_log: PathBuf,
    protocol_log_path: PathBuf,
    _socket_dir: tempfile::TempDir,
}

impl VmSession {
    /// Spawns QEMU and waits (bounded by the boot timeout) for the guest to
    /// open its channel. An `Err(outcome)` inside says why it never did.
    pub fn start(
        mut spec: VmSpec,
        files: &RunFiles,
        limits: Limits,
        interrupt: &AtomicBool,
    ) -> Result<std::result::Result<VmSession, VmOutcome>> {
        // Unix socket paths are limited to 108 bytes; keep them short and private.
        let socket_dir = crate::lifetime::temp_dir("crashlab-vm-", None)?;
        spec.channel_socket = socket_dir.path().join("ch");
        spec.qmp_socket = socket_dir.path().join("qmp");
        let disk_files = spec
            .drives
            .iter()
            .flat_map(|d| match d {
                Drive::Raw(path) => vec![path.clone()],
                Drive::Logged { disk, log } => vec![disk.clone(), log.clone()],
                Drive::Nbd { .. } => vec![],
            })
            .collect();
        let qmp_socket = spec.qmp_socket.clone();
        let listener = UnixListener::bind(&spec.channel_socket).context("cannot bind the guest channel socket")?;
        listener.set_nonblocking(true)?;
        let protocol_log = File::create(&files.protocol_log)
            .with_context(|| format!("cannot create {} (disk full?)", files.protocol_log.display()))?;
        let start = Instant::now();
        let mut qemu = QemuProcess::spawn(&spec, &files.stderr_log)?;
        let stream = match accept_channel(&listener, &mut qemu, start, limits.boot_timeout_ms, interrupt)? {
            Ok(stream) => stream,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let writer = stream.try_clone()?;
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || read_lines(stream, tx));
        Ok(Ok(VmSession {
            qemu,
            rx,
            writer,
            protocol_log,
            reader: Some(reader),
            stall_timeout_ms: limits.stall_timeout_ms,
            qmp_socket,
            disk_files,
            stderr_log: files.stderr_log.clone(),
            protocol_log_path: files.protocol_log.clone(),
            _socket_dir: socket_dir,
        }))
    }

    /// Waits up to `wait` for the next line. Every line is logged before it
    /// is parsed, so a malformed line is evidence too.
    pub fn next(&mut self, wait: Duration) -> Result<Step> {
        let incoming = match self.rx.recv_timeout(wait) {
            Ok(incoming) => incoming,
            Err(RecvTimeoutError::Timeout) => {
                return match self.qemu.try_exit_code()? {
                    Some(code) => self.exited(Some(code)),
                    None => Ok(Step::Tick),
                }
            }
            Err(RecvTimeoutError::Disconnected) => Incoming::Closed,
        };
        match incoming {
            Incoming::Line(line) => {
                self.protocol_log
                    .write_all(format!("{line}\n").as_bytes())
                    .with_context(|| {
                        format!(
                            "cannot write the protocol log {} ({})",
                            self.protocol_log_path.display(),
                            free_space_report(std::slice::from_ref(&self.protocol_log_path))
                        )
                    })?;
                let event = Event::parse(&line)
                    .map_err(|reason| anyhow::anyhow!("the guest sent a malformed line ({reason}): {line:?}"))?;
                Ok(Step::Event(event))
            }
            Incoming::Tail(tail) => {
                self.protocol_log.write_all(tail.as_bytes())?;
                Ok(Step::Tick)
            }
            Incoming::Overlong(start) => {
                writeln!(self.protocol_log, "{start}...")?;
                anyhow::bail!(
                    "the guest sent a line longer than {LINE_MAX_BYTES} bytes (a broken workload or guest): {start:?}..."
                )
            }
            Incoming::Closed => {
                // The guest side closed: QEMU is exiting. Wait for it, bounded.
                let code = wait_exit(&mut self.qemu, Duration::from_millis(self.stall_timeout_ms))?;
                self.exited(code)
            }
        }
    }

    /// QEMU has exited: the guest's end, unless the host ended QEMU.
    fn exited(&mut self, code: Option<i32>) -> Result<Step> {
        match self.host_failure() {
            Some(e) => Err(e),
            None => Ok(Step::Exited(code)),
        }
    }

    /// Why QEMU stopped running the guest when the host is to blame, not
    /// the guest: QEMU died of a signal or was told to terminate, or it
    /// paused the guest on a host I/O error (a full disk under the
    /// results). Such a run is no evidence about the filesystem: callers
    /// fail with this error instead of judging what the guest left.
    pub fn host_failure(&mut self) -> Option<anyhow::Error> {
        let not_evidence = "this run is no evidence about the filesystem and is not judged";
        if let Some(signal) = self.qemu.exit_signal() {
            use nix::sys::signal::Signal;
            let sig = Signal::try_from(signal).ok();
            let name = sig.map_or("?", |s| s.as_str());
            // A signal QEMU raises on itself (an assertion, a bad access) is
            // QEMU failing; any other one came from outside.
            let why = match sig {
                Some(Signal::SIGABRT | Signal::SIGSEGV | Signal::SIGBUS | Signal::SIGILL | Signal::SIGFPE) => format!(
                    "QEMU crashed on its own, not the guest (its stderr: {:?})",
                    tail_of(&self.stderr_log, 2)
                ),
                _ => "not sent by crashlab: something on the host killed it (the OOM killer? see `dmesg`)".to_string(),
            };
            return Some(anyhow::anyhow!(
                "QEMU (pid {}) died of signal {signal} ({name}), {why}; {not_evidence}",
                self.qemu.pid()
            ));
        }
        if self.qemu.has_exited() {
            let stderr = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
            return stderr
                .lines()
                .find(|l| l.contains("terminating on signal"))
                .map(|line| anyhow::anyhow!("QEMU was stopped from outside crashlab ({line:?}); {not_evidence}"));
        }
        match crate::qemu::query_status(&self.qmp_socket) {
            Ok(status) if status == "io-error" => Some(anyhow::anyhow!(
                "QEMU paused the guest on a host I/O error: the host could not write the guest's disk ({}); {}. \
                 Free space there (or give --results-dir on a larger disk); {not_evidence}",
                self.disk_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                free_space_report(&self.disk_files)
            )),
            _ => None,
        }
    }

    /// Sends one line to the guest (it reads ttyS1 in raw mode).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .context("the guest channel closed")
    }

    /// SIGKILLs QEMU (the crash, or the end), then drains what the guest
    /// printed before it into the protocol log.
    pub fn finish(mut self) -> Result<()> {
        self.qemu.kill_now();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        while let Ok(incoming) = self.rx.try_recv() {
            match incoming {
                Incoming::Line(line) => writeln!(self.protocol_log, "{line}")?,
                Incoming::Tail(tail) => self.protocol_log.write_all(tail.as_bytes())?,
                Incoming::Overlong(start) => writeln!(self.protocol_log, "{start}...")?,
                Incoming::Closed => {}
            }
        }
        self.protocol_log.sync_all()?;
        Ok(())
    }
}

/// One boot from start to end: the observer sees every event, and a tick
/// (`None`) at least every `TICK_MS`, and may ask for the kill.
pub fn run_vm(
    spec: VmSpec,
    files: &RunFiles,
    limits: Limits,
    interrupt: &AtomicBool,
    mut observe: impl FnMut(Option<&Event>, Instant) -> Action,
) -> Result<VmRun> {
    let start = Instant::now();
    let mut session = match VmSession::start(spec, files, limits, interrupt)? {
        Ok(session) => session,
        Err(outcome) => {
            return Ok(VmRun {
                outcome,
                elapsed_ms: start.elapsed().as_millis() as u64,
            })
        }
    };
    let mut last_line = None::<Instant>;
    // The observer is ticked at least every TICK_MS even while lines pour
    // in: a busy guest must not postpone a time-based crash point.
    let mut last_tick = Instant::now();
    let outcome = loop {
        let now = Instant::now();
        let elapsed_ms = (now - start).as_millis() as u64;
        if interrupt.load(Ordering::SeqCst) {
            break VmOutcome::Interrupted;
        }
        if elapsed_ms > limits.total_timeout_ms {
            break VmOutcome::TimedOut;
        }
        match last_line {
            None if elapsed_ms > limits.boot_timeout_ms => break VmOutcome::BootTimeout,
            Some(t) if (now - t).as_millis() as u64 > limits.stall_timeout_ms => break VmOutcome::Stalled,
            _ => {}
        }
        match session.next(Duration::from_millis(TICK_MS))? {
            Step::Event(event) => {
                last_line = Some(Instant::now());
                if observe(Some(&event), Instant::now()) == Action::Kill {
                    break VmOutcome::Killed;
                }
            }
            Step::Tick => {}
            Step::Exited(Some(code)) => break VmOutcome::Exited { code },
            Step::Exited(None) => break VmOutcome::Stalled,
        }
        if last_tick.elapsed() >= Duration::from_millis(TICK_MS) {
            last_tick = Instant::now();
            if observe(None, last_tick) == Action::Kill {
                break VmOutcome::Killed;
            }
        }
    };
    if matches!(outcome, VmOutcome::Stalled | VmOutcome::TimedOut) {
        if let Some(e) = session.host_failure() {
            session.finish()?;
            return Err(e);
        }
    }
    session.finish()?;
    Ok(VmRun {
        outcome,
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

fn accept_channel(
    listener: &UnixListener,
    qemu: &mut QemuProcess,
    start: Instant,
    boot_timeout_ms: u64,
    interrupt: &AtomicBool,
) -> Result<std::result::Result<UnixStream, VmOutcome>> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(Ok(stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("accepting QEMU's channel connection"),
        }
        if let Some(code) = qemu.try_exit_code()? {
            return Ok(Err(VmOutcome::Exited { code }));
        }
        if interrupt.load(Ordering::SeqCst) {
            return Ok(Err(VmOutcome::Interrupted));
        }
        if start.elapsed().as_millis() as u64 > boot_timeout_ms {
            return Ok(Err(VmOutcome::BootTimeout));
        }
        std::thread::sleep(Duration::from_millis(TICK_MS));
    }
}

fn read_lines(stream: UnixStream, tx: mpsc::Sender<Incoming>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.by_ref().take(LINE_MAX_BYTES).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if n as u64 == LINE_MAX_BYTES && buf.last() != Some(&b'\n') => {
                let start = String::from_utf8_lossy(&buf[..OVERLONG_EXCERPT_BYTES]).into_owned();
                let _ = tx.send(Incoming::Overlong(start));
                return;
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf).into_owned();
                let msg = match text.strip_suffix('\n') {
                    Some(line) => Incoming::Line(line.trim_end_matches('\r').to_string()),
                    None => Incoming::Tail(text),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Incoming::Closed);
}

fn wait_exit(qemu: &mut QemuProcess, limit: Duration) -> Result<Option<i32>> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(code) = qemu.try_exit_code()? {
            return Ok(Some(code));
        }
        std::thread::sleep(Duration::from_millis(TICK_MS));
    }
    Ok(None)
}

/// Free space in each directory holding one of `files`, for error messages.
pub fn free_space_report(files: &[PathBuf]) -> String {
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.dedup();
    dirs.iter()
        .map(|dir| match nix::sys::statvfs::statvfs(*dir) {
            Ok(st) => format!(
                "{:.1} MiB free under {}",
                (st.blocks_available() * st.fragment_size()) as f64 / (1u64 << 20) as f64,
                dir.display()
            ),
            Err(e) => format!("free space under {} unknown ({e})", dir.display()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The last lines of a log, for error messages.
pub fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Fails with the console's last lines when a boot did not get as far as it
/// should have.
pub fn boot_failure(what: &str, outcome: VmOutcome, files: &RunFiles) -> anyhow::Error {
    let hint = match outcome {
        VmOutcome::BootTimeout => {
            "the guest printed nothing on its channel in time: check the kernel and \
            initramfs (`cargo xtask images`), or raise --boot-timeout-ms on a slow machine"
        }
        VmOutcome::Stalled => "the guest fell silent: a hung guest, or raise --stall-timeout-ms",
        VmOutcome::TimedOut => "the run exceeded --trial-timeout-ms",
        VmOutcome::Exited { .. } => "QEMU exited early: see its stderr and the console log",
        _ => "",
    };
    anyhow::anyhow!(
        "{what}: {outcome:?}: {hint}\nqemu stderr ({}):\n{}\nconsole ({}), last lines:\n{}",
        files.stderr_log.display(),
        tail_of(&files.stderr_log, 5),
        files.console_log.display(),
        tail_of(&files.console_log, 15)
    )
}

/// Turns an interrupted run into the `Interrupted` error the campaign stops on.
pub fn bail_if_interrupted(outcome: VmOutcome) -> Result<()> {
    if outcome == VmOutcome::Interrupted {
        bail!(Interrupted);
    }
    Ok(())
}

/// Marker error: the user interrupted the campaign.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted")
    }
}

impl std::error::Error for Interrupted {}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(bytes: &[u8]) -> Vec<Incoming> {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || read_lines(host, tx));
        // The reader may stop early (an overlong line): a write error then.
        let _ = guest.write_all(bytes);
        drop(guest);
        reader.join().unwrap();
        rx.try_iter().collect()
    }

    #[test]
    fn lines_a_tail_and_the_end() {
        let got = received(b"READY 4\r\nACK 0 0\npartial");
        assert!(matches!(&got[0], Incoming::Line(l) if l == "READY 4"));
        assert!(matches!(&got[1], Incoming::Line(l) if l == "ACK 0 0"));
        assert!(matches!(&got[2], Incoming::Tail(t) if t == "partial"));
        assert!(matches!(got[3], Incoming::Closed));
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_bound_and_reading_stops() {
        let mut bytes = b"READY 4\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', LINE_MAX_BYTES as usize * 3));
        let got = received(&bytes);
        assert_eq!(got.len(), 2, "a line, then the overlong one, then nothing");
        assert!(matches!(&got[1], Incoming::Overlong(s) if s.len() == OVERLONG_EXCERPT_BYTES));
        // Exactly at the bound with its newline is still a line.
        let mut bytes = vec![b'y'; LINE_MAX_BYTES as usize - 1];
        bytes.push(b'\n');
        assert!(matches!(&received(&bytes)[0], Incoming::Line(l) if l.len() == LINE_MAX_BYTES as usize - 1));
    }
}
