//! A minimal NBD server: one export, one client at a time, over a Unix
//! socket. It lets a long-lived checker VM see a sequence of crash states
//! without copying a full disk image per state.
//!
//! The export is a copy-on-write view: a read-only [`DiskView`] (the crash
//! state) plus an in-memory write overlay. Guest writes (journal recovery,
//! fsck) land in the overlay and are dropped by [`NbdHandle::set_view`], so
//! the next state starts clean.
//!
//! Protocol subset (NBD spec, "fixed newstyle"): options `EXPORT_NAME`,
//! `ABORT`, `LIST`, `INFO`, `GO`; everything else gets `NBD_REP_ERR_UNSUP`,
//! so clients (QEMU asks for structured replies first) fall back to simple
//! replies. Commands `READ`, `WRITE`, `DISC`, `FLUSH`, `TRIM` (a no-op: old
//! data may stay, as on a disk that ignores discards) and `WRITE_ZEROES`.
//!
//! Overlay granularity: 512-byte sectors in a `BTreeMap`. Sectors match what
//! a guest block layer writes, so an aligned write costs no read of the base;
//! unaligned writes read-modify-write at most the two edge sectors.
//!
//! Every request is served under one lock from the view that was current
//! when the request was parsed, so a request racing `set_view` never mixes
//! two states.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Read-only content of one crash state. Implementations: a base image file
/// plus extents taken from a block-write log.
pub trait DiskView: Send + Sync {
    fn size_bytes(&self) -> u64;
    /// Fill `buf` with the bytes at `offset_bytes`. Always in range (the
    /// server checks).
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// Decides, write by write, whether the disk fails it: a planted I/O error
/// (`--inject-write-error`). Sees each WRITE's offset and data before it
/// reaches the overlay.
pub trait WriteFault: Send {
    /// `Some(errno)` (an NBD error code, Linux's errno values) to fail the
    /// write; it then changes nothing.
    fn check(&mut self, offset_bytes: u64, data: &[u8]) -> Option<u32>;
}

/// A whole file as a view, read with `pread` so concurrent readers need no
/// shared file position.
pub struct FileView {
    file: File,
    size_bytes: u64,
}

impl FileView {
    /// Takes the size from the file's metadata now; the file must not shrink
    /// while served (reads past its end fail with EIO).
    pub fn new(file: File) -> io::Result<FileView> {
        let size_bytes = file.metadata()?.len();
        Ok(FileView { file, size_bytes })
    }

    pub fn open(path: &Path) -> io::Result<FileView> {
        FileView::new(File::open(path)?)
    }
}

impl DiskView for FileView {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset_bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdLimits {
    /// Writes that would grow the overlay beyond this fail with ENOSPC (and
    /// are counted in [`NbdStats::enospc_errors`]).
    pub overlay_max_bytes: u64,
    /// Largest READ, WRITE or WRITE_ZEROES; larger ones get EINVAL.
    /// Advertised to the client as the maximum block size.
    pub request_max_bytes: u32,
}

impl Default for NbdLimits {
    fn default() -> NbdLimits {
        // 32 MiB is what QEMU itself caps requests at (NBD_MAX_BUFFER_SIZE).
        NbdLimits {
            overlay_max_bytes: 1 << 30,
            request_max_bytes: 32 << 20,
        }
    }
}

/// Counters since the server started (not reset by `set_view`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NbdStats {
    pub connections: u64,
    pub reads: u64,
    pub writes: u64,
    pub write_zeroes: u64,
    pub trims: u64,
    pub flushes: u64,
    pub disconnects: u64,
    /// Requests answered with any error (including the ENOSPC ones).
    pub errors: u64,
    pub enospc_errors: u64,
    /// Writes failed by the planted [`WriteFault`].
    pub injected_errors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    /// Time spent executing requests: from a header being parsed to the
    /// reply being ready (the socket write of the reply is not included).
    pub request_nanos: u64,
}

/// Owns the serving thread. Stopped (listener and connection closed, thread
/// joined, socket file removed) by [`NbdServer::stop`] or on drop.
pub struct NbdServer {
    shared: Arc<Shared>,
    socket_path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

/// Cheap to clone; swaps the view and reads counters.
#[derive(Clone)]
pub struct NbdHandle {
    shared: Arc<Shared>,
}

impl NbdServer {
    /// Binds `socket_path` (a Unix socket, path < 108 bytes), spawns the
    /// serving thread, returns at once. A stale socket file at the path is
    /// replaced; any other kind of file is an error.
    pub fn start(
        socket_path: &Path,
        export_name: &str,
        initial: Arc<dyn DiskView>,
        limits: NbdLimits,
    ) -> anyhow::Result<(NbdServer, NbdHandle)> {
        check_limits(&limits)?;
        if export_name.len() > NAME_MAX_BYTES {
            bail!(
                "nbd: export name is {} bytes, the protocol allows {NAME_MAX_BYTES}",
                export_name.len()
            );
        }
        let listener = bind(socket_path)?;
        // Nonblocking accept polled with a short sleep: stop() then never
        // depends on being able to connect to our own (possibly deleted) path.
        listener
            .set_nonblocking(true)
            .context("nbd: set listener nonblocking")?;
        let shared = Arc::new(Shared::new(export_name, initial, limits));
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("nbd-server".into())
            .spawn(move || accept_loop(&listener, &thread_shared))
            .context("nbd: spawn server thread")?;
        let server = NbdServer {
            shared: Arc::clone(&shared),
            socket_path: socket_path.to_owned(),
            thread: Some(thread),
        };
        Ok((server, NbdHandle { shared }))
    }

    /// Stops serving (closes the listener and connection), joins the thread.
    /// Also done on drop.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.close_connection();
        let joined = thread.join();
        let _ = std::fs::remove_file(&self.socket_path);
        if joined.is_err() {
            bail!("nbd: server thread panicked");
        }
        Ok(())
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("{e:#}");
        }
    }
}

