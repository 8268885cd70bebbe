//! `crashlab-workload relay [--record-events] DATA_DIR CHANNEL_PATH PROGRAM
//! [ARGS...]`: runs a workload under the workload protocol
//! (docs/workload-protocol.md) and passes its promises to the host. Every
//! workload goes through here: a program crashlab did not write, and
//! crashlab's own record workload (`--record-events`).
//!
//! The program prints `READY`, `BEGIN id digest [key]`, `ACK id`, `DONE`,
//! `ERR`, `NOTE`, `EVENT` on its stdout (`record::items`). The relay checks
//! each line and turns it into the host's events (`Vocabulary`), `ACK`
//! after writing the item's ack sector (power loss: the ordering argument
//! of the protocol's document), `READY` after writing the ready marker.
//! After `READY`, each `BEGIN` and each `ACK` it writes one byte to the
//! reply pipe (`CRASHLAB_REPLY_FD`): a program that waits for it runs in
//! lockstep with the host's log. At the crash point's ack count it stops
//! the program's process group, before that reply, and says `HOLD`. A line that breaks
//! the protocol, or a program that dies without `DONE`, ends the run with
//! `ERR`, naming what happened on the console.
//!
//! The decisions are a pure state machine (`Relay::line`), tested here;
//! `run` only moves bytes and processes.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

use record::items::{self, ProgramLine};
use record::layout::ack::{AckRecord, READY_MARKER_INDEX};
use record::{Event, WorkloadParams};

use crate::ack_log::AckLog;
use crate::Channel;

/// The events the host is given for a program's items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vocabulary {
    /// A program judged by its checker: `ITEM seq id digest [key]` and
    /// `ACK seq seq`, `seq` counting items from 0; ack sector `seq`.
    Items,
    /// crashlab's record workload, whose data files the verifier reads
    /// itself: an item is a record (id: its seq; key: its slot, required),
    /// given as `BEGIN seq slot` and `ACK seq slot` (ack sector `seq`), and
    /// its `EVENT` lines (msync calls, growth, what a consumer saw) passed
    /// on in order.
    Records,
}

/// What the relay does for one line, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the ready marker into the ack area (power loss).
    ReadyMarker {
        slots: u64,
    },
    /// Write the ack sector of `seq` (power loss), which names `slot`.
    AckSector {
        seq: u64,
        slot: u64,
    },
    /// Let the program go on past its `READY`, `BEGIN` or `ACK` (the reply).
    Reply,
    Emit(Event),
    /// The crash point: stop the program, pass on the items it began in
    /// the meantime (`Relay::drained`), say `HOLD acks`, wait for the kill.
    Hold {
        acks: u64,
    },
    /// The run is over; the host is told by the events before this.
    End,
}

/// Why the relay ended a run early: the `ERR` it sends and what the
/// console says.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub op: String,
    pub errno: i32,
    pub why: String,
}

/// EPROTO: the program broke the protocol.
const EPROTO: i32 = 71;

/// One item begun.
struct Begun {
    seq: u64,
    key: Option<u64>,
    acked: bool,
}

pub struct Relay {
    vocabulary: Vocabulary,
    items_max: u64,
    /// What `READY` says to the host (record events).
    slots: u64,
    hold_after_acks: Option<u64>,
    /// `--crash-at`: hold the program at this occurrence of its point.
    hold_at_point: Option<items::NamedPoint>,
    /// How often the program printed each `POINT name` so far.
    points_seen: HashMap<String, u64>,
    point_reached: bool,
    capture: bool,
    ready: bool,
    done: bool,
    /// item id → what was begun
    items: HashMap<u64, Begun>,
    acks: u64,
    line_number: u64,
}

impl Relay {
    pub fn new(params: &WorkloadParams, vocabulary: Vocabulary) -> Relay {
        Relay {
            vocabulary,
            items_max: params.records,
            slots: match vocabulary {
                Vocabulary::Items => 0,
                Vocabulary::Records => params.geometry().total_slots(),
            },
            hold_after_acks: params.hold_after_acks,
            hold_at_point: params.hold_at_point.clone(),
            points_seen: HashMap::new(),
            point_reached: false,
            capture: params.ack_area_offset_bytes.is_some(),
            ready: false,
            done: false,
            items: HashMap::new(),
            acks: 0,
            line_number: 0,
        }
    }

    /// The host's event for item `id` begun as the `seq`-th item.
    fn begin_event(&self, seq: u64, id: u64, digest: items::Digest, key: Option<u64>) -> Event {
        match self.vocabulary {
            Vocabulary::Items => Event::Item { seq, id, digest, key },
            Vocabulary::Records => Event::Begin {
                seq: id,
                slot: key.expect("record items have keys"),
            },
        }
    }