impl NbdHandle {
    /// Replaces the view and drops the write overlay. The export size the
    /// client negotiated does not change; requests are range-checked against
    /// the current view, so keep sizes equal across views.
    pub fn set_view(&self, view: Arc<dyn DiskView>) {
        let mut state = self.shared.lock_state();
        state.view = view;
        state.overlay.clear();
        state.reads.clear();
    }

    /// The READ requests (offset, length in bytes) served since the view was
    /// set, in arrival order (at most [`READ_LOG_MAX`]); clears the log.
    pub fn take_reads(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.shared.lock_state().reads)
    }

    /// Installs a planted write fault (see [`WriteFault`]).
    pub fn set_write_fault(&self, fault: Box<dyn WriteFault>) {
        *lock(&self.shared.fault) = Some(fault);
    }

    /// Writes every overlay sector into `file` at its offset: the disk as
    /// the guest left it, for a boot on a plain image.
    pub fn write_overlay_into(&self, file: &File) -> io::Result<u64> {
        let state = self.shared.lock_state();
        for (&sector, data) in &state.overlay.sectors {
            file.write_all_at(&data[..], sector * SECTOR_BYTES)?;
        }
        Ok(state.overlay.bytes())
    }

    /// Reads the export as the client sees it now: the view with the
    /// guest's writes on top (after a recovery, the recovered disk). For a
    /// host reading what the guest left, while the guest is idle.
    pub fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        let state = self.shared.lock_state();
        let in_range = offset_bytes
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= state.view.size_bytes());
        if !in_range {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "read of {} bytes at {offset_bytes} is past the export's end ({} bytes)",
                    buf.len(),
                    state.view.size_bytes()
                ),
            ));
        }
        state.overlay.read(&*state.view, offset_bytes, buf)
    }

    /// Bytes currently held in the overlay (for memory accounting / tests).
    pub fn overlay_bytes(&self) -> u64 {
        self.shared.lock_state().overlay.bytes()
    }

    pub fn stats(&self) -> NbdStats {
        *lock(&self.shared.stats)
    }

    /// The most recent connection-level error (protocol violation, I/O
    /// error), if any. Each is also printed to stderr with prefix "nbd:".
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// The latest handshake events (client flags, each option and the
    /// answer), oldest first, at most [`HANDSHAKE_LOG_MAX`] entries.
    pub fn handshake_log(&self) -> Vec<String> {
        lock(&self.shared.handshake_log).iter().cloned().collect()
    }
}

/// Entries kept by [`NbdHandle::handshake_log`].
pub const HANDSHAKE_LOG_MAX: usize = 256;

// ---------------------------------------------------------------------------
// Protocol constants (NBD spec, doc/proto.md).

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1;
const CLIENT_FLAG_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TRANSMISSION_FLAGS: u16 = 1 // HAS_FLAGS
    | 4 // SEND_FLUSH
    | 8 // SEND_FUA
    | 32 // SEND_TRIM
    | 64; // SEND_WRITE_ZEROES
          // Not CAN_MULTI_CONN: one client at a time.

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

const CMD_FLAG_FUA: u16 = 1;
const CMD_FLAG_NO_HOLE: u16 = 2;
/// Flags we accept; both are satisfied trivially (the overlay is memory and
/// never punches holes).
const CMD_FLAGS_KNOWN: u16 = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE;

const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// Option payloads are names and small lists; anything larger is hostile.
const OPTION_MAX_BYTES: u32 = 64 << 10;
/// The spec's upper bound for strings such as export names.
const NAME_MAX_BYTES: usize = 4096;
/// Preferred block size advertised to the client: a page, what guests write.
const PREFERRED_BLOCK_BYTES: u32 = 4096;
/// How long the idle accept loop sleeps between polls.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Chunk used to discard the payload of a rejected oversize WRITE.
const DRAIN_CHUNK_BYTES: usize = 64 << 10;

const SECTOR_BYTES: u64 = 512;

fn check_limits(limits: &NbdLimits) -> anyhow::Result<()> {
    // QEMU splits requests at the advertised maximum; below one sector a
    // guest's block layer could not issue its smallest I/O in one request.
    if limits.request_max_bytes < SECTOR_BYTES as u32 {
        bail!(
            "nbd: request_max_bytes {} is below one 512-byte sector",
            limits.request_max_bytes
        );
    }
    Ok(())
}

fn bind(socket_path: &Path) -> anyhow::Result<UnixListener> {
    // sun_path is 108 bytes including the terminating NUL.
    if socket_path.as_os_str().len() >= 108 {
        bail!(
            "nbd: socket path {} is {} bytes; Unix sockets allow at most 107",
            socket_path.display(),
            socket_path.as_os_str().len()
        );
    }
    if let Ok(meta) = std::fs::symlink_metadata(socket_path) {
        if !meta.file_type().is_socket() {
            bail!(
                "nbd: {} exists and is not a socket; refusing to replace it",
                socket_path.display()
            );
        }
        std::fs::remove_file(socket_path)
            .with_context(|| format!("nbd: remove stale socket {}", socket_path.display()))?;
    }
    UnixListener::bind(socket_path).with_context(|| format!("nbd: bind {}", socket_path.display()))
}

// ---------------------------------------------------------------------------
// Shared state.

struct ViewState {
    view: Arc<dyn DiskView>,
    overlay: Overlay,
    /// READ requests (offset, length) since the view was set, at most
    /// [`READ_LOG_MAX`]: what the client needed, for it to prefetch next time.
    reads: Vec<(u64, u64)>,
}

/// READ requests remembered per view (see [`NbdHandle::take_reads`]).
pub const READ_LOG_MAX: usize = 1 << 16;