    /// Checks a `BEGIN` against the items so far; the item's seq.
    fn check_begin(&self, id: u64, key: Option<u64>) -> Result<u64, String> {
        let seq = self.items.len() as u64;
        if !self.ready {
            return Err(format!("BEGIN {id} before READY"));
        }
        if seq >= self.items_max {
            return Err(format!("BEGIN {id}: more items than the {} asked for", self.items_max));
        }
        if self.items.contains_key(&id) {
            return Err(format!("BEGIN {id} twice"));
        }
        if self.vocabulary == Vocabulary::Records && key.is_none() {
            return Err(format!("BEGIN {id} without a key: a record names its slot"));
        }
        Ok(seq)
    }

    fn broken(&self, why: impl Into<String>) -> Broken {
        Broken {
            op: format!("program-protocol-line-{}", self.line_number),
            errno: EPROTO,
            why: why.into(),
        }
    }

    /// The actions for one line of the program's stdout (without its
    /// newline).
    pub fn line(&mut self, text: &str) -> Result<Vec<Action>, Broken> {
        self.line_number += 1;
        let parsed = ProgramLine::parse(text).map_err(|why| self.broken(format!("{why}: {text:?}")))?;
        if self.done {
            return Err(self.broken(format!("a line after DONE: {text:?}")));
        }
        let mut actions = Vec::new();
        match parsed {
            ProgramLine::Ready => {
                if self.ready {
                    return Err(self.broken("READY twice"));
                }
                self.ready = true;
                if self.capture {
                    actions.push(Action::ReadyMarker { slots: self.slots });
                }
                actions.push(Action::Emit(Event::Ready { slots: self.slots }));
                actions.push(Action::Reply);
            }
            ProgramLine::Begin { id, digest, key } => {
                let seq = self.check_begin(id, key).map_err(|why| self.broken(why))?;
                self.items.insert(id, Begun { seq, key, acked: false });
                actions.push(Action::Emit(self.begin_event(seq, id, digest, key)));
                // A program in lockstep writes the item only now: its BEGIN
                // is on the channel first, as a crash may come at any time.
                actions.push(Action::Reply);
            }
            ProgramLine::Ack { id } => self.ack(id, &mut actions)?,
            ProgramLine::Done => {
                self.done = true;
                // Records: the run's record count (the workload's own
                // DONE said so before it ran under the relay).
                let records = match self.vocabulary {
                    Vocabulary::Items => self.items.len() as u64,
                    Vocabulary::Records => self.items_max,
                };
                actions.push(Action::Emit(Event::Done { records }));
            }
            ProgramLine::Event(line) => {
                if self.vocabulary != Vocabulary::Records {
                    return Err(self.broken("EVENT lines are for crashlab's own record workload"));
                }
                let event = Event::parse(&line).map_err(|why| self.broken(format!("EVENT {why}: {line:?}")))?;
                if !record_event_passes(&event) {
                    return Err(self.broken(format!("EVENT {line:?}: the relay gives that event itself")));
                }
                actions.push(Action::Emit(event));
            }
            ProgramLine::Err { op, errno } => {
                actions.push(Action::Emit(Event::Error { op, errno }));
                actions.push(Action::End);
            }
            // Kept in the results (the host's protocol log): what the
            // program says of its configuration; never judged.
            ProgramLine::Note(text) => actions.push(Action::Emit(Event::Note { text })),
            ProgramLine::Point(name) => self.point(name, &mut actions),
        }
        Ok(actions)
    }

    /// The actions for `POINT name`: the host's event (with how often the
    /// program reached it), then the reply, or at the named crash point the
    /// hold (the program stays there; the host kills the guest).
    fn point(&mut self, name: String, actions: &mut Vec<Action>) {
        let seen = self.points_seen.entry(name.clone()).or_insert(0);
        *seen += 1;
        let occurrence = *seen;
        let here = self
            .hold_at_point
            .as_ref()
            .is_some_and(|p| p.name == name && p.occurrence == occurrence);
        actions.push(Action::Emit(Event::Point { name, occurrence }));
        match here {
            true => {
                self.point_reached = true;
                actions.push(Action::Hold { acks: self.acks });
            }
            false => actions.push(Action::Reply),
        }
    }