struct Shared {
    export_name: String,
    limits: NbdLimits,
    state: Mutex<ViewState>,
    stats: Mutex<NbdStats>,
    fault: Mutex<Option<Box<dyn WriteFault>>>,
    last_error: Mutex<Option<String>>,
    handshake_log: Mutex<VecDeque<String>>,
    /// A clone of the connection being served, so stop() can shut it down
    /// and unblock the serving thread's read.
    connection: Mutex<Option<UnixStream>>,
    stopping: AtomicBool,
}

/// A poisoned lock only means another thread panicked mid-update; the data
/// here (counters, a view pointer, sectors) stays usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn new(export_name: &str, view: Arc<dyn DiskView>, limits: NbdLimits) -> Shared {
        Shared {
            export_name: export_name.to_owned(),
            limits,
            state: Mutex::new(ViewState {
                view,
                overlay: Overlay::default(),
                reads: Vec::new(),
            }),
            stats: Mutex::new(NbdStats::default()),
            fault: Mutex::new(None),
            last_error: Mutex::new(None),
            handshake_log: Mutex::new(VecDeque::new()),
            connection: Mutex::new(None),
            stopping: AtomicBool::new(false),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, ViewState> {
        lock(&self.state)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn record_error(&self, message: String) {
        eprintln!("nbd: {message}");
        *lock(&self.last_error) = Some(message);
    }

    fn log_handshake(&self, event: String) {
        let mut log = lock(&self.handshake_log);
        if log.len() == HANDSHAKE_LOG_MAX {
            log.pop_front();
        }
        log.push_back(event);
    }

    fn close_connection(&self) {
        if let Some(stream) = lock(&self.connection).as_ref() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

// ---------------------------------------------------------------------------
// Accept loop and connection.

fn accept_loop(listener: &UnixListener, shared: &Shared) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => serve_connection(stream, shared),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared.record_error(format!("accept: {e}"));
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn serve_connection(stream: UnixStream, shared: &Shared) {
    if let Err(e) = register_connection(&stream, shared) {
        shared.record_error(format!("setting up connection: {e}"));
        return;
    }
    lock(&shared.stats).connections += 1;
    let result = run_connection(stream, shared);
    match result {
        Ok(()) => {}
        // stop() shut the socket down under us; not an error.
        Err(_) if shared.stopping() => {}
        Err(e) => shared.record_error(format!("connection closed: {e}")),
    }
    // Dropping the last clone closes the socket; the error is recorded
    // first so a client that sees the hang-up can already read why.
    *lock(&shared.connection) = None;
}

fn register_connection(stream: &UnixStream, shared: &Shared) -> io::Result<()> {
    // The listener is nonblocking; the connection must block.
    stream.set_nonblocking(false)?;
    *lock(&shared.connection) = Some(stream.try_clone()?);
    // stop() may have looked for a connection just before we stored it.
    if shared.stopping() {
        stream.shutdown(std::net::Shutdown::Both)?;
    }
    Ok(())
}

fn run_connection(stream: UnixStream, shared: &Shared) -> io::Result<()> {
    let mut conn = Conn {
        reader: io::BufReader::new(stream.try_clone()?),
        writer: stream,
    };
    match handshake(&mut conn, shared)? {
        Handshake::Transmission => transmission(&mut conn, shared),
        Handshake::Closed => Ok(()),
    }
}

struct Conn {
    reader: io::BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.reader.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.read_array()?))
    }

    fn read_u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.read_array()?))
    }

    fn read_vec(&mut self, len_bytes: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len_bytes];
        self.reader.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn drain(&mut self, mut len_bytes: u64) -> io::Result<()> {
        let mut chunk = vec![0u8; DRAIN_CHUNK_BYTES];
        while len_bytes > 0 {
            let n = len_bytes.min(DRAIN_CHUNK_BYTES as u64) as usize;
            self.reader.read_exact(&mut chunk[..n])?;
            len_bytes -= n as u64;
        }
        Ok(())
    }
}

fn protocol_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

// ---------------------------------------------------------------------------
// Handshake.

enum Handshake {
    Transmission,
    Closed,
}

fn handshake(conn: &mut Conn, shared: &Shared) -> io::Result<Handshake> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    conn.writer.write_all(&greeting)?;
    let client_flags = conn.read_u32()?;
    shared.log_handshake(format!("client flags {client_flags:#x}"));
    // The spec requires dropping clients that set flags we did not offer.
    if client_flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(protocol_error(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;
    loop {
        if let Some(outcome) = handle_option(conn, shared, no_zeroes)? {
            return Ok(outcome);
        }
    }
}

/// One option; `Some` ends option haggling.
fn handle_option(conn: &mut Conn, shared: &Shared, no_zeroes: bool) -> io::Result<Option<Handshake>> {
    let magic = conn.read_u64()?;
    if magic != IHAVEOPT {
        return Err(protocol_error(format!("bad option magic {magic:#x}")));
    }
    let option = conn.read_u32()?;
    let len_bytes = conn.read_u32()?;
    if len_bytes > OPTION_MAX_BYTES {
        return Err(protocol_error(format!(
            "option {option} has {len_bytes} bytes of data, limit {OPTION_MAX_BYTES}"
        )));
    }
    let data = conn.read_vec(len_bytes as usize)?;
    let export_name = shared.export_name.as_bytes();
    match option {
        OPT_EXPORT_NAME => {
            shared.log_handshake(format!("EXPORT_NAME {:?}", String::from_utf8_lossy(&data)));
            if data != export_name {
                return Err(protocol_error(format!(
                    "unknown export {:?}",
                    String::from_utf8_lossy(&data)
                )));
            }
            send_export_name_reply(conn, shared, no_zeroes)?;
            Ok(Some(Handshake::Transmission))
        }
        OPT_ABORT => {
            shared.log_handshake("ABORT -> ACK".into());
            // The client may already have closed; the spec says to tolerate that.
            let _ = send_option_reply(conn, option, REP_ACK, &[]);
            Ok(Some(Handshake::Closed))
        }
        OPT_LIST => {
            handle_list(conn, shared, &data)?;
            Ok(None)
        }
        OPT_INFO | OPT_GO => handle_info_or_go(conn, shared, option, &data),
        _ => {
            shared.log_handshake(format!(
                "option {} ({} bytes) -> ERR_UNSUP",
                option_name(option),
                data.len()
            ));
            send_option_reply(conn, option, REP_ERR_UNSUP, &[])?;
            Ok(None)
        }
    }
}

fn option_name(option: u32) -> String {
    let name = match option {
        5 => "STARTTLS",
        8 => "STRUCTURED_REPLY",
        9 => "LIST_META_CONTEXT",
        10 => "SET_META_CONTEXT",
        11 => "EXTENDED_HEADERS",
        _ => return option.to_string(),
    };
    format!("{name}({option})")
}

fn send_option_reply(conn: &mut Conn, option: u32, reply_type: u32, data: &[u8]) -> io::Result<()> {
    let mut reply = Vec::with_capacity(20 + data.len());
    reply.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&option.to_be_bytes());
    reply.extend_from_slice(&reply_type.to_be_bytes());
    reply.extend_from_slice(&(data.len() as u32).to_be_bytes());
    reply.extend_from_slice(data);
    conn.writer.write_all(&reply)
}

fn export_size_bytes(shared: &Shared) -> u64 {
    shared.lock_state().view.size_bytes()
}

fn send_export_name_reply(conn: &mut Conn, shared: &Shared, no_zeroes: bool) -> io::Result<()> {
    let mut reply = Vec::with_capacity(10 + 124);
    reply.extend_from_slice(&export_size_bytes(shared).to_be_bytes());
    reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    if !no_zeroes {
        reply.extend_from_slice(&[0u8; 124]);
    }
    conn.writer.write_all(&reply)
}

fn handle_list(conn: &mut Conn, shared: &Shared, data: &[u8]) -> io::Result<()> {
    if !data.is_empty() {
        shared.log_handshake("LIST with data -> ERR_INVALID".into());
        return send_option_reply(conn, OPT_LIST, REP_ERR_INVALID, &[]);
    }
    shared.log_handshake("LIST -> SERVER, ACK".into());
    let name = shared.export_name.as_bytes();
    let mut server = Vec::with_capacity(4 + name.len());
    server.extend_from_slice(&(name.len() as u32).to_be_bytes());
    server.extend_from_slice(name);
    send_option_reply(conn, OPT_LIST, REP_SERVER, &server)?;
    send_option_reply(conn, OPT_LIST, REP_ACK, &[])
}

/// The parsed data of NBD_OPT_INFO / NBD_OPT_GO.
struct InfoRequest<'a> {
    name: &'a [u8],
    info_types: Vec<u16>,
}

fn parse_info_request(data: &[u8]) -> Option<InfoRequest<'_>> {
    let name_len_bytes = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len_bytes)?)?;
    let rest = &data[4 + name_len_bytes..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let types = &rest[2..];
    if types.len() != count * 2 {
        return None;
    }
    let info_types = types
        .chunks_exact(2)
        .map(|t| u16::from_be_bytes([t[0], t[1]]))
        .collect();
    Some(InfoRequest { name, info_types })
}

fn handle_info_or_go(conn: &mut Conn, shared: &Shared, option: u32, data: &[u8]) -> io::Result<Option<Handshake>> {
    let option_label = if option == OPT_GO { "GO" } else { "INFO" };
    let Some(request) = parse_info_request(data) else {
        shared.log_handshake(format!("{option_label} malformed -> ERR_INVALID"));
        send_option_reply(conn, option, REP_ERR_INVALID, &[])?;
        return Ok(None);
    };
    let name = String::from_utf8_lossy(request.name);
    if request.name != shared.export_name.as_bytes() {
        shared.log_handshake(format!("{option_label} {name:?} -> ERR_UNKNOWN"));
        send_option_reply(conn, option, REP_ERR_UNKNOWN, &[])?;
        return Ok(None);
    }
    shared.log_handshake(format!(
        "{option_label} {name:?} info requests {:?} -> INFO_EXPORT, INFO_BLOCK_SIZE, ACK",
        request.info_types
    ));
    send_option_reply(conn, option, REP_INFO, &info_export(shared))?;
    // Sent even when not requested: the spec lets a server advertise block
    // sizes unasked, QEMU parses NBD_REP_INFO by type whether or not it asked,
    // and minimum 1 constrains no client.
    send_option_reply(conn, option, REP_INFO, &info_block_size(shared))?;
    send_option_reply(conn, option, REP_ACK, &[])?;
    Ok((option == OPT_GO).then_some(Handshake::Transmission))
}

fn info_export(shared: &Shared) -> Vec<u8> {
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export_size_bytes(shared).to_be_bytes());
    info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    info
}

fn info_block_size(shared: &Shared) -> Vec<u8> {
    let mut info = Vec::with_capacity(14);
    info.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    // Minimum 1: the overlay does read-modify-write, so any alignment works
    // and QEMU passes unaligned guest requests through unchanged.
    info.extend_from_slice(&1u32.to_be_bytes());
    info.extend_from_slice(&PREFERRED_BLOCK_BYTES.to_be_bytes());
    info.extend_from_slice(&shared.limits.request_max_bytes.to_be_bytes());
    info
}

// ---------------------------------------------------------------------------
// Transmission.

struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset_bytes: u64,
    len_bytes: u32,
}