    /// The actions for `ACK id`: the ack sector (power loss), the host's
    /// event, then the reply, or at the crash point the hold.
    fn ack(&mut self, id: u64, actions: &mut Vec<Action>) -> Result<(), Broken> {
        let Some(item) = self.items.get_mut(&id) else {
            return Err(self.broken(format!("ACK {id} for an item never begun")));
        };
        if std::mem::replace(&mut item.acked, true) {
            return Err(self.broken(format!("ACK {id} twice")));
        }
        // Items: the seq is the relay's count; records: their own.
        let (seq, slot) = match self.vocabulary {
            Vocabulary::Items => (item.seq, item.seq),
            Vocabulary::Records => (id, item.key.expect("record items have keys")),
        };
        if self.capture {
            actions.push(Action::AckSector { seq, slot });
        }
        actions.push(Action::Emit(Event::Ack { seq, slot }));
        self.acks += 1;
        // At the crash point the program stays where it is: no reply.
        match self.hold_after_acks == Some(self.acks) {
            true => actions.push(Action::Hold { acks: self.acks }),
            false => actions.push(Action::Reply),
        }
        Ok(())
    }

    /// A line the program had printed when it was stopped at the crash
    /// point, read after the stop. Its `BEGIN`s are passed on: the item
    /// may be on the disk (the program went on writing while the relay
    /// handled the last ack), so the verdict must know it was begun, as an
    /// item in flight. Nothing else counts any more: the crash came first.
    pub fn drained(&mut self, text: &str) -> Option<Event> {
        let Ok(ProgramLine::Begin { id, digest, key }) = ProgramLine::parse(text) else {
            return None;
        };
        let seq = self.check_begin(id, key).ok()?;
        self.items.insert(id, Begun { seq, key, acked: false });
        Some(self.begin_event(seq, id, digest, key))
    }

    /// The program's stdout ended and it exited with `status`: the run's
    /// last events. A program that ended before its crash point holds
    /// there, so that the planned crash still happens.
    pub fn exited(&self, status: std::process::ExitStatus) -> Vec<Action> {
        let ended = match (status.code(), status.signal()) {
            (Some(0), _) if self.done => None,
            (Some(0), _) => Some(("program-exited-without-done".to_string(), 0)),
            (Some(code), _) => Some(("program-exit-status".to_string(), code)),
            (None, Some(signal)) => Some(("program-killed-by-signal".to_string(), signal)),
            (None, None) => Some(("program-ended".to_string(), 0)),
        };
        match ended {
            Some((op, errno)) => vec![Action::Emit(Event::Error { op, errno }), Action::End],
            None if self.hold_after_acks.is_some_and(|n| self.acks < n)
                || (self.hold_at_point.is_some() && !self.point_reached) =>
            {
                vec![Action::Hold { acks: self.acks }]
            }
            None => vec![Action::End],
        }
    }
}

/// The record workload's events that pass through `EVENT`: what it alone
/// knows (its msync calls, growth, a consumer's view, readbacks). Promises,
/// holds and the run's end are the relay's to give.
fn record_event_passes(event: &Event) -> bool {
    matches!(
        event,
        Event::Msync { .. }
            | Event::Grow { .. }
            | Event::Incoherent { .. }
            | Event::Seen { .. }
            | Event::SeenBad { .. }
            | Event::Fsync { .. }
            | Event::Readback { .. }
    )
}

/// Reads one line of at most `items::LINE_MAX_BYTES`; `Ok(None)` at the end.
fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, String> {
    let mut bytes = Vec::new();
    let limit = items::LINE_MAX_BYTES as u64 + 2;
    let n = reader
        .by_ref()
        .take(limit)
        .read_until(b'\n', &mut bytes)
        .map_err(|e| format!("cannot read the program's stdout: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if bytes.last() != Some(&b'\n') {
        if n as u64 >= limit {
            return Err("a line longer than 4096 bytes".into());
        }
        return Err(format!(
            "its output ends in a line without a newline: {:?}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    bytes.pop();
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "a line that is not UTF-8".to_string())
}

/// How long the relay waits for the stopped program to be reported
/// stopped, at most.
const STOP_WAIT_MS: u64 = 1000;

/// Waits until the program is stopped (or ended): from then on it writes
/// nothing more, and what it printed meanwhile is in the pipe or the
/// reader's buffer. Bounded: a process stopped inside vfork (its parent
/// waits, uninterruptibly, for the child to exec) is never reported
/// stopped, and neither of them can print anything more either.
fn wait_stopped(pid: nix::unistd::Pid) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    for _ in 0..STOP_WAIT_MS / 10 {
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(10)),
            _ => return,
        }
    }
}

/// The complete lines left in the program's stdout, without waiting: the
/// reader's buffer, then the pipe read until it is empty. Bounded: at most
/// a pipe's worth of lines can be there.
fn drain(reader: &mut BufReader<std::process::ChildStdout>) -> Vec<String> {
    use std::os::fd::AsRawFd;
    const DRAIN_MAX_LINES: usize = 4096;
    let fd = reader.get_ref().as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = nix::libc::fcntl(fd, nix::libc::F_GETFL);
        nix::libc::fcntl(fd, nix::libc::F_SETFL, flags | nix::libc::O_NONBLOCK);
    }
    let mut lines = Vec::new();
    while lines.len() < DRAIN_MAX_LINES {
        match read_line(reader) {
            Ok(Some(line)) => lines.push(line),
            // Empty (WouldBlock), ended, or a cut line: nothing more to pass on.
            _ => break,
        }
    }
    lines
}

/// The `BEGIN` lines among `pending` (lines read, not yet handled) that
/// may be handled ahead of the lines before them: every one up to the first
/// `DONE` or `ERR`, except a `BEGIN` of an id an earlier pending `ACK`
/// names (handled in order, that `ACK` is the protocol error it is).
/// Removes and returns them, in order.
pub fn pull_begins(pending: &mut VecDeque<String>) -> Vec<String> {
    let mut acked = Vec::new();
    let mut pulled = Vec::new();
    let mut kept = VecDeque::new();
    let mut stop = false;
    while let Some(line) = pending.pop_front() {
        if !stop {
            match ProgramLine::parse(&line) {
                Ok(ProgramLine::Begin { id, .. }) if !acked.contains(&id) => {
                    pulled.push(line);
                    continue;
                }
                Ok(ProgramLine::Ack { id }) => acked.push(id),
                Ok(ProgramLine::Done | ProgramLine::Err { .. }) | Err(_) => stop = true,
                Ok(_) => {}
            }
        }
        kept.push_back(line);
    }
    *pending = kept;
    pulled
}

/// The complete lines the program has printed by now, without waiting.
/// Lines are written whole (each at most 4096 bytes, one `write`, so
/// atomic on a pipe) and the reader's buffer holds a whole pipe, so what
/// is there is whole lines; a line cut short stays in the reader.
fn complete_lines_now(reader: &mut BufReader<std::process::ChildStdout>) -> Vec<String> {
    use std::os::fd::AsRawFd;
    const LINES_MAX: usize = 4096;
    let fd = reader.get_ref().as_raw_fd();
    let readable = || {
        let mut pfd = nix::libc::pollfd {
            fd,
            events: nix::libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one descriptor this process owns, no wait.
        unsafe { nix::libc::poll(&mut pfd, 1, 0) == 1 && pfd.revents & nix::libc::POLLIN != 0 }
    };
    let mut lines = Vec::new();
    while lines.len() < LINES_MAX {
        if reader.buffer().contains(&b'\n') {
            match read_line(reader) {
                Ok(Some(line)) => lines.push(line),
                _ => break,
            }
            continue;
        }
        // A partial line, or nothing buffered and nothing in the pipe.
        if !reader.buffer().is_empty() || !readable() {
            break;
        }
        if reader.fill_buf().map_or(true, |b| b.is_empty()) {
            break;
        }
    }
    lines
}

/// One byte on the reply pipe: the program in lockstep goes on.
fn reply(pipe: &mut std::fs::File) {
    use std::io::Write as _;
    // Full (a program that never reads) or closed: nothing to wake.
    let _ = pipe.write(b"A");
}

/// The reader's buffer: a whole pipe's worth (Linux: 64 KiB).
const READER_CAPACITY_BYTES: usize = 64 * 1024;

/// Why the relay ends a run with `ERR`: the operation, its errno, and
/// what the console is told.
struct Failure {
    op: String,
    errno: i32,
    why: String,
}

impl Failure {
    fn new(op: &str, errno: i32, why: impl Into<String>) -> Failure {
        Failure {
            op: op.to_string(),
            errno,
            why: why.into(),
        }
    }
}

/// Runs the relay; the exit code of `crashlab-workload`.
pub fn run(args: &[String]) -> u8 {
    let (vocabulary, args) = match args.split_first() {
        Some((flag, rest)) if flag == "--record-events" => (Vocabulary::Records, rest),
        _ => (Vocabulary::Items, args),
    };
    let [data_dir, channel_path, program, program_args @ ..] = args else {
        eprintln!("usage: crashlab-workload relay [--record-events] DATA_DIR CHANNEL_PATH PROGRAM [ARGS...]");
        return 2;
    };
    let params = match read_params() {
        Ok(params) => params,
        Err(msg) => {
            eprintln!("crashlab-workload relay: {msg}");
            return 2;
        }
    };
    let mut channel = match std::fs::File::options().write(true).open(channel_path) {
        Ok(f) => Channel(f),
        Err(e) => {
            eprintln!("crashlab-workload relay: cannot open channel {channel_path}: {e}");
            return 2;
        }
    };
    let spawned = spawn_program(program, program_args, data_dir, &params);
    let mut session = match spawned {
        Ok((child, reply_write)) => Session::new(child, reply_write, params, vocabulary),
        Err(failure) => return fail(&mut channel, &failure),
    };
    match session.relay_all(&mut channel) {
        Ok(code) => code,
        Err(failure) => {
            session.kill_program();
            fail(&mut channel, &failure)
        }
    }
}

/// The run ends in `ERR`: said on the console and to the host.
fn fail(channel: &mut Channel, failure: &Failure) -> u8 {
    eprintln!("crashlab-workload relay: {}", failure.why);
    channel.emit(&Event::Error {
        op: failure.op.clone(),
        errno: failure.errno,
    });
    1
}

/// The parameters, from the guest's kernel command line (a test on the
/// host names another file: `CRASHLAB_CMDLINE_PATH`).
fn read_params() -> Result<WorkloadParams, String> {
    let cmdline = std::env::var("CRASHLAB_CMDLINE_PATH").unwrap_or_else(|_| "/proc/cmdline".into());
    std::fs::read_to_string(&cmdline)
        .map_err(|e| format!("cannot read {cmdline}: {e}"))
        .and_then(|text| WorkloadParams::from_kernel_cmdline(&text).map_err(|e| e.to_string()))
}

/// Starts the program in its own process group (the crash point stops it
/// and all it started), its stdout piped to the relay, and the reply
/// pipe's read end open in it as `CRASHLAB_REPLY_FD`. The program reads
/// one byte after each READY, BEGIN and ACK it printed (if it wants
/// lockstep); the relay's end never blocks: a program that does not read
/// loses nothing but the bytes.
fn spawn_program(
    program: &str,
    program_args: &[String],
    data_dir: &str,
    params: &WorkloadParams,
) -> Result<(std::process::Child, std::fs::File), Failure> {
    let (reply_read, reply_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| Failure::new("pipe", e as i32, "cannot make the reply pipe"))?;
    let reply_fd = {
        use std::os::fd::AsRawFd;
        reply_read.as_raw_fd()
    };
    let mut command = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl):
    // the reply's read end stays open in the program, blocking.
    unsafe {
        command.pre_exec(move || {
            if nix::libc::fcntl(reply_fd, nix::libc::F_SETFD, 0) == -1
                || nix::libc::fcntl(reply_fd, nix::libc::F_SETFL, 0) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .args(program_args)
        .env("CRASHLAB_REPLY_FD", reply_fd.to_string())
        .current_dir(data_dir)
        .env("CRASHLAB_PROTOCOL", items::PROTOCOL_VERSION.to_string())
        .env("CRASHLAB_DATA_DIR", data_dir)
        .env("CRASHLAB_SEED", params.seed.to_string())
        .env("CRASHLAB_ITEMS", params.records.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            let why = format!("cannot start {program}: {e} (a static binary for x86_64 Linux?)");
            Failure::new("program-start", e.raw_os_error().unwrap_or(2), why)
        })?;
    drop(reply_read);
    Ok((child, std::fs::File::from(reply_write)))
}

/// What the relay holds while the program runs: the program, its output,
/// the decisions (`Relay`) and what they act on (the ack area, the reply).
struct Session {
    child: std::process::Child,
    group: nix::unistd::Pid,
    stdout: BufReader<std::process::ChildStdout>,
    /// Lines read ahead of their turn (see `Action::AckSector` in `apply`).
    pending: VecDeque<String>,
    relay: Relay,
    params: WorkloadParams,
    ack_log: Option<AckLog>,
    /// The guest's test disk; a host test names a file.
    ack_device: String,
    reply_write: std::fs::File,
    /// The relay's exit code is 1 once the run ended with an ERR.
    ended_in_error: bool,
}

impl Session {
    fn new(
        mut child: std::process::Child,
        reply_write: std::fs::File,
        params: WorkloadParams,
        vocabulary: Vocabulary,
    ) -> Session {
        let stdout = child.stdout.take().expect("stdout is piped");
        Session {
            group: nix::unistd::Pid::from_raw(child.id() as i32),
            child,
            stdout: BufReader::with_capacity(READER_CAPACITY_BYTES, stdout),
            pending: VecDeque::new(),
            relay: Relay::new(&params, vocabulary),
            params,
            ack_log: None,
            ack_device: std::env::var("CRASHLAB_ACK_DEVICE").unwrap_or_else(|_| record::params::ACK_DEVICE.into()),
            reply_write,
            ended_in_error: false,
        }
    }

    fn kill_program(&mut self) {
        let _ = nix::sys::signal::killpg(self.group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Each line (read ahead, or the next from the program) decided and
    /// its actions applied, until one ends the run: the exit code.
    fn relay_all(&mut self, channel: &mut Channel) -> Result<u8, Failure> {
        loop {
            let next = match self.pending.pop_front() {
                Some(line) => Ok(Some(line)),
                None => read_line(&mut self.stdout),
            };
            let actions = match next {
                Ok(Some(line)) => self.decide(&line)?,
                Ok(None) => match self.child.wait() {
                    Ok(status) => self.relay.exited(status),
                    Err(e) => {
                        return Err(Failure::new(
                            "program-wait",
                            e.raw_os_error().unwrap_or(5),
                            "cannot wait",
                        ))
                    }
                },
                Err(why) => return Err(Failure::new("program-protocol", EPROTO, why)),
            };
            for action in actions {
                if let Some(code) = self.apply(action, channel)? {
                    return Ok(code);
                }
            }
        }
    }

    /// The relay's decision on one line; a line that breaks the protocol
    /// ends the run.
    fn decide(&mut self, line: &str) -> Result<Vec<Action>, Failure> {
        self.relay.line(line).map_err(|broken| {
            let why = format!("the program broke the protocol: {}", broken.why);
            Failure::new(&broken.op, broken.errno, why)
        })
    }

    /// Does one action; `Some(code)` when the run is over.
    fn apply(&mut self, action: Action, channel: &mut Channel) -> Result<Option<u8>, Failure> {
        match action {
            Action::ReadyMarker { slots } => {
                let offset = self.params.ack_area_offset_bytes.expect("capture has an ack area");
                let marker = AckRecord {
                    ack_index: READY_MARKER_INDEX,
                    seq: 0,
                    slot: slots,
                    seed: self.params.seed,
                };
                let log = AckLog::open(&self.ack_device, offset)
                    .and_then(|mut log| log.write(&marker).map(|()| log))
                    .map_err(|e| Failure::new(e.op, e.errno, "cannot write the ready marker"))?;
                self.ack_log = Some(log);
            }
            Action::AckSector { seq, slot } => {
                let record = AckRecord {
                    ack_index: seq,
                    seq,
                    slot,
                    seed: self.params.seed,
                };
                let log = self.ack_log.as_mut().expect("READY came first");
                log.write(&record)
                    .map_err(|e| Failure::new(e.op, e.errno, "cannot write an ack sector"))?;
                self.begins_first(channel)?;
            }
            Action::Reply => reply(&mut self.reply_write),
            Action::Emit(event) => {
                self.ended_in_error |= matches!(event, Event::Error { .. });
                channel.emit(&event)
            }
            Action::Hold { acks } => self.hold(acks, channel),
            Action::End => {
                self.kill_program();
                return Ok(Some(u8::from(self.ended_in_error)));
            }
        }
        Ok(None)
    }

    /// After an ack sector: the program went on while the sector was
    /// written, so an item it began meanwhile may be on the disk in a state
    /// without this sector. Its BEGIN must come before this ACK in the
    /// host's log, or cutting the log at the ACK (a state without the
    /// sector) would drop the BEGIN and call the item's data foreign.
    /// Every line printed by now is in the pipe: its BEGINs go first.
    fn begins_first(&mut self, channel: &mut Channel) -> Result<(), Failure> {
        self.pending.extend(complete_lines_now(&mut self.stdout));
        for line in pull_begins(&mut self.pending) {
            for action in self.decide(&line)? {
                match action {
                    Action::Emit(event) => channel.emit(&event),
                    Action::Reply => reply(&mut self.reply_write),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The crash point: the program's group stopped before its reply, what
    /// it printed passed on, `HOLD` said; then wait for the host's kill.
    fn hold(&mut self, acks: u64, channel: &mut Channel) -> ! {
        let _ = nix::sys::signal::killpg(self.group, nix::sys::signal::Signal::SIGSTOP);
        wait_stopped(self.group);
        let read_ahead: Vec<String> = self.pending.drain(..).collect();
        for line in read_ahead.into_iter().chain(drain(&mut self.stdout)) {
            if let Some(event) = self.relay.drained(&line) {
                channel.emit(&event);
            }
        }
        channel.emit(&Event::Hold { acks });
        loop {
            nix::unistd::pause();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(hold: Option<u64>, capture: bool) -> WorkloadParams {
        WorkloadParams {
            mode: record::DurabilityMode::MsSync,
            record_size_bytes: 4096,
            file_size_bytes: 4 << 20,
            records: 3,
            seed: 7,
            planted_bug: None,
            hold_after_acks: hold,
            hold_at_point: None,
            ack_area_offset_bytes: capture.then_some(60 << 20),
            pattern: record::Pattern::Records,
            io_errors: false,
        }
    }

    fn digest(text: &str) -> items::Digest {
        items::Digest::parse(text).unwrap()
    }

    /// `POINT name` is passed on with its count; at `--crash-at name:2`
    /// the second one holds the program (no reply) as an ack count does;
    /// a run that ends before it still holds, so the planned crash happens.
    #[test]
    fn a_named_point_is_passed_on_counted_and_holds_at_its_occurrence() {
        let mut p = params(None, false);
        p.hold_at_point = Some("committed:2".parse().unwrap());
        let mut relay = Relay::new(&p, Vocabulary::Items);
        relay.line("READY").unwrap();
        let point = |occurrence| {
            Action::Emit(Event::Point {
                name: "committed".into(),
                occurrence,
            })
        };
        assert_eq!(relay.line("POINT committed").unwrap(), [point(1), Action::Reply]);
        assert_eq!(
            relay.line("POINT other").unwrap(),
            [
                Action::Emit(Event::Point {
                    name: "other".into(),
                    occurrence: 1
                }),
                Action::Reply
            ]
        );
        assert_eq!(
            relay.line("POINT committed").unwrap(),
            [point(2), Action::Hold { acks: 0 }]
        );
        assert!(relay.line("POINT bad/name").is_err(), "a name is one plain word");
        let mut early = Relay::new(&p, Vocabulary::Items);
        early.line("READY").unwrap();
        early.line("DONE").unwrap();
        assert_eq!(
            early.exited(std::process::ExitStatus::from_raw(0)),
            [Action::Hold { acks: 0 }]
        );
    }

    #[test]
    fn lines_become_events_with_ack_sectors_first() {
        let mut relay = Relay::new(&params(None, true), Vocabulary::Items);
        assert_eq!(
            relay.line("READY").unwrap(),
            [
                Action::ReadyMarker { slots: 0 },
                Action::Emit(Event::Ready { slots: 0 }),
                Action::Reply
            ]
        );
        assert_eq!(
            relay.line("BEGIN 70 ab").unwrap(),
            [
                Action::Emit(Event::Item {
                    seq: 0,
                    id: 70,
                    digest: digest("ab"),
                    key: None,
                }),
                Action::Reply
            ]
        );
        relay.line("BEGIN 71 cd 4").unwrap();
        assert_eq!(
            relay.line("ACK 71").unwrap(),
            [
                Action::AckSector { seq: 1, slot: 1 },
                Action::Emit(Event::Ack { seq: 1, slot: 1 }),
                Action::Reply,
            ]
        );
        assert_eq!(
            relay.line("NOTE commit 2").unwrap(),
            [Action::Emit(Event::Note {
                text: "commit 2".into()
            })],
            "a program's NOTE is kept in the host's log"
        );
        assert_eq!(relay.line("DONE").unwrap(), [Action::Emit(Event::Done { records: 2 })]);
        assert!(relay.exited(std::process::ExitStatus::from_raw(0)) == [Action::End]);
    }

    #[test]
    fn begins_read_ahead_go_first_but_never_past_done_or_an_ack_of_their_own() {
        let mut pending: VecDeque<String> = [
            "BEGIN 3 ab",
            "ACK 2",
            "BEGIN 4 cd",
            "ACK 5",
            "BEGIN 5 ef",
            "DONE",
            "BEGIN 6 aa",
        ]
        .map(String::from)
        .into();
        assert_eq!(pull_begins(&mut pending), ["BEGIN 3 ab", "BEGIN 4 cd"]);
        assert_eq!(pending, ["ACK 2", "ACK 5", "BEGIN 5 ef", "DONE", "BEGIN 6 aa"]);
        let mut none: VecDeque<String> = ["NOTE x", "ERR msync 5", "BEGIN 1 ab"].map(String::from).into();
        assert!(pull_begins(&mut none).is_empty());
        assert_eq!(none.len(), 3);
    }

    #[test]
    fn the_crash_point_holds_after_the_nth_ack() {
        let mut relay = Relay::new(&params(Some(1), false), Vocabulary::Items);
        relay.line("READY").unwrap();
        relay.line("BEGIN 5 ab").unwrap();
        assert_eq!(
            relay.line("ACK 5").unwrap(),
            [Action::Emit(Event::Ack { seq: 0, slot: 0 }), Action::Hold { acks: 1 }]
        );
        // What the program printed before it stopped: its BEGINs only.
        assert_eq!(
            relay.drained("BEGIN 6 cd"),
            Some(Event::Item {
                seq: 1,
                id: 6,
                digest: digest("cd"),
                key: None,
            })
        );
        assert_eq!(relay.drained("ACK 6"), None);
        assert_eq!(relay.drained("BEGIN 6 cd"), None);
        // A program that ends before the crash point holds at its end.
        let mut early = Relay::new(&params(Some(2), false), Vocabulary::Items);
        early.line("READY").unwrap();
        early.line("DONE").unwrap();
        assert_eq!(
            early.exited(std::process::ExitStatus::from_raw(0)),
            [Action::Hold { acks: 0 }]
        );
    }

    #[test]
    fn a_program_that_breaks_the_protocol_or_dies_is_named() {
        for lines in [
            &["BEGIN 1 ab"][..],
            &["READY", "READY"],
            &["READY", "ACK 1"],
            &["READY", "BEGIN 1 ab", "ACK 1", "ACK 1"],
            &["READY", "BEGIN 1 ab", "BEGIN 1 cd"],
            &["READY", "BEGIN 1 a", "BEGIN 2 a", "BEGIN 3 a", "BEGIN 4 a"],
            &["READY", "DONE", "NOTE late"],
            &["READY", "COMMITTED 1"],
            &["READY", "EVENT MSYNC 0 0 4096 MS_SYNC 0"],
        ] {
            let mut relay = Relay::new(&params(None, false), Vocabulary::Items);
            let (last, first) = lines.split_last().unwrap();
            for line in first {
                relay.line(line).unwrap();
            }
            let broken = relay.line(last).unwrap_err();
            assert_eq!(broken.errno, EPROTO, "{lines:?}");
            assert_eq!(broken.op, format!("program-protocol-line-{}", lines.len()));
        }
        let relay = Relay::new(&params(None, false), Vocabulary::Items);
        // Exit status 3 (a wait status holds it shifted left by 8).
        assert_eq!(
            relay.exited(std::process::ExitStatus::from_raw(3 << 8)),
            [
                Action::Emit(Event::Error {
                    op: "program-exit-status".into(),
                    errno: 3
                }),
                Action::End
            ]
        );
        assert_eq!(
            relay.exited(std::process::ExitStatus::from_raw(9))[0],
            Action::Emit(Event::Error {
                op: "program-killed-by-signal".into(),
                errno: 9
            })
        );
    }

    #[test]
    fn the_record_workload_gets_record_events_and_its_own_event_lines_pass() {
        let mut p = params(Some(2), true);
        p.records = 10;
        let slots = p.geometry().total_slots();
        let mut relay = Relay::new(&p, Vocabulary::Records);
        assert_eq!(
            relay.line("READY").unwrap(),
            [
                Action::ReadyMarker { slots },
                Action::Emit(Event::Ready { slots }),
                Action::Reply
            ]
        );
        assert_eq!(
            relay.line("BEGIN 0 1f 0").unwrap(),
            [Action::Emit(Event::Begin { seq: 0, slot: 0 }), Action::Reply]
        );
        let msync = "MSYNC 0 0 4096 MS_SYNC 0";
        assert_eq!(
            relay.line(&format!("EVENT {msync}")).unwrap(),
            [Action::Emit(Event::parse(msync).unwrap())]
        );
        // Several writers: records begun out of seq order keep their seqs.
        relay.line("BEGIN 3 aa 9").unwrap();
        assert_eq!(
            relay.line("ACK 3").unwrap(),
            [
                Action::AckSector { seq: 3, slot: 9 },
                Action::Emit(Event::Ack { seq: 3, slot: 9 }),
                Action::Reply,
            ]
        );
        assert_eq!(relay.line("ACK 0").unwrap().last(), Some(&Action::Hold { acks: 2 }));
        assert_eq!(relay.drained("BEGIN 4 bb 4"), Some(Event::Begin { seq: 4, slot: 4 }));
        // A record names its slot; the relay's own events are not passed.
        for line in ["BEGIN 5 aa", "EVENT ACK 0 0", "EVENT HOLD 1", "EVENT DONE 10"] {
            let mut relay = Relay::new(&p, Vocabulary::Records);
            relay.line("READY").unwrap();
            let broken = relay.line(line).unwrap_err();
            assert_eq!(broken.errno, EPROTO, "{line}");
        }
        let mut done = Relay::new(&p, Vocabulary::Records);
        done.line("READY").unwrap();
        assert_eq!(done.line("DONE").unwrap(), [Action::Emit(Event::Done { records: 10 })]);
    }

    #[test]
    fn lines_are_bounded() {
        let long = format!("NOTE {}\n", "x".repeat(5000));
        assert!(read_line(&mut long.as_bytes())
            .unwrap_err()
            .contains("longer than 4096"));
        assert!(read_line(&mut &b"READY"[..]).unwrap_err().contains("without a newline"));
        assert_eq!(read_line(&mut &b"READY\nDONE\n"[..]).unwrap().as_deref(), Some("READY"));
        assert_eq!(read_line(&mut &b""[..]).unwrap(), None);
    }
}