fn parse_request(header: &[u8; 28]) -> io::Result<Request> {
    let be16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
    let magic = be32(0);
    if magic != REQUEST_MAGIC {
        return Err(protocol_error(format!("bad request magic {magic:#x}")));
    }
    Ok(Request {
        flags: be16(4),
        kind: be16(6),
        cookie: be64(8),
        offset_bytes: be64(16),
        len_bytes: be32(24),
    })
}

/// Reads the next request header; `None` on a clean end of stream between
/// requests (the client closed without NBD_CMD_DISC, or stop() shut us down).
fn read_request(conn: &mut Conn) -> io::Result<Option<Request>> {
    let mut header = [0u8; 28];
    match conn.reader.read_exact(&mut header) {
        Ok(()) => parse_request(&header).map(Some),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn transmission(conn: &mut Conn, shared: &Shared) -> io::Result<()> {
    while let Some(request) = read_request(conn)? {
        let started = Instant::now();
        if request.kind == CMD_DISC {
            lock(&shared.stats).disconnects += 1;
            return Ok(());
        }
        let outcome = execute(conn, shared, &request)?;
        // Counted before replying so a client that has its answer also sees
        // the counters include it.
        account(shared, &request, &outcome, started.elapsed());
        send_reply(conn, &request, &outcome)?;
    }
    Ok(())
}

/// What to answer: an NBD errno, or success with read data (empty for
/// commands other than READ).
type Outcome = Result<Vec<u8>, u32>;

fn execute(conn: &mut Conn, shared: &Shared, request: &Request) -> io::Result<Outcome> {
    // WRITE's payload must be consumed whatever the verdict, to stay in sync.
    let payload = if request.kind == CMD_WRITE {
        Some(read_payload(conn, shared, request)?)
    } else {
        None
    };
    if request.flags & !CMD_FLAGS_KNOWN != 0 {
        return Ok(Err(EINVAL));
    }
    let outcome = match request.kind {
        CMD_READ => do_read(shared, request),
        CMD_WRITE => match payload {
            Some(Some(data)) => do_write(shared, request, Some(&data)),
            _ => Err(EINVAL),
        },
        CMD_WRITE_ZEROES => do_write(shared, request, None),
        CMD_FLUSH => Ok(Vec::new()),
        // A no-op: the old data stays readable, which a disk may also do.
        CMD_TRIM => check_range(&shared.lock_state(), request).map(|()| Vec::new()),
        _ => Err(EINVAL),
    };
    Ok(outcome)
}

/// The WRITE payload, or `None` if it was too large and was discarded.
fn read_payload(conn: &mut Conn, shared: &Shared, request: &Request) -> io::Result<Option<Vec<u8>>> {
    if request.len_bytes > shared.limits.request_max_bytes {
        conn.drain(u64::from(request.len_bytes))?;
        return Ok(None);
    }
    conn.read_vec(request.len_bytes as usize).map(Some)
}

fn check_range(state: &ViewState, request: &Request) -> Result<(), u32> {
    match request.offset_bytes.checked_add(u64::from(request.len_bytes)) {
        Some(end_bytes) if end_bytes <= state.view.size_bytes() => Ok(()),
        _ => Err(EINVAL),
    }
}

fn do_read(shared: &Shared, request: &Request) -> Outcome {
    if request.len_bytes > shared.limits.request_max_bytes {
        return Err(EINVAL);
    }
    let mut state = shared.lock_state();
    check_range(&state, request)?;
    if state.reads.len() < READ_LOG_MAX {
        state.reads.push((request.offset_bytes, u64::from(request.len_bytes)));
    }
    let mut data = vec![0u8; request.len_bytes as usize];
    state
        .overlay
        .read(state.view.as_ref(), request.offset_bytes, &mut data)
        .map_err(|_| EIO)?;
    Ok(data)
}

/// WRITE (`data` given) or WRITE_ZEROES (`None`).
fn do_write(shared: &Shared, request: &Request, data: Option<&[u8]>) -> Outcome {
    if request.len_bytes > shared.limits.request_max_bytes {
        return Err(EINVAL);
    }
    let mut state = shared.lock_state();
    check_range(&state, request)?;
    if let (Some(bytes), Some(fault)) = (data, lock(&shared.fault).as_mut()) {
        if let Some(errno) = fault.check(request.offset_bytes, bytes) {
            lock(&shared.stats).injected_errors += 1;
            return Err(errno);
        }
    }
    let ViewState { view, overlay, .. } = &mut *state;
    let source = match data {
        Some(bytes) => Source::Data(bytes),
        None => Source::Zeroes(u64::from(request.len_bytes)),
    };
    overlay.write(
        view.as_ref(),
        request.offset_bytes,
        source,
        shared.limits.overlay_max_bytes,
    )?;
    Ok(Vec::new())
}

fn send_reply(conn: &mut Conn, request: &Request, outcome: &Outcome) -> io::Result<()> {
    let (error, data): (u32, &[u8]) = match outcome {
        Ok(data) => (0, data),
        Err(errno) => (*errno, &[]),
    };
    // One buffer, one write: header and data leave in a single syscall.
    let mut reply = Vec::with_capacity(16 + data.len());
    reply.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&error.to_be_bytes());
    reply.extend_from_slice(&request.cookie.to_be_bytes());
    reply.extend_from_slice(data);
    conn.writer.write_all(&reply)
}

fn account(shared: &Shared, request: &Request, outcome: &Outcome, elapsed: Duration) {
    let mut stats = lock(&shared.stats);
    stats.request_nanos += u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    if let Err(errno) = outcome {
        stats.errors += 1;
        if *errno == ENOSPC {
            stats.enospc_errors += 1;
        }
        return;
    }
    let len_bytes = u64::from(request.len_bytes);
    match request.kind {
        CMD_READ => {
            stats.reads += 1;
            stats.bytes_read += len_bytes;
        }
        CMD_WRITE => {
            stats.writes += 1;
            stats.bytes_written += len_bytes;
        }
        CMD_WRITE_ZEROES => {
            stats.write_zeroes += 1;
            stats.bytes_zeroed += len_bytes;
        }
        CMD_TRIM => stats.trims += 1,
        CMD_FLUSH => stats.flushes += 1,
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// The write overlay.

/// Bytes to write into the overlay.
#[derive(Clone, Copy)]
enum Source<'a> {
    Data(&'a [u8]),
    Zeroes(u64),
}

impl Source<'_> {
    fn len_bytes(&self) -> u64 {
        match self {
            Source::Data(bytes) => bytes.len() as u64,
            Source::Zeroes(len_bytes) => *len_bytes,
        }
    }

    /// Copy source bytes `[from, from + dst.len())` into `dst`.
    fn copy_to(&self, from_bytes: u64, dst: &mut [u8]) {
        match self {
            Source::Data(bytes) => dst.copy_from_slice(&bytes[from_bytes as usize..from_bytes as usize + dst.len()]),
            Source::Zeroes(_) => dst.fill(0),
        }
    }
}

type Sector = Box<[u8; SECTOR_BYTES as usize]>;

/// Guest writes since the last `set_view`, by 512-byte sector index. A
/// sector present here shadows the view entirely (partial writes were
/// completed from the view when the sector was created).
#[derive(Default)]
struct Overlay {
    sectors: BTreeMap<u64, Sector>,
}

/// The part of sector `sector` that the byte range `[start, end)` covers,
/// as (offset within the sector, offset within the range, length).
fn sector_span(sector: u64, start_bytes: u64, end_bytes: u64) -> (usize, u64, usize) {
    let sector_start_bytes = sector * SECTOR_BYTES;
    let from_bytes = start_bytes.max(sector_start_bytes);
    let to_bytes = end_bytes.min(sector_start_bytes + SECTOR_BYTES);
    (
        (from_bytes - sector_start_bytes) as usize,
        from_bytes - start_bytes,
        (to_bytes - from_bytes) as usize,
    )
}

/// Sector indexes `[first, last]` touched by a non-empty byte range.
fn sectors_of(offset_bytes: u64, len_bytes: u64) -> (u64, u64) {
    (
        offset_bytes / SECTOR_BYTES,
        (offset_bytes + len_bytes - 1) / SECTOR_BYTES,
    )
}

impl Overlay {
    fn bytes(&self) -> u64 {
        self.sectors.len() as u64 * SECTOR_BYTES
    }

    fn clear(&mut self) {
        self.sectors = BTreeMap::new();
    }

    /// The view's bytes at `offset_bytes`, with overlay sectors on top.
    fn read(&self, view: &dyn DiskView, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end_bytes = offset_bytes + buf.len() as u64;
        let (first, last) = sectors_of(offset_bytes, buf.len() as u64);
        if !self.covers(first, last) {
            view.read_at(offset_bytes, buf)?;
        }
        for (&sector, data) in self.sectors.range(first..=last) {
            let (in_sector, in_range, len) = sector_span(sector, offset_bytes, end_bytes);
            buf[in_range as usize..in_range as usize + len].copy_from_slice(&data[in_sector..in_sector + len]);
        }
        Ok(())
    }

    /// Whether every sector in `[first, last]` is in the overlay (then the
    /// view need not be read at all).
    fn covers(&self, first: u64, last: u64) -> bool {
        self.sectors.range(first..=last).count() as u64 == last - first + 1
    }

    /// All-or-nothing: on ENOSPC or EIO the overlay is unchanged.
    fn write(&mut self, view: &dyn DiskView, offset_bytes: u64, source: Source<'_>, max_bytes: u64) -> Result<(), u32> {
        let len_bytes = source.len_bytes();
        if len_bytes == 0 {
            return Ok(());
        }
        let (first, last) = sectors_of(offset_bytes, len_bytes);
        let new_sectors = (last - first + 1) - self.sectors.range(first..=last).count() as u64;
        if self.bytes() + new_sectors * SECTOR_BYTES > max_bytes {
            return Err(ENOSPC);
        }
        // Only the edge sectors can be partly covered; fetch their old
        // content before changing anything so a failed read changes nothing.
        let end_bytes = offset_bytes + len_bytes;
        let head = self
            .edge_sector(view, first, offset_bytes, end_bytes)
            .map_err(|_| EIO)?;
        let tail = if last != first {
            self.edge_sector(view, last, offset_bytes, end_bytes).map_err(|_| EIO)?
        } else {
            None
        };
        self.sectors.extend(head.into_iter().chain(tail));
        for sector in first..=last {
            let (in_sector, in_range, len) = sector_span(sector, offset_bytes, end_bytes);
            let data = self
                .sectors
                .entry(sector)
                .or_insert_with(|| Box::new([0u8; SECTOR_BYTES as usize]));
            source.copy_to(in_range, &mut data[in_sector..in_sector + len]);
        }
        assert!(self.bytes() <= max_bytes, "the overlay stays within its bound");
        Ok(())
    }

    /// For a sector the range covers only in part and the overlay lacks: the
    /// sector's current content from the view, ready to be patched.
    fn edge_sector(
        &self,
        view: &dyn DiskView,
        sector: u64,
        start_bytes: u64,
        end_bytes: u64,
    ) -> io::Result<Option<(u64, Sector)>> {
        let (_, _, len) = sector_span(sector, start_bytes, end_bytes);
        if len == SECTOR_BYTES as usize || self.sectors.contains_key(&sector) {
            return Ok(None);
        }
        let mut data: Sector = Box::new([0u8; SECTOR_BYTES as usize]);
        // The view may end inside this sector; bytes past its end stay zero
        // and are never served (requests are range-checked).
        let sector_start_bytes = sector * SECTOR_BYTES;
        let in_view_bytes = view.size_bytes().saturating_sub(sector_start_bytes).min(SECTOR_BYTES) as usize;
        view.read_at(sector_start_bytes, &mut data[..in_view_bytes])?;
        Ok(Some((sector, data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view whose byte at offset `i` is `(i % 251) as u8`, so misplaced
    /// bytes show up; optionally failing every read.
    struct PatternView {
        size_bytes: u64,
        fail: bool,
    }

    fn pattern_byte(offset_bytes: u64) -> u8 {
        (offset_bytes % 251) as u8
    }

    impl DiskView for PatternView {
        fn size_bytes(&self) -> u64 {
            self.size_bytes
        }

        fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
            assert!(
                offset_bytes + buf.len() as u64 <= self.size_bytes,
                "read past the end of the view"
            );
            if self.fail {
                return Err(io::Error::other("injected"));
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = pattern_byte(offset_bytes + i as u64);
            }
            Ok(())
        }
    }

    fn view(size_bytes: u64) -> PatternView {
        PatternView {
            size_bytes,
            fail: false,
        }
    }

    fn read(overlay: &Overlay, view: &dyn DiskView, offset_bytes: u64, len_bytes: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len_bytes];
        overlay.read(view, offset_bytes, &mut buf).unwrap();
        buf
    }

    fn expected_base(offset_bytes: u64, len_bytes: usize) -> Vec<u8> {
        (0..len_bytes as u64).map(|i| pattern_byte(offset_bytes + i)).collect()
    }

    #[test]
    fn read_without_writes_is_the_view() {
        let base = view(8192);
        assert_eq!(read(&Overlay::default(), &base, 100, 3000), expected_base(100, 3000));
    }

    #[test]
    fn unaligned_write_keeps_the_neighbouring_bytes() {
        let base = view(8192);
        let mut overlay = Overlay::default();
        overlay
            .write(&base, 700, Source::Data(&[0xee; 1000]), u64::MAX)
            .unwrap();
        // Bytes 700..1700 touch sectors 1..=3.
        assert_eq!(overlay.bytes(), 3 * 512);
        let got = read(&overlay, &base, 0, 4096);
        let mut want = expected_base(0, 4096);
        want[700..1700].fill(0xee);
        assert_eq!(got, want);
        // A read starting inside an overlay sector.
        assert_eq!(read(&overlay, &base, 1650, 100)[..50], [0xee; 50]);
        assert_eq!(read(&overlay, &base, 1650, 100)[50..], expected_base(1700, 50)[..]);
    }

    #[test]
    fn second_unaligned_write_patches_the_overlay_not_the_base() {
        let base = view(4096);
        let mut overlay = Overlay::default();
        overlay.write(&base, 10, Source::Data(&[1; 20]), u64::MAX).unwrap();
        overlay.write(&base, 20, Source::Data(&[2; 20]), u64::MAX).unwrap();
        let got = read(&overlay, &base, 0, 512);
        let mut want = expected_base(0, 512);
        want[10..20].fill(1);
        want[20..40].fill(2);
        assert_eq!(got, want);
        assert_eq!(overlay.bytes(), 512);
    }

    #[test]
    fn write_zeroes_within_one_sector() {
        let base = view(4096);
        let mut overlay = Overlay::default();
        overlay.write(&base, 1030, Source::Zeroes(7), u64::MAX).unwrap();
        let mut want = expected_base(1024, 512);
        want[6..13].fill(0);
        assert_eq!(read(&overlay, &base, 1024, 512), want);
    }

    #[test]
    fn fully_covered_read_does_not_touch_the_view() {
        let mut overlay = Overlay::default();
        overlay
            .write(&view(4096), 512, Source::Data(&[9; 1024]), u64::MAX)
            .unwrap();
        let failing = PatternView {
            size_bytes: 4096,
            fail: true,
        };
        assert_eq!(read(&overlay, &failing, 600, 900), vec![9; 900]);
    }

    #[test]
    fn view_ending_mid_sector() {
        let base = view(1000);
        let mut overlay = Overlay::default();
        overlay.write(&base, 990, Source::Data(&[5; 10]), u64::MAX).unwrap();
        let mut want = expected_base(0, 1000);
        want[990..].fill(5);
        assert_eq!(read(&overlay, &base, 0, 1000), want);
    }

    #[test]
    fn overlay_limit_rejects_the_whole_write() {
        let base = view(1 << 20);
        let mut overlay = Overlay::default();
        overlay.write(&base, 0, Source::Data(&[1; 1024]), 2048).unwrap();
        // Rewriting present sectors needs no new space.
        overlay.write(&base, 100, Source::Data(&[2; 800]), 2048).unwrap();
        // 1024..2560 needs three new sectors, one more than fits.
        assert_eq!(overlay.write(&base, 1024, Source::Data(&[3; 1536]), 2048), Err(ENOSPC));
        assert_eq!(overlay.bytes(), 1024);
        assert_eq!(read(&overlay, &base, 1024, 1536), expected_base(1024, 1536));
        overlay.write(&base, 1024, Source::Data(&[3; 1024]), 2048).unwrap();
        assert_eq!(overlay.bytes(), 2048);
    }

    #[test]
    fn failing_base_read_leaves_the_overlay_unchanged() {
        let failing = PatternView {
            size_bytes: 4096,
            fail: true,
        };
        let mut overlay = Overlay::default();
        // Aligned: no base read needed, succeeds.
        overlay.write(&failing, 0, Source::Data(&[1; 512]), u64::MAX).unwrap();
        // Head sector present, tail sector partial and missing: EIO, nothing written.
        assert_eq!(
            overlay.write(&failing, 100, Source::Data(&[2; 600]), u64::MAX),
            Err(EIO)
        );
        assert_eq!(read(&overlay, &failing, 0, 512), vec![1; 512]);
        assert_eq!(overlay.bytes(), 512);
    }

    fn handle_with(size_bytes: u64, limits: NbdLimits) -> NbdHandle {
        NbdHandle {
            shared: Arc::new(Shared::new("state", Arc::new(view(size_bytes)), limits)),
        }
    }

    fn request(kind: u16, offset_bytes: u64, len_bytes: u32) -> Request {
        Request {
            flags: 0,
            kind,
            cookie: 7,
            offset_bytes,
            len_bytes,
        }
    }

    #[test]
    fn set_view_drops_the_overlay() {
        let handle = handle_with(4096, NbdLimits::default());
        do_write(&handle.shared, &request(CMD_WRITE, 0, 10), Some(&[7; 10])).unwrap();
        assert_eq!(handle.overlay_bytes(), 512);
        assert_eq!(do_read(&handle.shared, &request(CMD_READ, 0, 10)).unwrap(), vec![7; 10]);
        assert_eq!(handle.take_reads(), vec![(0, 10)]);
        assert!(handle.take_reads().is_empty());
        handle.set_view(Arc::new(PatternView {
            size_bytes: 4096,
            fail: false,
        }));
        assert_eq!(handle.overlay_bytes(), 0);
        assert_eq!(
            do_read(&handle.shared, &request(CMD_READ, 0, 10)).unwrap(),
            expected_base(0, 10)
        );
    }

    #[test]
    fn host_reads_see_the_guest_writes() {
        let handle = handle_with(4096, NbdLimits::default());
        do_write(&handle.shared, &request(CMD_WRITE, 1000, 100), Some(&[7; 100])).unwrap();
        let mut buf = vec![0u8; 300];
        handle.read_at(900, &mut buf).unwrap();
        let mut expected = expected_base(900, 300);
        expected[100..200].fill(7);
        assert_eq!(buf, expected);
        assert!(handle.read_at(4000, &mut buf).is_err());
        assert!(handle.read_at(u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn requests_are_range_and_size_checked() {
        let limits = NbdLimits {
            overlay_max_bytes: 1024,
            request_max_bytes: 4096,
        };
        let handle = handle_with(8192, limits);
        let shared = &handle.shared;
        assert_eq!(do_read(shared, &request(CMD_READ, 8000, 193)), Err(EINVAL));
        assert_eq!(do_read(shared, &request(CMD_READ, u64::MAX, 1)), Err(EINVAL));
        assert_eq!(do_read(shared, &request(CMD_READ, 0, 4097)), Err(EINVAL));
        assert_eq!(do_read(shared, &request(CMD_READ, 8000, 192)).map(|d| d.len()), Ok(192));
        assert_eq!(do_write(shared, &request(CMD_WRITE_ZEROES, 0, 1536), None), Err(ENOSPC));
        assert_eq!(do_write(shared, &request(CMD_WRITE_ZEROES, 8191, 2), None), Err(EINVAL));
        assert_eq!(
            do_write(shared, &request(CMD_WRITE_ZEROES, 0, 1024), None),
            Ok(Vec::new())
        );
        assert_eq!(handle.overlay_bytes(), 1024);
    }

    /// Every byte the same, read slowly in pieces so a swap could land
    /// mid-read if the server did not hold the lock.
    struct UniformView(u8);

    impl DiskView for UniformView {
        fn size_bytes(&self) -> u64 {
            1 << 20
        }

        fn read_at(&self, _offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
            for chunk in buf.chunks_mut(4096) {
                chunk.fill(self.0);
                std::thread::yield_now();
            }
            Ok(())
        }
    }

    #[test]
    fn a_request_racing_set_view_sees_one_view() {
        let handle = handle_with(0, NbdLimits::default());
        handle.set_view(Arc::new(UniformView(1)));
        let done = Arc::new(AtomicBool::new(false));
        let (swapper, swapper_done) = (handle.clone(), Arc::clone(&done));
        let swaps = std::thread::spawn(move || {
            let mut count = 0u64;
            while !swapper_done.load(Ordering::SeqCst) {
                count += 1;
                swapper.set_view(Arc::new(UniformView(1 + (count % 2) as u8)));
            }
            count
        });
        let mut seen = [false; 3];
        for _ in 0..300 {
            let data = do_read(&handle.shared, &request(CMD_READ, 0, 64 << 10)).unwrap();
            assert!(data.iter().all(|&b| b == data[0]), "a read mixed two views");
            seen[data[0] as usize] = true;
        }
        done.store(true, Ordering::SeqCst);
        assert!(swaps.join().unwrap() > 0);
        assert!(seen[1] && seen[2], "the swaps never overlapped the reads");
    }

    #[test]
    fn parses_info_requests() {
        let mut data = 5u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"state");
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&3u16.to_be_bytes());
        let parsed = parse_info_request(&data).unwrap();
        assert_eq!((parsed.name, parsed.info_types), (&b"state"[..], vec![3]));
        assert!(parse_info_request(&data[..data.len() - 1]).is_none());
        assert!(parse_info_request(&u32::MAX.to_be_bytes()).is_none());
        assert!(parse_info_request(&[]).is_none());
    }

    #[test]
    fn rejects_bad_limits_and_paths() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let limits = NbdLimits::default();
        assert!(NbdServer::start(&long, "state", Arc::new(view(512)), limits).is_err());
        let bad = NbdLimits {
            request_max_bytes: 100,
            ..limits
        };
        assert!(NbdServer::start(Path::new("/tmp/x.sock"), "state", Arc::new(view(512)), bad).is_err());
    }
}
